# pgsidecar: build, run, test, measure.
#   make run    proxy $DATABASE_URL, or a throwaway local PostgreSQL if unset
#   make test   go vet + every test (with -race) against a real PostgreSQL

# The Go tarball installs to /usr/local/go/bin, which a fresh shell may not
# have on PATH.
export PATH := $(PATH):/usr/local/go/bin

GO       ?= go
BIN      := bin/pgsidecar
FUZZTIME ?= 20s
# Extra arguments for the proxy, e.g. make run ARGS="-config config.yaml".
ARGS     ?=

.PHONY: all build run test bench fuzz lint clean

all: build

build:
	$(GO) build -o $(BIN) .

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
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 9m ./...

bench: build
	BENCH_PROXY_BIN=$(CURDIR)/$(BIN) bash test/tools/bench.sh

# Short, bounded fuzz runs of the protocol parsers (go test -fuzz takes one
# target per run).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReadStartup$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzScanner$$' -fuzztime $(FUZZTIME) ./proxy

lint:
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
