#!/usr/bin/env bash
# The compatibility matrix (make test-compat): runs each cell's tests against the versions it names
# and prints the matrix, component versions × test layer, with the MTTR of the scenario cells.
# Usage: scripts/compat.sh [CELL...]   (default: every cell; scripts/compat.sh list names them)
#        scripts/compat.sh table        (prints the matrix from the last results, runs nothing)
#        scripts/compat.sh readme       (puts that table into README.md's "Compatibility")
# Results accumulate in $COMPAT_DIR (default test-compat/): results.tsv has one line per cell run
# (cell, pass|FAIL, seconds, MTTRs, UTC date, failed tests), <cell>.log its go test output. The table shows each
# cell's last run and the date it last passed.
set -uo pipefail
cd "$(dirname "$0")/.."
CACHE=${KVM_CACHE:-/var/cache/zabbix-agent2-plugin-kvm}
DIR=${COMPAT_DIR:-test-compat}
GO=${GO:-go}
mkdir -p "$DIR"
RESULTS=$DIR/results.tsv

# The plugin and the test binaries built against libvirt 11.3 (bookworm-backports, in the bookworm root
# of scripts/deps.sh libvirt11): cgo takes its headers and library from there, and the binary finds its
# libvirt.so.0 there by its RUNPATH (same glibc as the machine).
B113=$CACHE/root/bookworm
BUILD113="KVM_BUILD_LIBVIRT=11.3 PKG_CONFIG_LIBDIR=$B113/usr/lib/x86_64-linux-gnu/pkgconfig:$B113/usr/share/pkgconfig PKG_CONFIG_SYSROOT_DIR=$B113 CGO_LDFLAGS=-Wl,-rpath,$B113/usr/lib/x86_64-linux-gnu"
LAB="./tests/kvmguests ./tests/lab ./actions/labtest"
# -v: go test shows a passing package's output (the MTTR lines) only with it
SCEN="-v -run ^TestScenarioSeed$ ./tests/e2e"

# cell id | environment | go test arguments (after -count=1 -tags integration). Scenario cells
# name their versions explicitly; the baseline is server 7.0, agent 7.0.9, haproxy 2.6, libvirt 9.0.
CELLS=(
  "agent-6.0|-|-run /^6\.0$ ./tests/agent ./tests/remote"
  "agent-7.0|-|-run /^7\.0$ ./tests/agent ./tests/remote"
  "agent-7.0.22|-|-run /^7\.0\.22$ ./tests/agent ./tests/remote"
  "golden-2.6|-|-run ^Test(Parse|Encoders|GetMatches|ServerStatus)[A-Za-z]*$/^haproxy-2\.6$ ./haproxy"
  "golden-3.0|-|-run ^Test(Parse|Encoders|GetMatches|ServerStatus)[A-Za-z]*$/^haproxy-3\.0$ ./haproxy"
  "live-2.6|KVM_HAPROXY=2.6|-run ^TestLive ./haproxy"
  "live-3.0|KVM_HAPROXY=3.0|-run ^TestLive ./haproxy"
  "lab-9.0|KVM_LIBVIRT=9.0|$LAB"
  "lab-11.3-built-9.0|KVM_LIBVIRT=11.3|$LAB"
  "lab-11.3-built-11.3|KVM_LIBVIRT=11.3 $BUILD113|$LAB"
  "scenario-base|-|$SCEN"
  "scenario-server-6.0|KVM_E2E_ZABBIX=6.0|$SCEN"
  "scenario-11.3-built-11.3|KVM_LIBVIRT=11.3 $BUILD113|$SCEN"
  "scenario-11.3-built-9.0|KVM_LIBVIRT=11.3|$SCEN"
  "scenario-haproxy-3.0|KVM_HAPROXY=3.0|$SCEN"
  "scenario-agent-7.0.22|KVM_E2E_AGENT=7.0.22|$SCEN"
)

cell_ids() { local c; for c in "${CELLS[@]}"; do echo "${c%%|*}"; done; }

run_cell() {
  local id=$1 c env args found= t0 rc secs mttr status fails
  for c in "${CELLS[@]}"; do
    [ "${c%%|*}" = "$id" ] || continue
    found=1; env=${c#*|}; args=${env#*|}; env=${env%%|*}
  done
  [ -n "$found" ] || { echo "compat: no cell $id (scripts/compat.sh list)" >&2; return 2; }
  [ "$env" = - ] && env=
  echo "compat: $id: env $env go test $args" >&2
  t0=$(date +%s)
  # shellcheck disable=SC2086 # the cell's words are meant to split
  env $env "$GO" test -count=1 -timeout 60m -tags integration $args >"$DIR/$id.log" 2>&1
  rc=$?
  # a pattern that matches nothing passes go test: a cell that ran no test failed
  if grep -q 'no tests to run' "$DIR/$id.log"; then echo "compat: $id: a package ran no test" >>"$DIR/$id.log"; rc=1; fi
  secs=$(($(date +%s) - t0))
  mttr=$(sed -n 's/^MTTR \([a-z-]*\): \([0-9.]*\)s$/\1 \2s/p' "$DIR/$id.log" | paste -sd, -)
  status=pass; [ $rc -eq 0 ] || status=FAIL
  fails=$(sed -n 's/^--- FAIL: \([^ ]*\).*/\1/p' "$DIR/$id.log" | sort -u | paste -sd, -)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$status" "$secs" "${mttr:--}" "$(date -u +%F)" "${fails:--}" >>"$RESULTS"
  echo "compat: $id: $status in ${secs}s${mttr:+ (MTTR $mttr)}" >&2
  return $rc
}

# last ID: the cell's last result ("pass 12s", "FAIL 30s", "not run"), its MTTRs, and the date it
# last passed.
last() {
  local line pass
  line=$(awk -F'\t' -v id="$1" '$1==id{l=$0} END{print l}' "$RESULTS" 2>/dev/null)
  pass=$(awk -F'\t' -v id="$1" '$1==id && $2=="pass"{d=$5} END{print d}' "$RESULTS" 2>/dev/null)
  [ -n "$line" ] || { echo "not run"; return; }
  awk -F'\t' -v p="$pass" '{s=$2" "$3"s"; if($4!="-") { m=$4; gsub(/,/, ", ", m); s=s", MTTR "m }; if($6!="" && $6!="-") s=s": "$6
    if($2=="pass") s=s" ("p")"; else if(p!="") s=s", last passed "p; print s}' <<<"$line"
}

# table prints the matrix as Markdown (README's "Compatibility" shows it): component versions × test
# layer. "–" marks a layer that does not involve that component (its tests run the same code
# whatever its version); "n/a" a combination that cannot occur.
table() {
  row() { printf '| %s ' "$@"; echo '|'; }
  row "versions" "haproxy captures + golden" "live haproxy" "real agent" "lab: libvirtd + QEMU" "seed scenario (server 7.0, agent 7.0.9, haproxy 2.6, libvirt 9.0 unless named)"
  row "---" "---" "---" "---" "---" "---"
  row "zabbix_agent2 6.0.14" "–" "–" "$(last agent-6.0)" "–" "with server 6.0: $(last scenario-server-6.0)"
  row "zabbix_agent2 7.0.9" "–" "–" "$(last agent-7.0)" "–" "$(last scenario-base)"
  row "zabbix_agent2 7.0.22 (trixie)" "–" "–" "$(last agent-7.0.22)" "–" "$(last scenario-agent-7.0.22)"
  row "haproxy 2.6.12" "$(last golden-2.6)" "$(last live-2.6)" "–" "–" "$(last scenario-base)"
  row "haproxy 3.0.11 (trixie)" "$(last golden-3.0)" "$(last live-3.0)" "–" "–" "$(last scenario-haproxy-3.0)"
  row "libvirt 9.0 + QEMU 7.2, built on 9.0" "–" "–" "–" "$(last lab-9.0)" "$(last scenario-base)"
  row "libvirt 11.3 + QEMU 10.0, built on 9.0" "–" "–" "–" "$(last lab-11.3-built-9.0)" "$(last scenario-11.3-built-9.0)"
  row "libvirt 11.3 + QEMU 10.0, built on 11.3" "–" "–" "–" "$(last lab-11.3-built-11.3)" "$(last scenario-11.3-built-11.3)"
  row "libvirt 9.0, built on 11.3" "n/a" "n/a" "n/a" "n/a (1)" "n/a (1)"
  row "Zabbix server 7.0 (bookworm-backports)" "–" "–" "–" "–" "$(last scenario-base)"
  row "Zabbix server 6.0.14" "–" "–" "–" "–" "with agent 6.0.14: $(last scenario-server-6.0)"
  echo
  echo "–: the layer does not involve that component (the real-agent layer runs on libvirt's test driver, in the plugin's own process)."
  echo "(1) a plugin built against libvirt 11.3 needs libvirt0 >= 11.3 (its package's Depends), so it never meets libvirt 9.0."
}

# readme puts the table into README.md between its compat:table markers.
readme() {
  local t; t=$(mktemp)
  table >"$t"
  awk -v t="$t" '/^<!-- compat:table -->$/{print; while((getline l < t)>0) print l; skip=1; next}
    /^<!-- \/compat:table -->$/{skip=0} !skip' README.md >README.md.tmp && mv README.md.tmp README.md
  rm -f "$t"
}

case ${1:-all} in
  list) cell_ids; exit 0 ;;
  table) table; exit 0 ;;
  readme) readme; exit 0 ;;
  all) set -- $(cell_ids) ;;
esac
failed=0
for id in "$@"; do run_cell "$id" || failed=1; done
table
exit $failed
