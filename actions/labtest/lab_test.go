// Package labtest runs the actions package against real libvirtd + QEMU (TCG) guests of tests/lab,
// inside the network namespace lab.Main creates. It holds tests and benchmarks only.
package labtest

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }

const boot = 60 * time.Second // five TCG guests booting at once on 2 cores take ≈ 7 s

// env is one lab connection plus the guests' addresses for the HTTP health check.
type env struct {
	lab  *lab.Lab
	conn *kvm.Conn
	ips  map[string]string
	dir  string
}

func newEnv(t testing.TB) *env {
	harness.RequireRoot(t)
	l := lab.Get(t)
	// Enough workers that calls stuck on a SIGSTOPped QEMU (gentle request, reset) leave room for the rest.
	conn := kvm.NewConn(l.URI(), 10*time.Second, 8)
	t.Cleanup(conn.Close)
	return &env{lab: l, conn: conn, ips: map[string]string{}, dir: t.TempDir()}
}

func (e *env) guest(t testing.TB, name string, o lab.GuestOpts) *lab.Guest {
	o.Start = true
	g := e.lab.Guest(t, name, o)
	e.ips[name] = g.IP()
	return g
}

// httpHealth is the check the plugin's owner wires in: GET / on the guest's private address answers 200.
func (e *env) httpHealth(ctx context.Context, domain string) (bool, string) {
	ip, ok := e.ips[domain]
	if !ok {
		return false, "no address known for " + domain
	}
	timeout := time.Second
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return false, "no time left"
	}
	c := &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + ip + "/")
	if err != nil {
		return false, err.Error()
	}
	resp.Body.Close()
	return resp.StatusCode == 200, fmt.Sprintf("HTTP %d from %s", resp.StatusCode, ip)
}

func (e *env) policy(mod func(*actions.Policy)) actions.Policy {
	p := actions.Policy{
		Enable:           true,
		AllowDomains:     `act-[a-z-]+`,
		AllowCommands:    []string{`/bin/busybox (hostname|true)`, `/bin/busybox sh -c 'exit [0-9]+'`, `/bin/busybox seq [0-9]+`},
		MaxForcedPerHour: 50,
		StateDir:         filepath.Join(e.dir, "state"),
		AuditLog:         filepath.Join(e.dir, "audit.log"),
		GentleMode:       actions.ModeACPI,
		GentleTimeout:    20 * time.Second,
		ForcedTimeout:    20 * time.Second,
		HealthTimeout:    40 * time.Second,
		ExecTimeout:      10 * time.Second,
		LockWait:         5 * time.Second,
	}
	if mod != nil {
		mod(&p)
	}
	return p
}

func (e *env) actor(t testing.TB, mod func(*actions.Policy)) *actions.Actor {
	a, err := actions.New(e.conn, e.policy(mod), actions.Options{Caller: "labtest", Health: e.httpHealth, Logf: t.Logf})
	require.NoError(t, err)
	return a
}

func steps(rep actions.Report) []string {
	var out []string
	for _, s := range rep.Steps {
		out = append(out, s.Step+":"+s.Outcome)
	}
	return out
}

func step(t *testing.T, rep actions.Report, name string) actions.Step {
	t.Helper()
	for _, s := range rep.Steps {
		if s.Step == name {
			return s
		}
	}
	t.Fatalf("no step %s in %v", name, steps(rep))
	return actions.Step{}
}

func logReport(t *testing.T, rep actions.Report) {
	t.Helper()
	var b strings.Builder
	for _, s := range rep.Steps {
		fmt.Fprintf(&b, "\n  %-13s %-8s %6.2fs  %s", s.Step, s.Outcome, time.Duration(s.Duration).Seconds(), s.Detail)
	}
	t.Logf("recover %s: %s exit=%q in %.2fs%s", rep.Domain, rep.Outcome, rep.Exit, time.Duration(rep.Duration).Seconds(), b.String())
}

// TestRealGuests boots every guest the scenarios need at once (boots overlap), then runs the
// scenarios in order.
func TestRealGuests(t *testing.T) {
	e := newEnv(t)
	a := e.guest(t, "act-a", lab.GuestOpts{ACPI: true, Agent: true})           // well-behaved
	noAgent := e.guest(t, "act-noagent", lab.GuestOpts{ACPI: true})            // acpid, no guest agent
	deaf := e.guest(t, "act-deaf", lab.GuestOpts{})                            // Linux that ignores ACPI, no agent
	bios := e.guest(t, "act-bios", lab.GuestOpts{NoKernel: true})              // sits in SeaBIOS
	frozen := e.guest(t, "act-frozen", lab.GuestOpts{ACPI: true, Agent: true}) // will be SIGSTOPped
	for _, g := range []*lab.Guest{a, noAgent, deaf, frozen} {
		g.WaitHTTP(t, boot)
	}
	a.WaitAgent(t, boot)
	frozen.WaitAgent(t, boot)
	ctx := context.Background()

	t.Run("lifecycle", func(t *testing.T) {
		act := e.actor(t, nil)
		agentMode := e.actor(t, func(p *actions.Policy) { p.GentleMode = actions.ModeAgent })
		seq := []struct {
			a       *actions.Actor
			verb    string
			outcome string
			state   string // virsh domstate afterwards
			http    bool   // wait for HTTP afterwards
		}{
			{act, actions.VerbStart, actions.OutcomeDone, "running", false},
			{act, actions.VerbResume, actions.OutcomeDone, "running", false},
			{act, actions.VerbSuspend, actions.OutcomeDone, "paused", false},
			{act, actions.VerbSuspend, actions.OutcomeDone, "paused", false},
			{act, actions.VerbResume, actions.OutcomeDone, "running", true},
			{act, actions.VerbReboot, actions.OutcomeDone, "running", true},       // ACPI → libvirt fake reboot
			{agentMode, actions.VerbReboot, actions.OutcomeDone, "running", true}, // guest agent → reboot in the guest
			{act, actions.VerbReset, actions.OutcomeDone, "running", true},
			{act, actions.VerbShutdown, actions.OutcomeDone, "shut off", false},
			{act, actions.VerbShutdown, actions.OutcomeDone, "shut off", false},
			{act, actions.VerbDestroy, actions.OutcomeDone, "shut off", false},
			{act, actions.VerbReboot, actions.OutcomeNotDone, "shut off", false},
			{act, actions.VerbReset, actions.OutcomeNotDone, "shut off", false},
			{act, actions.VerbSuspend, actions.OutcomeNotDone, "shut off", false},
			{act, actions.VerbResume, actions.OutcomeNotDone, "shut off", false},
			{act, actions.VerbStart, actions.OutcomeDone, "running", true},
			{act, actions.VerbStart, actions.OutcomeDone, "running", false},
			{act, actions.VerbDestroy, actions.OutcomeDone, "shut off", false},
			{act, actions.VerbStart, actions.OutcomeDone, "running", true},
		}
		for i, s := range seq {
			res, err := s.a.Do(ctx, s.verb, a.Name())
			t.Logf("%2d %-8s %-8s %s → %s %.2fs %s", i, s.verb, res.Outcome, res.Before, res.After, time.Duration(res.Duration).Seconds(), res.Detail)
			require.Equal(t, s.outcome, res.Outcome, "step %d %s: %v", i, s.verb, err)
			if s.outcome == actions.OutcomeDone {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, actions.ErrNotDone)
			}
			assert.Equal(t, s.state, a.State(t), "step %d %s", i, s.verb)
			if s.http {
				a.WaitHTTP(t, boot)
			}
		}
		a.WaitAgent(t, boot)
	})

	t.Run("exec", func(t *testing.T) {
		act := e.actor(t, nil)
		res, err := act.Exec(ctx, a.Name(), []string{"/bin/busybox", "hostname"}, true)
		require.NoError(t, err)
		assert.True(t, res.Exited)
		assert.Equal(t, 0, res.ExitCode)
		assert.Equal(t, a.Name()+"\n", res.Stdout)

		res, err = act.Exec(ctx, a.Name(), []string{"/bin/busybox", "sh", "-c", "exit 3"}, true)
		require.NoError(t, err, "a non-zero exit is a result")
		assert.Equal(t, 3, res.ExitCode)

		res, err = act.Exec(ctx, a.Name(), []string{"/bin/busybox", "seq", "100000"}, true)
		require.NoError(t, err)
		assert.True(t, res.StdoutTruncated)
		assert.Len(t, res.Stdout, actions.MaxOutput)
		assert.True(t, strings.HasPrefix(res.Stdout, "1\n2\n3\n"))
		assert.Contains(t, res.Detail, "truncated")

		res, err = act.Exec(ctx, a.Name(), []string{"/bin/busybox", "true"}, false)
		require.NoError(t, err)
		assert.Positive(t, res.PID)
		assert.False(t, res.Exited)

		_, err = act.Exec(ctx, a.Name(), []string{"/bin/busybox", "poweroff"}, true)
		require.ErrorIs(t, err, actions.ErrRefused)
		_, err = act.Exec(ctx, a.Name(), []string{"/bin/busybox", "sh", "-c", "exit 1; poweroff"}, true)
		require.ErrorIs(t, err, actions.ErrRefused)
		assert.Equal(t, "running", a.State(t))

		short := e.actor(t, func(p *actions.Policy) { p.ExecTimeout = 4 * time.Second })
		t0 := time.Now()
		_, err = short.Exec(ctx, noAgent.Name(), []string{"/bin/busybox", "true"}, true)
		took := time.Since(t0)
		require.ErrorIs(t, err, actions.ErrNoAgent)
		assert.Less(t, took, 5*time.Second)
		t.Logf("exec without agent: %.2fs: %v", took.Seconds(), err)
	})

	t.Run("recover after killed httpd ends after the gentle reboot", func(t *testing.T) {
		a.KillHTTPD(t)
		rep, err := e.actor(t, nil).Recover(ctx, a.Name(), "", "")
		logReport(t, rep)
		require.NoError(t, err)
		assert.Equal(t, actions.StepReboot, rep.Exit)
		assert.Equal(t, []string{"check:not_done", "drain:skipped", "reboot:done", "wait_health:done", "ready:skipped"}, steps(rep))
	})

	t.Run("guest ignoring ACPI is reset", func(t *testing.T) {
		deaf.KillHTTPD(t)
		act := e.actor(t, func(p *actions.Policy) { p.GentleTimeout = 8 * time.Second })
		rep, err := act.Recover(ctx, deaf.Name(), "", "")
		logReport(t, rep)
		require.NoError(t, err)
		assert.Equal(t, actions.StepReset, rep.Exit)
		assert.Equal(t, []string{"check:not_done", "drain:skipped", "reboot:not_done", "reset:done", "wait_health:done", "ready:skipped"}, steps(rep))
		assert.Contains(t, step(t, rep, actions.StepReboot).Detail, "ignored")
	})

	t.Run("SeaBIOS guest: gentle not done, forced rungs used", func(t *testing.T) {
		act := e.actor(t, func(p *actions.Policy) {
			p.GentleTimeout = 5 * time.Second
			p.HealthTimeout = 3 * time.Second
		})
		rep, err := act.Recover(ctx, bios.Name(), "", "")
		logReport(t, rep)
		require.ErrorIs(t, err, actions.ErrNotDone, "it never serves HTTP")
		assert.Equal(t, []string{"check:not_done", "drain:skipped", "reboot:not_done", "reset:done", "wait_health:not_done",
			"destroy_start:done", "wait_health:not_done"}, steps(rep))
		assert.Equal(t, "running", bios.State(t))
	})

	t.Run("frozen QEMU: gentle and reset time out, destroy+start recovers", func(t *testing.T) {
		frozen.Freeze(t)
		const gentle, forced = 6 * time.Second, 18 * time.Second
		act := e.actor(t, func(p *actions.Policy) {
			p.GentleTimeout, p.ForcedTimeout, p.ExecTimeout = gentle, forced, 3*time.Second
		})

		t0 := time.Now()
		_, err := act.Exec(ctx, frozen.Name(), []string{"/bin/busybox", "true"}, true)
		require.ErrorIs(t, err, actions.ErrNoAgent)
		assert.Less(t, time.Since(t0), 5*time.Second, "agent absent → error within the deadline")

		rep, err := act.Recover(ctx, frozen.Name(), "", "")
		logReport(t, rep)
		require.NoError(t, err)
		assert.Equal(t, actions.StepDestroyStart, rep.Exit)
		assert.Equal(t, []string{"check:not_done", "drain:skipped", "reboot:failed", "reset:failed", "destroy_start:done",
			"wait_health:done", "ready:skipped"}, steps(rep))
		slack := 2 * time.Second
		assert.Less(t, time.Duration(step(t, rep, actions.StepReboot).Duration), gentle+slack)
		assert.Less(t, time.Duration(step(t, rep, actions.StepReset).Duration), forced+slack)
		assert.Contains(t, step(t, rep, actions.StepReset).Detail, "did not return within")
		frozen.WaitHTTP(t, boot)
	})

	t.Run("deliberate shutdown is never started by recover", func(t *testing.T) {
		act := e.actor(t, nil)
		_, err := act.Do(ctx, actions.VerbShutdown, noAgent.Name())
		require.NoError(t, err)
		rep, err := act.Recover(ctx, noAgent.Name(), "", "")
		require.ErrorIs(t, err, actions.ErrRefused)
		assert.Contains(t, err.Error(), "shutoff/shutdown")
		assert.Equal(t, "shut off", noAgent.State(t))
		assert.Equal(t, actions.OutcomeRefused, rep.Outcome)
	})
}
