# pgsidecar: build, run, test, measure.
#   make run    proxy $DATABASE_URL, or a throwaway local PostgreSQL if unset
#   make cover  every test with coverage, the e2e suite's proxy included; prints per-package figures
#   make test   make lint (gofmt, go vet, staticcheck) + every test (with -race) against a real PostgreSQL
#   make bench  pgsidecar vs PgBouncer vs direct, pgbench -S, one interleaved run (test/tools/bench.sh)

# The Go tarball installs to /usr/local/go/bin, which a fresh shell may not
# have on PATH.
export PATH := $(PATH):/usr/local/go/bin

GO       ?= go
BIN      ?= bin/pgsidecar
# Extra go build flags, e.g. GOBUILDFLAGS=-race.
GOBUILDFLAGS ?=

# The build's identity, stamped into internal/buildinfo: `pgsidecar
# version`, the ready log line, /health and pgsidecar_build_info report it.
# Empty outside a git checkout; the binary then falls back to what the Go
# toolchain recorded (see internal/buildinfo).
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILDINFO := github.com/pgsidecar/pgsidecar/internal/buildinfo
LDFLAGS   := -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).revision=$(REVISION)
FUZZTIME ?= 20s
# Extra arguments for the proxy, e.g. make run ARGS="-config config.yaml".
ARGS     ?=

.PHONY: all build image run test cover bench fuzz lint clean

all: build

build:
	$(GO) build $(GOBUILDFLAGS) -ldflags "$(LDFLAGS)" -o $(BIN) .

# The container image, stamped like `make build` (the build context leaves
# out what `go build .` does not need, so git cannot tell there whether the
# tree is modified).
image:
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t pgsidecar:$(VERSION) -t pgsidecar .

# With DATABASE_URL set the proxy fronts it; otherwise devpg.sh starts a
# throwaway cluster (installing the server package if needed), prints the
# psql line that connects through the proxy, and removes the cluster on exit.
run: build
	@if [ -n "$$DATABASE_URL" ]; then \
		echo "pgsidecar in front of $$(echo "$$DATABASE_URL" | sed -E 's#//([^:/@]*):[^@]*@#//\1:***@#')"; \
		exec ./$(BIN) $(ARGS); \
	else \
		exec bash test/tools/devpg.sh ./$(BIN) $(ARGS); \
	fi

# deps.sh installs what a fresh Debian machine lacks (PostgreSQL, node, a
# JDK, ...) and is a no-op otherwise. -timeout 12m keeps a hung test from
# eating CI's budget; the suite is meant to finish under 10 minutes on 2
# cores (8 min 8 s on 2026-11-29, the e2e package alone 7.5 min: closer to
# the old 9m per-package timeout than a slower runner allows).
test:
	@bash test/tools/deps.sh
	@$(MAKE) --no-print-directory lint
	$(GO) test -race -count=1 -timeout 12m ./...

# Coverage that sees the e2e suite: the proxy binary the e2e tests run is
# built with -cover and writes its counters at exit to GOCOVERDIR (set from
# PGSIDECAR_E2E_COVERDIR by the suite's TestMain); the unit
# tests write theirs with -test.gocoverdir; covdata merges both, per
# package. No -race here: coverage, not races, is measured.
COVERDIR ?= $(CURDIR)/bin/cover
# The packages measured: everything but the tests and their helpers.
COVERPKG = $(shell $(GO) list ./... | grep -v -e /test$$ -e /internal/testpg$$ | paste -sd, -)
cover:
	rm -rf $(COVERDIR)
	mkdir -p $(COVERDIR)/unit $(COVERDIR)/e2e
	$(MAKE) --no-print-directory build BIN=$(COVERDIR)/pgsidecar GOBUILDFLAGS="-cover -covermode=atomic -coverpkg=$(COVERPKG)"
	PGSIDECAR_E2E_COVERDIR=$(COVERDIR)/e2e PGSIDECAR_E2E_BIN=$(COVERDIR)/pgsidecar \
		$(GO) test -count=1 -timeout 12m -cover -covermode=atomic -coverpkg=$(COVERPKG) ./... \
		-args -test.gocoverdir=$(COVERDIR)/unit
	@echo "combined coverage (unit + e2e), per package:"
	@$(GO) tool covdata percent -i=$(COVERDIR)/unit,$(COVERDIR)/e2e | tr '\t' ' ' | \
		sed -E 's/ +/ /g; s/ (github\.com)/\n\1/g' | grep -F 'coverage:'
	@$(GO) tool covdata textfmt -i=$(COVERDIR)/unit,$(COVERDIR)/e2e -o $(COVERDIR)/cover.out
	@echo "profile: $(COVERDIR)/cover.out (go tool cover -html=$(COVERDIR)/cover.out)"

# pgsidecar against PgBouncer in one interleaved run (about 10 minutes);
# knobs are the BENCH_* variables listed at the top of test/tools/bench.sh,
# e.g. make bench BENCH_PROFILE=1. `deps.sh bench` installs PgBouncer (and
# perf for BENCH_PROFILE=1) for this target only; make test never does.
bench: build
	@bash test/tools/deps.sh bench
	BENCH_PROXY_BIN=$(CURDIR)/$(BIN) bash test/tools/bench.sh

# Short, bounded fuzz runs of the protocol parsers (go test -fuzz takes one
# target per run).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReadStartup$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzScanner$$' -fuzztime $(FUZZTIME) ./proxy

# staticcheck runs through a pinned `go run`, so nothing needs installing by
# hand (the module cache keeps it after the first run).
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	GOARCH=arm64 $(GO) vet ./... # sidecars run on arm64 too: constants differ there
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf bin
