#!/usr/bin/env bash
# make bench: Go benchmarks (ns/op, allocs/op, counted libvirt calls) and the side-by-side runs
# against the obvious alternatives, printed as ratios. `bench.sh e2e` runs the seed scenario's MTTR
# benchmark instead. Results are printed and kept under bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench-results
out=bench-results/$(date +%Y%m%d-%H%M%S).txt
exec > >(tee "$out") 2>&1

if [ "${1:-}" = e2e ]; then
  go test -tags integration -run '^$' -bench 'MTTR' -benchtime 3x -timeout 60m -v ./tests/e2e/
  exit 0
fi

echo "== in-process Go benchmarks"
go test -run '^$' -bench . -benchmem -benchtime 2s ./hypervisor/ ./kvm/... ./haproxy/... ./sender/... 2>&1 | grep -E '^(Benchmark|ok|FAIL|---)'

echo "== 1,000 passive checks through zabbix_agent2 7.0: plugin vs UserParameter running virsh"
go test -tags integration -run '^$' -bench 'Passive1000' -benchtime 1x -timeout 10m ./tests/bench/ | grep -vE '^(goos|goarch|pkg|cpu|PASS)'

echo "== plugin peak RSS (VmHWM) through zabbix_agent2 7.0"
go test -tags integration -run '^$' -bench 'PluginRSS' -benchtime 1x -timeout 10m ./tests/bench/ | grep -E "RSS|HWM"

echo "== haproxy with 10,000 servers through zabbix_agent2 7.0: haproxy.get and one server's status against raw show stat"
go test -tags integration -run '^$' -bench 'HAProxy10k' -benchtime 1x -timeout 15m ./tests/bench/ | grep -vE '^(goos|goarch|pkg|cpu|PASS)'

echo "== one collection of 1,000 domains on libvirtd: libvirt calls counted in kvm.Conn, time vs virsh domstats"
go test -tags integration -run '^$' -bench 'LabCollection1000' -benchtime 3x -timeout 20m ./tests/kvmguests/ | grep -vE '^(goos|goarch|pkg|cpu|PASS)'

echo "== actions on real QEMU guests (reset to HTTP, recover to health per ladder exit)"
go test -tags integration -run '^$' -bench . -benchtime 1x -timeout 40m ./actions/labtest/ | grep -vE '^(goos|goarch|pkg|cpu|PASS)'

for extra in haproxy/bench.sh; do
  [ -x "$extra" ] || continue
  echo "== $extra"
  "$extra"
done
echo "results saved in $out"
