// Command demo is what `make demo` runs (through scripts/demo.sh): the plugin's main job, on one
// machine, in under a minute, as a narrated transcript. Everything is real except the guests:
// a real zabbix_agent2 7.0 (and 6.0) loads the plugin, a real haproxy balances three servers named
// after three domains of libvirt's test driver, served by a libvirtd the demo starts, and the real
// CLI drains, restarts and readies. The test driver runs no guest OS, so the demo plays the guests'
// web services with loopback HTTP servers that it starts again when a domain really restarted (a
// new libvirt ID), and a stand-in for the Zabbix trapper prints what the plugin pushes.
// Everything listens on 127.0.0.1; everything it starts is stopped when it ends, fails or is
// interrupted (Ctrl-C).
//
// Usage (as root, after make build): go run ./tests/demo -plugin ./zabbix-agent2-plugin-kvm
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"zabbix-agent2-plugin-kvm/sender"
	"zabbix-agent2-plugin-kvm/sender/sendertest"
	"zabbix-agent2-plugin-kvm/tests/harness"
)

// The demo's loopback ports: agents, haproxy's frontend and the guests' services.
const portLo, portHi = 19500, 19599

var guests = []string{"web-01", "web-02", "web-03"}

const (
	broken   = "web-02" // the guest whose service dies
	held     = "web-03" // the guest an operator holds
	pushHost = "kvm-demo"
)

func main() {
	plugin := flag.String("plugin", "", "the plugin binary (make build)")
	flag.Parse()
	r, err := newRunner(os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	r.onSignals()
	demo(r, *plugin)
	r.exit(0)
}

func demo(r *runner, bin string) {
	say := r.say
	if os.Geteuid() != 0 {
		r.Fatal("run as root: the demo starts libvirtd and haproxy, and the CLI trusts only a root-owned config")
	}
	if bin == "" {
		r.Fatal("-plugin PATH is required (make demo passes it)")
	}
	bin, _ = filepath.Abs(bin)
	if _, err := os.Stat(bin); err != nil {
		r.Fatal(err)
	}
	say.print("make demo: a KVM hypervisor that heals its web guests, on libvirt's test driver (no real VMs).")
	say.print("Everything runs on 127.0.0.1 and stops when the demo ends; work dir " + r.dir)

	say.chapter("The hypervisor")
	uri, conn := startLibvirtd(r)
	defineGuests(r, conn, guests)
	say.line(fmt.Sprintf("libvirtd with only the test driver serves %s running (test:///default, socket in the work dir)", strings.Join(guests, ", ")))
	svc := startServices(r, conn, guests, portLo, portHi)
	var addrs []string
	for _, g := range guests {
		addrs = append(addrs, fmt.Sprintf("%s %s", g, svc.http[g].Addr()))
	}
	say.line("the guests' web services (loopback HTTP servers the demo plays, since the test driver runs no OS): " + strings.Join(addrs, ", "))
	hp := harness.StartHAProxy(r, func(sock string) string { return haproxyConfig(sock, harness.FreePort(r, portLo, portHi), svc) })
	say.line(fmt.Sprintf("haproxy %s: backend web = servers %s, each checked with GET / every 0.5 s (DOWN after 2 failures, UP after 2 passes)",
		haproxyVersion(), strings.Join(guests, ", ")))
	trap := startTrapper(r)
	say.line("trapper stand-in on " + trap.Addr + ": prints what the plugin pushes; it stands in for the trapper port of the Zabbix server or proxy")

	opts := pluginOptions(r, uri, hp.Sock, trap.Addr)
	kvmConf := writeKVMConf(r, opts)
	a7 := startAgent(r, "7.0", bin, opts)
	say.line(fmt.Sprintf("zabbix_agent2 %s on 127.0.0.1:%d loads the plugin; Plugins.KVM.URI=%s, Push.Server=%s", agentVersion(a7), a7.Port, uri, trap.Addr))
	var a6 *harness.Agent
	if _, err := os.Stat(filepath.Join(harness.AgentCache, "zabbix_agent2-6.0")); err == nil {
		o6 := map[string]string{}
		for k, v := range opts {
			if !strings.HasPrefix(k, "Push.") { // one pusher is enough
				o6[k] = v
			}
		}
		a6 = startAgent(r, "6.0", bin, o6)
		say.line(fmt.Sprintf("zabbix_agent2 %s on 127.0.0.1:%d loads the same plugin (no push)", agentVersion(a6), a6.Port))
	}
	say.line("agent 7.0: kvm.domain.discovery, each domain with the haproxy server named after it:")
	say.detail(discoveryRows(query(r, a7, "kvm.domain.discovery")))
	for _, a := range []*harness.Agent{a7, a6} {
		if a != nil {
			say.line(fmt.Sprintf("agent %s: haproxy.server.status[web,%s] = %s", a.Version, broken, query(r, a, "haproxy.server.status[web,"+broken+"]")))
		}
	}

	say.chapter("1. The service on " + broken + " dies")
	t0 := time.Now()
	svc.kill(broken)
	say.line("the demo stops " + broken + "'s service: its port refuses connections; the guest itself keeps running")
	var down string
	harness.WaitFor(r, 30*time.Second, 100*time.Millisecond, "the agent to report "+broken+" DOWN", func() (bool, error) {
		down = query(r, a7, "haproxy.server.status[web,"+broken+"]")
		return serverField(down, "status") == "DOWN", fmt.Errorf("status %s", down)
	})
	say.line(fmt.Sprintf("%.1f s later haproxy has taken %s out of the pool; through the agent:", time.Since(t0).Seconds(), broken))
	say.detail("haproxy.server.status[web," + broken + "] = " + down)
	say.detail("kvm.domain.state[" + broken + "] = " + query(r, a7, "kvm.domain.state["+broken+"]"))
	trap.await(r, broken, "DOWN")

	cli := func(timeout time.Duration, args ...string) (string, string, int) {
		shown := append([]string{"zabbix-agent2-plugin-kvm", "-c", "kvm.conf"}, args...)
		say.line("$ " + strings.Join(shown, " "))
		return r.cli(bin, timeout, append([]string{"-c", kvmConf}, args...)...)
	}

	say.chapter("2. What would recover do? (a Zabbix Action runs the same command through system.run)")
	out, errOut, rc := cli(30*time.Second, "--dry-run", "recover", broken)
	say.detail(ladderReport(r, out, errOut, rc))
	if rc != 0 {
		r.Fatalf("recover --dry-run: exit %d", rc)
	}

	say.chapter("3. recover " + broken + ": drain, try each rung, wait for haproxy's check, ready")
	out, errOut, rc = cli(3*time.Minute, "recover", broken)
	say.line(fmt.Sprintf("recover returned, exit status %d:", rc))
	say.detail(ladderReport(r, out, errOut, rc))
	if rc != 0 {
		r.Fatalf("recover: exit %d", rc)
	}
	say.detail("On the test driver a gentle reboot sends no reboot event, so it is reported not done, and a\n" +
		"reset keeps the domain's ID, so the demo leaves the service dead (a real guest would reboot);\n" +
		"destroy+start gives " + broken + " a new ID, and its service comes back as it would after a boot.")
	var back string
	harness.WaitFor(r, 15*time.Second, 100*time.Millisecond, "the agent to report "+broken+" UP", func() (bool, error) {
		back = query(r, a7, "haproxy.server.status[web,"+broken+"]")
		return serverField(back, "status") == "UP" && serverField(back, "admin_state") == "ready", fmt.Errorf("status %s", back)
	})
	say.line("agent 7.0: haproxy.server.status[web," + broken + "] = " + back)
	say.line("agent 7.0: kvm.domain.guard[" + broken + "] = " + query(r, a7, "kvm.domain.guard["+broken+"]"))
	trap.await(r, broken, "UP")

	say.chapter("4. An operator's hold wins over any automatic action")
	out, errOut, rc = cli(30*time.Second, "hold", held, "--for", "10m", "--reason", "demo")
	say.detail(fmt.Sprintf("exit %d: %s", rc, oneLine(out, errOut)))
	if rc != 0 {
		r.Fatalf("hold %s: exit %d", held, rc)
	}
	out, errOut, rc = cli(30*time.Second, "recover", held)
	say.detail(fmt.Sprintf("exit %d (3: refused or held): %s", rc, strings.TrimSpace(errOut)))
	if rc != 3 {
		r.Fatalf("recover of a held domain: exit %d, want 3\n%s", rc, out)
	}

	say.chapter("5. The audit log (Plugins.KVM.AuditLog): the end line of every attempt")
	say.detail(auditEnds(r, opts["AuditLog"]))

	say.chapter(fmt.Sprintf("Done in %.1f s; stopping the agents, haproxy, libvirtd, the services and the trapper stand-in", time.Since(say.t0).Seconds()))
}

// pluginOptions are the Plugins.KVM.* settings of the agent and the CLI: the shortest allowed
// action timeouts, so the ladder takes seconds.
func pluginOptions(r *runner, uri, sock, trapper string) map[string]string {
	state := filepath.Join(r.dir, "state")
	return map[string]string{
		"URI": uri, "CacheSeconds": "1", "HAProxy.Socket": sock,
		"Actions.Enable": "1", "Actions.AllowDomains": "web-[0-9]+",
		"Actions.GentleSeconds": "5", "Actions.ForcedSeconds": "25", "Actions.HealthSeconds": "5",
		"StateDir": state, "AuditLog": filepath.Join(r.dir, "audit.log"),
		"Push.Server": trapper, "Push.Host": pushHost,
	}
}

// writeKVMConf writes the CLI's config file: root-owned, mode 0600 (the CLI refuses a file others may write).
func writeKVMConf(r *runner, opts map[string]string) string {
	var keys []string
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "Plugins.KVM.%s=%s\n", k, opts[k])
	}
	p := filepath.Join(r.dir, "kvm.conf")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		r.Fatal(err)
	}
	return p
}

func startAgent(r *runner, version, bin string, opts map[string]string) *harness.Agent {
	a := harness.WriteAgentConf(r, version, harness.AgentOptions{Plugin: bin, Options: opts, PortLo: portLo, PortHi: portHi})
	a.Start(r)
	return a
}

func agentVersion(a *harness.Agent) string {
	out, _ := exec.Command(a.Binary, "-V").Output()
	f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	if len(f) == 0 {
		return a.Version
	}
	return f[len(f)-1]
}

func haproxyVersion() string {
	out, _ := exec.Command("haproxy", "-v").Output()
	f := strings.Fields(string(out))
	if len(f) < 3 {
		return "?"
	}
	return f[2]
}

func haproxyConfig(sock string, fePort int, s *services) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    stats socket %s mode 600 level admin
    stats timeout 30s

defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout check 1s
    default-server inter 500ms fall 2 rise 2

frontend www
    bind 127.0.0.1:%d
    default_backend web

backend web
    balance roundrobin
    option httpchk GET /
    http-check expect status 200
`, sock, fePort)
	for _, g := range guests {
		fmt.Fprintf(&b, "    server %s %s check\n", g, s.http[g].Addr())
	}
	return b.String()
}

// query is one passive check; an answer the agent marks unsupported is shown as such.
func query(r *runner, a *harness.Agent, key string) string {
	v, err := a.Query(key, 10*time.Second)
	if err != nil {
		if _, ok := err.(*harness.ErrNotSupported); ok {
			return err.Error()
		}
		r.Fatalf("agent %s: %s: %v", a.Version, key, err)
	}
	return v
}

func serverField(js, field string) string {
	var m map[string]any
	if json.Unmarshal([]byte(js), &m) != nil {
		return ""
	}
	s, _ := m[field].(string)
	return s
}

// discoveryRows prints an LLD answer one row per line, with the macros that matter here.
func discoveryRows(js string) string {
	var rows []map[string]string
	if err := json.Unmarshal([]byte(js), &rows); err != nil {
		return js
	}
	var b strings.Builder
	for _, row := range rows {
		fmt.Fprintf(&b, `{"{#KVM.DOMAIN.NAME}":%q,"{#KVM.DOMAIN.STATE}":%q,"{#KVM.DOMAIN.HAPROXY.BACKEND}":%q,"{#KVM.DOMAIN.HAPROXY.SERVER}":%q,…}`+"\n",
			row["{#KVM.DOMAIN.NAME}"], row["{#KVM.DOMAIN.STATE}"], row["{#KVM.DOMAIN.HAPROXY.BACKEND}"], row["{#KVM.DOMAIN.HAPROXY.SERVER}"])
	}
	return b.String()
}

// ladderReport prints recover's JSON report as a table of its steps.
func ladderReport(r *runner, out, errOut string, rc int) string {
	var rep struct {
		Steps []struct {
			Step     string  `json:"step"`
			Outcome  string  `json:"outcome"`
			Detail   string  `json:"detail"`
			Duration float64 `json:"duration_s"`
		} `json:"steps"`
		Exit     string  `json:"exit"`
		Healthy  bool    `json:"healthy"`
		Outcome  string  `json:"outcome"`
		Duration float64 `json:"duration_s"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		r.Fatalf("recover printed no report (exit %d): %v\n%s%s", rc, err, out, errOut)
	}
	var b strings.Builder
	for _, s := range rep.Steps {
		fmt.Fprintf(&b, "%-13s %-8s %5.1fs  %s\n", s.Step, s.Outcome, s.Duration, s.Detail)
	}
	fmt.Fprintf(&b, "outcome %s, exit step %q, healthy %v, %.1f s", rep.Outcome, rep.Exit, rep.Healthy, rep.Duration)
	if e := strings.TrimSpace(errOut); e != "" {
		b.WriteString("\n" + e)
	}
	return b.String()
}

func oneLine(out, errOut string) string {
	var m map[string]any
	if json.Unmarshal([]byte(out), &m) == nil {
		b, _ := json.Marshal(m)
		return string(b)
	}
	return strings.TrimSpace(out + " " + errOut)
}

// auditEnds returns the audit log's end lines, verbatim.
func auditEnds(r *runner, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		r.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["phase"] != "begin" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// trapper is the Zabbix trapper stand-in (sender/sendertest): it prints every value the plugin
// pushes, as it arrives, and lets the story wait for one.
type trapper struct {
	*sendertest.Trapper
	mu   sync.Mutex
	seen []sender.Item
}

func startTrapper(r *runner) *trapper {
	tr := &trapper{Trapper: sendertest.Start(r, sendertest.Options{})}
	stop := make(chan struct{})
	r.Cleanup(func() { close(stop) })
	go func() {
		for {
			select {
			case <-stop:
				return
			case items := <-tr.Requests():
				for _, it := range items {
					tr.mu.Lock()
					tr.seen = append(tr.seen, it)
					tr.mu.Unlock()
					r.say.line(fmt.Sprintf("[trapper stand-in] host %q  %s = %s", it.Host, it.Key, it.Value))
				}
			}
		}
	}()
	return tr
}

// await waits until the plugin has pushed value for server's item.
func (tr *trapper) await(r *runner, server, value string) {
	key := "haproxy.server.status.push[web," + server + "]"
	harness.WaitFor(r, 15*time.Second, 50*time.Millisecond, "the plugin to push "+key+" = "+value, func() (bool, error) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		for _, it := range tr.seen {
			if it.Host == pushHost && it.Key == key && it.Value == value {
				return true, nil
			}
		}
		return false, fmt.Errorf("%d values pushed so far", len(tr.seen))
	})
}
