#!/usr/bin/env bash
# make demo: a real zabbix_agent2 (7.0, and 6.0 when present) loads the plugin, configured for
# libvirt's embedded test driver (test:///default: one running domain called "test", no daemon,
# no hypervisor needed), listens on loopback, and answers passive checks. Everything it starts is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${KVM_CACHE:-/var/cache/zabbix-agent2-plugin-kvm}
BIN=$PWD/zabbix-agent2-plugin-kvm
[ -x "$BIN" ] || { echo "demo: build first (make demo does)"; exit 1; }
W=$(mktemp -d /tmp/kvm-demo.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT INT TERM

# a free port in the agent's accepted range (1024-32767)
free_port() { local p; for p in $(seq "$1" "$2"); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }; done; return 1; }

# query PORT KEY: one Zabbix passive check (ZBXD\1 + uint64 LE length + key), like zabbix_get
query() {
  local port=$1 key=$2 n=${#2} hdr i
  hdr='ZBXD\x01'; for i in 0 1 2 3 4 5 6 7; do hdr+=$(printf '\\x%02x' $(( (n >> (8*i)) & 255 ))); done
  exec 3<>/dev/tcp/127.0.0.1/"$port"
  printf "$hdr" >&3; printf '%s' "$key" >&3
  tail -c +14 <&3 | tr '\0' ' '; echo
  exec 3<&- 3>&-
}

run_agent() {
  local ver=$1 agent=$CACHE/zabbix_agent2-$1 port dir
  [ -x "$agent" ] || { echo "demo: zabbix_agent2 $ver not in $CACHE (scripts/deps.sh agents)"; return 1; }
  port=$(free_port 10150 10250); dir=$W/$ver; mkdir -p "$dir"
  cat >"$dir/zabbix_agent2.conf" <<C
LogType=file
LogFile=$dir/agent.log
PidFile=$dir/agent.pid
Server=127.0.0.1
ServerActive=
ListenIP=127.0.0.1
ListenPort=$port
Hostname=kvm-demo
Timeout=5
ControlSocket=$dir/agent.sock
PluginSocket=$dir/plugin.sock
Plugins.KVM.System.Path=$BIN
Plugins.KVM.URI=test:///default
C
  "$agent" -c "$dir/zabbix_agent2.conf" -f >"$dir/agent.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [ "$(query "$port" agent.ping 2>/dev/null)" = "1 " ] || [ "$(query "$port" agent.ping 2>/dev/null)" = "1" ] && break; sleep 0.1; done
  echo "== zabbix_agent2 $("$agent" -V | head -1 | awk '{print $NF}') on 127.0.0.1:$port, plugin $BIN, libvirt test:///default"
  grep -o "using plugin 'KVM'.*" "$dir/agent.log" | head -1 || true
  for key in kvm.hypervisor.ping kvm.hypervisor.get kvm.domain.discovery 'kvm.domain.state[test]' 'kvm.domain.get[test]' 'kvm.domain.state[web-07]'; do
    printf '%-26s -> ' "$key"; query "$port" "$key"
  done
  echo "agent -R metrics lists:"; "$agent" -c "$dir/zabbix_agent2.conf" -R metrics 2>&1 | awk '/^\[KVM\]/{f=1; print; next} /^\[/{f=0} f && NF' | sed 's/^/    /'
}

run_agent 7.0
[ -x "$CACHE/zabbix_agent2-6.0" ] && run_agent 6.0
echo "== the same keys through the CLI (reads kvm.conf-style options):"
printf 'Plugins.KVM.System.Path=%s\nPlugins.KVM.URI=test:///default\n' "$BIN" >"$W/kvm.conf"
"$BIN" -c "$W/kvm.conf" get 'kvm.domain.state[test]'
"$BIN" -c "$W/kvm.conf" get 'kvm.domain.state[web-07]' || true
echo "demo: done; stopping the agents"
