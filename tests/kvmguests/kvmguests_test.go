//go:build integration

// Package kvmguests runs the read-only kvm.* keys against libvirtd and real QEMU (TCG) guests inside
// a network namespace the test creates (tests/lab): discovery of running and shut-off guests with
// their addresses, guest-agent and network checks, a hung QEMU, a dead httpd, a libvirtd restart,
// and the same keys through a real zabbix_agent2 7.0.
package kvmguests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/guestnet"
	"zabbix-agent2-plugin-kvm/hypervisor"
	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/plugin"
	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }

func newPlugin(t *testing.T, uri, cacheSeconds string) *plugin.Plugin {
	t.Helper()
	o := map[string]conf.Value{
		"URI": {Value: uri}, "Timeout": {Value: "3"}, "CacheSeconds": {Value: cacheSeconds},
		"InventorySeconds": {Value: "1"}, "GuestNetworks": {Value: "10.77.0.0/24"},
	}
	cfg, err := plugin.ParseOptions(o, 3)
	require.NoError(t, err)
	p := plugin.New(hypervisor.Open)
	require.NoError(t, p.Apply(cfg, plugin.AgentCaller))
	t.Cleanup(p.Stop)
	return p
}

func get(t *testing.T, p *plugin.Plugin, timeout time.Duration, key string, params ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	v, err := p.ExportContext(ctx, key, params)
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

func mustGet(t *testing.T, p *plugin.Plugin, key string, params ...string) string {
	t.Helper()
	v, err := get(t, p, 5*time.Second, key, params...)
	require.NoError(t, err, key, params)
	return v
}

// setMetadataIP writes the plugin's metadata element into a defined domain's persistent config:
// the address source that works while a guest is shut off.
func setMetadataIP(t *testing.T, l *lab.Lab, domain, ip string) {
	t.Helper()
	out, err := l.Virsh("metadata", domain, "--config", "--uri", guest.MetadataNS, "--key", "kvm",
		"--set", fmt.Sprintf("<guest><ip>%s</ip></guest>", ip))
	require.NoError(t, err, out)
}

func TestGuestsEndToEnd(t *testing.T) {
	l := lab.Get(t)
	g1 := l.Guest(t, "kvmt-web1", lab.GuestOpts{Start: true, Agent: true, ACPI: true, Title: "Web one"})
	g2 := l.Guest(t, "kvmt-web2", lab.GuestOpts{Start: true, Agent: true, ACPI: true})
	off := l.Guest(t, "kvmt-off", lab.GuestOpts{Start: false})
	setMetadataIP(t, l, off.Name(), off.IP())
	g1.WaitHTTP(t, 60*time.Second)
	g2.WaitHTTP(t, 60*time.Second)
	g1.WaitAgent(t, 30*time.Second)
	g2.WaitAgent(t, 30*time.Second)
	p := newPlugin(t, l.URI(), "1")

	// discovery: running and shut-off guests, addresses from the agent and from metadata
	var rows []map[string]string
	harness.WaitFor(t, 20*time.Second, 200*time.Millisecond, "discovery with every address", func() (bool, error) {
		v, err := get(t, p, 10*time.Second, "kvm.domain.discovery")
		if err != nil {
			return false, err
		}
		rows = nil
		if err := json.Unmarshal([]byte(v), &rows); err != nil {
			return false, err
		}
		ips := 0
		for _, r := range rows {
			if strings.HasPrefix(r["{#KVM.DOMAIN.NAME}"], "kvmt-") && r["{#KVM.DOMAIN.IP}"] != "" {
				ips++
			}
		}
		return ips == 3, fmt.Errorf("rows %v", rows)
	})
	by := map[string]map[string]string{}
	for _, r := range rows {
		by[r["{#KVM.DOMAIN.NAME}"]] = r
	}
	require.Equal(t, "running", by["kvmt-web1"]["{#KVM.DOMAIN.STATE}"])
	require.Equal(t, g1.IP(), by["kvmt-web1"]["{#KVM.DOMAIN.IP}"])
	require.Equal(t, "Web one", by["kvmt-web1"]["{#KVM.DOMAIN.TITLE}"])
	require.Equal(t, g1.UUID(), by["kvmt-web1"]["{#KVM.DOMAIN.UUID}"])
	require.Equal(t, "shutoff", by["kvmt-off"]["{#KVM.DOMAIN.STATE}"])
	require.Equal(t, off.IP(), by["kvmt-off"]["{#KVM.DOMAIN.IP}"])

	// statistics from real QEMU: counters present and moving
	var d guest.Domain
	require.NoError(t, json.Unmarshal([]byte(mustGet(t, p, "kvm.domain.get", g1.Name())), &d))
	require.Equal(t, "running", d.State)
	require.Equal(t, "booted", d.Reason)
	require.Greater(t, d.CPU.TimeNs, uint64(0))
	require.EqualValues(t, 1, d.VCPUs.Current)
	require.Greater(t, d.Memory.MaximumBytes, uint64(64<<20))
	require.NotEmpty(t, d.Interfaces)
	require.Equal(t, g1.MAC(), d.Interfaces[0].MAC)
	require.Greater(t, d.Interfaces[0].RxBytes+d.Interfaces[0].TxBytes, uint64(0))
	var nets []map[string]string
	require.NoError(t, json.Unmarshal([]byte(mustGet(t, p, "kvm.domain.net.discovery", g1.Name())), &nets))
	require.Equal(t, g1.MAC(), nets[0]["{#KVM.NET.MAC}"])
	require.Equal(t, "shutoff", mustGet(t, p, "kvm.domain.state", off.Name()))

	// guest-side checks without an agent of Zabbix in the guest
	require.Equal(t, "1", mustGet(t, p, "kvm.domain.agent.ping", g1.Name()))
	var info guest.AgentInfo
	require.NoError(t, json.Unmarshal([]byte(mustGet(t, p, "kvm.domain.agent.get", g1.Name())), &info))
	require.NotEmpty(t, info.OS)
	require.Contains(t, string(info.Interfaces), g1.IP())
	require.Equal(t, "1", mustGet(t, p, "kvm.domain.tcp", g1.Name(), "80"))
	var hr guestnet.HTTPResult
	require.NoError(t, json.Unmarshal([]byte(mustGet(t, p, "kvm.domain.http", g1.Name(), "80", "/")), &hr))
	require.Equal(t, 200, hr.Status)
	require.Equal(t, "0", mustGet(t, p, "kvm.domain.tcp", off.Name(), "80"))

	t.Run("httpd killed", func(t *testing.T) {
		g2.KillHTTPD(t)
		var hr guestnet.HTTPResult
		require.NoError(t, json.Unmarshal([]byte(mustGet(t, p, "kvm.domain.http", g2.Name(), "80", "/")), &hr))
		require.Equal(t, 0, hr.Status)
		require.NotEmpty(t, hr.Error)
		require.Equal(t, "0", mustGet(t, p, "kvm.domain.tcp", g2.Name(), "80"))
		require.Equal(t, "1", mustGet(t, p, "kvm.domain.agent.ping", g2.Name()), "the guest itself still runs")
	})

	t.Run("QEMU frozen", func(t *testing.T) {
		g1.Freeze(t)
		defer g1.Thaw(t)
		start := time.Now()
		v, err := get(t, p, 3*time.Second, "kvm.domain.agent.ping", g1.Name())
		require.NoError(t, err)
		require.Equal(t, "0", v)
		require.Less(t, time.Since(start), 3500*time.Millisecond, "answered within the timeout")
		// every guest's keys keep answering within the plugin's 3 s timeout although the statistics
		// call now has a hung domain in it (no cache: every read is a new collection)
		live := newPlugin(t, l.URI(), "0")
		timed := func(key, dom string) string {
			start := time.Now()
			v := mustGet(t, live, key, dom)
			require.Less(t, time.Since(start), 3*time.Second, "%s[%s] answered within the timeout", key, dom)
			t.Logf("%s[%s] with a frozen guest: %s", key, dom, time.Since(start).Round(time.Millisecond))
			return v
		}
		require.Equal(t, "running", timed("kvm.domain.state", g2.Name()))
		require.Equal(t, "running", timed("kvm.domain.state", g1.Name()), "libvirt still says running")
		var d guest.Domain
		require.NoError(t, json.Unmarshal([]byte(timed("kvm.domain.get", g2.Name())), &d))
		require.Greater(t, d.CPU.TimeNs, uint64(0), "the other guest's counters are there (current or from the previous collection)")
		require.Equal(t, "1", mustGet(t, p, "kvm.domain.agent.ping", g2.Name()))
		var hr guestnet.HTTPResult
		require.NoError(t, json.Unmarshal([]byte(mustGet(t, p, "kvm.domain.http", g1.Name(), "80", "/")), &hr))
		require.Equal(t, 0, hr.Status)
	})

	t.Run("libvirtd restart", func(t *testing.T) {
		require.Equal(t, "1", mustGet(t, p, "kvm.hypervisor.ping"))
		l.StopLibvirtd(t)
		require.Equal(t, "0", mustGet(t, p, "kvm.hypervisor.ping"))
		l.StartLibvirtd(t)
		harness.WaitFor(t, 20*time.Second, 100*time.Millisecond, "kvm.hypervisor.ping 1 after libvirtd restart", func() (bool, error) {
			v, err := get(t, p, 3*time.Second, "kvm.hypervisor.ping")
			return v == "1", err
		})
		require.Equal(t, "running", mustGet(t, p, "kvm.domain.state", g2.Name()), "guests survive; same plugin instance")
	})

	t.Run("through zabbix_agent2 7.0", func(t *testing.T) {
		a := harness.WriteAgentConf(t, "7.0", harness.AgentOptions{Timeout: 10, Options: map[string]string{
			"URI": l.URI(), "GuestNetworks": "10.77.0.0/24", "Timeout": "5"}})
		a.Start(t)
		q := func(key string) string {
			v, err := a.Query(key, 15*time.Second)
			require.NoError(t, err, key)
			return v
		}
		require.Equal(t, "1", q("kvm.hypervisor.ping"))
		require.Equal(t, "running", q("kvm.domain.state[kvmt-web2]"))
		require.Equal(t, "shutoff", q("kvm.domain.state[kvmt-off]"))
		require.Equal(t, "1", q("kvm.domain.agent.ping[kvmt-web2]"))
		require.Contains(t, q("kvm.domain.discovery"), `"{#KVM.DOMAIN.NAME}":"kvmt-web2"`)
		require.Contains(t, q("kvm.domain.http[kvmt-web2,80,/]"), `"status":0`)
	})
}

// TestCaptureDomstats refreshes kvm/testdata/domstats-qemu.txt from real guests when
// KVM_CAPTURE=1; otherwise it checks that live virsh output still parses like the fixture.
func TestCaptureDomstats(t *testing.T) {
	l := lab.Get(t)
	g := l.Guest(t, "kvmt-cap", lab.GuestOpts{Start: true, Agent: true, ACPI: true})
	g.WaitHTTP(t, 60*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "virsh", "-c", l.URI(), "domstats", "--state", "--cpu-total", "--balloon",
		"--vcpu", "--interface", "--block", "--nowait", g.Name()).Output()
	require.NoError(t, err)
	recs, err := guest.ParseDomstats(strings.NewReader(string(out)))
	require.NoError(t, err)
	require.Len(t, recs, 1)
	d := recs[0].Domain()
	require.Equal(t, "running", d.State)
	require.Greater(t, d.CPU.TimeNs, uint64(0))
	if os.Getenv("KVM_CAPTURE") == "1" {
		path := harness.RepoRoot(t) + "/kvm/testdata/domstats-qemu.txt"
		require.NoError(t, os.WriteFile(path, out, 0o644))
		t.Logf("wrote %s", path)
	}
}
