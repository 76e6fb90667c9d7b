package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"zabbix-agent2-plugin-kvm/plugin"
)

func TestHoistGlobalFlags(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"recover", "--dry-run", "web-07"}, []string{"--dry-run", "recover", "web-07"}},
		{[]string{"-c", "/etc/k.conf", "reboot", "--caller", "zabbix", "web-07"}, []string{"-c", "/etc/k.conf", "--caller", "zabbix", "reboot", "web-07"}},
		// after the domain nothing moves: the verb refuses it (nothing appended to a script changes its caller)
		{[]string{"reboot", "web-07", "--caller", "x"}, []string{"reboot", "web-07", "--caller", "x"}},
		{[]string{"hold", "web-07", "--for", "1h", "--timeout=5"}, []string{"hold", "web-07", "--for", "1h", "--timeout=5"}},
		{[]string{"exec", "web-07", "--", "echo", "--dry-run"}, []string{"exec", "web-07", "--", "echo", "--dry-run"}},
		{[]string{"--dry-run", "forced-restart", "web-07"}, []string{"--dry-run", "forced-restart", "web-07"}},
	} {
		got := hoistGlobalFlags(tc.in)
		if len(got) != len(tc.want) {
			t.Fatalf("%v: got %v, want %v", tc.in, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("%v: got %v, want %v", tc.in, got, tc.want)
			}
		}
	}
}

// A root-owned file whose text someone else chose is no config: /proc/self/cmdline, a log.
func TestConfigFileRefusals(t *testing.T) {
	if err := checkConfigFile("/proc/self/cmdline"); err == nil || !strings.Contains(err.Error(), "pseudo file system") {
		t.Fatalf("procfs: %v", err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "log.conf")
	if err := os.WriteFile(p, []byte("2026/12/02 07:02:19 started\nPlugins.KVM.Actions.Enable=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := plugin.ReadConfigFile(p)
	if err == nil || !strings.Contains(err.Error(), "line 1: not an option") {
		t.Fatalf("a log line: %v", err)
	}
}
