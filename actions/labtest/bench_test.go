//go:build integration

package labtest

import (
	"context"
	"net/http"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

// Run: go test -run '^$' -bench . -benchtime 3x ./actions/labtest/
// Each iteration breaks a real TCG guest (outside the timer) and measures until it serves HTTP again.

// BenchmarkResetToHTTP: from the reset request to the guest answering HTTP 200 again.
func BenchmarkResetToHTTP(b *testing.B) {
	e := newEnv(b)
	g := e.guest(b, "act-bench-reset", lab.GuestOpts{ACPI: true, Agent: true})
	g.WaitHTTP(b, boot)
	act := e.actor(b, func(p *actions.Policy) { p.MaxForcedPerHour = 1000 })
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := act.Do(context.Background(), actions.VerbReset, g.Name()); err != nil {
			b.Fatal(err)
		}
		// libvirt returns once QEMU has reset the machine, so the first 200 comes from the new boot
		harness.WaitFor(b, boot, 50*time.Millisecond, g.Name()+" HTTP after reset", func() (bool, error) {
			code, _, err := g.HTTP("/", time.Second)
			return err == nil && code == http.StatusOK, err
		})
	}
}

// BenchmarkRecover measures Recover from start to health for each exit of the ladder.
func BenchmarkRecover(b *testing.B) {
	e := newEnv(b)
	web := e.guest(b, "act-bench-web", lab.GuestOpts{ACPI: true, Agent: true})
	deaf := e.guest(b, "act-bench-deaf", lab.GuestOpts{})
	frozen := e.guest(b, "act-bench-frozen", lab.GuestOpts{ACPI: true, Agent: true})
	for _, g := range []*lab.Guest{web, deaf, frozen} {
		g.WaitHTTP(b, boot)
	}
	web.WaitAgent(b, boot)
	cases := []struct {
		name    string
		g       *lab.Guest
		exit    string
		breakIt func(b *testing.B, g *lab.Guest)
	}{
		{"exit=reboot", web, actions.StepReboot, func(b *testing.B, g *lab.Guest) { g.WaitAgent(b, boot); g.KillHTTPD(b) }},
		{"exit=reset", deaf, actions.StepReset, func(b *testing.B, g *lab.Guest) { g.WaitHTTP(b, boot); g.KillHTTPD(b) }},
		{"exit=destroy_start", frozen, actions.StepDestroyStart, func(b *testing.B, g *lab.Guest) { g.WaitHTTP(b, boot); g.Freeze(b) }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			act := e.actor(b, func(p *actions.Policy) {
				p.MaxForcedPerHour = 1000
				p.GentleTimeout = 8 * time.Second // what the ignored or hung gentle rung costs
				p.ForcedTimeout = 25 * time.Second
			})
			var health time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				c.breakIt(b, c.g)
				b.StartTimer()
				rep, err := act.Recover(context.Background(), c.g.Name())
				if err != nil || rep.Exit != c.exit {
					b.Fatalf("recover %s: exit %q, %v", c.g.Name(), rep.Exit, err)
				}
				for _, s := range rep.Steps {
					if s.Step == actions.StepWaitHealth && s.Outcome == actions.OutcomeDone {
						health += time.Duration(s.Duration)
					}
				}
			}
			b.ReportMetric(health.Seconds()/float64(b.N), "s-boot-to-health/op")
		})
	}
}
