# syntax=docker/dockerfile:1
#
# pgsidecar: a static binary on distroless, running as a non-root user.
#   docker build -t pgsidecar .
#   docker run -e DATABASE_URL=postgres://app:app@db:5432/app -p 6432:6432 -p 9930:9930 pgsidecar
# Configuration is by environment (PGSIDECAR_*, DATABASE_URL); to use a file,
# mount it and pass -config /path/config.yaml (or set PGSIDECAR_CONFIG).

FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so editing the source does not re-download them.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# CGO off: a fully static binary that runs on distroless/static (no libc).
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/pgsidecar .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pgsidecar /usr/local/bin/pgsidecar
# Inside a container the loopback defaults would make the proxy unreachable
# from other containers; listen on every interface of the container instead.
ENV PGSIDECAR_LISTEN=0.0.0.0:6432 \
    PGSIDECAR_HEALTH__LISTEN=0.0.0.0:9930
# 6432: PostgreSQL clients; 9930: /health, /stats, /metrics.
EXPOSE 6432 9930
# The distroless "nonroot" user (uid 65532); the proxy needs no privileges.
USER nonroot:nonroot
# No HEALTHCHECK: distroless has no shell, curl or wget to run one. Probe
# GET /health on port 9930 from the orchestrator instead (200 ready, 503 not).
ENTRYPOINT ["/usr/local/bin/pgsidecar"]
