//go:build integration

// Package remote proves the documented way Zabbix calls actions: a remote command reaches a real
// zabbix_agent2 as system.run[<command>,nowait|wait]; the shipped AllowKey/DenyKey rules let only
// `exec <plugin> -…` run, and a corpus of hostile keys (corpus_test.go) never makes the shell run
// anything else.
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
	return fmt.Sprintf("exec %s -c %s --caller zabbix %s '%s'", e.bin, e.conf, verb, host)
}

func TestRemoteCommandRunsThePlugin(t *testing.T) {
	for _, v := range harness.AgentVersions {
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

// quoteParam quotes an item-key parameter the way Zabbix does when it builds system.run[...]
// from a command containing commas, brackets or quotes.
func quoteParam(s string) string {
	if !strings.ContainsAny(s, ",]\"") && !strings.HasPrefix(s, " ") {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}

// The README's warning, measured: the agent orders AllowKey/DenyKey lines by their line number in
// their own file, so an older rule early in the main file is tried before the shipped rules in an
// included file and lets a shell through; the same key with the shipped rules alone is refused.
func TestLeftoverRuleInAnotherFileWins(t *testing.T) {
	shipped, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "conf", "zabbix_agent2.conf"))
	require.NoError(t, err)
	for _, v := range harness.AgentVersions {
		t.Run(v, func(t *testing.T) {
			dir := t.TempDir()
			// the shipped file as an included one, line for line: its rules (with /bin/echo as the
			// plugin) where they are, every other line a comment
			var b strings.Builder
			for _, l := range strings.Split(string(shipped), "\n") {
				if !strings.HasPrefix(l, "AllowKey=") && !strings.HasPrefix(l, "DenyKey=") {
					l = "#"
				}
				b.WriteString(strings.ReplaceAll(l, harness.ShippedPluginPath, "/bin/echo") + "\n")
			}
			included := filepath.Join(dir, "kvm-rules.conf")
			require.NoError(t, os.WriteFile(included, []byte(b.String()), 0o644))
			marker := filepath.Join(dir, "ran")
			key := "system.run[/bin/echo hi; /usr/bin/touch " + marker + "]"

			alone := harness.WriteAgentConf(t, v, harness.AgentOptions{Extra: []string{"Include=" + included}})
			out, err := alone.Run(t, 60*time.Second, "-t", key)
			require.NoError(t, err, out)
			require.Contains(t, out, "Unknown metric system.run")
			_, err = os.Stat(marker)
			require.True(t, os.IsNotExist(err), "the shipped rules let a shell through")

			leftover := harness.WriteAgentConf(t, v, harness.AgentOptions{
				Extra: []string{"AllowKey=system.run[/bin/echo *]", "Include=" + included}})
			out, err = leftover.Run(t, 60*time.Second, "-t", key)
			require.NoError(t, err, out)
			_, err = os.Stat(marker)
			require.NoError(t, err, "the leftover rule should have been tried first: %s", out)
		})
	}
}
