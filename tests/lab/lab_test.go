//go:build integration

package lab_test

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }

const boot = 60 * time.Second // generous: four TCG guests at once on 2 cores take about 6 s

// TestGuests proves the harness on two running guests (a: agent, b: no agent) and one (c) defined
// shut off, then started. The subtests run in order; the destructive ones come last.
func TestGuests(t *testing.T) {
	harness.RequireRoot(t)
	l := lab.Get(t)
	a := l.Guest(t, "lab-a", lab.GuestOpts{ACPI: true, Agent: true, Start: true, Title: "lab guest A"})
	b := l.Guest(t, "lab-b", lab.GuestOpts{ACPI: true, Start: true})
	c := l.Guest(t, "lab-c", lab.GuestOpts{ACPI: true, Agent: true})

	t.Run("defined but not started", func(t *testing.T) {
		if st := c.State(t); st != "shut off" {
			t.Fatalf("guest %s state %q, want shut off", c.Name(), st)
		}
		if _, err := os.Stat("/run/libvirt/qemu/" + c.Name() + ".pid"); err == nil {
			t.Errorf("shut-off guest %s has a QEMU pidfile", c.Name())
		}
		c.Start(t) // boots while the next subtest waits for a and b
	})

	t.Run("boot and serve HTTP", func(t *testing.T) {
		seen := map[string]string{}
		for _, g := range []*lab.Guest{a, b, c} {
			g.WaitHTTP(t, boot)
			code, body, err := g.HTTP("/", 2*time.Second)
			if err != nil || code != 200 || !strings.Contains(body, "kvmlab guest "+g.Name()) {
				t.Errorf("guest %s: GET http://%s/ = %d %q %v, want 200 naming the guest", g.Name(), g.IP(), code, body, err)
			}
			if other, dup := seen[g.IP()]; dup {
				t.Errorf("guests %s and %s share IP %s", other, g.Name(), g.IP())
			}
			seen[g.IP()] = g.Name()
			_, subnet, _ := net.ParseCIDR(lab.Subnet)
			if !subnet.Contains(net.ParseIP(g.IP())) {
				t.Errorf("guest %s: IP %s outside %s", g.Name(), g.IP(), lab.Subnet)
			}
			// rcS prints the marker after httpd, acpid and the agent started: it may trail HTTP a little.
			ready := lab.ReadyMarker + " name=" + g.Name() + " ip=" + g.IP() + "/24"
			harness.WaitFor(t, 20*time.Second, 100*time.Millisecond, "ready line of "+g.Name(), func() (bool, error) {
				log := g.SerialLog()
				return strings.Contains(log, ready), fmt.Errorf("serial log so far:\n%s", log)
			})
			cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(g.PID(t)) + "/cmdline")
			if err != nil || !strings.Contains(string(cmdline), "guest="+g.Name()) {
				t.Errorf("guest %s: PID %d is not its QEMU: %q %v", g.Name(), g.PID(t), cmdline, err)
			}
		}
		if title, err := l.Virsh("desc", "--title", a.Name()); err != nil || title != "lab guest A" {
			t.Errorf("title of %s = %q, %v", a.Name(), title, err)
		}
		if uuid, err := l.Virsh("domuuid", a.Name()); err != nil || uuid != a.UUID() {
			t.Errorf("uuid of %s = %q, %v; want %s", a.Name(), uuid, err, a.UUID())
		}
	})

	t.Run("agent", func(t *testing.T) {
		a.WaitAgent(t, boot)
		if out, err := a.AgentCommand(`{"execute":"guest-ping"}`, 5*time.Second); err != nil || out != `{"return":{}}` {
			t.Errorf("guest-ping on %s = %q, %v", a.Name(), out, err)
		}
		code, out, err := a.Exec(10*time.Second, "/bin/busybox", "hostname")
		if err != nil || code != 0 || strings.TrimSpace(out) != a.Name() {
			t.Errorf("guest-exec hostname on %s = %d %q %v", a.Name(), code, out, err)
		}
		t0 := time.Now()
		if out, err := b.AgentCommand(`{"execute":"guest-ping"}`, 2*time.Second); err == nil {
			t.Errorf("guest %s runs no agent, but guest-ping answered %q", b.Name(), out)
		} else {
			t.Logf("guest-ping without agent fails after %.1fs: %v", time.Since(t0).Seconds(), err)
		}
	})

	t.Run("freeze and thaw", func(t *testing.T) {
		b.Freeze(t)
		if code, _, err := b.HTTP("/", 1500*time.Millisecond); err == nil {
			t.Errorf("frozen guest %s answered HTTP %d", b.Name(), code)
		}
		if st := b.State(t); st != "running" {
			t.Errorf("libvirt state of the frozen guest = %q; the lab expects libvirt not to notice (running)", st)
		}
		if code, _, err := a.HTTP("/", 2*time.Second); err != nil || code != 200 {
			t.Errorf("guest %s next to the frozen one: HTTP %d %v", a.Name(), code, err)
		}
		b.Thaw(t)
		b.WaitHTTP(t, 20*time.Second)
	})

	t.Run("restart libvirtd keeps guests", func(t *testing.T) {
		before := map[string]int{}
		for _, g := range []*lab.Guest{a, b, c} {
			before[g.Name()] = g.PID(t)
		}
		oldPID := l.LibvirtdPID()
		l.RestartLibvirtd(t)
		if l.LibvirtdPID() == oldPID || l.LibvirtdPID() == 0 {
			t.Errorf("libvirtd pid %d before, %d after restart", oldPID, l.LibvirtdPID())
		}
		for _, g := range []*lab.Guest{a, b, c} {
			if pid := g.PID(t); pid != before[g.Name()] {
				t.Errorf("guest %s: QEMU pid %d before the restart, %d after", g.Name(), before[g.Name()], pid)
			}
			if st := g.State(t); st != "running" {
				t.Errorf("guest %s: state %q after the restart", g.Name(), st)
			}
			if code, _, err := g.HTTP("/", 2*time.Second); err != nil || code != 200 {
				t.Errorf("guest %s: HTTP %d %v after the restart", g.Name(), code, err)
			}
		}
		if _, err := a.AgentCommand(`{"execute":"guest-ping"}`, 5*time.Second); err != nil {
			t.Errorf("agent of %s after the libvirtd restart: %v", a.Name(), err)
		}
	})

	t.Run("kill httpd", func(t *testing.T) {
		for _, g := range []*lab.Guest{a, b} { // a through the agent, b through the CGI
			g.KillHTTPD(t)
			if code, _, err := g.HTTP("/", time.Second); err == nil {
				t.Errorf("guest %s: HTTP %d after KillHTTPD", g.Name(), code)
			}
		}
		if out, err := a.AgentCommand(`{"execute":"guest-ping"}`, 5*time.Second); err != nil {
			t.Errorf("agent of %s after KillHTTPD: %q %v", a.Name(), out, err)
		}
		if st := a.State(t); st != "running" {
			t.Errorf("guest %s: state %q after KillHTTPD", a.Name(), st)
		}
	})
}

// TestACPIShutdown sends the same ACPI power-button request to a guest with acpid, one without, and
// the no-kernel domain: only the first may power off.
func TestACPIShutdown(t *testing.T) {
	harness.RequireRoot(t)
	l := lab.Get(t)
	// The first case obeys; the others must ignore the request.
	cases := []struct {
		name string
		opts lab.GuestOpts
	}{
		{"acpi-on", lab.GuestOpts{ACPI: true, Start: true}},
		{"acpi-off", lab.GuestOpts{ACPI: false, Agent: false, Start: true}},
		{"no-kernel", lab.GuestOpts{NoKernel: true, Start: true}},
	}
	guests := make([]*lab.Guest, len(cases))
	for i, tc := range cases {
		guests[i] = l.Guest(t, tc.name, tc.opts)
	}
	for i, tc := range cases {
		if !tc.opts.NoKernel {
			guests[i].WaitHTTP(t, boot) // acpid is up once httpd is
		}
	}
	t0 := time.Now()
	for _, g := range guests {
		if _, err := l.Virsh("shutdown", "--mode", "acpi", g.Name()); err != nil {
			t.Fatalf("ACPI shutdown request to %s: %v", g.Name(), err)
		}
	}
	harness.WaitFor(t, 30*time.Second, 200*time.Millisecond, "acpi-on guest to power off", func() (bool, error) {
		st := guests[0].State(t)
		return st == "shut off", nil
	})
	t.Logf("guest with acpid shut off %.1fs after the ACPI request", time.Since(t0).Seconds())
	// Absence cannot be awaited: watch the others for as long as the obedient one needed, and at
	// least 5 s, failing as soon as one of them powers off.
	window := time.Since(t0)
	if window < 5*time.Second {
		window = 5 * time.Second
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(window); time.Now().Before(end); <-tick.C {
		for i, tc := range cases[1:] {
			if st := guests[i+1].State(t); st != "running" {
				t.Fatalf("%s: state %q %.1fs after the ACPI request; it must ignore ACPI", tc.name, st, time.Since(t0).Seconds())
			}
		}
	}
	t.Logf("guests without acpid still running %.1fs after the ACPI request", time.Since(t0).Seconds())
}
