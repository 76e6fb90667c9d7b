#!/usr/bin/env bash
# make demo: the plugin's main job in under a minute, narrated. A real zabbix_agent2 7.0 (and 6.0)
# loads the plugin on libvirt's test driver, served by a libvirtd of the demo's own; a real haproxy
# balances three servers named after the test domains; one guest's service dies, the plugin reports
# it (and pushes it to a trapper stand-in), and the CLI's recover drains, restarts the domain, waits
# for haproxy's check and readies it; an operator's hold refuses an action; the audit log closes it.
# The demo's code is tests/demo (run as root, after make build). Everything listens on 127.0.0.1,
# and everything it starts is stopped when it ends, fails, or is interrupted with Ctrl-C.
# KVM_PLUGIN_BIN overrides the plugin binary (tests/demo's test passes its own build).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KVM_PLUGIN_BIN:-$PWD/zabbix-agent2-plugin-kvm}
[ -x "$BIN" ] || { echo "demo: $BIN is not built (make demo builds it)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it starts libvirtd and haproxy)" >&2; exit 1; }
export GOFLAGS=${GOFLAGS:--buildvcs=false}
tmp=$(mktemp -d /tmp/kvm-demo-bin.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
${GO:-go} build -o "$tmp/kvm-demo" ./tests/demo
"$tmp/kvm-demo" -plugin "$BIN"
