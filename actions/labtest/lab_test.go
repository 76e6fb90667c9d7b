//go:build integration

// Package labtest runs the actions package against real libvirtd + QEMU (TCG) guests of tests/lab,
// inside the network namespace lab.Main creates. It holds tests and benchmarks only.
package labtest

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

// TestMain raises the default -parallel (GOMAXPROCS, 2 in CI): the scenarios spend their time waiting
// out deadlines on separate guests, not computing. An explicit -parallel wins.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "8")
	}
	lab.Main(m)
}

// boot bounds every wait for a guest to serve: six TCG guests booting at once on 2 cores, next to
// other test packages, have been seen to take 35 s (≈ 4 s alone).
const boot = 120 * time.Second

// env is one lab connection plus the guests' addresses for the HTTP health check.
type env struct {
	lab *lab.Lab
	mu  sync.Mutex
	ips map[string]string
	dir string
}

func newEnv(t testing.TB) *env {
	harness.RequireRoot(t)
	l := lab.Get(t)
	return &env{lab: l, ips: map[string]string{}, dir: t.TempDir()}
}

func (e *env) guest(t testing.TB, name string, o lab.GuestOpts) *lab.Guest {
	o.Start = true
	g := e.lab.Guest(t, name, o)
	e.mu.Lock()
	e.ips[name] = g.IP()
	e.mu.Unlock()
	return g
}

// httpHealth is the check the plugin's owner wires in: GET / on the guest's private address answers 200.
func (e *env) httpHealth(ctx context.Context, domain string) (bool, string) {
	e.mu.Lock()
	ip, ok := e.ips[domain]
	e.mu.Unlock()
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
		// the scenarios run in parallel on purpose, each on its own guest, and restart them often
		MaxConcurrent:      20,
		MaxRestartsPerHour: 100,
		StateDir:           filepath.Join(e.dir, "state"),
		AuditLog:           filepath.Join(e.dir, "audit.log"),
		GentleMode:         actions.ModeACPI,
		GentleTimeout:      20 * time.Second,
		ForcedTimeout:      20 * time.Second,
		HealthTimeout:      boot,
		ExecTimeout:        10 * time.Second,
		LockWait:           5 * time.Second,
	}
	if mod != nil {
		mod(&p)
	}
	return p
}

// actor gets its own libvirt connection, as each CLI process has: libvirtd serves at most 5 calls per
// connection at once, and calls stuck on a SIGSTOPped QEMU must not hold up other scenarios.
func (e *env) actor(t testing.TB, mod func(*actions.Policy)) *actions.Actor {
	conn := kvm.NewConn(e.lab.URI(), 10*time.Second, 8)
	t.Cleanup(conn.Close)
	a, err := actions.New(conn, e.policy(mod), actions.Options{Caller: "labtest", Health: e.httpHealth, Logf: t.Logf})
	require.NoError(t, err)
	return a
}

func steps(rep actions.Report) []string {
	var out []string
	for _, s := range rep.Steps {
		out = append(out, s.Step+":"+string(s.Outcome))
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

// TestRealGuests boots every guest the scenarios need at once, then runs the scenarios in parallel:
// each has its own guest, and most of their time is spent waiting out deadlines, not computing.
func TestRealGuests(t *testing.T) {
	e := newEnv(t)
	life := e.guest(t, "act-life", lab.GuestOpts{ACPI: true, Agent: true}) // lifecycle and exec
	web := e.guest(t, "act-web", lab.GuestOpts{ACPI: true, Agent: true})   // well-behaved, httpd killed
	noAgent := e.guest(t, "act-noagent", lab.GuestOpts{ACPI: true})        // acpid, no guest agent
	deaf := e.guest(t, "act-deaf", lab.GuestOpts{})                        // Linux that ignores ACPI, no agent
	bios := e.guest(t, "act-bios", lab.GuestOpts{NoKernel: true})          // sits in SeaBIOS
	frozen := e.guest(t, "act-frozen", lab.GuestOpts{ACPI: true, Agent: true})
	remote := e.guest(t, "act-remote", lab.GuestOpts{ACPI: true, Agent: true}) // rebooted through zabbix_agent2
	harness.PluginBinary(t)                                                    // build it while the guests boot
	for _, g := range []*lab.Guest{life, web, noAgent, deaf, frozen, remote} {
		g.WaitHTTP(t, boot)
	}
	// the agent starts last in the guest's rcS, after httpd and acpid: once it answers, ACPI works too
	for _, g := range []*lab.Guest{life, web, frozen, remote} {
		g.WaitAgent(t, boot)
	}
	harness.WaitFor(t, boot, 100*time.Millisecond, noAgent.Name()+" ready marker", func() (bool, error) {
		return strings.Contains(noAgent.SerialLog(), lab.ReadyMarker), nil
	})
	ctx := context.Background()

	t.Run("scenarios", func(t *testing.T) {
		t.Run("lifecycle and exec", func(t *testing.T) {
			t.Parallel()
			execs(t, e, life) // first: the guest and its agent are up now
			lifecycle(t, e, life)
		})

		t.Run("remote command through zabbix_agent2 7.0 reboots the guest; hostile names run nothing", func(t *testing.T) {
			t.Parallel()
			remoteReboot(t, e, remote)
		})

		t.Run("killed httpd: recover ends after the gentle reboot", func(t *testing.T) {
			t.Parallel()
			web.KillHTTPD(t)
			rep, err := e.actor(t, nil).Recover(ctx, web.Name())
			logReport(t, rep)
			require.NoError(t, err)
			assert.Equal(t, actions.StepReboot, rep.Exit)
			assert.Equal(t, []string{"check:not_done", "drain:skipped", "reboot:done", "wait_health:done", "ready:skipped"}, steps(rep))
		})

		t.Run("guest ignoring ACPI: gentle not done, reset recovers", func(t *testing.T) {
			t.Parallel()
			deaf.KillHTTPD(t)
			act := e.actor(t, func(p *actions.Policy) { p.GentleTimeout = 8 * time.Second })
			rep, err := act.Recover(ctx, deaf.Name())
			logReport(t, rep)
			require.NoError(t, err)
			assert.Equal(t, actions.StepReset, rep.Exit)
			assert.Equal(t, []string{"check:not_done", "drain:skipped", "reboot:not_done", "reset:done", "wait_health:done", "ready:skipped"}, steps(rep))
			assert.Contains(t, step(t, rep, actions.StepReboot).Detail, "ignored")
		})

		t.Run("SeaBIOS guest: gentle not done, forced rungs used", func(t *testing.T) {
			t.Parallel()
			act := e.actor(t, func(p *actions.Policy) {
				p.GentleTimeout = 5 * time.Second
				p.HealthTimeout = 3 * time.Second
			})
			id0, err := e.lab.Virsh("domid", bios.Name())
			require.NoError(t, err)
			rep, err := act.Recover(ctx, bios.Name())
			logReport(t, rep)
			require.ErrorIs(t, err, actions.ErrNotDone, "it never serves HTTP")
			assert.Equal(t, []string{"check:not_done", "drain:skipped", "reboot:not_done", "reset:done", "wait_health:not_done",
				"destroy_start:done", "wait_health:not_done"}, steps(rep))
			assert.Equal(t, "running", bios.State(t))
			id1, err := e.lab.Virsh("domid", bios.Name())
			require.NoError(t, err)
			assert.NotEqual(t, id0, id1, "destroy+start made a new QEMU")
		})

		t.Run("frozen QEMU: gentle and reset time out, destroy+start recovers", func(t *testing.T) {
			t.Parallel()
			frozen.Freeze(t)
			const gentle, forced = 6 * time.Second, 25 * time.Second // destroy of a stopped QEMU: 12-15 s
			act := e.actor(t, func(p *actions.Policy) {
				p.GentleTimeout, p.ForcedTimeout, p.ExecTimeout = gentle, forced, 3*time.Second
			})

			t0 := time.Now()
			_, err := act.Exec(ctx, frozen.Name(), []string{"/bin/busybox", "true"}, true)
			require.ErrorIs(t, err, actions.ErrNoAgent)
			assert.Less(t, time.Since(t0), 5*time.Second, "agent absent → error within the deadline")

			rep, err := act.Recover(ctx, frozen.Name())
			logReport(t, rep)
			require.NoError(t, err)
			assert.Equal(t, actions.StepDestroyStart, rep.Exit)
			assert.Equal(t, []string{"check:not_done", "drain:skipped", "reboot:failed", "reset:failed", "destroy_start:done",
				"wait_health:done", "ready:skipped"}, steps(rep))
			slack := 2 * time.Second
			assert.Less(t, time.Duration(step(t, rep, actions.StepReboot).Duration), gentle+slack)
			assert.Less(t, time.Duration(step(t, rep, actions.StepReset).Duration), forced+slack)
			// the reset fails at its deadline, either in the reset call itself or in the state read
			// before it (libvirt can spend seconds on a state read while a monitor call is stuck)
			assert.Regexp(t, `did not return within|context deadline exceeded`, step(t, rep, actions.StepReset).Detail)
		})

		t.Run("no agent; deliberate shutdown is never started by recover", func(t *testing.T) {
			t.Parallel()
			act := e.actor(t, func(p *actions.Policy) { p.ExecTimeout = 4 * time.Second })
			t0 := time.Now()
			_, err := act.Exec(ctx, noAgent.Name(), []string{"/bin/busybox", "true"}, true)
			took := time.Since(t0)
			require.ErrorIs(t, err, actions.ErrNoAgent)
			assert.Less(t, took, 5*time.Second)
			t.Logf("exec without agent: %.2fs: %v", took.Seconds(), err)

			_, err = act.Do(ctx, actions.VerbShutdown, noAgent.Name())
			require.NoError(t, err)
			rep, err := act.Recover(ctx, noAgent.Name())
			require.ErrorIs(t, err, actions.ErrHeld)
			assert.Contains(t, err.Error(), "shutoff/shutdown: stopped on purpose")
			assert.Equal(t, "shut off", noAgent.State(t))
			assert.Equal(t, actions.OutcomeHeld, rep.Outcome)
		})
	})
}

// lifecycle runs each verb on the running and on the stopped guest, in an order that needs as few
// boots as possible: a reset does not wait for the guest to be up, the ACPI and agent reboots do.
func lifecycle(t *testing.T, e *env, g *lab.Guest) {
	ctx := context.Background()
	act := e.actor(t, nil)
	agentMode := e.actor(t, func(p *actions.Policy) { p.GentleMode = actions.ModeAgent })
	seq := []struct {
		a       *actions.Actor
		verb    actions.Verb
		outcome actions.Outcome
		state   string           // virsh domstate afterwards
		wait    func(*lab.Guest) // wait for the guest afterwards
	}{
		{act, actions.VerbStart, actions.OutcomeDone, "running", nil},
		{act, actions.VerbResume, actions.OutcomeDone, "running", nil},
		{act, actions.VerbSuspend, actions.OutcomeDone, "paused", nil},
		{act, actions.VerbSuspend, actions.OutcomeDone, "paused", nil},
		{act, actions.VerbResume, actions.OutcomeDone, "running", nil},
		{act, actions.VerbReboot, actions.OutcomeDone, "running", nil}, // ACPI → libvirt's fake reboot
		{act, actions.VerbReset, actions.OutcomeDone, "running", func(g *lab.Guest) { g.WaitAgent(t, boot) }},
		{agentMode, actions.VerbReboot, actions.OutcomeDone, "running", func(g *lab.Guest) { g.WaitAgent(t, boot) }},
		{act, actions.VerbShutdown, actions.OutcomeDone, "shut off", nil},
		{act, actions.VerbShutdown, actions.OutcomeDone, "shut off", nil},
		{act, actions.VerbDestroy, actions.OutcomeDone, "shut off", nil},
		{act, actions.VerbReboot, actions.OutcomeNotDone, "shut off", nil},
		{act, actions.VerbReset, actions.OutcomeNotDone, "shut off", nil},
		{act, actions.VerbSuspend, actions.OutcomeNotDone, "shut off", nil},
		{act, actions.VerbResume, actions.OutcomeNotDone, "shut off", nil},
		{act, actions.VerbStart, actions.OutcomeDone, "running", nil},
		{act, actions.VerbStart, actions.OutcomeDone, "running", nil},
		{act, actions.VerbDestroy, actions.OutcomeDone, "shut off", nil},
		{act, actions.VerbStart, actions.OutcomeDone, "running", nil},
	}
	for i, s := range seq {
		res, err := s.a.Do(ctx, s.verb, g.Name())
		t.Logf("%2d %-8s %-8s %s → %s %.2fs %s", i, s.verb, res.Outcome, res.Before, res.After, time.Duration(res.Duration).Seconds(), res.Detail)
		require.Equal(t, s.outcome, res.Outcome, "step %d %s: %v", i, s.verb, err)
		if s.outcome == actions.OutcomeDone {
			require.NoError(t, err)
		} else {
			require.ErrorIs(t, err, actions.ErrNotDone)
		}
		assert.Equal(t, s.state, g.State(t), "step %d %s", i, s.verb)
		if s.wait != nil {
			s.wait(g)
		}
	}
}

func execs(t *testing.T, e *env, g *lab.Guest) {
	ctx := context.Background()
	act := e.actor(t, nil)
	res, err := act.Exec(ctx, g.Name(), []string{"/bin/busybox", "hostname"}, true)
	require.NoError(t, err)
	assert.True(t, res.Exited)
	assert.Equal(t, 0, res.ExitCode)
	assert.Equal(t, g.Name()+"\n", res.Stdout)

	res, err = act.Exec(ctx, g.Name(), []string{"/bin/busybox", "sh", "-c", "exit 3"}, true)
	require.NoError(t, err, "a non-zero exit is a result")
	assert.Equal(t, 3, res.ExitCode)

	res, err = act.Exec(ctx, g.Name(), []string{"/bin/busybox", "seq", "100000"}, true)
	require.NoError(t, err)
	assert.True(t, res.StdoutTruncated)
	assert.Len(t, res.Stdout, actions.MaxOutput)
	assert.True(t, strings.HasPrefix(res.Stdout, "1\n2\n3\n"))
	assert.Contains(t, res.Detail, "truncated")

	res, err = act.Exec(ctx, g.Name(), []string{"/bin/busybox", "true"}, false)
	require.NoError(t, err)
	assert.Positive(t, res.PID)
	assert.False(t, res.Exited)

	_, err = act.Exec(ctx, g.Name(), []string{"/bin/busybox", "poweroff"}, true)
	require.ErrorIs(t, err, actions.ErrRefused)
	_, err = act.Exec(ctx, g.Name(), []string{"/bin/busybox", "sh", "-c", "exit 1; poweroff"}, true)
	require.ErrorIs(t, err, actions.ErrRefused)
	assert.Equal(t, "running", g.State(t))
}
