//go:build integration

// Package remote proves the documented way Zabbix calls actions: a remote command reaches a real
// zabbix_agent2 as system.run[<command>,nowait|wait]; AllowKey/DenyKey let only the plugin binary
// run, and hostile names never make the shell run anything else.
package remote

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

type env struct {
	agent *harness.Agent
	bin   string
	conf  string
	audit string
	dir   string
}

// setup starts an agent whose system.run rules are those of conf/zabbix_agent2.conf, with the
// shipped plugin path replaced by the test build.
func setup(t *testing.T, version string) *env {
	bin := harness.PluginBinary(t)
	dir := t.TempDir()
	e := &env{bin: bin, dir: dir, conf: filepath.Join(dir, "kvm.conf"), audit: filepath.Join(dir, "audit.log")}
	kvmConf := fmt.Sprintf("Plugins.KVM.System.Path=%s\nPlugins.KVM.URI=test:///default\nPlugins.KVM.Actions.Enable=1\n"+
		"Plugins.KVM.Actions.AllowDomains=.*\nPlugins.KVM.StateDir=%s/state\nPlugins.KVM.AuditLog=%s\n", bin, dir, e.audit)
	require.NoError(t, os.WriteFile(e.conf, []byte(kvmConf), 0o644))

	e.agent = harness.WriteAgentConf(t, version, harness.AgentOptions{Extra: harness.SystemRunRules(t, bin), Timeout: 10,
		Options: map[string]string{"URI": "test:///default"}})
	e.agent.Start(t)
	return e
}

func (e *env) auditLines(t *testing.T) []map[string]any { return harness.AuditLines(t, e.audit) }

// script is what the provisioned Zabbix global script holds, with {HOST.HOST} expanded by Zabbix.
func (e *env) script(verb, host string) string {
	return fmt.Sprintf("%s -c %s --caller zabbix %s '%s'", e.bin, e.conf, verb, host)
}

func TestRemoteCommandRunsThePlugin(t *testing.T) {
	for _, v := range []string{"6.0", "7.0"} {
		t.Run(v, func(t *testing.T) {
			e := setup(t, v)
			out, err := e.agent.Query("system.run["+e.script("suspend", "test")+",wait]", 20*time.Second)
			require.NoError(t, err)
			require.Contains(t, out, `"outcome": "done"`)
			require.Contains(t, out, `"state": "paused"`)
			// nowait, the way a Zabbix Action sends it: the agent answers 1 at once, the plugin still runs
			out, err = e.agent.Query("system.run["+e.script("resume", "test")+",nowait]", 20*time.Second)
			require.NoError(t, err)
			require.Equal(t, "1", out)
			harness.WaitFor(t, 20*time.Second, 50*time.Millisecond, "audit lines of both commands", func() (bool, error) {
				return len(e.auditLines(t)) == 2, nil
			})
			lines := e.auditLines(t)
			require.Equal(t, "suspend", lines[0]["verb"])
			require.Equal(t, "zabbix", lines[0]["caller"])
			require.Equal(t, "resume", lines[1]["verb"])
			require.Equal(t, "test", lines[1]["domain"])
		})
	}
}

// Every other command is refused by the agent itself.
func TestOnlyThePluginMayRun(t *testing.T) {
	e := setup(t, "7.0")
	marker := filepath.Join(e.dir, "ran")
	for _, cmd := range []string{
		"touch " + marker,
		"/bin/sh -c 'touch " + marker + "'",
		e.bin + "-evil reboot test; touch " + marker, // a longer binary name with our prefix
		"/usr/bin/env " + e.bin + " reboot test",     // the plugin, but not as the command itself
	} {
		for _, mode := range []string{"", ",wait", ",nowait"} {
			_, err := e.agent.Query("system.run["+cmd+mode+"]", 10*time.Second)
			var ns *harness.ErrNotSupported
			require.ErrorAs(t, err, &ns, cmd+mode)
			require.Contains(t, ns.Reason, "Unknown metric system.run", cmd+mode)
		}
	}
	_, err := os.Stat(marker)
	require.True(t, os.IsNotExist(err), "a refused command ran")
}

// Host names as Zabbix allows them (letters, digits, space, dot, dash, underscore) and hostile
// strings, placed where the provisioned script puts {HOST.HOST}: the plugin gets the name as one
// argument, literally, and no shell construct in it runs.
func TestHostileNamesRunNothingElse(t *testing.T) {
	e := setup(t, "7.0")
	marker := filepath.Join(e.dir, "pwned")
	names := []string{
		"web 01",
		"web-01.example_x",
		"a;touch " + marker,
		"a$(touch " + marker + ")",
		"a`touch " + marker + "`",
		"a|touch " + marker,
		"a&&touch " + marker,
		"a\ntouch " + marker,
		"wéb-ünïcode-01",
		"${IFS}touch${IFS}" + marker,
	}
	for _, n := range names {
		out, err := e.agent.Query("system.run["+quoteParam(e.script("suspend", n))+",wait]", 20*time.Second)
		require.NoError(t, err, n)
		require.Contains(t, out, `"outcome"`, n)
	}
	lines := e.auditLines(t)
	require.Len(t, lines, len(names), "one audit line per attempt")
	for i, n := range names {
		require.Equal(t, n, lines[i]["domain"], "the plugin received the name literally")
		require.NotEqual(t, "done", lines[i]["outcome"], "no such domain on the test driver")
	}
	_, err := os.Stat(marker)
	require.True(t, os.IsNotExist(err), "a shell construct inside a name ran")
}

// quoteParam quotes an item-key parameter the way Zabbix does when it builds system.run[...]
// from a command containing commas, brackets or quotes.
func quoteParam(s string) string {
	if !strings.ContainsAny(s, ",]\"") && !strings.HasPrefix(s, " ") {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}
