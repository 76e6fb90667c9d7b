package plugin

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"
)

func opts(kv ...string) map[string]conf.Value {
	m := map[string]conf.Value{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = conf.Value{Value: kv[i+1], Line: 10 + i}
	}
	return m
}

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name    string
		in      map[string]conf.Value
		wantErr string
		check   func(*testing.T, *Config)
	}{
		{"+defaults", opts(), "", func(t *testing.T, c *Config) {
			require.Equal(t, "qemu:///system", c.URI)
			require.Equal(t, 7*time.Second, c.Timeout, "agent Timeout by default")
			require.Equal(t, 5, c.CacheSeconds)
			require.False(t, c.ActionsEnable)
			require.Equal(t, 3, c.MaxForcedPerHour)
			require.Equal(t, "/var/lib/zabbix-agent2-plugin-kvm", c.StateDir)
		}},
		{"+everything", opts("System.Path", "/usr/sbin/p", "URI", "test:///default", "Timeout", "9", "CacheSeconds", "0",
			"Actions.Enable", "1", "Actions.AllowDomains", "web-.*", "Exec.AllowCommands", "uptime, systemctl restart nginx",
			"GuestNetworks", "10.77.0.0/24,fd00::/64", "HAProxy.Socket", "/run/haproxy/admin.sock",
			"Push.Server", "127.0.0.1:10051", "Push.Host", "hv-01"), "", func(t *testing.T, c *Config) {
			require.Equal(t, 9*time.Second, c.Timeout)
			require.True(t, c.ActionsEnable)
			require.Equal(t, []string{"uptime", "systemctl restart nginx"}, c.ExecAllow)
			require.Len(t, c.GuestNetworks, 2)
			require.NoError(t, c.GuestAddressAllowed("10.77.0.11"))
			require.ErrorContains(t, c.GuestAddressAllowed("192.168.1.1"), "outside Plugins.KVM.GuestNetworks")
		}},
		{"+haproxy tcp form", opts("HAProxy.Socket", "ipv4@127.0.0.1:9999"), "", nil},
		{"-timeout text", opts("Timeout", "abc"), `invalid option Plugins.KVM.Timeout="abc" (line 10): must be an integer from 1 to 30`, nil},
		{"-timeout range", opts("Timeout", "31"), "Plugins.KVM.Timeout", nil},
		{"-cache negative", opts("CacheSeconds", "-1"), "Plugins.KVM.CacheSeconds", nil},
		{"-enable 2", opts("Actions.Enable", "2"), "Plugins.KVM.Actions.Enable", nil},
		{"-bad regex", opts("Actions.AllowDomains", "web-("), "Plugins.KVM.Actions.AllowDomains", nil},
		{"-bad exec regex", opts("Exec.AllowCommands", "ok,[x"), `"[x" is not a valid regular expression`, nil},
		{"-bad cidr", opts("GuestNetworks", "10.77.0.0"), "Plugins.KVM.GuestNetworks", nil},
		{"-relative state dir", opts("StateDir", "state"), "Plugins.KVM.StateDir", nil},
		{"-uri", opts("URI", "qemu"), "Plugins.KVM.URI", nil},
		{"-haproxy", opts("HAProxy.Socket", "localhost:9999"), "Plugins.KVM.HAProxy.Socket", nil},
		{"-push without host", opts("Push.Server", "127.0.0.1:10051", "HAProxy.Socket", "/s"), "Plugins.KVM.Push.Host: required", nil},
		{"-push without haproxy", opts("Push.Server", "127.0.0.1:10051", "Push.Host", "h"), "needs Plugins.KVM.HAProxy.Socket", nil},
		{"-push server", opts("Push.Server", "zabbix"), "Plugins.KVM.Push.Server", nil},
		{"-unknown", opts("Uri", "x", "Foo.Bar", "1"), "unknown option Plugins.KVM.Foo.Bar (line 12), Plugins.KVM.Uri (line 10)", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseOptions(tt.in, 7)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestValidateTakesTheAgentTree(t *testing.T) {
	p := New()
	require.NoError(t, p.Validate(conf.Build(Name, map[string]string{"System.Path": "/x", "URI": "test:///default"})))
	err := p.Validate(conf.Build(Name, map[string]string{"System.Path": "/x", "Actions.Enable": "yes"}))
	require.ErrorContains(t, err, "Plugins.KVM.Actions.Enable")
}

func TestConfFileMatchesOptionTable(t *testing.T) {
	b, err := os.ReadFile("../conf/kvm.conf")
	require.NoError(t, err)
	require.Equal(t, ConfDoc(), string(b), "conf/kvm.conf is generated: run make conf")
	// and the shipped file parses with no error
	o, err := ReadConfigFile("../conf/kvm.conf")
	require.NoError(t, err)
	_, err = ParseOptions(o, 3)
	require.NoError(t, err)
}

func TestParseItemKey(t *testing.T) {
	tests := []struct {
		in     string
		key    string
		params []string
		err    string
	}{
		{"kvm.hypervisor.ping", "kvm.hypervisor.ping", nil, ""},
		{"kvm.domain.state[web-07]", "kvm.domain.state", []string{"web-07"}, ""},
		{`kvm.domain.http[web-07,80,"/a,b"]`, "kvm.domain.http", []string{"web-07", "80", "/a,b"}, ""},
		{`kvm.domain.exec[w,"echo \"hi\"",wait]`, "kvm.domain.exec", []string{"w", `echo "hi"`, "wait"}, ""},
		{"k[]", "k", []string{""}, ""},
		{"k[a,]", "k", []string{"a", ""}, ""},
		{"k[ a, b]", "k", []string{"a", "b"}, ""},
		{`k["a]`, "", nil, "unterminated"},
		{`k["a"b]`, "", nil, "after a quoted parameter"},
		{"k[a", "", nil, "expected name[params]"},
		{"", "", nil, "invalid item key"},
	}
	for _, tt := range tests {
		k, p, err := ParseItemKey(tt.in)
		if tt.err != "" {
			require.ErrorContains(t, err, tt.err, tt.in)
			continue
		}
		require.NoError(t, err, tt.in)
		require.Equal(t, tt.key, k)
		require.Equal(t, tt.params, p, tt.in)
	}
}

func configured(t *testing.T, uri string, extra ...string) *Plugin {
	t.Helper()
	c, err := ParseOptions(opts(append([]string{"URI", uri, "Timeout", "5"}, extra...)...), 3)
	require.NoError(t, err)
	p := New()
	p.Apply(c)
	t.Cleanup(p.Stop)
	return p
}

func get(t *testing.T, p *Plugin, key string, params ...string) (string, error) {
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
	p := configured(t, "test:///default")
	cases := []struct {
		key    string
		params []string
		want   string // exact value, or a substring for JSON
		err    string
	}{
		{"kvm.hypervisor.ping", nil, "1", ""},
		{"kvm.domain.state", []string{"test"}, "running", ""},
		{"kvm.domain.state", []string{"nope"}, "", `kvm.domain.state[nope]: no such domain: "nope"`},
		{"kvm.domain.state", nil, "", "kvm.domain.state: missing parameter Domain"},
		{"kvm.domain.state", []string{""}, "", "missing parameter Domain"},
		{"kvm.domain.state", []string{"a/b"}, "", `invalid parameter Domain "a/b"`},
		{"kvm.domain.state", []string{"a", "b"}, "", "too many parameters: got 2, the key takes at most 1"},
		{"kvm.domain.get", []string{"test"}, `"state":"running"`, ""},
		{"kvm.domain.disk.discovery", []string{"test"}, "[]", ""},
		{"kvm.domain.net.discovery", []string{"test"}, "[]", ""},
		{"kvm.domain.tcp", []string{"test", "80"}, "", "guest checks are off"},
		{"kvm.domain.tcp", []string{"test", "0"}, "", `invalid parameter Port "0"`},
		{"kvm.domain.http", []string{"test", "80", "no-slash"}, "", `invalid parameter Path "no-slash"`},
		{"kvm.domain.agent.ping", []string{"nope"}, "", "no such domain"},
		{"kvm.nope", nil, "", "kvm.nope: unknown key"},
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
	p := configured(t, "qemu:///system?socket=/nonexistent/sock")
	v, err := get(t, p, "kvm.hypervisor.ping")
	require.NoError(t, err, "ping is never an error")
	require.Equal(t, "0", v)
	_, err = get(t, p, "kvm.domain.state", "web-07")
	require.ErrorContains(t, err, "kvm.domain.state[web-07]: libvirt domain statistics")
	require.ErrorContains(t, err, "/nonexistent/sock")
}

func TestNotConfigured(t *testing.T) {
	_, err := New().ExportContext(context.Background(), "kvm.hypervisor.ping", nil)
	require.ErrorContains(t, err, "not configured")
}

// Discovery lists domains in every state with title and the configured private address; the
// guest checks reach a server the test runs on that (loopback) address.
func TestDiscoveryAndGuestChecks(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer srv.Close()
	_, portS, _ := net.SplitHostPort(srv.Listener.Addr().String())
	doms := []kvmtest.Domain{{Name: "web-01", Title: "Web", IP: "127.0.0.1"}, {Name: "web-02", IP: "127.0.0.1", Shutoff: true},
		{Name: "db-01", IP: "10.9.9.9"}, {Name: "paused-1", Paused: true}}
	p := configured(t, kvmtest.NodeURI(t, doms), "GuestNetworks", "127.0.0.0/8")
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
	require.Equal(t, "shutoff", byName["web-02"]["{#KVM.DOMAIN.STATE}"])
	require.Equal(t, "paused", byName["paused-1"]["{#KVM.DOMAIN.STATE}"])

	v, err = get(t, p, "kvm.domain.tcp", "web-01", portS)
	require.NoError(t, err)
	require.Equal(t, "1", v)
	v, err = get(t, p, "kvm.domain.http", "web-01", portS, "/")
	require.NoError(t, err)
	var hr struct {
		Status int     `json:"status"`
		TimeMs float64 `json:"time_ms"`
	}
	require.NoError(t, json.Unmarshal([]byte(v), &hr))
	require.Equal(t, 200, hr.Status)
	port, _ := strconv.Atoi(portS)
	srv.Close()
	v, err = get(t, p, "kvm.domain.tcp", "web-01", strconv.Itoa(port))
	require.NoError(t, err)
	require.Equal(t, "0", v)
	// an address outside GuestNetworks is never connected to
	_, err = get(t, p, "kvm.domain.tcp", "db-01", "80")
	require.ErrorContains(t, err, "address 10.9.9.9 is outside Plugins.KVM.GuestNetworks")
}

// zabbix_agent2 panics at start on a description that does not start with a capital letter
// (seen on 6.0.14: "cannot register metric … without capital first letter"), and its registry also
// wants a final period; the key names must be valid item keys.
func TestKeyDeclarations(t *testing.T) {
	keyRe := regexp.MustCompile(`^[a-z0-9_.]+$`)
	for k, d := range keyTable {
		require.Regexp(t, keyRe, k)
		desc := d.metric.Description
		require.NotEmpty(t, desc, k)
		require.True(t, unicode.IsUpper(rune(desc[0])), "%s: description must start with a capital letter: %q", k, desc)
		require.True(t, strings.HasSuffix(desc, "."), "%s: description must end with a period: %q", k, desc)
	}
}

// Every read-only kvm.* key on a 1,000-domain hypervisor (libvirt's test driver), from one
// collection: discovery lists them all in any state, and each per-domain key answers for each.
func TestKeysOn1000Domains(t *testing.T) {
	doms := kvmtest.Domains(1000)
	p := configured(t, kvmtest.NodeURI(t, doms), "CacheSeconds", "3600")
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
	require.EqualValues(t, 2, p.cache.Calls(), "one collection served every key")
}
