# The two commands a newcomer needs are `make demo` and `make test` (both as root on Debian 12;
# they install what they need). Everything else is for developers.
SHELL := /bin/bash
BIN := zabbix-agent2-plugin-kvm
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO ?= go
export GOFLAGS ?= -buildvcs=false

.PHONY: all build deps test test-unit test-e2e bench bench-e2e demo conf fuzz vet clean

all: build

deps:
	bash scripts/deps.sh all
	$(GO) mod download

build:
	$(GO) build -ldflags "-X main.Version=$(VERSION)" -o $(BIN) .

vet:
	$(GO) vet ./...
	$(GO) vet -tags integration ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1; }

# Every layer: unit, test driver, real agents 6.0/7.0, haproxy, libvirtd + QEMU guests, Zabbix server.
test: deps build vet
	$(GO) test -count=1 -tags integration -timeout 80m ./... 2>&1 | tee test.out; exit $${PIPESTATUS[0]}

# Fast layers only (no daemons): unit tests and the libvirt test driver.
test-unit: build
	$(GO) test -count=1 ./plugin/... ./kvm/... ./haproxy/... ./sender/... ./actions/... ./conf/... ./internal/...

# The seed scenario alone (Zabbix server + guests + haproxy + agent).
test-e2e: deps build
	$(GO) test -count=1 -timeout 60m -v -run 'Scenario' ./tests/e2e/ 2>&1 | tee test-e2e.out; exit $${PIPESTATUS[0]}

bench: deps build
	bash scripts/bench.sh

bench-e2e: deps build
	bash scripts/bench.sh e2e

# A real zabbix_agent2 with the plugin on libvirt's embedded test driver; prints real values.
demo: build
	bash scripts/deps.sh build agents
	bash scripts/demo.sh

# Regenerate conf/kvm.conf from the option table in plugin/config.go.
conf: build
	./$(BIN) conf > conf/kvm.conf

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzRead -fuzztime 30s ./plugin/sdk/comms/

clean:
	rm -f $(BIN) test.out test-e2e.out
