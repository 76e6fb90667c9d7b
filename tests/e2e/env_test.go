//go:build integration

// Package e2e is the seed scenario end to end (issue 6): real QEMU guests on libvirtd inside the
// test's network namespace, a real haproxy health-checking them, a real Zabbix 7.0 (or 6.0:
// scenarioVersions) server with its API and an SMTP sink, and a real zabbix_agent2 of the same
// version running the plugin. Zabbix is provisioned with
// conf/provision.Setup exactly as `zabbix-agent2-plugin-kvm zabbix setup` does it; then guests are
// broken and the recovery ladder is watched through the API, the SMTP sink, haproxy and the
// plugin's audit log until the service is back in the pool.
//
// Template import on Zabbix 6.0 is covered by internal/provision (TestSetup60ImportsAndIsIdempotent).
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/conf/templates"
	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/internal/provision"
	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

func TestMain(m *testing.M) { lab.Main(m) }

// scenarioVersions are the Zabbix server and zabbix_agent2 the scenario runs on: 7.0 and 7.0 by
// default; KVM_E2E_ZABBIX=6.0 runs it on a 6.0 server (the same templates: they are in the 6.0
// export format) with Debian 12's agent 6.0.14 beside it, and KVM_E2E_AGENT picks another agent
// of harness.AgentVersions (make test-compat's server and agent cells).
func scenarioVersions(t testing.TB) (server, agent string) {
	t.Helper()
	server = os.Getenv("KVM_E2E_ZABBIX")
	switch server {
	case "":
		server = "7.0"
	case "6.0", "7.0":
	default:
		t.Fatalf("KVM_E2E_ZABBIX=%q: want 6.0 or 7.0", server)
	}
	if agent = os.Getenv("KVM_E2E_AGENT"); agent == "" {
		agent = server
	}
	t.Logf("scenario on zabbix_server %s, zabbix_agent2 %s, haproxy %s", server, agent, harness.HAProxyVersion())
	return server, agent
}

const (
	hypervisor = "kvm-hv01"
	backend    = "web"
	oncall     = "oncall@kvm.test"
	mailFrom   = "zabbix@kvm.test"
	// The ladder's steps at the server's minimum escalation period; the page comes after both.
	gentleAfter = 60 * time.Second
	forcedAfter = 60 * time.Second
	pageAfter   = 150 * time.Second
)

// Short intervals for the test; production keeps the templates' defaults (1m polls, 5m/1h LLD).
var (
	// hypervisorMacros go on the hypervisor host: its template's items and guest discovery.
	hypervisorMacros = map[string]string{"{$KVM.POLL.INTERVAL}": "2s", "{$KVM.DISCOVERY.INTERVAL}": "10s"}
	// guestMacros change the guest template itself: discovered hosts cannot carry their own macros
	// beyond the host prototype's, and template macros win over global ones.
	guestMacros = map[string]string{"{$KVM.POLL.INTERVAL}": "2s", "{$KVM.STATS.INTERVAL}": "5s",
		"{$KVM.AGENT.INTERVAL}": "10s", "{$KVM.DISCOVERY.INTERVAL}": "10s",
		// the lab's guests serve HTTP only (busybox httpd); there is no sshd on 22
		"{$KVM.TCP.PORT}": "80"}
)

// guestSpec is one guest of the environment.
type guestSpec struct {
	name string
	opts lab.GuestOpts
	// metadataIP writes the plugin's documented address metadata before the first start: the way
	// to give the plugin the address of a guest that has no agent.
	metadataIP bool
}

// env is everything one scenario run needs, all stopped by t's cleanups.
type env struct {
	t       testing.TB
	lab     *lab.Lab
	guests  map[string]*lab.Guest
	hap     *harness.HAProxy
	hapc    *haproxy.Client
	zbx     *zbx.Stack
	agent   *harness.Agent
	rep     provision.Report
	bin     string
	kvmConf string
	audit   string
	hosts   map[string]string // Zabbix host name -> hostid (hypervisor and guests)
	phases  []step            // setup laps, for the log
}

type step struct {
	name string
	took time.Duration
}

func (e *env) lap(since *time.Time, name string) {
	now := time.Now()
	e.phases = append(e.phases, step{name, now.Sub(*since)})
	*since = now
}

func ctxT(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// call is one API request with a deadline; it fails the test on error.
func (e *env) call(method string, params, out any) {
	e.t.Helper()
	if err := e.try(method, params, out); err != nil {
		e.t.Fatalf("%v", err)
	}
}

func (e *env) try(method string, params, out any) error {
	ctx, cancel := ctxT(30 * time.Second)
	defer cancel()
	if err := e.zbx.API.Call(ctx, method, params, out); err != nil {
		return fmt.Errorf("zabbix API %s: %w", method, err)
	}
	return nil
}

// staticServers are servers of the guests' backend that are no guest: haproxy answers for them
// itself. The seed scenario breaks all three guests of a backend; alone they would be a backend-wide
// failure, which the plugin's storm guard holds (rightly: Actions.MinHealthyPercent, 50). With
// two healthy servers beside them, each guest's other servers are 2 UP of 4 at worst: a failure of
// some guests, which the ladder must repair.
const staticServers = 2

// haproxyConfig has one backend whose servers are named exactly like the guests' domains (the
// plugin maps server name = domain name), plus staticServers served by haproxy itself, and checks
// them every second.
func haproxyConfig(sock string, port, staticPort int, guests []*lab.Guest) string {
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
    default-server inter 1s fall 2 rise 1

frontend www
    bind 127.0.0.1:%d
    default_backend %s

backend %s
    balance roundrobin
    option httpchk GET /
    http-check expect status 200
`, sock, port, backend, backend)
	for _, g := range guests {
		fmt.Fprintf(&b, "    server %s %s:80 check\n", g.Name(), g.IP())
	}
	for i := 1; i <= staticServers; i++ {
		fmt.Fprintf(&b, "    server static-%d 127.0.0.1:%d check\n", i, staticPort)
	}
	fmt.Fprintf(&b, `
frontend static
    bind 127.0.0.1:%d
    http-request return status 200 content-type text/plain string ok
`, staticPort)
	return b.String()
}

// envTweak changes the plugin's options or zabbix setup's before they are used, with the Zabbix
// stack already up (tests/e2e/events_test.go).
type envTweak func(e *env, plugin map[string]string, setup *provision.Options)

// startEnv brings up the whole scenario and returns once every guest is a Zabbix host with the
// guest template linked and its items polled.
func startEnv(t testing.TB, specs []guestSpec, tweaks ...envTweak) *env {
	t.Helper()
	harness.RequireRoot(t)
	t0 := time.Now()
	last := t0
	e := &env{t: t, guests: map[string]*lab.Guest{}, hosts: map[string]string{}}
	e.lab = lab.Get(t)
	e.lap(&last, "lab")

	// Guests boot (5-35 s under TCG) while the rest comes up.
	var order []*lab.Guest
	for _, s := range specs {
		o := s.opts
		start := o.Start
		o.Start = false
		g := e.lab.Guest(t, s.name, o)
		if s.metadataIP {
			if out, err := e.lab.Virsh("metadata", g.Name(), "--config", "--uri", guest.MetadataNS, "--key", "kvm",
				"--set", fmt.Sprintf("<guest><ip>%s</ip></guest>", g.IP())); err != nil {
				t.Fatalf("metadata of %s: %v %s", g.Name(), err, out)
			}
		}
		if start {
			g.Start(t)
		}
		e.guests[s.name] = g
		order = append(order, g)
	}
	e.lap(&last, "guests defined+started")

	e.hap = harness.StartHAProxy(t, func(sock string) string {
		return haproxyConfig(sock, harness.Port(t), harness.Port(t), order)
	})
	var err error
	if e.hapc, err = haproxy.New(e.hap.Sock, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	e.lap(&last, "haproxy")

	serverVersion, agentVersion := scenarioVersions(t)
	e.zbx = zbx.Start(t, zbx.Options{Version: serverVersion})
	e.lap(&last, "zabbix stack")

	e.bin = harness.PluginBinary(t)
	e.lap(&last, "plugin build")
	dir := t.TempDir()
	e.audit = filepath.Join(dir, "audit.log")
	e.kvmConf = filepath.Join(dir, "kvm.conf")
	opts := map[string]string{
		"URI": e.lab.URI(),
		// below the server's 3 s agent item timeout: a hung guest's checks answer 0, never time out
		"Timeout":              "2",
		"CacheSeconds":         "2",
		"GuestNetworks":        lab.Subnet,
		"HAProxy.Socket":       e.hap.Sock,
		"Actions.Enable":       "1",
		"Actions.AllowDomains": "web-.*",
		// the gentle step must give up (and free the domain lock) before the forced step comes
		"Actions.GentleSeconds": "30",
		"Actions.ForcedSeconds": "25",
		// the benchmark restarts the same guest several times within the hour
		"Actions.MaxForcedPerHour": "20",
		"StateDir":                 filepath.Join(dir, "state"),
		"AuditLog":                 e.audit,
		"Push.Server":              fmt.Sprintf("127.0.0.1:%d", e.zbx.ServerPort),
		"Push.Host":                hypervisor,
		"Push.Interval":            "1",
	}
	setupOpts := provision.Options{
		PluginPath: e.bin, ConfigFile: e.kvmConf,
		SMTPServer: "127.0.0.1", SMTPPort: e.zbx.SMTP.Port, SMTPFrom: mailFrom,
		User: "Admin", UserEmail: oncall,
		GentleAfter: gentleAfter, ForcedAfter: forcedAfter, PageAfter: pageAfter,
		HypervisorHost: hypervisor, HypervisorIP: "127.0.0.1",
	}
	for _, tw := range tweaks {
		tw(e, opts, &setupOpts)
	}
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	conf := "Plugins.KVM.System.Path=" + e.bin + "\n"
	for _, k := range keys {
		conf += fmt.Sprintf("Plugins.KVM.%s=%s\n", k, opts[k])
	}
	if err := os.WriteFile(e.kvmConf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	e.agent = harness.WriteAgentConf(t, agentVersion, harness.AgentOptions{Plugin: e.bin, Options: opts,
		Extra: append(harness.SystemRunRules(t, e.bin), "PluginTimeout=10"), Timeout: 10})
	e.agent.Start(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log (%s), last lines:\n%s", e.agent.LogFile, lastLines(e.agent.Log(), 40))
			b, _ := os.ReadFile(e.audit)
			t.Logf("audit log:\n%s", b)
			b, _ = os.ReadFile(e.zbx.ServerLog)
			t.Logf("zabbix_server log (%s), last lines:\n%s", e.zbx.ServerLog, lastLines(string(b), 60))
		}
	})
	e.lap(&last, "zabbix_agent2")

	ctx, cancel := ctxT(3 * time.Minute)
	defer cancel()
	setupOpts.HypervisorPort = e.agent.Port
	e.rep, err = provision.Setup(ctx, e.zbx.API, setupOpts)
	if err != nil {
		t.Fatalf("zabbix setup: %v\n%s", err, e.rep)
	}
	t.Logf("zabbix setup:\n%s", e.rep)
	hv, ok := e.rep.Find("host", hypervisor)
	if !ok {
		t.Fatalf("setup reported no host %s", hypervisor)
	}
	e.hosts[hypervisor] = hv.ID
	for m, v := range hypervisorMacros {
		e.call("usermacro.create", map[string]any{"hostid": hv.ID, "macro": m, "value": v}, nil)
	}
	gt, _ := e.rep.Find("template", templates.Guest)
	e.setTemplateMacros(gt.ID, guestMacros)
	e.lap(&last, "zabbix setup")

	for _, s := range specs {
		if s.opts.Start && !s.opts.NoKernel {
			e.guests[s.name].WaitHTTP(t, 90*time.Second)
		}
	}
	e.lap(&last, "guests serve HTTP")
	for _, s := range specs {
		if s.opts.Start && !s.opts.NoKernel {
			e.waitHAProxy(s.name, "UP", 30*time.Second)
		}
	}
	e.lap(&last, "haproxy UP")

	e.waitGuestHosts(specs)
	e.lap(&last, "guest hosts discovered, linked, polled")

	var b strings.Builder
	for _, p := range e.phases {
		fmt.Fprintf(&b, " %s %.1fs;", p.name, p.took.Seconds())
	}
	t.Logf("environment ready in %.1fs:%s", time.Since(t0).Seconds(), b.String())
	return e
}

func (e *env) setTemplateMacros(templateID string, want map[string]string) {
	e.t.Helper()
	var have []struct {
		ID    string `json:"hostmacroid"`
		Macro string `json:"macro"`
	}
	e.call("usermacro.get", map[string]any{"hostids": templateID, "output": []string{"hostmacroid", "macro"}}, &have)
	ids := map[string]string{}
	for _, m := range have {
		ids[m.Macro] = m.ID
	}
	for m, v := range want {
		id, ok := ids[m]
		if !ok {
			e.t.Fatalf("guest template has no macro %s (have %v)", m, ids)
		}
		e.call("usermacro.update", map[string]any{"hostmacroid": id, "value": v}, nil)
	}
}

// serverStatus is the normalized haproxy status of one of the guests' servers.
func (e *env) serverStatus(server string) (string, error) {
	ctx, cancel := ctxT(3 * time.Second)
	defer cancel()
	stats, err := e.hapc.ShowStat(ctx)
	if err != nil {
		return "", err
	}
	for _, s := range stats {
		if s.Proxy == backend && s.Name == server {
			return s.State(), nil
		}
	}
	return "", fmt.Errorf("haproxy has no server %s/%s", backend, server)
}

func (e *env) waitHAProxy(server, want string, timeout time.Duration) {
	e.t.Helper()
	harness.WaitFor(e.t, timeout, 100*time.Millisecond, fmt.Sprintf("haproxy %s/%s %s", backend, server, want), func() (bool, error) {
		st, err := e.serverStatus(server)
		if err != nil {
			return false, err
		}
		return st == want, fmt.Errorf("status %s", st)
	})
}

type item struct {
	ItemID    string `json:"itemid"`
	Key       string `json:"key_"`
	Name      string `json:"name"`
	State     string `json:"state"`
	Error     string `json:"error"`
	LastClock string `json:"lastclock"`
	LastValue string `json:"lastvalue"`
	History   string `json:"history"`
	Type      string `json:"type"`
	Flags     string `json:"flags"`
	Master    string `json:"master_itemid"`
}

func (e *env) items(hostid string) []item {
	e.t.Helper()
	var out []item
	e.call("item.get", map[string]any{"hostids": hostid, "webitems": true,
		"output": []string{"itemid", "key_", "name", "state", "error", "lastclock", "lastvalue", "history", "type", "flags", "master_itemid"}}, &out)
	return out
}

// itemProblems says what is still missing on a host: unsupported items (with their error), items
// without a value yet, and discovery rules that failed. Master items that keep no history (the
// JSON blobs) are judged by their state, and through their dependent items' values.
func itemProblems(items []item, wantKeys []string) []string {
	var bad []string
	have := map[string]bool{}
	trappers := map[string]bool{}
	for _, it := range items {
		trappers[it.ItemID] = it.Type == "2"
	}
	for _, it := range items {
		have[it.Key] = true
		switch {
		case it.State != "0":
			bad = append(bad, fmt.Sprintf("unsupported %s: %s", it.Key, it.Error))
		case it.Type == "2", trappers[it.Master]: // trapper, or fed by one: gets values only when the plugin pushes
		case it.History == "0":
		case it.LastClock == "" || it.LastClock == "0":
			bad = append(bad, "no value yet: "+it.Key)
		}
	}
	for _, k := range wantKeys {
		if !have[k] {
			bad = append(bad, "missing item "+k)
		}
	}
	sort.Strings(bad)
	return bad
}

type lldRule struct {
	Key   string `json:"key_"`
	State string `json:"state"`
	Error string `json:"error"`
}

// waitGuestHosts waits until LLD made one host per guest with the guest template linked, and,
// for every started kernel guest, until every item (also those of its own disk and interface
// discovery) is supported and has a value.
func (e *env) waitGuestHosts(specs []guestSpec) {
	e.t.Helper()
	gt, _ := e.rep.Find("template", templates.Guest)
	deadline := 4 * time.Minute
	harness.WaitFor(e.t, deadline, time.Second, "one Zabbix host per guest with the guest template", func() (bool, error) {
		// a guest host's technical name is its domain's UUID; the visible name is the domain's name
		var hosts []struct {
			HostID          string `json:"hostid"`
			Name            string `json:"name"`
			Flags           string `json:"flags"`
			ParentTemplates []struct {
				TemplateID string `json:"templateid"`
			} `json:"parentTemplates"`
		}
		if err := e.try("host.get", map[string]any{"output": []string{"hostid", "name", "flags"},
			"selectParentTemplates": []string{"templateid"}, "filter": map[string]any{"flags": 4}}, &hosts); err != nil {
			return false, err
		}
		found := map[string]bool{}
		for _, h := range hosts {
			for _, p := range h.ParentTemplates {
				if p.TemplateID == gt.ID {
					found[h.Name] = true
					e.hosts[h.Name] = h.HostID
				}
			}
		}
		var missing []string
		for _, s := range specs {
			if !found[s.name] {
				missing = append(missing, s.name)
			}
		}
		if len(found) != len(specs) || len(missing) > 0 {
			return false, fmt.Errorf("discovered hosts with the template: %v; missing %v", keysOf(found), missing)
		}
		return true, nil
	})
	// Keys every serving guest must have: the template's items plus at least one disk and one
	// interface from the guest's own discovery.
	want := []string{"kvm.domain.state.code", "kvm.domain.cpu.util", "kvm.domain.memory.usable", "kvm.domain.http.status",
		"kvm.domain.haproxy.status", "kvm.domain.pool.in", "kvm.domain.pool.state", "kvm.domain.held", "kvm.domain.agent.hostname",
		"kvm.domain.disk.read.bytes[vda]"}
	for _, s := range specs {
		if !s.opts.Start || s.opts.NoKernel {
			continue
		}
		hostid := e.hosts[s.name]
		var last []string
		harness.WaitFor(e.t, deadline, 2*time.Second, "values for every item of "+s.name+" (no unsupported items)", func() (bool, error) {
			its := e.items(hostid)
			last = itemProblems(its, want)
			hasNet := false
			for _, it := range its {
				hasNet = hasNet || strings.HasPrefix(it.Key, "kvm.domain.net.rx.bits[")
			}
			if !hasNet {
				last = append(last, "no interface discovered (kvm.domain.net.rx.bits[...])")
			}
			var rules []lldRule
			if err := e.try("discoveryrule.get", map[string]any{"hostids": hostid, "output": []string{"key_", "state", "error"}}, &rules); err != nil {
				return false, err
			}
			for _, r := range rules {
				if r.State != "0" || r.Error != "" {
					last = append(last, fmt.Sprintf("discovery %s: %s", r.Key, r.Error))
				}
			}
			if len(last) > 0 {
				return false, fmt.Errorf("%d items of %d not ready: %s", len(last), len(its), strings.Join(last, "; "))
			}
			return true, nil
		})
		e.t.Logf("%s: %d items, all supported and with values", s.name, len(e.items(hostid)))
	}
}

func keysOf(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// auditEntry is one line of the plugin's audit log.
type auditEntry struct {
	Phase    string    `json:"phase"` // begin (written when the action starts changing something) or end
	Time     time.Time `json:"time"`
	Caller   string    `json:"caller"`
	Verb     string    `json:"verb"`
	Domain   string    `json:"domain"`
	Outcome  string    `json:"outcome"`
	Duration float64   `json:"duration_s"`
	Detail   string    `json:"detail"`
}

// auditLog reads the plugin's audit log. It is called from the repair goroutines, so it never
// fails the test: an unreadable log or line becomes an entry whose detail says so, which no check
// accepts.
func (e *env) auditLog() []auditEntry {
	b, err := os.ReadFile(e.audit)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return []auditEntry{{Verb: "?", Detail: err.Error()}}
	}
	var out []auditEntry
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var a auditEntry
		if err := json.Unmarshal([]byte(l), &a); err != nil {
			a = auditEntry{Verb: "?", Detail: fmt.Sprintf("audit line %q: %v", l, err)}
		}
		out = append(out, a)
	}
	return out
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
