package provision

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"zabbix-agent2-plugin-kvm/conf/templates"
)

func TestOptionsRejectBadValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"gentle below the server minimum", Options{GentleAfter: 30 * time.Second}, "gentle-after 30s"},
		{"forced not whole seconds", Options{ForcedAfter: 90500 * time.Millisecond}, "forced-after 1m30.5s"},
		{"smtp port", Options{SMTPPort: 70000}, "smtp-port 70000"},
		{"hypervisor port", Options{HypervisorPort: -1}, "hypervisor-port -1"},
		{"shell in plugin path", Options{PluginPath: "/x; rm -rf /"}, "plugin-path"},
		{"relative plugin path", Options{PluginPath: "bin/kvm"}, "absolute path"},
		{"command substitution in config file", Options{ConfigFile: "/etc/$(id)"}, "config-file"},
		{"media without user", Options{UserEmail: "a@b"}, "without a user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.check()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	assert.NoError(t, (&Options{}).check(), "nothing given is valid: a rerun keeps, a fresh server gets defaults")
}

// resolve: not given = what the server has, else the default; given = given.
func TestResolveKeepsWhatTheServerHas(t *testing.T) {
	o := Options{}
	require.NoError(t, o.resolve(&current{}))
	assert.Equal(t, DefaultPlugin, o.PluginPath)
	assert.Equal(t, "localhost", o.SMTPServer)
	assert.Equal(t, 25, o.SMTPPort)
	assert.Equal(t, 2*time.Minute, o.GentleAfter)
	assert.Equal(t, 3*time.Minute, o.ForcedAfter)
	assert.Equal(t, 15*time.Minute, o.PageAfter)
	assert.Equal(t, Off, o.Repair)
	assert.Empty(t, o.ChatURL, "no chat unless asked for")
	assert.Empty(t, o.SMSScript, "no SMS unless asked for")
	assert.Equal(t, DefaultUserGroup, o.UserGroup)
	assert.Equal(t, DefaultOperatorGroup, o.OperatorGroup)

	cur := &current{email: emailSettings{server: "smtp.example.com", port: 587, helo: "zbx", from: "z@example.com"},
		chatURL: "https://chat.example.com/hook", smsScript: "sms.sh", userGroup: "Ops", operatorGroup: "Buttons",
		pluginPath: "/opt/kvm", configFile: "/etc/kvm.conf", gentle: 5 * time.Minute, forced: 4 * time.Minute,
		pageAfter: time.Hour, repair: true}
	o = Options{HypervisorHost: "hv-02"}
	require.NoError(t, o.resolve(cur))
	assert.Equal(t, Options{HypervisorHost: "hv-02", PluginPath: "/opt/kvm", ConfigFile: "/etc/kvm.conf",
		SMTPServer: "smtp.example.com", SMTPPort: 587, SMTPHelo: "zbx", SMTPFrom: "z@example.com",
		ChatURL: "https://chat.example.com/hook", SMSScript: "sms.sh", UserGroup: "Ops", OperatorGroup: "Buttons",
		GentleAfter: 5 * time.Minute, ForcedAfter: 4 * time.Minute, PageAfter: time.Hour, Repair: On,
		Templates: templates.All()}, o)

	o = Options{SMTPServer: "mx", GentleAfter: time.Minute, Repair: Off}
	require.NoError(t, o.resolve(cur))
	assert.Equal(t, "mx", o.SMTPServer)
	assert.Equal(t, time.Minute, o.GentleAfter)
	assert.Equal(t, 4*time.Minute, o.ForcedAfter)
	assert.Equal(t, Off, o.Repair)
}

func TestResolveRejectsCombinations(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		cur  current
		want string
	}{
		{"page before the forced restart", Options{GentleAfter: time.Minute, ForcedAfter: time.Minute, PageAfter: 2 * time.Minute}, current{}, "page-after 2m0s"},
		{"page before the server's forced restart", Options{PageAfter: 4 * time.Minute}, current{gentle: 2 * time.Minute, forced: 3 * time.Minute}, "page-after 4m0s"},
		{"one group for both jobs", Options{UserGroup: "Ops", OperatorGroup: "Ops"}, current{}, "both \"Ops\""},
		{"chat address without chat", Options{User: "u", UserChat: "@u"}, current{}, "oncall-chat needs --chat-url"},
		{"phone without SMS script", Options{User: "u", UserPhone: "+1555"}, current{}, "oncall-phone needs --sms-script"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.ErrorContains(t, tc.o.resolve(&tc.cur), tc.want)
		})
	}
	o := Options{User: "u", UserChat: "@u", UserPhone: "+1555"}
	assert.NoError(t, o.resolve(&current{chatURL: "https://c", smsScript: "s.sh"}), "media types from an earlier run count")
}

// The commands are the contract with the plugin's CLI and the agent's AllowKey rules.
func TestCommands(t *testing.T) {
	o := Options{PluginPath: "/usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm"}
	assert.Equal(t, "exec /usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm --caller zabbix reboot '{HOST.HOST}'", o.Command(LadderCaller, "reboot"))
	o.ConfigFile = "/etc/kvm.conf"
	assert.Equal(t, "exec /usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm -c /etc/kvm.conf --caller zabbix-frontend hold '{HOST.HOST}' --for 1h --reason frontend",
		o.Command(ButtonCaller, "hold", "--for", "1h", "--reason", "frontend"))
	path, conf := parseCommand(o.Command(LadderCaller, "reboot"))
	assert.Equal(t, [2]string{o.PluginPath, o.ConfigFile}, [2]string{path, conf})
	assert.Equal(t, "exec /usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm -c /etc/kvm.conf --caller zabbix --event {EVENT.ID} forced-restart '{HOST.HOST}'",
		o.ladderCommand("forced-restart"), "the ladder names its problem, for the outcome's message")
	path, conf = parseCommand(o.ladderCommand("reboot"))
	assert.Equal(t, [2]string{o.PluginPath, o.ConfigFile}, [2]string{path, conf})
	path, conf = parseCommand("/opt/kvm --caller zabbix reboot '{HOST.HOST}'")
	assert.Equal(t, [2]string{"/opt/kvm", ""}, [2]string{path, conf})
	path, _ = parseCommand("sudo /opt/kvm reboot")
	assert.Empty(t, path, "not a command Setup made")

	verbs := map[string]bool{}
	for _, b := range buttons {
		verbs[b.verb] = true
		cmd := o.buttonCommand(b)
		assert.True(t, strings.HasPrefix(cmd, "exec "+o.PluginPath+" -"), "%s: the form the agent's AllowKey rules let through", cmd)
		assert.Equal(t, 1, strings.Count(cmd, "{"), "%s: only {HOST.HOST}, never a free-text macro", cmd)
		assert.NotContains(t, b.confirm+b.desc, "{$", b.name)
		assert.Equal(t, b.verb == "reboot" || b.verb == "forced-restart" || b.verb == "recover", strings.Contains(cmd, " --background "),
			"%s: the long verbs run detached, the quick ones answer the button", cmd)
		if b.verb == "diagnose" {
			assert.Empty(t, b.confirm, "diagnose changes nothing: no confirmation")
		} else {
			assert.NotEmpty(t, b.confirm, "%s changes a guest or its automation: confirmation", b.name)
		}
	}
	for _, v := range []string{"reboot", "forced-restart", "recover", "drain", "ready", "hold", "release", "diagnose"} {
		assert.True(t, verbs[v], "no button for %s", v)
	}
}

func TestParseZabbixDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"60": time.Minute, "90s": 90 * time.Second, "15m": 15 * time.Minute,
		"1h": time.Hour, "2d": 48 * time.Hour, "1w": 7 * 24 * time.Hour} {
		got, err := parseZabbixDuration(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "{$KVM.GENTLE}", "1.5m", "-1s", "5y"} {
		_, err := parseZabbixDuration(bad)
		assert.Error(t, err, bad)
	}
}

func TestImportChanges(t *testing.T) {
	raw, err := os.ReadFile("testdata/importcompare-7.0-reimport.json")
	require.NoError(t, err)
	var reimport any
	require.NoError(t, json.Unmarshal(raw, &reimport))
	// Derived from the capture: one real difference in an item name.
	renamed := strings.Replace(string(raw), `"name":"Domain state"`, `"name":"Domain state (old)"`, 1)
	require.NotEqual(t, string(raw), renamed, "fixture lost the item the test edits")
	var changed any
	require.NoError(t, json.Unmarshal([]byte(renamed), &changed))
	for _, tc := range []struct {
		name string
		in   any
		want bool
	}{
		{"empty list (6.0 and 7.0 when nothing differs)", []any{}, false},
		{"7.0 re-import of the same file", reimport, false},
		{"an item renamed", changed, true},
		{"a template added", map[string]any{"templates": map[string]any{"added": []any{map[string]any{"after": map[string]any{}}}}}, true},
		{"an item removed", map[string]any{"templates": map[string]any{"updated": []any{map[string]any{"before": map[string]any{}, "after": map[string]any{},
			"items": map[string]any{"removed": []any{map[string]any{"before": map[string]any{"key": "x"}}}}}}}}, true},
		{"a non-default type appears", map[string]any{"templates": map[string]any{"updated": []any{map[string]any{
			"before": map[string]any{"name": "x"}, "after": map[string]any{"name": "x", "type": "TRAP"}}}}}, true},
		{"a dashboard added", map[string]any{"templates": map[string]any{"updated": []any{map[string]any{"before": map[string]any{}, "after": map[string]any{},
			"dashboards": map[string]any{"added": []any{map[string]any{"after": map[string]any{"name": "d"}}}}}}}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, importChanges(tc.in)) })
	}
}

// importRules name every kind of object a template export can carry, on both sides of 6.2's
// template/host group split, so that nothing in the YAML is silently dropped.
func TestImportRulesCoverTemplateContent(t *testing.T) {
	for _, g62 := range []bool{false, true} {
		r := (&setup{groups62: g62}).importRules()
		for _, k := range []string{"templates", "items", "triggers", "discoveryRules", "valueMaps", "graphs", "httptests",
			"templateDashboards", "templateLinkage"} {
			assert.Contains(t, r, k, "6.2+: %v", g62)
		}
		for _, k := range []string{"templateDashboards", "valueMaps", "graphs", "items", "triggers", "discoveryRules", "httptests"} {
			assert.Equal(t, map[string]any{"createMissing": true, "updateExisting": true, "deleteMissing": true}, r[k], k)
		}
		if g62 {
			assert.Contains(t, r, "template_groups")
			assert.Contains(t, r, "host_groups")
			assert.NotContains(t, r, "groups")
		} else {
			assert.Contains(t, r, "groups")
		}
	}
}

// yamlMacros reads the template-level macros of an export file.
func yamlMacros(t *testing.T, src []byte) map[string]string {
	t.Helper()
	var doc struct {
		Export struct {
			Templates []struct {
				Macros []struct{ Macro, Value string }
				Rules  []struct {
					HostPrototypes []struct {
						Macros []struct{ Macro, Value string }
					} `yaml:"host_prototypes"`
				} `yaml:"discovery_rules"`
			}
		} `yaml:"zabbix_export"`
	}
	require.NoError(t, yaml.Unmarshal(src, &doc))
	out := map[string]string{}
	for _, m := range doc.Export.Templates[0].Macros {
		out[m.Macro] = m.Value
	}
	for _, r := range doc.Export.Templates[0].Rules {
		for _, hp := range r.HostPrototypes {
			for _, m := range hp.Macros {
				out["prototype "+m.Macro] = m.Value
			}
		}
	}
	return out
}

func TestSetMacros(t *testing.T) {
	for _, tpl := range templates.All() {
		t.Run(tpl.File, func(t *testing.T) {
			before := yamlMacros(t, tpl.YAML)
			out, err := setMacros(tpl.YAML, []macro{
				{Macro: "{$KVM.POLL.INTERVAL}", Value: "5s"},              // has a value line
				{Macro: "{$KVM.DOMAIN}", Value: "it's"},                   // guest: no value line; needs quoting
				{Macro: "{$SITE.ADDED}", Value: "x", Description: "ours"}, // not in the file
				{Macro: "{$MULTI}", Value: "a\nb"},                        // cannot be carried: skipped
			})
			require.NoError(t, err)
			after := yamlMacros(t, out)
			want := map[string]string{}
			for k, v := range before {
				want[k] = v
			}
			want["{$KVM.POLL.INTERVAL}"] = "5s"
			want["{$KVM.DOMAIN}"] = "it's"
			want["{$SITE.ADDED}"] = "x"
			assert.Equal(t, want, after, "only the template's own macros change; host prototype macros stay")
			again, err := setMacros(out, []macro{{Macro: "{$KVM.POLL.INTERVAL}", Value: "5s"}})
			require.NoError(t, err)
			assert.Equal(t, string(out), string(again), "setting the same values again changes nothing")
		})
	}
	_, err := setMacros([]byte("zabbix_export: {}\n"), nil)
	assert.ErrorContains(t, err, "no template macro list")
}

func TestTemplateYAMLSetsPageAfterAndKeepsSiteValues(t *testing.T) {
	g, err := templates.Get(templates.Guest)
	require.NoError(t, err)
	s := &setup{o: Options{PageAfter: 17 * time.Minute}, cur: &current{macros: map[string][]macro{
		templates.Guest: {{Macro: "{$KVM.AGENT.SILENT}", Value: "10m", Type: "0"}, {Macro: "{$KVM.SECRET}", Type: "1"},
			{Macro: pageMacro, Value: "1h", Type: "0"}}}}}
	out, err := s.templateYAML(g)
	require.NoError(t, err)
	m := yamlMacros(t, out)
	assert.Equal(t, "1020s", m[pageMacro], "--page-after (resolved) wins over the server's value")
	assert.Equal(t, "10m", m["{$KVM.AGENT.SILENT}"], "the site's value survives the import")
	assert.NotContains(t, m, "{$KVM.SECRET}", "a secret's value cannot be read, so it is not written")
}

func TestSubset(t *testing.T) {
	have := map[string]any{"name": "a", "type": "4", "parameters": []any{
		map[string]any{"name": "URL", "value": "u", "sortorder": "0"}, map[string]any{"name": "To", "value": "t"}}}
	assert.True(t, subset(map[string]any{"type": 4, "parameters": []map[string]any{{"name": "To", "value": "t"}, {"name": "URL", "value": "u"}}}, have))
	assert.False(t, subset(map[string]any{"parameters": []map[string]any{{"name": "URL", "value": "u"}}}, have), "a missing list element is a change")
	assert.False(t, subset(map[string]any{"type": 1}, have))
	assert.False(t, subset(map[string]any{"missing": ""}, have))
}
