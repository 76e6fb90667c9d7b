package lab_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/lab"
)

func bootTime(t *testing.T, l *lab.Lab, name string) {
	g := l.Guest(t, name, lab.GuestOpts{ACPI: true, Agent: true, Start: true})
	t0 := time.Now()
	pid := g.PID(t)
	cg, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, ln := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(ln, "Cpus_allowed_list") || strings.HasPrefix(ln, "Sig") {
			t.Logf("%s: %s", name, ln)
		}
	}
	sched, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/sched")
	for _, ln := range strings.Split(string(sched), "\n") {
		if strings.Contains(ln, "policy") || strings.Contains(ln, "prio") {
			t.Logf("%s: %s", name, ln)
		}
	}
	t.Logf("%s cgroup: %s", name, strings.ReplaceAll(string(cg), "\n", " | "))
	for time.Since(t0) < 60*time.Second {
		if strings.Contains(g.SerialLog(), "Linux version") {
			t.Logf("%s: Linux version at %.1fs", name, time.Since(t0).Seconds())
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestDebugBoot(t *testing.T) {
	l := lab.Get(t)
	t.Logf("libvirtd pid %d", l.LibvirtdPID())
	bootTime(t, l, "first")
	l.RestartLibvirtd(t)
	bootTime(t, l, "second")
}
