package plugin

import (
	"context"
	"math"
	"os"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"
	sdk "zabbix-agent2-plugin-kvm/plugin/sdk/plugin"
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
			require.Equal(t, int64(256<<20), c.MemoryLimit)
		}},
		{"+memory limit off", opts("MemoryLimit", "0"), "", func(t *testing.T, c *Config) { require.Zero(t, c.MemoryLimit) }},
		{"-memory limit", opts("MemoryLimit", "64k"), `invalid option Plugins.KVM.MemoryLimit="64k" (line 10): must be an integer from 0 to 65536`, nil},
		{"+everything", opts("System.Path", "/usr/sbin/p", "URI", "qemu+ssh://hv-01/system", "Timeout", "9", "CacheSeconds", "0",
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
		{"-push server", opts("Push.Server", "zabbix"), "Plugins.KVM.Push.Server", nil},
		{"-zabbix url without token", opts("Zabbix.URL", "http://zbx/"), "Zabbix.URL and Zabbix.TokenFile go together", nil},
		{"-zabbix url scheme", opts("Zabbix.URL", "zbx", "Zabbix.TokenFile", "/t"), "Plugins.KVM.Zabbix.URL", nil},
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
	p := New(nil)
	require.NoError(t, p.Validate(conf.Build(Name, map[string]string{"System.Path": "/x", "URI": "test:///default"})))
	err := p.Validate(conf.Build(Name, map[string]string{"System.Path": "/x", "Actions.Enable": "yes"}))
	require.ErrorContains(t, err, "Plugins.KVM.Actions.Enable")
}

// The plugin's run sets the runtime's soft limit from the option; 0 lifts it (and any GOMEMLIMIT).
func TestConfigureSetsMemoryLimit(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	p := New(func(*Config, string, Logger) (*Deps, error) { return &Deps{}, nil })
	p.Configure(&sdk.GlobalOptions{Timeout: 3}, conf.Build(Name, map[string]string{"System.Path": "/x", "MemoryLimit": "100"}))
	require.Equal(t, int64(100<<20), debug.SetMemoryLimit(-1))
	p.Configure(&sdk.GlobalOptions{Timeout: 3}, conf.Build(Name, map[string]string{"System.Path": "/x", "MemoryLimit": "0"}))
	require.Equal(t, int64(math.MaxInt64), debug.SetMemoryLimit(-1))
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

func TestNotConfigured(t *testing.T) {
	_, err := New(nil).ExportContext(context.Background(), "kvm.hypervisor.ping", nil)
	require.EqualError(t, err, "kvm.hypervisor.ping: plugin is not configured yet")
	_, err = New(nil).ExportContext(context.Background(), "kvm.nope", nil)
	require.EqualError(t, err, "kvm.nope: unknown key")
}

func TestKeyDeclarations(t *testing.T) {
	keyRe := regexp.MustCompile(`^[a-z0-9_.]+$`)
	for k, d := range declarations() {
		require.Regexp(t, keyRe, k)
		desc := d.Description
		require.NotEmpty(t, desc, k)
		require.True(t, unicode.IsUpper(rune(desc[0])), "%s: description must start with a capital letter: %q", k, desc)
		require.True(t, strings.HasSuffix(desc, "."), "%s: description must end with a period: %q", k, desc)
	}
}
