package lab_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/lab"
)

func TestDebugBoot(t *testing.T) {
	l := lab.Get(t)
	g := l.Guest(t, "dbg", lab.GuestOpts{ACPI: true, Agent: true, Start: true})
	t0 := time.Now()
	pid := g.PID(t)
	for time.Since(t0) < 60*time.Second {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		f := strings.Fields(string(b))
		st, _ := l.Virsh("domstate", "--reason", "dbg")
		t.Logf("%.1fs utime=%s stime=%s threads=%s serial=%d state=%s", time.Since(t0).Seconds(), f[13], f[14], f[19], len(g.SerialLog()), st)
		code, _, err := g.HTTP("/", 500*time.Millisecond)
		if err == nil && code == 200 {
			t.Logf("HTTP at %.1fs", time.Since(t0).Seconds())
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
}
