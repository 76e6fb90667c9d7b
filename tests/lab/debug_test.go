package lab_test

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/lab"
)

func TestDebugBoot(t *testing.T) {
	l := lab.Get(t)
	g := l.Guest(t, "dbg", lab.GuestOpts{ACPI: true, Agent: true, Start: true})
	t0 := time.Now()
	ready := false
	marks := map[string]bool{}
	for time.Since(t0) < 60*time.Second {
		sl := g.SerialLog()
		for _, m := range []string{"SeaBIOS", "Booting from ROM", "Linux version", "Run /init", "Power Button", "KVMLAB"} {
			if !marks[m] && strings.Contains(sl, m) {
				marks[m] = true
				t.Logf("%q at %.1fs", m, time.Since(t0).Seconds())
			}
		}
		if !ready && strings.Contains(g.SerialLog(), lab.ReadyMarker) {
			t.Logf("READY at %.1fs", time.Since(t0).Seconds())
			ready = true
			out, _ := exec.Command("ip", "neigh").CombinedOutput()
			t.Logf("neigh: %s", out)
		}
		code, _, err := g.HTTP("/", time.Second)
		if err == nil && code == 200 {
			t.Logf("HTTP at %.1fs", time.Since(t0).Seconds())
			break
		}
		if ready {
			t.Logf("%.1fs: %v", time.Since(t0).Seconds(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, _ := exec.Command("ip", "neigh").CombinedOutput()
	t.Logf("neigh: %s", out)
	t.Logf("serial: %s", g.SerialLog())
}
