package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

// The handlers run here on plain values: statistics parsed from a capture of a real QEMU guest
// (kvm/guest/testdata), inventories and haproxy snapshots built in the test. Package hypervisor
// runs the same keys on libvirt's test driver and a real haproxy.

type fakeStats struct{ snap *guest.Snapshot }

func (f fakeStats) Get(context.Context) (*guest.Snapshot, error) { return f.snap, nil }
func (f fakeStats) Last() *guest.Snapshot                        { return f.snap }

type fakeInventory struct {
	mu   sync.Mutex
	byN  map[string]*guest.Inventory
	asks []string
}

func (f *fakeInventory) Get(_ context.Context, name string, _ bool) (*guest.Inventory, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asks = append(f.asks, name)
	if i, ok := f.byN[name]; ok {
		return i, nil
	}
	return nil, fmt.Errorf("%w: %q", guest.ErrNoDomain, name)
}
func (f *fakeInventory) Forget(map[string]bool) {}

type fakeHost struct{ up bool }

func (f fakeHost) Ping(context.Context) bool { return f.up }
func (f fakeHost) HypervisorInfo(_ context.Context, s *guest.Snapshot) (*guest.Hypervisor, error) {
	return &guest.Hypervisor{Hostname: "hv", Domains: guest.Counts(s.Records)}, nil
}

type fakeHAProxy struct{ snap *haproxy.Snapshot }

func (f fakeHAProxy) Get(context.Context) (*haproxy.Snapshot, error)      { return f.snap, nil }
func (f fakeHAProxy) Last() *haproxy.Snapshot                             { return f.snap }
func (f fakeHAProxy) Snapshot(context.Context) (*haproxy.Snapshot, error) { return f.snap, nil }
func (f fakeHAProxy) ShowInfo(context.Context) (map[string]string, error) {
	return map[string]string{"Name": "HAProxy"}, nil
}

func captured(t *testing.T) []guest.Record {
	t.Helper()
	f, err := os.Open("../kvm/guest/testdata/domstats-qemu.txt")
	require.NoError(t, err)
	defer f.Close()
	recs, err := guest.ParseDomstats(f)
	require.NoError(t, err)
	return recs
}

// fixture is a hypervisor with the captured guest (given a UUID), a shut-off one and its haproxy.
func fixture(t *testing.T, uri string, extra ...string) (*Plugin, *fakeInventory) {
	t.Helper()
	recs := captured(t)
	recs[0].UUID = "6f1c6a3e-1111-4222-8333-944455556666"
	recs = append(recs, guest.Record{Name: "web-off", UUID: "00000000-0000-4000-8000-000000000002",
		Params: map[string]string{"state.state": "5", "state.reason": "1"}})
	snap := guest.NewSnapshot(recs, time.Now())
	inv := &fakeInventory{byN: map[string]*guest.Inventory{
		"kvmt-cap": {Name: "kvmt-cap", Title: "Captured", IP: "127.0.0.1", IPSource: "metadata", HasAgent: true,
			NICs: []guest.NIC{{MAC: "52:54:00:77:00:0b", Target: "vnet2"}}},
		"web-off": {Name: "web-off", IP: "10.9.9.9", IPSource: "metadata"},
	}}
	hstats, err := haproxy.ParseStat(readFile(t, "../haproxy/testdata/show_stat.csv"))
	require.NoError(t, err)
	for i := range hstats {
		if hstats[i].Name == "web-01" {
			hstats[i].Name = "kvmt-cap" // a server named after its domain
		}
		if hstats[i].Addr != "" { // the capture's servers were on loopback, like the guest here
			hstats[i].Addr = fmt.Sprintf("192.0.2.%d:80", i)
		}
	}
	cfg, err := ParseOptions(opts(append([]string{"URI", uri, "Timeout", "2"}, extra...)...), 3)
	require.NoError(t, err)
	p := New(nil)
	p.Use(cfg, &Deps{Host: fakeHost{up: true}, Stats: fakeStats{snap}, Inventory: inv,
		HAProxy: fakeHAProxy{haproxy.NewSnapshot(hstats, nil, time.Now())}})
	return p, inv
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

func TestDomainKeysFromCapture(t *testing.T) {
	p, _ := fixture(t, "qemu:///system")
	v, err := get(t, p, "kvm.domain.state", "kvmt-cap")
	require.NoError(t, err)
	require.Equal(t, "running", v)
	v, err = get(t, p, "kvm.domain.state", "00000000-0000-4000-8000-000000000002")
	require.NoError(t, err)
	require.Equal(t, "shutoff", v, "a UUID names the domain as well as its name")

	v, err = get(t, p, "kvm.domain.get", "kvmt-cap")
	require.NoError(t, err)
	var d guest.Domain
	require.NoError(t, json.Unmarshal([]byte(v), &d))
	require.EqualValues(t, 33400000000, d.CPU.TimeNs)
	require.Equal(t, "52:54:00:77:00:0b", d.Interfaces[0].MAC, "MAC from the inventory, by target")

	v, err = get(t, p, "kvm.domain.net.discovery", "kvmt-cap")
	require.NoError(t, err)
	require.JSONEq(t, `[{"{#KVM.NET.NAME}":"vnet2","{#KVM.NET.MAC}":"52:54:00:77:00:0b"}]`, v)
	v, err = get(t, p, "kvm.domain.disk.discovery", "kvmt-cap")
	require.NoError(t, err)
	require.Contains(t, v, `"{#KVM.DISK.NAME}":"vda"`)

	v, err = get(t, p, "kvm.hypervisor.get")
	require.NoError(t, err)
	require.Contains(t, v, `"running":1`)
	require.Contains(t, v, `"shutoff":1`)

	_, err = get(t, p, "kvm.domain.state", "nope")
	require.EqualError(t, err, `kvm.domain.state[nope]: no such domain: "nope"`)
}

func TestDomainDiscoveryMapsHAProxyServers(t *testing.T) {
	hostname, herr := os.Hostname()
	require.NoError(t, herr)
	p, _ := fixture(t, "qemu:///system")
	v, err := get(t, p, "kvm.domain.discovery")
	require.NoError(t, err)
	var rows []map[string]string
	require.NoError(t, json.Unmarshal([]byte(v), &rows))
	require.Len(t, rows, 2)
	require.Equal(t, map[string]string{
		"{#KVM.DOMAIN.NAME}": "kvmt-cap", "{#KVM.DOMAIN.UUID}": "6f1c6a3e-1111-4222-8333-944455556666",
		"{#KVM.DOMAIN.STATE}": "running", "{#KVM.DOMAIN.TITLE}": "Captured", "{#KVM.DOMAIN.IP}": "127.0.0.1",
		"{#KVM.DOMAIN.HAPROXY.BACKEND}": "web", "{#KVM.DOMAIN.HAPROXY.SERVER}": "kvmt-cap", "{#KVM.DOMAIN.AGENT}": "1", "{#KVM.HYPERVISOR}": hostname,
	}, rows[0])
	require.Equal(t, "", rows[1]["{#KVM.DOMAIN.HAPROXY.SERVER}"], "no server for web-off")
	require.Equal(t, "0", rows[1]["{#KVM.DOMAIN.AGENT}"], "no guest agent channel known for web-off")

	v, err = get(t, p, "haproxy.server.discovery")
	require.NoError(t, err)
	var servers []map[string]string
	require.NoError(t, json.Unmarshal([]byte(v), &servers))
	require.Equal(t, "kvmt-cap", servers[0]["{#KVM.DOMAIN.NAME}"])
	require.Equal(t, "6f1c6a3e-1111-4222-8333-944455556666", servers[0]["{#KVM.DOMAIN.UUID}"])
	for _, r := range servers[1:] {
		require.NotContains(t, r, "{#KVM.DOMAIN.NAME}", r["{#HAPROXY.SERVER}"])
	}
	v, err = get(t, p, "haproxy.discovery")
	require.NoError(t, err)
	require.JSONEq(t, `[{"{#HAPROXY.NAME}":"fe_http","{#HAPROXY.TYPE}":"FRONTEND"},{"{#HAPROXY.NAME}":"web","{#HAPROXY.TYPE}":"BACKEND"},{"{#HAPROXY.NAME}":"api","{#HAPROXY.TYPE}":"BACKEND"}]`, v)
	v, err = get(t, p, "haproxy.server.status", "web", "web-04")
	require.NoError(t, err)
	require.Contains(t, v, `"pool":"DRAIN"`)
	_, err = get(t, p, "haproxy.server.status", "web", "nope")
	require.EqualError(t, err, `haproxy.server.status[web,nope]: backend "web" has no server "nope"`)

	// the master items: every row, the proxies only, one backend
	rowsOf := func(params ...string) (names []string) {
		t.Helper()
		v, err := get(t, p, params[0], params[1:]...)
		require.NoError(t, err)
		var rows []struct{ Pxname, Svname string }
		require.NoError(t, json.Unmarshal([]byte(v), &rows), v)
		for _, r := range rows {
			names = append(names, r.Pxname+"/"+r.Svname)
		}
		return names
	}
	require.Len(t, rowsOf("haproxy.get"), 13)
	require.Equal(t, rowsOf("haproxy.get"), rowsOf("haproxy.get", "all"))
	require.Equal(t, []string{"fe_http/FRONTEND", "web/BACKEND", "api/BACKEND"}, rowsOf("haproxy.get", "proxies"))
	require.Equal(t, []string{"api/api-01", "api/api-02", "api/BACKEND"}, rowsOf("haproxy.backend.get", "api"))
	_, err = get(t, p, "haproxy.get", "servers")
	require.ErrorContains(t, err, `haproxy.get[servers]: invalid parameter Rows "servers"`)
	_, err = get(t, p, "haproxy.backend.get", "fe_http")
	require.EqualError(t, err, `haproxy.backend.get[fe_http]: no backend "fe_http" in show stat`)
	_, err = get(t, p, "haproxy.backend.get")
	require.ErrorContains(t, err, "haproxy.backend.get: ")
}

// No key dials an address that libvirt's test driver reported, whatever GuestNetworks says, and
// none dials outside GuestNetworks: both refuse before any connection.
func TestGuestChecksRefuseBeforeDialling(t *testing.T) {
	for _, uri := range []string{"test:///default", "test:///tmp/node.xml", "test+unix:///default?socket=/x"} {
		p, _ := fixture(t, uri, "GuestNetworks", "0.0.0.0/0")
		_, err := get(t, p, "kvm.domain.tcp", "kvmt-cap", "80")
		require.ErrorContains(t, err, "comes from libvirt's test driver", uri)
		_, err = get(t, p, "kvm.domain.http", "kvmt-cap", "80", "/")
		require.ErrorContains(t, err, "whose addresses are made up", uri)
	}
	p, _ := fixture(t, "qemu:///system")
	_, err := get(t, p, "kvm.domain.tcp", "kvmt-cap", "80")
	require.ErrorContains(t, err, "guest checks are off: set Plugins.KVM.GuestNetworks")
	p, _ = fixture(t, "qemu:///system", "GuestNetworks", "127.0.0.0/8")
	_, err = get(t, p, "kvm.domain.tcp", "web-off", "80")
	require.EqualError(t, err, "kvm.domain.tcp[web-off,80]: address 10.9.9.9 is outside Plugins.KVM.GuestNetworks")
}

// Inside GuestNetworks, on a real hypervisor URI, the checks reach a server the test runs on the
// guest's (loopback) address.
func TestGuestChecksOnLoopback(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := fixture(t, "qemu:///system", "GuestNetworks", "127.0.0.0/8")
	v, err := get(t, p, "kvm.domain.tcp", "6f1c6a3e-1111-4222-8333-944455556666", port)
	require.NoError(t, err)
	require.Equal(t, "1", v)
	v, err = get(t, p, "kvm.domain.http", "kvmt-cap", port, "/")
	require.NoError(t, err)
	require.Contains(t, v, `"status":200`)
	srv.Close()
	v, err = get(t, p, "kvm.domain.tcp", "kvmt-cap", port)
	require.NoError(t, err)
	require.Equal(t, "0", v)
}

func TestKeysWithoutTheirDependency(t *testing.T) {
	cfg, err := ParseOptions(opts("URI", "qemu:///system"), 3)
	require.NoError(t, err)
	p := New(nil)
	p.Use(cfg, &Deps{})
	for _, k := range []string{"haproxy.get", "haproxy.discovery", "haproxy.info"} {
		_, err := get(t, p, k)
		require.ErrorContains(t, err, "haproxy is not configured: set Plugins.KVM.HAProxy.Socket", k)
	}
	_, err = get(t, p, "kvm.domain.exec", "web-01", "uptime")
	require.EqualError(t, err, "kvm.domain.exec[web-01,uptime]: actions are not available (see Plugins.KVM.Actions.*)")
	_, err = get(t, p, "kvm.domain.exec", "web-01", `echo "unterminated`)
	require.ErrorContains(t, err, "invalid parameter Command: unterminated \" quote")
}

// slowStats answers only when its context ends: a statistics collection stuck behind libvirt.
type slowStats struct{}

func (slowStats) Get(ctx context.Context) (*guest.Snapshot, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (slowStats) Last() *guest.Snapshot { return nil }

// A caller that allows more than Plugins.KVM.Timeout (zabbix_agent2 -t gives 60 s) still gets its
// answer within the plugin's Timeout.
func TestExportBoundedByPluginTimeout(t *testing.T) {
	cfg, err := ParseOptions(opts("URI", "qemu:///system", "Timeout", "1"), 3)
	require.NoError(t, err)
	p := New(nil)
	p.Use(cfg, &Deps{Stats: slowStats{}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	_, err = p.ExportContext(ctx, "kvm.domain.state", []string{"web-01"})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 5*time.Second)
	require.GreaterOrEqual(t, time.Since(start), time.Second)
}

func TestSplitCommand(t *testing.T) {
	for in, want := range map[string][]string{
		`uptime`:                       {"uptime"},
		`systemctl  restart nginx`:     {"systemctl", "restart", "nginx"},
		`sh -c 'a; b'`:                 {"sh", "-c", "a; b"},
		`echo "x \"y\"" z\ w`:          {"echo", `x "y"`, "z w"},
		`printf '%s' "$HOME" '' ""`:    {"printf", "%s", "$HOME", "", ""},
		"tab\tseparated\t words ":      {"tab", "separated", "words"},
		`backslash\\ "in \\ double"`:   {`backslash\`, `in \ double`},
		`single 'no \escape in here'`:  {"single", `no \escape in here`},
		strconv.Quote("quoted") + " x": {"quoted", "x"},
	} {
		got, err := SplitCommand(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "   ", `'open`, `"open`} {
		_, err := SplitCommand(bad)
		require.Error(t, err, bad)
	}
}

// keyNamesAreStable pins the public interface: a renamed key breaks every template that polls it.
func TestKeyNamesAreStable(t *testing.T) {
	var names []string
	for _, k := range KeyUsage() {
		names = append(names, strings.SplitN(k[0], "[", 2)[0])
	}
	require.Equal(t, []string{"haproxy.backend.get", "haproxy.discovery", "haproxy.get", "haproxy.info", "haproxy.server.discovery",
		"haproxy.server.set", "haproxy.server.status", "kvm.actions.check", "kvm.domain.agent.get", "kvm.domain.agent.ping",
		"kvm.domain.discovery", "kvm.domain.disk.discovery", "kvm.domain.exec", "kvm.domain.get", "kvm.domain.guard",
		"kvm.domain.http", "kvm.domain.net.discovery", "kvm.domain.state", "kvm.domain.tcp",
		"kvm.hypervisor.get", "kvm.hypervisor.ping"}, names)
}

// kvm.domain.guard shows an operator's hold, a hypervisor-wide hold and a quarantine as the
// actions recorded them in the state directory.
func TestGuardItem(t *testing.T) {
	dir := t.TempDir() + "/state"
	p, _ := fixture(t, "qemu:///system", "StateDir", dir)
	v, err := get(t, p, "kvm.domain.guard", "kvmt-cap")
	require.NoError(t, err)
	require.JSONEq(t, `{"held":0,"quarantined":0,"hold":null,"hypervisor_hold":null,"quarantine":null,"restarts_1h":0,"forced_1h":0}`, v,
		"no state directory yet: nothing is held")
	sd, err := statedir.Open(dir)
	require.NoError(t, err)
	now := statedir.SystemClock{}.Now()
	require.NoError(t, sd.UpdateDomain("kvmt-cap", now, func(s *statedir.Domain) error {
		s.Hold = &statedir.Hold{Since: now, For: time.Hour, Reason: "kernel upgrade", By: "cli:alice"}
		s.AddRestart(now, "reset", 2)
		s.AddRestart(now, "guest reboot", 2)
		return nil
	}))
	v, err = get(t, p, "kvm.domain.guard", "6f1c6a3e-1111-4222-8333-944455556666")
	require.NoError(t, err)
	var g guardStatus
	require.NoError(t, json.Unmarshal([]byte(v), &g))
	require.Equal(t, 1, g.Held)
	require.Equal(t, 1, g.Quarantined)
	require.Equal(t, "kernel upgrade", g.Hold.Reason)
	require.Contains(t, g.Quarantine.Reason, "2 restarts within an hour")
	require.Equal(t, 2, g.Restarts1h)
	require.Nil(t, g.HypervisorHold)
}

// kvm.actions.check names each prerequisite of the ladder that fails for this user.
func TestActionsCheck(t *testing.T) {
	dir := t.TempDir()
	p, _ := fixture(t, "qemu:///system", "StateDir", dir+"/state", "AuditLog", dir+"/missing/audit.log",
		"System.Path", dir+"/no-such-binary")
	v, err := get(t, p, "kvm.actions.check")
	require.NoError(t, err)
	var pr prereqs
	require.NoError(t, json.Unmarshal([]byte(v), &pr))
	require.Equal(t, 0, pr.OK)
	require.Equal(t, 0, pr.Enabled)
	joined := strings.Join(pr.Problems, "\n")
	require.Contains(t, joined, "actions are disabled (Plugins.KVM.Actions.Enable=0)")
	require.Contains(t, joined, "AuditLog "+dir+"/missing/audit.log: directory "+dir+"/missing does not exist")
	require.Contains(t, joined, "the plugin binary "+dir+"/no-such-binary")
	require.NotContains(t, joined, "StateDir", "a creatable state dir is fine")

	bin := dir + "/plugin"
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755))
	p, _ = fixture(t, "qemu:///system", "StateDir", dir+"/state", "AuditLog", dir+"/audit.log", "System.Path", bin,
		"Actions.Enable", "1", "Actions.AllowDomains", "web-.*")
	v, err = get(t, p, "kvm.actions.check")
	require.NoError(t, err)
	require.JSONEq(t, `{"ok":1,"enabled":1,"problems":[]}`, v)
}
