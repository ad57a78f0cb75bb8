# Membrane. `make demo` runs the example lab; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
BIN := bin
GOFLAGS_BUILD := -trimpath

.PHONY: all deps build generate check-generated vet test bench demo clean

all: build

deps:
	@hack/install-deps.sh

build:
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/ ./cmd/...

# Regenerate the committed eBPF objects and their Go bindings (needs clang),
# and the Go code of Membrane's protobuf types (needs protoc).
generate:
	$(GO) generate ./bpf/... ./xds/l7pb/

# CI: the committed generated files must be exactly what the generators
# produce from the sources.
check-generated: generate
	@git diff --exit-code --stat -- bpf/ xds/l7pb/ || { echo "committed generated files are stale: run 'make generate' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- bpf/ xds/l7pb/)" || { echo "generation produced files that are not committed:"; git status --porcelain -- bpf/ xds/l7pb/; exit 1; }

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# Every test. Tests that need root, BPF or network namespaces run for real
# (CI runs as root); without the capability they skip and say why.
test: deps check-generated vet
	$(GO) test -timeout 25m ./...

# Benchmarks: per-packet cost, throughput, connection rate, policy
# convergence and memory, side by side in one run. Writes bench/results.txt.
bench: deps build
	$(GO) run ./test/bench -out bench/results.txt

# The demo: an example lab on this machine, its reachability matrix, and
# one endpoint's computed policy. The lab stays up to explore.
demo: deps build
	@$(BIN)/membranectl lab down --name demo >/dev/null 2>&1 || true
	$(BIN)/membranectl lab up -f examples/quickstart
	$(BIN)/membranectl lab matrix --name demo --protocols tcp
	$(BIN)/membranectl policy get shop/web --lab demo
	@echo
	@echo "The lab 'demo' is running. Try:"
	@echo "  $(BIN)/membranectl lab probe shop/frontend shop/web 80 --name demo"
	@echo "  $(BIN)/membranectl lab exec shop/frontend --name demo -- ip addr"
	@echo "  $(BIN)/membranectl status --lab demo"
	@echo "  $(BIN)/membranectl lab down --name demo"

clean:
	rm -rf $(BIN)
