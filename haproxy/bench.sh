#!/usr/bin/env bash
# Benchmarks of the haproxy package, with the end-to-end ratio against haproxy's own show stat:
#   - ParseStat / EncodeStats on a generated 10,000-server show stat (time, bytes, allocations);
#   - the snapshot every key is served from, its two commands at once next to one after the other;
#   - haproxy.get end to end (Client.ShowStat + EncodeStats) on a live haproxy with 1,000 servers, next to
#     `echo 'show stat' | socat - UNIX-CONNECT:sock` on the same haproxy.
# Usage: haproxy/bench.sh [COUNT]   (needs haproxy and socat: scripts/deps.sh haproxy)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-3}
out=$(mktemp); trap 'rm -f "$out"' EXIT
go test -tags integration ./haproxy -run '^$' -bench 'ParseStat|EncodeStats|Live1000' -benchmem -count "$count" | tee "$out"
awk '
  /BenchmarkLive1000\/client_showstat_get/ { c += $3; nc++ }
  /BenchmarkLive1000\/socat_show_stat/     { s += $3; ns++ }
  /BenchmarkLive1000\/snapshot_concurrent/ { sc += $3; nsc++ }
  /BenchmarkLive1000\/snapshot_sequential/ { ss += $3; nss++ }
  END {
    if (!nc || !ns || !nsc || !nss) { print "bench.sh: live benchmarks missing"; exit 1 }
    printf "haproxy.get end to end (1,000 servers): client %.2f ms, socat %.2f ms, ratio client/socat %.2f\n", c/nc/1e6, s/ns/1e6, (c/nc)/(s/ns)
    printf "snapshot (show stat + show servers state): concurrent %.2f ms, sequential %.2f ms, ratio %.2f\n", sc/nsc/1e6, ss/nss/1e6, (sc/nsc)/(ss/nss)
  }' "$out"
