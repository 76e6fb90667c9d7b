package hypervisor

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
	"zabbix-agent2-plugin-kvm/plugin"
	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"
)

// Every key through the real libvirt library on its in-process test driver (no daemon): the
// plugin's handlers over this package's dependencies, as the agent runs them.

type testLog struct{ tb testing.TB }

func (l testLog) Debugf(f string, a ...any)   {}
func (l testLog) Infof(f string, a ...any)    {}
func (l testLog) Warningf(f string, a ...any) { l.tb.Logf("warning: "+f, a...) }
func (l testLog) Errf(f string, a ...any)     { l.tb.Logf("error: "+f, a...) }

func options(kv ...string) map[string]conf.Value {
	m := map[string]conf.Value{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = conf.Value{Value: kv[i+1], Line: 10 + i}
	}
	return m
}

// configured returns a plugin over a hypervisor for uri, and the hypervisor.
func configured(tb testing.TB, uri string, extra ...string) (*plugin.Plugin, *Hypervisor) {
	tb.Helper()
	cfg, err := plugin.ParseOptions(options(append([]string{"URI", uri, "Timeout", "5"}, extra...)...), 3)
	if err != nil {
		tb.Fatal(err)
	}
	h, err := New(cfg, testLog{tb})
	if err != nil {
		tb.Fatal(err)
	}
	p := plugin.New(nil)
	p.Use(cfg, h.Deps(plugin.AgentCaller))
	tb.Cleanup(p.Stop)
	return p, h
}

func get(t testing.TB, p *plugin.Plugin, key string, params ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := p.ExportContext(ctx, key, params)
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

func TestKeysOnTestDriver(t *testing.T) {
	p, _ := configured(t, "test:///default", "GuestNetworks", "0.0.0.0/0")
	cases := []struct {
		key    string
		params []string
		want   string // exact value, or a substring for JSON
		err    string
	}{
		{"kvm.hypervisor.ping", nil, "1", ""},
		{"kvm.domain.state", []string{"test"}, "running", ""},
		{"kvm.domain.state", []string{"6695eb01-f6a4-8304-79aa-97f2502e193f"}, "running", ""}, // the test domain's UUID
		{"kvm.domain.state", []string{"nope"}, "", `kvm.domain.state[nope]: no such domain: "nope"`},
		{"kvm.domain.state", nil, "", "kvm.domain.state: missing parameter Domain"},
		{"kvm.domain.state", []string{""}, "", "missing parameter Domain"},
		{"kvm.domain.state", []string{"a/b"}, "", `invalid parameter Domain "a/b"`},
		{"kvm.domain.state", []string{"a", "b"}, "", "too many parameters: got 2, the key takes at most 1"},
		{"kvm.domain.get", []string{"test"}, `"state":"running"`, ""},
		{"kvm.domain.disk.discovery", []string{"test"}, "[]", ""},
		{"kvm.domain.net.discovery", []string{"test"}, "[]", ""},
		// the test driver reports 192.168.122.3 for "test": made up, never dialled
		{"kvm.domain.tcp", []string{"test", "80"}, "", "address 192.168.122.3 comes from libvirt's test driver (test:///default), whose addresses are made up"},
		{"kvm.domain.http", []string{"test"}, "", "whose addresses are made up: guest checks never dial them"},
		{"kvm.domain.tcp", []string{"test", "0"}, "", `invalid parameter Port "0"`},
		{"kvm.domain.http", []string{"test", "80", "no-slash"}, "", `invalid parameter Path "no-slash"`},
		{"kvm.domain.agent.ping", []string{"nope"}, "", "no such domain"},
		{"kvm.nope", nil, "", "kvm.nope: unknown key"},
		{"haproxy.get", nil, "", "haproxy is not configured: set Plugins.KVM.HAProxy.Socket"},
	}
	for _, c := range cases {
		v, err := get(t, p, c.key, c.params...)
		if c.err != "" {
			require.ErrorContains(t, err, c.err, c.key)
			continue
		}
		require.NoError(t, err, c.key)
		require.Contains(t, v, c.want, c.key)
	}
	var hv map[string]any
	v, err := get(t, p, "kvm.hypervisor.get")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(v), &hv))
	require.Equal(t, "TEST", hv["hypervisor_type"])
	require.Equal(t, "test:///default", hv["uri"])
	require.Greater(t, hv["cpus"], float64(0))
}

func TestUnreachableLibvirt(t *testing.T) {
	p, _ := configured(t, "qemu:///system?socket=/nonexistent/sock")
	v, err := get(t, p, "kvm.hypervisor.ping")
	require.NoError(t, err, "ping is never an error")
	require.Equal(t, "0", v)
	_, err = get(t, p, "kvm.domain.state", "web-07")
	require.ErrorContains(t, err, "kvm.domain.state[web-07]: libvirt domain statistics")
	require.ErrorContains(t, err, "/nonexistent/sock")
}

// Discovery lists domains in every state with title, UUID and the configured private address.
func TestDiscoveryOnTestDriver(t *testing.T) {
	doms := []kvmtest.Domain{{Name: "web-01", Title: "Web", IP: "127.0.0.1"}, {Name: "web-02", IP: "127.0.0.1", Shutoff: true},
		{Name: "db-01", IP: "10.9.9.9"}, {Name: "paused-1", Paused: true}}
	p, _ := configured(t, kvmtest.NodeURI(t, doms))
	v, err := get(t, p, "kvm.domain.discovery")
	require.NoError(t, err)
	var rows []map[string]string
	require.NoError(t, json.Unmarshal([]byte(v), &rows))
	require.Len(t, rows, 4)
	byName := map[string]map[string]string{}
	for _, r := range rows {
		byName[r["{#KVM.DOMAIN.NAME}"]] = r
	}
	require.Equal(t, "running", byName["web-01"]["{#KVM.DOMAIN.STATE}"])
	require.Equal(t, "Web", byName["web-01"]["{#KVM.DOMAIN.TITLE}"])
	require.Equal(t, "127.0.0.1", byName["web-01"]["{#KVM.DOMAIN.IP}"])
	require.Regexp(t, `^00000000-0000-4000-8000-0+$`, byName["web-01"]["{#KVM.DOMAIN.UUID}"])
	require.Equal(t, "shutoff", byName["web-02"]["{#KVM.DOMAIN.STATE}"])
	require.Equal(t, "paused", byName["paused-1"]["{#KVM.DOMAIN.STATE}"])
	// the state by UUID, the name a Zabbix guest host carries
	v, err = get(t, p, "kvm.domain.state", byName["web-02"]["{#KVM.DOMAIN.UUID}"])
	require.NoError(t, err)
	require.Equal(t, "shutoff", v)
}

// Every read-only kvm.* key on a 1,000-domain hypervisor (libvirt's test driver), from one
// collection: discovery lists them all in any state, and each per-domain key answers for each.
func TestKeysOn1000Domains(t *testing.T) {
	doms := kvmtest.Domains(1000)
	p, h := configured(t, kvmtest.NodeURI(t, doms), "CacheSeconds", "3600")
	v, err := get(t, p, "kvm.domain.discovery")
	require.NoError(t, err)
	var rows []map[string]string
	require.NoError(t, json.Unmarshal([]byte(v), &rows))
	require.Len(t, rows, 1000)
	shutoff := 0
	for _, r := range rows {
		if r["{#KVM.DOMAIN.STATE}"] == "shutoff" {
			shutoff++
		}
	}
	require.Equal(t, 100, shutoff)
	for _, d := range doms {
		want := "running"
		if d.Shutoff {
			want = "shutoff"
		}
		v, err := get(t, p, "kvm.domain.state", d.Name)
		require.NoError(t, err)
		require.Equal(t, want, v, d.Name)
		for _, k := range []string{"kvm.domain.get", "kvm.domain.disk.discovery", "kvm.domain.net.discovery"} {
			_, err := get(t, p, k, d.Name)
			require.NoError(t, err, k, d.Name)
		}
	}
	v, err = get(t, p, "kvm.hypervisor.get")
	require.NoError(t, err)
	require.Contains(t, v, `"domains":{"crashed":0,"other":0,"paused":0,"running":900,"shutoff":100,"total":1000}`)
	require.EqualValues(t, 2, h.Stats.Calls(), "one collection served every key")
}
