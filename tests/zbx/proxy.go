package zbx

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// ProxyBin is zabbix_proxy 7.0 with SQLite (scripts/deps.sh proxy).
const ProxyBin = Cache + "/proxy-7.0/usr/sbin/zabbix_proxy"

// Proxy is a running active zabbix_proxy 7.0 of a stack, with its own SQLite database.
type Proxy struct {
	Name string // its Hostname, and its name in the frontend
	ID   string // proxyid
	Port int    // trapper port: senders and active agents talk to it
	Log  string
	Conf string
	pgid int
}

// StartProxy registers an active proxy named name (in proxy group groupID when not "") and starts
// it. Like the server, it runs as zabbix in a PID namespace held by unshare, so nothing of it
// outlives the test; Kill stops it early to play a lost proxy.
func (s *Stack) StartProxy(t testing.TB, name, groupID string) *Proxy {
	t.Helper()
	if s.Version != "7.0" {
		t.Fatalf("zbx: proxies need the 7.0 stack (proxy groups), this one is %s", s.Version)
	}
	if _, err := os.Stat(ProxyBin); err != nil {
		t.Fatalf("zbx: %v: run scripts/deps.sh proxy", err)
	}
	p := &Proxy{Name: name, Port: harness.FreePort(t, portLo, portHi)}
	run := filepath.Join(s.Dir, "run", "proxy-"+name)
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatal(err)
	}
	chownTo(t, run, "zabbix")
	p.Log = filepath.Join(run, "zabbix_proxy.log")
	p.Conf = filepath.Join(run, "zabbix_proxy.conf")
	conf := fmt.Sprintf(`ProxyMode=0
Server=127.0.0.1:%d
Hostname=%s
ListenIP=127.0.0.1
ListenPort=%d
SourceIP=127.0.0.1
LogFile=%s
LogFileSize=0
PidFile=%s/zabbix_proxy.pid
SocketDir=%s
DBName=%s/proxy.db
ProxyConfigFrequency=1
DataSenderFrequency=1
StartPollers=1
StartPreprocessors=1
StartTrappers=2
StartPingers=0
StartDiscoverers=0
StartHTTPPollers=0
StartODBCPollers=0
StartAgentPollers=1
StartHTTPAgentPollers=0
StartSNMPPollers=0
StartBrowserPollers=0
EnableRemoteCommands=1
LogRemoteCommands=1
CacheSize=16M
Timeout=4
`, s.ServerPort, name, p.Port, p.Log, run, run, run)
	conf = override(conf, s.proxyConf)
	if err := os.WriteFile(p.Conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	params := map[string]any{"name": name, "operating_mode": 0}
	if groupID != "" {
		// a proxy of a group must say where the group's agents and senders reach it
		params["proxy_groupid"] = groupID
		params["local_address"] = "127.0.0.1"
		params["local_port"] = strconv.Itoa(p.Port)
	}
	var res struct {
		IDs []string `json:"proxyids"`
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.API.Call(ctx, "proxy.create", params, &res); err != nil || len(res.IDs) != 1 {
		t.Fatalf("zbx: proxy.create %s: %v (%v)", name, err, res.IDs)
	}
	p.ID = res.IDs[0]

	zs := credOf(t, "zabbix")
	d := daemon{what: "zabbix_proxy " + name, log: filepath.Join(run, "proxy.out"), dir: run,
		stop: syscall.SIGTERM, group: true, death: syscall.SIGKILL, grace: 10 * time.Second}
	cmd := d.start(t, "unshare", "--pid", "--kill-child=SIGKILL", "/bin/sh", "-c", `"$@"; exit $?`, "sh",
		"setpriv", fmt.Sprintf("--reuid=%d", zs.Uid), fmt.Sprintf("--regid=%d", zs.Gid), "--clear-groups",
		ProxyBin, "-f", "-c", p.Conf)
	p.pgid = cmd.Process.Pid
	t.Cleanup(func() { // runs before the stack's directory goes
		if t.Failed() {
			b, _ := os.ReadFile(p.Log)
			o, _ := os.ReadFile(d.log)
			t.Logf("zbx: proxy %s log:\n%s\n%s", name, lastLines(string(b), 15), lastLines(string(o), 5))
		}
	})
	s.PIDs["zabbix_proxy "+name] = p.pgid
	harness.WaitFor(t, 60*time.Second, 100*time.Millisecond, "proxy "+name+" seen by the server (see "+p.Log+")", func() (bool, error) {
		var got []struct {
			LastAccess string `json:"lastaccess"`
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.API.Call(ctx, "proxy.get", map[string]any{"proxyids": p.ID, "output": []string{"lastaccess"}}, &got); err != nil {
			return false, err
		}
		return len(got) == 1 && got[0].LastAccess != "0", fmt.Errorf("lastaccess %v", got)
	})
	return p
}

// Kill stops the proxy at once (SIGKILL to its PID namespace's holder: the kernel takes the rest),
// as a crashed proxy host would vanish.
func (p *Proxy) Kill() { syscall.Kill(-p.pgid, syscall.SIGKILL) }

// CreateProxyGroup makes a proxy group whose proxies are declared offline after failover.
func (s *Stack) CreateProxyGroup(t testing.TB, name string, failover time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var res struct {
		IDs []string `json:"proxy_groupids"`
	}
	err := s.API.Call(ctx, "proxygroup.create", map[string]any{"name": name,
		"failover_delay": fmt.Sprintf("%ds", int(failover.Seconds())), "min_online": "1"}, &res)
	if err != nil || len(res.IDs) != 1 {
		t.Fatalf("zbx: proxygroup.create %s: %v", name, err)
	}
	return res.IDs[0]
}

// override sets each key of extra in conf (KEY=VALUE lines): in place where conf has it, else
// appended, so that each key has one line.
func override(conf string, extra map[string]string) string {
	done := map[string]bool{}
	lines := strings.Split(strings.TrimSuffix(conf, "\n"), "\n")
	for i, l := range lines {
		k, _, ok := strings.Cut(l, "=")
		if v, set := extra[k]; ok && set {
			lines[i], done[k] = k+"="+v, true
		}
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		if !done[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		lines = append(lines, k+"="+extra[k])
	}
	return strings.Join(lines, "\n") + "\n"
}
