# syntax=docker/dockerfile:1
#
# pgsidecar: a static binary on distroless, running as a non-root user.
#   make image     (docker build, stamped with git describe; plain
#                   `docker build -t pgsidecar .` works too, version "unknown")
#   docker run -e DATABASE_URL=postgres://app:app@db:5432/app -p 6432:6432 -p 9930:9930 pgsidecar
# Configuration is by environment (PGSIDECAR_*, DATABASE_URL); to use a file,
# mount it and set PGSIDECAR_CONFIG=/path/config.yaml (rather than -config,
# so that the HEALTHCHECK below reads the same file).

FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so editing the source does not re-download them.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The build's identity (see internal/buildinfo): `make image` passes
# git describe and the commit. Without them the binary says "unknown",
# never a made-up version: the context has no .git (see .dockerignore).
ARG VERSION=unknown
ARG REVISION=unknown
# CGO off: a fully static binary that runs on distroless/static (no libc).
# -buildvcs=false: there is no repository here; the version comes from above.
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
    -ldflags="-s -w -X github.com/pgsidecar/pgsidecar/internal/buildinfo.version=${VERSION} -X github.com/pgsidecar/pgsidecar/internal/buildinfo.revision=${REVISION}" \
    -o /out/pgsidecar .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pgsidecar /usr/local/bin/pgsidecar
# Inside a container the loopback defaults would make the proxy unreachable
# from other containers; listen on every interface of the container instead.
ENV PGSIDECAR_LISTEN=0.0.0.0:6432 \
    PGSIDECAR_HEALTH__LISTEN=0.0.0.0:9930
# 6432: PostgreSQL clients; 9930: /health, /stats, /metrics.
EXPOSE 6432 9930
# The distroless "nonroot" user; the proxy needs no privileges. By number,
# not name: with runAsNonRoot (deploy/kubernetes/) the kubelet refuses to
# start an image whose user it cannot check is not root, and it checks only
# a numeric one ("image has non-numeric user").
USER 65532:65532
# distroless has no shell, curl or wget: the binary checks itself. It GETs
# /health on health.listen (from the same environment), 200 = healthy.
# Kubernetes ignores HEALTHCHECK: see deploy/kubernetes/ for its probes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/pgsidecar", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/pgsidecar"]
