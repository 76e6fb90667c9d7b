//go:build integration

// Package cli runs the built binary as a person or a Zabbix script would, on libvirt's test driver.
package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

func setup(t *testing.T) (bin, conf, audit string) {
	t.Helper()
	harness.RequireRoot(t)
	bin = harness.PluginBinary(t)
	dir := t.TempDir()
	conf, audit = filepath.Join(dir, "kvm.conf"), filepath.Join(dir, "audit.log")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf("Plugins.KVM.URI=test:///default\nPlugins.KVM.Actions.Enable=1\n"+
		"Plugins.KVM.Actions.AllowDomains=test\nPlugins.KVM.StateDir=%s/state\nPlugins.KVM.AuditLog=%s\n", dir, audit)), 0o600))
	return bin, conf, audit
}

func run(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	require.NoError(t, err)
	return string(out), 0
}

// A frontend button's long action runs detached: the command answers at once, and the action
// itself completes and is audited after the caller is gone.
func TestBackgroundAction(t *testing.T) {
	bin, conf, audit := setup(t)
	start := time.Now()
	out, rc := run(t, bin, "-c", conf, "--caller", "zabbix-frontend", "--background", "suspend", "test")
	require.Equal(t, 0, rc, out)
	require.Contains(t, out, "started in the background")
	require.Less(t, time.Since(start), 5*time.Second)
	harness.WaitFor(t, 30*time.Second, 50*time.Millisecond, "the detached action's end line", func() (bool, error) {
		for _, l := range harness.AuditLines(t, audit) {
			if l["verb"] == "suspend" {
				return l["outcome"] == "done" && l["caller"] == "zabbix-frontend", fmt.Errorf("%v", l)
			}
		}
		return false, nil
	})
	// what cannot run is said at once, not in the background
	out, rc = run(t, bin, "-c", filepath.Join(t.TempDir(), "missing.conf"), "--background", "suspend", "test")
	require.Equal(t, 1, rc, out)
	require.Contains(t, out, "no such file")
	out, rc = run(t, bin, "-c", conf, "--background", "diagnose", "test")
	require.Equal(t, 2, rc, out)
}

// diagnose changes nothing and says what it cannot know on the test driver.
func TestDiagnose(t *testing.T) {
	bin, conf, audit := setup(t)
	out, rc := run(t, bin, "-c", conf, "diagnose", "test")
	require.Equal(t, 0, rc, out)
	var d struct {
		Verdict string
		Signals struct{ CPU, Agent string }
	}
	require.NoError(t, json.Unmarshal([]byte(out), &d), out)
	require.Equal(t, "unknown", d.Verdict)
	require.True(t, strings.Contains(d.Signals.CPU, "test driver"), d.Signals.CPU)
	require.Empty(t, harness.AuditLines(t, audit), "a diagnosis is no action: nothing audited")
}
