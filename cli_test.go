package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"zabbix-agent2-plugin-kvm/plugin"
)

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
