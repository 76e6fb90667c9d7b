// Package fleet runs a fleet of simulated hypervisors behind a real Zabbix 7.0 server and a proxy
// group of real 7.0 proxies, for tests and for `make bench-fleet`. Each hypervisor is a real
// zabbix_agent2 7.0 with the plugin on a libvirt test-driver node of its own (G domains with disks
// and interfaces) and a real haproxy whose G servers, named after the domains, are health-checked
// against tiny HTTP responders the harness can stop and start per guest. Guests' addresses are
// loopback addresses 127.2.H.S (hypervisor H, guest S), so every check stays on this machine.
package fleet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/conf/templates"
	"zabbix-agent2-plugin-kvm/internal/provision"
	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

// Options size the fleet.
type Options struct {
	Hypervisors int // default 3
	Guests      int // per hypervisor, default 5
	Proxies     int // in the proxy group, default 2
	// Macros go on every hypervisor host (e.g. shorter intervals for a test).
	Macros map[string]string
	// GentleAfter, when set, lets the hypervisors act (Actions.Enable) and gives zabbix setup's
	// ladder its gentle restart after it (the forced one 10 minutes later): Fail then waits for
	// every problem's gentle step and counts the remote commands.
	GentleAfter time.Duration
}

// Fleet is a running fleet.
type Fleet struct {
	Zabbix     *zbx.Stack
	GroupID    string // proxy group
	Proxies    []*zbx.Proxy
	HVs        []*Hypervisor
	Setup      provision.Report
	opts       Options
	SetupStart time.Time // when zabbix setup began (the fleet's agents were already up)
	Phases     []zbx.Phase
}

// Hypervisor is one simulated hypervisor.
type Hypervisor struct {
	Name    string // its Zabbix host, hv-001…
	HostID  string
	Agent   *harness.Agent
	HAProxy *harness.HAProxy
	Guests  []*Guest
	node    string // the test driver's node file
	audit   string // the plugin's audit log
	doms    []kvmtest.Domain
}

// Guest is one domain of a hypervisor with its HTTP responder.
type Guest struct {
	Name, UUID, IP string
	srv            *responder
}

// Stop makes the guest's service refuse connections (haproxy's check fails); Start brings it back.
func (g *Guest) Stop()  { g.srv.stop() }
func (g *Guest) Start() { g.srv.start() }

// Name of hypervisor h (0-based) and of its guest s.
func HVName(h int) string       { return fmt.Sprintf("hv-%03d", h+1) }
func GuestName(h, s int) string { return fmt.Sprintf("hv%03d-web-%02d", h+1, s+1) }
func guestIP(h, s int) string   { return fmt.Sprintf("127.2.%d.%d", h+1, s+1) }
func guestUUID(h, s int) string { return fmt.Sprintf("00000000-f1ee-4000-8000-%06d%06d", h+1, s+1) }
func (o *Options) defaults() {
	o.Hypervisors, o.Guests, o.Proxies = or(o.Hypervisors, 3), or(o.Guests, 5), or(o.Proxies, 2)
}
func or(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// Start brings the fleet up: Zabbix server, proxy group and proxies, then every hypervisor (its
// guests' responders, haproxy, agent with the plugin), then zabbix setup and one hypervisor host per
// agent, monitored by the proxy group. It returns once every part runs; discovery is the caller's
// to wait for (WaitDiscovered).
func Start(t testing.TB, o Options) *Fleet {
	t.Helper()
	o.defaults()
	if o.Guests > 250 || o.Hypervisors > 250 {
		t.Fatalf("fleet: at most 250 hypervisors of 250 guests (guest addresses are 127.2.H.S)")
	}
	f := &Fleet{opts: o}
	// every hypervisor's plugin CLI reads its own kvm.conf at this one path (bound over it in the
	// agent's mount namespace), as each real hypervisor has its own /etc: zabbix setup's scripts
	// name one path for the whole fleet
	cliConf := filepath.Join(t.TempDir(), "kvm.conf")
	if err := os.WriteFile(cliConf, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	last := time.Now()
	lap := func(name string) {
		f.Phases = append(f.Phases, zbx.Phase{Name: name, Took: time.Since(last)})
		last = time.Now()
	}
	lo, hi := harness.Ports(t)
	guestPort := harness.FreePort(t, lo, hi)
	bin := harness.PluginBinary(t)

	// the harness's compact defaults hold a few hundred guests; beyond, the caches grow with the
	// fleet (at 660 guest hosts the server's 32 MB configuration cache ran out and the server
	// exited: see docs/fleet.md)
	server, proxy := map[string]string{"StartProxyPollers": "0", "StartTrappers": "4"}, map[string]string{}
	if k := (o.Hypervisors*o.Guests + 999) / 1000; o.Hypervisors*o.Guests > 300 {
		server["CacheSize"], server["ValueCacheSize"], server["HistoryCacheSize"] = fmt.Sprintf("%dM", 32+96*k), fmt.Sprintf("%dM", 64*k), "64M"
		// at 2,940 guest hosts the trend cache's default 4 MB ran out (the server exited)
		server["TrendCacheSize"], server["HistoryIndexCacheSize"] = fmt.Sprintf("%dM", 32*k), fmt.Sprintf("%dM", 16*k)
		proxy["CacheSize"], proxy["StartPreprocessors"] = fmt.Sprintf("%dM", 32+96*k), "2"
	}
	f.Zabbix = zbx.Start(t, zbx.Options{ServerConfig: server, ProxyConfig: proxy})
	lap("zabbix server")
	f.GroupID = f.Zabbix.CreateProxyGroup(t, "KVM hypervisors", 10*time.Second)
	var addrs []string
	for i := 0; i < o.Proxies; i++ {
		p := f.Zabbix.StartProxy(t, fmt.Sprintf("px-%d", i+1), f.GroupID)
		f.Proxies = append(f.Proxies, p)
		addrs = append(addrs, "127.0.0.1:"+strconv.Itoa(p.Port))
	}
	lap("proxies")

	for h := 0; h < o.Hypervisors; h++ {
		hv := &Hypervisor{Name: HVName(h)}
		doms := make([]kvmtest.Domain, o.Guests)
		for s := range doms {
			g := &Guest{Name: GuestName(h, s), UUID: guestUUID(h, s), IP: guestIP(h, s)}
			g.srv = newResponder(t, net.JoinHostPort(g.IP, strconv.Itoa(guestPort)))
			hv.Guests = append(hv.Guests, g)
			doms[s] = kvmtest.Domain{Name: g.Name, UUID: g.UUID, Title: "fleet guest", IP: g.IP}
		}
		hv.HAProxy = harness.StartHAProxy(t, func(sock string) string {
			var b strings.Builder
			fmt.Fprintf(&b, "global\n  stats socket %s mode 600 level admin\n", sock)
			b.WriteString("defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n  timeout check 1s\n")
			b.WriteString("backend web\n  option httpchk GET /\n  default-server check inter 5s fall 2 rise 2\n")
			for _, g := range hv.Guests {
				fmt.Fprintf(&b, "  server %s %s:%d\n", g.Name, g.IP, guestPort)
			}
			return b.String()
		})
		dir := t.TempDir()
		hv.node, hv.doms = filepath.Join(dir, "node.xml"), doms
		if err := kvmtest.WriteNode(hv.node, doms); err != nil {
			t.Fatal(err)
		}
		hv.audit = filepath.Join(dir, "audit.log")
		opts := map[string]string{
			"URI": "test://" + hv.node, "Timeout": "3", "CacheSeconds": "10",
			"GuestNetworks": "127.2.0.0/16", "HAProxy.Socket": hv.HAProxy.Sock,
			"StateDir": filepath.Join(dir, "state"), "AuditLog": hv.audit,
			"Push.Server": strings.Join(addrs, ";"), "Push.Host": hv.Name,
		}
		if o.GentleAfter > 0 {
			// the test driver sends no reboot event, so the gentle step's reboot ends "not done"
			// when GentleSeconds run out: short, so Fail need not wait a minute for its audit line
			opts["Actions.Enable"], opts["Actions.AllowDomains"], opts["Actions.GentleSeconds"] = "1", `hv[0-9]+-web-[0-9]+`, "10"
		}
		var conf strings.Builder
		fmt.Fprintf(&conf, "Plugins.KVM.System.Path=%s\n", bin)
		for k, v := range opts {
			fmt.Fprintf(&conf, "Plugins.KVM.%s=%s\n", k, v)
		}
		if err := os.WriteFile(filepath.Join(dir, "kvm.conf"), []byte(conf.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		hv.Agent = harness.WriteAgentConf(t, "7.0", harness.AgentOptions{Plugin: bin, Options: opts, Timeout: 10,
			Extra: append(harness.SystemRunRules(t, bin), "PluginTimeout=10"),
			Binds: [][2]string{{filepath.Join(dir, "kvm.conf"), cliConf}}})
		hv.Agent.Start(t)
		f.HVs = append(f.HVs, hv)
	}
	lap(fmt.Sprintf("%d hypervisors (agent, plugin, haproxy, %d guests each)", o.Hypervisors, o.Guests))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f.SetupStart = time.Now()
	var err error
	// zabbix setup with the first hypervisor, as README's fleet section runs it; the others are
	// created through the API as an admin's script for a hundred hosts would
	setup := provision.Options{PluginPath: bin, ConfigFile: cliConf,
		SMTPServer: "127.0.0.1", SMTPPort: f.Zabbix.SMTP.Port, User: "Admin", UserEmail: "oncall@example.invalid",
		HypervisorHost: f.HVs[0].Name, HypervisorPort: f.HVs[0].Agent.Port, ProxyGroup: "KVM hypervisors"}
	if o.GentleAfter > 0 {
		setup.GentleAfter, setup.ForcedAfter, setup.PageAfter = o.GentleAfter, 10*time.Minute, 30*time.Minute
	}
	f.Setup, err = provision.Setup(ctx, f.Zabbix.API, setup)
	if err != nil {
		t.Fatalf("fleet: zabbix setup: %v\n%s", err, f.Setup)
	}
	tpl, ok1 := f.Setup.Find("template", templates.Hypervisor)
	grp, ok2 := f.Setup.Find("host group", "KVM hypervisors")
	if !ok1 || !ok2 {
		t.Fatalf("fleet: zabbix setup reported no hypervisor template or group:\n%s", f.Setup)
	}
	var macros []map[string]string
	for m, v := range o.Macros {
		macros = append(macros, map[string]string{"macro": m, "value": v})
	}
	if first, ok := f.Setup.Find("host", f.HVs[0].Name); ok {
		f.HVs[0].HostID = first.ID
		for _, m := range macros {
			if err := f.Zabbix.API.Call(ctx, "usermacro.create", map[string]any{"hostid": first.ID, "macro": m["macro"], "value": m["value"]}, nil); err != nil {
				t.Fatalf("fleet: macro %s on %s: %v", m["macro"], f.HVs[0].Name, err)
			}
		}
	} else {
		t.Fatalf("fleet: zabbix setup reported no host %s:\n%s", f.HVs[0].Name, f.Setup)
	}
	// one call for all: linking the template to a hundred hosts one by one took over 5 minutes on
	// 2 cores while the first hosts' discovery already ran
	var hosts []map[string]any
	for _, hv := range f.HVs[1:] {
		hosts = append(hosts, map[string]any{"host": hv.Name,
			"groups": []map[string]string{{"groupid": grp.ID}}, "templates": []map[string]string{{"templateid": tpl.ID}},
			"monitored_by": 2, "proxy_groupid": f.GroupID, "macros": macros,
			"interfaces": []map[string]any{{"type": 1, "main": 1, "useip": 1, "ip": "127.0.0.1", "dns": "", "port": strconv.Itoa(hv.Agent.Port)}}})
	}
	if len(hosts) > 0 {
		hctx, hcancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer hcancel()
		var res struct {
			IDs []string `json:"hostids"`
		}
		if err := f.Zabbix.API.Call(hctx, "host.create", hosts, &res); err != nil || len(res.IDs) != len(hosts) {
			t.Fatalf("fleet: host.create of %d hypervisors: %v (%d ids)", len(hosts), err, len(res.IDs))
		}
		for i, hv := range f.HVs[1:] {
			hv.HostID = res.IDs[i]
		}
	}
	lap("zabbix setup and hypervisor hosts")
	return f
}

// Guests is every guest of the fleet.
func (f *Fleet) Guests() []*Guest {
	var out []*Guest
	for _, hv := range f.HVs {
		out = append(out, hv.Guests...)
	}
	return out
}

// responder is a guest's web service: "OK" to every request on one address, stoppable.
type responder struct {
	t    testing.TB
	addr string
	mu   sync.Mutex
	srv  *http.Server
}

func newResponder(t testing.TB, addr string) *responder {
	r := &responder{t: t, addr: addr}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *responder) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		return
	}
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		r.t.Errorf("fleet: guest responder %s: %v", r.addr, err)
		return
	}
	r.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("OK\n"))
	})}
	go r.srv.Serve(ln)
}

func (r *responder) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		_ = r.srv.Close()
		r.srv = nil
	}
}

// Discovery is what WaitDiscovered saw.
type Discovery struct {
	Hosts      int           // guest hosts discovered
	Discovered time.Duration // from zabbix setup's start to every guest host existing
	Polled     time.Duration // … to every guest host having values
}

// WaitDiscovered waits until every guest of the fleet is a Zabbix host (technical name = domain
// UUID, visible name = domain name) whose statistics master item has a value, and no item of the
// fleet is unsupported.
func (f *Fleet) WaitDiscovered(t testing.TB, timeout time.Duration) Discovery {
	t.Helper()
	want := map[string]string{}
	var uuids []string
	for _, g := range f.Guests() {
		want[g.UUID] = g.Name
		uuids = append(uuids, g.UUID)
	}
	var d Discovery
	call := func(method string, params map[string]any, out any) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return f.Zabbix.API.Call(ctx, method, params, out)
	}
	var ids []string
	// the item query reads every item of every guest host: on a large fleet, asked every second,
	// it would load the server's database as much as the fleet does
	step := time.Second
	if len(want) > 200 {
		step = 10 * time.Second
	}
	harness.WaitFor(t, timeout, step, fmt.Sprintf("%d guest hosts discovered", len(want)), func() (bool, error) {
		if err := f.daemonsUp(); err != nil {
			return false, harness.Final(err)
		}
		var hosts []struct {
			ID   string `json:"hostid"`
			Host string `json:"host"`
			Name string `json:"name"`
		}
		if err := call("host.get", map[string]any{"filter": map[string]any{"host": uuids}, "output": []string{"host", "name"}}, &hosts); err != nil {
			return false, err
		}
		ids = ids[:0]
		for _, h := range hosts {
			if want[h.Host] != h.Name {
				return false, harness.Final(fmt.Errorf("guest host %s is named %q, want %q", h.Host, h.Name, want[h.Host]))
			}
			ids = append(ids, h.ID)
		}
		d.Hosts = len(hosts)
		return len(hosts) == len(want), fmt.Errorf("%d of %d", len(hosts), len(want))
	})
	d.Discovered = time.Since(f.SetupStart)
	// masters keep no history (their lastclock stays 0): a guest counts as polled once the state
	// its statistics master gives has a value
	harness.WaitFor(t, timeout, step, "every guest host polled, nothing unsupported", func() (bool, error) {
		if err := f.daemonsUp(); err != nil {
			return false, harness.Final(err)
		}
		var items []struct {
			Host  string `json:"hostid"`
			Key   string `json:"key_"`
			Clock string `json:"lastclock"`
			Error string `json:"error"`
		}
		if err := call("item.get", map[string]any{"hostids": ids, "filter": map[string]any{"state": 1},
			"output": []string{"hostid", "key_", "error"}}, &items); err != nil {
			return false, err
		}
		for _, it := range items {
			if !testDriverLimit(it.Error) {
				return false, fmt.Errorf("%s on host %s unsupported: %s", it.Key, it.Host, it.Error)
			}
		}
		if err := call("item.get", map[string]any{"hostids": ids, "filter": map[string]any{"key_": "kvm.domain.state.code"},
			"output": []string{"hostid", "lastclock"}}, &items); err != nil {
			return false, err
		}
		polled := 0
		for _, it := range items {
			if it.Clock != "0" {
				polled++
			}
		}
		return polled == len(ids), fmt.Errorf("%d of %d guest hosts have a value", polled, len(ids))
	})
	d.Polled = time.Since(f.SetupStart)
	var bad []struct {
		Host  string `json:"hostid"`
		Key   string `json:"key_"`
		Error string `json:"error"`
	}
	hvIDs := []string{}
	for _, hv := range f.HVs {
		hvIDs = append(hvIDs, hv.HostID)
	}
	if err := call("item.get", map[string]any{"hostids": append(ids, hvIDs...), "filter": map[string]any{"state": 1},
		"output": []string{"hostid", "key_", "error"}}, &bad); err != nil {
		t.Fatal(err)
	}
	for _, it := range bad {
		if !testDriverLimit(it.Error) {
			t.Errorf("unsupported item in the fleet: %+v", it)
		}
	}
	return d
}

// Migrate moves guest g (same UUID, same name) from one hypervisor's libvirt to another's, as a
// live migration with --undefinesource would, and restarts both agents so their plugins connect
// to the new node definitions. Its haproxy server stays where it was.
func (f *Fleet) Migrate(t testing.TB, g *Guest, from, to *Hypervisor) {
	t.Helper()
	var moved *kvmtest.Domain
	kept := from.doms[:0:0]
	for i := range from.doms {
		if from.doms[i].UUID == g.UUID {
			moved = &from.doms[i]
		} else {
			kept = append(kept, from.doms[i])
		}
	}
	if moved == nil {
		t.Fatalf("fleet: %s is not on %s", g.Name, from.Name)
	}
	to.doms = append(to.doms, *moved)
	from.doms = kept
	for _, hv := range []*Hypervisor{from, to} {
		if err := kvmtest.WriteNode(hv.node, hv.doms); err != nil {
			t.Fatal(err)
		}
		hv.Agent.Stop()
		hv.Agent.Start(t)
	}
}

// testDriverLimit tells an item that is unsupported only because the fleet's guests live in
// libvirt's test driver: it has no guest agent, and the plugin never dials the addresses it
// reports (they are made up). Any other reason fails the fleet.
func testDriverLimit(err string) bool {
	return strings.Contains(err, "not supported by the connection driver: virDomainAgent") ||
		strings.Contains(err, "comes from libvirt's test driver")
}

// daemonsUp tells a Zabbix server or proxy that exited (a full cache ends one), with the line of its
// log that says why, so a long wait ends at once.
func (f *Fleet) daemonsUp() error {
	logs := map[string]string{"zabbix_server": f.Zabbix.ServerLog}
	for _, p := range f.Proxies {
		logs["zabbix_proxy "+p.Name] = p.Log
	}
	for name, log := range logs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", f.Zabbix.PIDs[name]))
		if err == nil && !strings.Contains(string(b), ") Z ") {
			continue
		}
		l, _ := os.ReadFile(log)
		why := "see " + log
		for _, line := range strings.Split(string(l), "\n") {
			if strings.Contains(line, "please increase") {
				why = strings.TrimSpace(line)
				break
			}
			if strings.Contains(line, "Exiting") {
				why = strings.TrimSpace(line)
			}
		}
		return fmt.Errorf("%s exited: %s", name, why)
	}
	return nil
}
