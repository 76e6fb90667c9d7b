//go:build integration

package labtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

// remoteReboot: the documented path of a Zabbix Action. A real zabbix_agent2 7.0, allowed to run
// only the plugin binary, gets system.run[<plugin> … reboot '<host>',nowait]; the plugin reboots a
// real guest, verified by the guest's reset, and audits it. Hostile names in the host position run
// nothing: the shipped DenyKey rules refuse them, the guest keeps its QEMU process and no marker
// file appears (tests/remote has the full corpus of hostile keys).
func remoteReboot(t *testing.T, e *env, g *lab.Guest) {
	bin := harness.PluginBinary(t)
	dir := t.TempDir()
	conf, audit := filepath.Join(dir, "kvm.conf"), filepath.Join(dir, "audit.log")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(
		"Plugins.KVM.System.Path=%s\nPlugins.KVM.URI=%s\nPlugins.KVM.Actions.Enable=1\nPlugins.KVM.Actions.AllowDomains=act-.*\n"+
			"Plugins.KVM.Actions.GentleSeconds=60\nPlugins.KVM.StateDir=%s/state\nPlugins.KVM.AuditLog=%s\n",
		bin, e.lab.URI(), dir, audit)), 0o644))
	agent := harness.WriteAgentConf(t, "7.0", harness.AgentOptions{Plugin: bin, Timeout: 30,
		Options: map[string]string{"URI": e.lab.URI()},
		// the shipped rules (conf/zabbix_agent2.conf) with the test build's path
		Extra: harness.SystemRunRules(t, bin)})
	agent.Start(t)
	pid := g.PID(t)

	// what the provisioned global script holds, {HOST.HOST} expanded by Zabbix
	script := func(verb, host string) string {
		return fmt.Sprintf("exec %s -c %s --caller zabbix %s '%s'", bin, conf, verb, host)
	}
	auditLines := func() []map[string]any { return harness.AuditLines(t, audit) }

	t0 := time.Now()
	out, err := agent.Query("system.run["+script("reboot", g.Name())+",nowait]", 10*time.Second)
	require.NoError(t, err)
	require.Equal(t, "1", out, "nowait: the agent answers at once")
	harness.WaitFor(t, 90*time.Second, 100*time.Millisecond, "the reboot's audit line", func() (bool, error) {
		return len(auditLines()) == 1, nil
	})
	l := auditLines()[0]
	assert.Equal(t, "reboot", l["verb"])
	assert.Equal(t, "zabbix", l["caller"])
	assert.Equal(t, g.Name(), l["domain"])
	require.Equal(t, "done", l["outcome"], "%v", l)
	assert.Contains(t, l["detail"], "guest reset observed")
	g.WaitHTTP(t, boot)
	t.Logf("remote reboot: HTTP again %.1fs after the system.run request", time.Since(t0).Seconds())
	assert.Equal(t, pid, g.PID(t), "a gentle reboot keeps the QEMU process")

	marker := filepath.Join(dir, "pwned")
	hostile := []string{
		g.Name() + ";virsh -c " + e.lab.URI() + " destroy " + g.Name() + ";touch " + marker,
		g.Name() + "$(touch " + marker + ")",
		g.Name() + "`touch " + marker + "`",
		g.Name() + "|touch " + marker,
		g.Name() + " && touch " + marker,
		"act-ünïcode $(touch " + marker + ")",
	}
	for _, n := range hostile {
		_, err := agent.Query("system.run["+quoteParam(script("destroy", n))+",wait]", 30*time.Second)
		var ns *harness.ErrNotSupported
		require.ErrorAs(t, err, &ns, n)
		assert.Equal(t, "Unknown metric system.run", ns.Reason, n)
	}
	require.Len(t, auditLines(), 1, "the agent refused every hostile key: the plugin never ran")
	_, err = os.Stat(marker)
	assert.True(t, os.IsNotExist(err), "a shell construct inside a name ran")
	assert.Equal(t, "running", g.State(t))
	assert.Equal(t, pid, g.PID(t), "the guest was not destroyed")
}

// quoteParam quotes an item-key parameter as Zabbix does when a command holds commas, brackets or quotes.
func quoteParam(s string) string {
	if !strings.ContainsAny(s, ",]\"") && !strings.HasPrefix(s, " ") {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}
