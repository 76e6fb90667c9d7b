# The two commands a newcomer needs are `make demo` and `make test` (both as root on Debian 12;
# each installs what it needs BEFORE it builds). Everything else is for developers.
SHELL := /bin/bash
BIN := zabbix-agent2-plugin-kvm
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
export GOFLAGS ?= -buildvcs=false

.PHONY: all build deb deps deps-demo deps-deb test test-unit test-e2e test-compat bench bench-e2e bench-fleet demo conf fuzz vet lint clean

all: build

# Packages first: building needs libvirt-dev, which a fresh machine does not have.
deps:
	bash scripts/deps.sh all
	$(GO) mod download

deps-demo:
	bash scripts/deps.sh build agents haproxy
	$(GO) mod download

deps-deb:
	bash scripts/deps.sh build deb

build:
	$(GO) build -ldflags "-X main.Version=$(VERSION)" -o $(BIN) .

vet:
	$(GO) vet ./...
	$(GO) vet -tags integration ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1; }
	$(GO) run $(STATICCHECK) ./...
	$(GO) run $(STATICCHECK) -tags integration ./...

lint: vet

# Every layer (what CI runs through .ci/run): unit tests, then everything behind the `integration`
# build tag (real agents 6.0.14/7.0.x/7.0.22, haproxy 2.6 and 3.0's captures, libvirtd + QEMU
# guests, Zabbix server), the live haproxy tests again on haproxy 3.0, then every
# benchmark once, so a benchmark whose setup broke fails here rather than in `make bench`.
test: deps
	$(MAKE) build vet
	set -o pipefail; $(GO) test -count=1 -timeout 80m -tags integration ./... 2>&1 | tee test.out
	set -o pipefail; KVM_HAPROXY=3.0 $(GO) test -count=1 -timeout 10m -tags integration -run '^TestLive' ./haproxy 2>&1 | tee -a test.out
	set -o pipefail; FLEET_WINDOW=20s $(GO) test -count=1 -timeout 30m -tags integration -run '^$$' -bench . -benchtime 1x \
		$$($(GO) list -tags integration ./... | grep -v /tests/e2e) 2>&1 | tee -a test.out

# Unit tests only: no root, no daemons, no network beyond loopback; needs libvirt-dev to build.
test-unit:
	$(GO) test -count=1 ./...

# The seed scenario alone (Zabbix server + guests + haproxy + agent).
test-e2e: deps
	$(MAKE) build
	set -o pipefail; $(GO) test -count=1 -timeout 60m -tags integration -v -run 'Scenario' ./tests/e2e/ 2>&1 | tee test-e2e.out

# The compatibility matrix (README, "Compatibility"): each cell of scripts/compat.sh (`bash
# scripts/compat.sh list`; CELLS="lab-11.3-built-11.3 …" runs some), then the table. All: ~1.5 h.
test-compat: deps
	bash scripts/deps.sh libvirt11
	$(MAKE) build
	bash scripts/compat.sh $(CELLS)

bench: deps
	$(MAKE) build
	bash scripts/bench.sh

bench-e2e: deps
	$(MAKE) build
	bash scripts/bench.sh e2e

# What a fleet costs (tests/fleet): FLEET=NxG simulated hypervisors (agent 7.0 + plugin, haproxy, G
# guests each) behind a Zabbix 7.0 server and a proxy group (two proxies, three from 20 hypervisors);
# prints discovery time, CPU and memory per part, the queue, failure latencies and the ladder's
# commands (docs/fleet.md). On 2 cores 100x30 discovers in about 12 minutes, then overloads its proxies.
FLEET ?= 100x30
bench-fleet: deps
	$(MAKE) build
	set -o pipefail; FLEET=$(FLEET) $(GO) test -count=1 -timeout 150m -tags integration -run '^$$' -bench Fleet -benchtime 1x \
		./tests/fleet/ 2>&1 | tee bench-fleet.out

# The main job, narrated (tests/demo): real zabbix_agent2 7.0/6.0 with the plugin on libvirt's test
# driver (served by a libvirtd the demo starts), a real haproxy whose servers are named after the test
# domains; one guest's service dies, the plugin reports and pushes it, recover heals it, a hold refuses.
demo: deps-demo
	$(MAKE) build
	bash scripts/demo.sh

# The Debian package zabbix-agent2-plugin-kvm_<version>_amd64.deb (packaging/deb/build.sh; version
# from git describe, or DEB_VERSION=…) into DEB_OUT, checked by lintian: errors fail the build.
# The binary is built as Debian builds its own: position-independent, the cgo part with
# dpkg-buildflags' hardening (stack protector, fortify, relro, bindnow).
DEB_OUT ?= .
deb: deps-deb
	export DEB_BUILD_MAINT_OPTIONS=hardening=+all; \
	CGO_CFLAGS="$$(dpkg-buildflags --get CFLAGS) $$(dpkg-buildflags --get CPPFLAGS)" CGO_LDFLAGS="$$(dpkg-buildflags --get LDFLAGS)" \
		$(GO) build -buildmode=pie -ldflags "-X main.Version=$(VERSION)" -o $(DEB_OUT)/$(BIN).deb-bin .
	set -e; deb=$$(bash packaging/deb/build.sh $(DEB_OUT)/$(BIN).deb-bin $(DEB_OUT)); rm -f $(DEB_OUT)/$(BIN).deb-bin; \
		echo "built $$deb"; lintian --fail-on error --suppress-tags-from-file packaging/deb/lintian-suppressed "$$deb"

# Regenerate conf/kvm.conf from the option table in plugin/config.go.
conf: build
	./$(BIN) conf > conf/kvm.conf

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzRead -fuzztime 30s ./plugin/sdk/comms/

clean:
	rm -rf $(BIN) $(BIN).deb-bin $(BIN)_*.deb test.out test-e2e.out bench-fleet.out test-compat
