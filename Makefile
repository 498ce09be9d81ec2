# pgsidecar: build, run, test, measure.
#   make run    proxy $DATABASE_URL, or a throwaway local PostgreSQL if unset
#   make test   make lint (gofmt, go vet, staticcheck) + every test (with -race) against a real PostgreSQL

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

.PHONY: all build image run test bench fuzz lint clean

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
# JDK, ...) and is a no-op otherwise. -timeout 9m keeps a hung test from
# eating CI's budget; the suite is meant to finish well under 10 minutes on
# 2 cores.
test:
	@bash test/tools/deps.sh
	@$(MAKE) --no-print-directory lint
	$(GO) test -race -count=1 -timeout 9m ./...

bench: build
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
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf bin
