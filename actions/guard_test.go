package actions

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

// An operator's hold refuses every action verb and key (audited, outcome "held") until it is
// released or expires; taking the guest's server out of the pool stays allowed.
func TestHoldRefusesEveryAction(t *testing.T) {
	f := newFixture(t, nil)
	pool := &recordingPool{}
	owner := func(context.Context, string, string) (string, bool) { return testDomain, true }
	a := f.actor(t, Options{Caller: "cli:alice", Pool: pool, Member: webMember, Owner: owner,
		Health: func(context.Context, string) (bool, string) { return false, "fake service: down" }})
	ctx := context.Background()
	id := f.domainID(t)

	res, err := a.Hold(ctx, testDomain, false, time.Hour, "kernel upgrade")
	require.NoError(t, err)
	assert.Equal(t, OutcomeDone, res.Outcome)
	attempts := map[string]func() error{
		"reboot":         func() error { _, err := a.Do(ctx, VerbReboot, testDomain); return err },
		"reset":          func() error { _, err := a.Do(ctx, VerbReset, testDomain); return err },
		"destroy":        func() error { _, err := a.Do(ctx, VerbDestroy, testDomain); return err },
		"forced-restart": func() error { _, err := a.ForcedRestart(ctx, testDomain); return err },
		"recover":        func() error { _, err := a.Recover(ctx, testDomain); return err },
		"exec":           func() error { _, err := a.Exec(ctx, testDomain, []string{"uptime"}, true); return err },
		"pool ready":     func() error { _, err := a.PoolSet(ctx, "web", "test", "ready"); return err },
	}
	for what, try := range attempts {
		err := try()
		require.ErrorIs(t, err, ErrHeld, what)
		assert.Contains(t, err.Error(), "held by cli:alice since", what)
		assert.Contains(t, err.Error(), "kernel upgrade", what)
	}
	assert.Equal(t, id, f.domainID(t), "nothing happened to the guest")
	_, err = a.PoolSet(ctx, "web", "test", "drain")
	require.NoError(t, err, "taking the server out is what an operator wants anyway")
	assert.Equal(t, []string{"web/test=drain"}, pool.calls)
	held := 0
	for _, e := range readAudit(t, f.audit) {
		if e.Outcome == OutcomeHeld {
			held++
		}
	}
	assert.Equal(t, len(attempts), held, "each refusal is audited")

	// the hold expires by itself
	f.clock.Advance(time.Hour)
	_, err = a.Do(ctx, VerbSuspend, testDomain)
	require.NoError(t, err)

	// a hold on the whole hypervisor, until released
	_, err = a.Hold(ctx, "", true, 0, "storage maintenance")
	require.NoError(t, err)
	_, err = a.Do(ctx, VerbResume, testDomain)
	require.ErrorIs(t, err, ErrHeld)
	assert.Contains(t, err.Error(), "the whole hypervisor is held by cli:alice")
	f.clock.Advance(24 * time.Hour)
	_, err = a.Do(ctx, VerbResume, testDomain)
	require.ErrorIs(t, err, ErrHeld, "no expiry was given")
	rel, err := a.Release(ctx, "", true)
	require.NoError(t, err)
	assert.Equal(t, []string{"hold"}, rel.Released)
	_, err = a.Do(ctx, VerbResume, testDomain)
	require.NoError(t, err)
}

// Three restarts within an hour, ours or the guest's own, put the domain in quarantine: no action
// until an operator releases it.
func TestLoopGuardQuarantines(t *testing.T) {
	f := newFixture(t, func(p *Policy) { p.MaxRestartsPerHour = 3 })
	a := f.actor(t, Options{})
	ctx := context.Background()
	dir, err := statedir.Open(f.pol.StateDir)
	require.NoError(t, err)

	_, err = a.Do(ctx, VerbReset, testDomain)
	require.NoError(t, err)
	q, err := dir.RecordGuestReboot(testDomain, f.clock.Now(), 3)
	require.NoError(t, err)
	assert.False(t, q)
	res, err := a.Do(ctx, VerbReset, testDomain)
	require.NoError(t, err, "the third restart itself completes")
	assert.Contains(t, res.Detail, "loop guard: quarantined: 3 restarts within an hour (MaxRestartsPerHour 3): reset at")
	assert.Contains(t, res.Detail, "guest reboot at")

	id := f.domainID(t)
	for _, try := range []func() error{
		func() error { _, err := a.Do(ctx, VerbReset, testDomain); return err },
		func() error { _, err := a.ForcedRestart(ctx, testDomain); return err },
		func() error { _, err := a.Do(ctx, VerbShutdown, testDomain); return err },
	} {
		err := try()
		require.ErrorIs(t, err, ErrQuarantined)
		assert.Contains(t, err.Error(), "release it with: release test")
	}
	assert.Equal(t, id, f.domainID(t))
	au := readAudit(t, f.audit)
	assert.Equal(t, OutcomeQuarantined, au[len(au)-1].Outcome)

	// an hour later it is still quarantined: only an operator ends it
	f.clock.Advance(2 * time.Hour)
	_, err = a.Do(ctx, VerbReset, testDomain)
	require.ErrorIs(t, err, ErrQuarantined)
	rel, err := a.Release(ctx, testDomain, false)
	require.NoError(t, err)
	assert.Equal(t, []string{"quarantine"}, rel.Released)
	_, err = a.Do(ctx, VerbReset, testDomain)
	require.NoError(t, err)

	// a reboot event while an action holds the domain's lock is that action's own: not counted twice
	l, err := dir.LockDomain(ctx, testDomain, time.Second, statedir.Holder{Caller: "test", Verb: "reboot"})
	require.NoError(t, err)
	before := len(f.domainState(t).Restarts)
	_, err = dir.RecordGuestReboot(testDomain, f.clock.Now(), 3)
	require.NoError(t, err)
	l.Unlock()
	assert.Len(t, f.domainState(t).Restarts, before)
}

// A restart is held while most of the guest's backend is down: a shared failure, not the guest's.
func TestStormGuard(t *testing.T) {
	ctx := context.Background()
	up := ServerState{Pool: "UP", CheckUp: true}
	down := ServerState{Pool: "DOWN"}
	tests := []struct {
		name    string
		backend map[string]ServerState
		held    bool
	}{
		{"most others down", map[string]ServerState{"test": down, "b": down, "c": down, "d": up}, true},
		{"half up is enough", map[string]ServerState{"test": down, "b": down, "c": up}, false},
		{"operator holds are not failures", map[string]ServerState{"test": down, "b": {Pool: "DRAIN"}, "c": {Pool: "MAINT"}, "d": up}, false},
		{"alone in its backend", map[string]ServerState{"test": down}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			pool := &recordingPool{backend: tc.backend}
			a := f.actor(t, Options{Pool: pool, Member: webMember, Health: func(context.Context, string) (bool, string) { return true, "ok" }})
			for _, try := range []func() error{
				func() error { _, err := a.Do(ctx, VerbReset, testDomain); return err },
				func() error { _, err := a.ForcedRestart(ctx, testDomain); return err },
			} {
				err := try()
				if !tc.held {
					require.NoError(t, err)
					continue
				}
				require.ErrorIs(t, err, ErrHeld)
				assert.Contains(t, err.Error(), "held: backend degraded: 1 of 3 other servers of web are UP (MinHealthyPercent 50; not UP: b DOWN, c DOWN)")
			}
			if tc.held {
				assert.Empty(t, f.domainState(t).Forced, "nothing was attempted")
				// a dry run tells the same
				_, err := f.actor(t, Options{DryRun: true, Pool: pool, Member: webMember}).ForcedRestart(ctx, testDomain)
				require.ErrorIs(t, err, ErrHeld)
			}
		})
	}
}

// At most MaxConcurrent restarts run at once on one hypervisor, across processes.
func TestMaxConcurrent(t *testing.T) {
	f := newFixture(t, func(p *Policy) { p.MaxConcurrent = 2 })
	dir, err := statedir.Open(f.pol.StateDir)
	require.NoError(t, err)
	other := statedir.Holder{PID: 4242, Caller: "zabbix", Verb: "forced-restart", Since: time.Now()}
	s1, err := dir.Slot(2, other)
	require.NoError(t, err)
	s2, err := dir.Slot(2, other)
	require.NoError(t, err)
	a := f.actor(t, Options{})
	_, err = a.Do(context.Background(), VerbReset, testDomain)
	require.ErrorIs(t, err, ErrHeld)
	assert.Contains(t, err.Error(), "too many concurrent actions: 2 running")
	assert.Contains(t, err.Error(), "held by zabbix forced-restart (pid 4242)")
	_, err = a.Do(context.Background(), VerbSuspend, testDomain)
	require.NoError(t, err, "not a restart: no slot needed")
	s1.Unlock()
	_, err = a.Do(context.Background(), VerbResume, testDomain)
	require.NoError(t, err)
	_, err = a.Do(context.Background(), VerbReset, testDomain)
	require.NoError(t, err, "a slot is free again")
	s2.Unlock()
}

// forced-restart on a running guest resets it, counted as forced and as a restart; on a guest our
// own step destroyed, it starts it (forced too, where it used to be free); the dry run says exactly
// what the real run then does.
func TestForcedRestartDryRunMatchesRun(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	dry, real := f.actor(t, Options{DryRun: true}), f.actor(t, Options{})
	plan, err := dry.ForcedRestart(ctx, testDomain)
	require.NoError(t, err)
	assert.Equal(t, []string{"reset:dry_run"}, steps(plan))
	assert.Contains(t, plan.Steps[0].Detail, "would reset")
	rep, err := real.ForcedRestart(ctx, testDomain)
	require.NoError(t, err)
	assert.Equal(t, []string{"reset:done"}, steps(rep))

	_, err = real.Do(ctx, VerbDestroy, testDomain)
	require.NoError(t, err)
	plan, err = dry.ForcedRestart(ctx, testDomain)
	require.ErrorIs(t, err, ErrHeld, "an operator's destroy: the dry run says it would not start it")
	rep, err = real.ForcedRestart(ctx, testDomain)
	require.ErrorIs(t, err, ErrHeld)
	assert.Equal(t, guest.Shutoff, f.state(t).State)
	assert.Equal(t, plan.Detail, rep.Detail)

	dir, err := statedir.Open(f.pol.StateDir)
	require.NoError(t, err)
	require.NoError(t, dir.UpdateDomain(testDomain, f.clock.Now(), func(s *statedir.Domain) error {
		now := f.clock.Now()
		s.OwnDestroy = &now
		return nil
	}))
	plan, err = dry.ForcedRestart(ctx, testDomain)
	require.NoError(t, err)
	assert.Equal(t, []string{"start:dry_run"}, steps(plan))
	assert.Contains(t, plan.Steps[0].Detail, "would start: our own forced step destroyed it")
	forced := len(f.domainState(t).Forced)
	rep, err = real.ForcedRestart(ctx, testDomain)
	require.NoError(t, err)
	assert.Equal(t, []string{"start:done"}, steps(rep))
	assert.Equal(t, guest.Running, f.state(t).State)
	assert.Len(t, f.domainState(t).Forced, forced+1, "the start of a forced step counts against the rate limit")
}

// Pool changes follow the policy of the guest behind the server, under the guest's lock.
func TestPoolSetPolicy(t *testing.T) {
	f := newFixture(t, func(p *Policy) { p.AllowBackends = "static" })
	pool := &recordingPool{}
	owners := map[string]string{"web/test": testDomain, "web/db": "db-01"}
	owner := func(_ context.Context, b, s string) (string, bool) { d, ok := owners[b+"/"+s]; return d, ok }
	a := f.actor(t, Options{Pool: pool, Owner: owner})
	ctx := context.Background()

	res, err := a.PoolSet(ctx, "web", "test", "drain")
	require.NoError(t, err)
	assert.Equal(t, testDomain, res.Domain)
	_, err = a.PoolSet(ctx, "web", "db", "drain")
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), `domain "db-01" does not match AllowDomains`)
	_, err = a.PoolSet(ctx, "api", "x", "maint")
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), `backend "api" does not match AllowBackends "static"`)
	_, err = a.PoolSet(ctx, "static", "x", "maint")
	require.NoError(t, err, "a server of no guest, in an allowed backend")
	assert.Equal(t, []string{"web/test=drain", "static/x=maint"}, pool.calls)

	// the guest's lock covers pool changes: one waits for a lifecycle action on the same guest
	dir, err := statedir.Open(f.pol.StateDir)
	require.NoError(t, err)
	l, err := dir.LockDomain(ctx, testDomain, time.Second, statedir.Holder{Caller: "zabbix", Verb: "reboot"})
	require.NoError(t, err)
	defer l.Unlock()
	_, err = a.PoolSet(ctx, "web", "test", "ready")
	require.ErrorIs(t, err, ErrLocked)
	assert.Contains(t, err.Error(), "held by zabbix reboot")
}

// A guest restarted less than HealthTimeout ago is still booting: its silent agent and busy vCPUs
// must not count as a hung OS (the os-hung reset would make a boot loop).
func TestStillBooting(t *testing.T) {
	f := newFixture(t, nil)
	a := f.actor(t, Options{})
	dir, err := statedir.Open(f.pol.StateDir)
	require.NoError(t, err)
	j := &job{a: a, dir: dir, domain: testDomain}
	_, booting, err := j.stillBooting()
	require.NoError(t, err)
	assert.False(t, booting, "never restarted")
	require.NoError(t, dir.UpdateDomain(testDomain, f.clock.Now(), func(s *statedir.Domain) error {
		s.AddRestart(f.clock.Now(), "start", 0)
		return nil
	}))
	f.clock.Advance(a.pol.HealthTimeout / 2)
	why, booting, err := j.stillBooting()
	require.NoError(t, err)
	assert.True(t, booting)
	assert.Contains(t, why, "restarted")
	assert.Contains(t, why, "(start)")
	f.clock.Advance(a.pol.HealthTimeout)
	_, booting, err = j.stillBooting()
	require.NoError(t, err)
	assert.False(t, booting, "past HealthTimeout")
}

// A restart run for an alert (the ladder's steps, --event) is held while the guest's haproxy
// check passes: the guest serves, so restarting it would be the outage. An operator's own
// restart, a guest whose check fails and a guest behind no haproxy are not held.
func TestServingGuard(t *testing.T) {
	ctx := context.Background()
	up := ServerState{Pool: "UP", CheckUp: true, Check: "L7OK 200"}
	serving := map[string]ServerState{"test": up, "web-02": up, "web-03": up}
	failing := map[string]ServerState{"test": {Pool: "DOWN", Check: "L4CON Connection refused"}, "web-02": up, "web-03": up}
	restarts := map[string]func(a *Actor) error{
		"reboot":         func(a *Actor) error { _, err := a.Do(ctx, VerbReboot, testDomain); return err },
		"reset":          func(a *Actor) error { _, err := a.Do(ctx, VerbReset, testDomain); return err },
		"forced-restart": func(a *Actor) error { _, err := a.ForcedRestart(ctx, testDomain); return err },
	}
	for verb, try := range restarts {
		t.Run(verb, func(t *testing.T) {
			f := newFixture(t, nil)
			alert := f.actor(t, Options{ForAlert: true, Pool: &recordingPool{backend: serving}, Member: webMember})
			err := try(alert)
			require.ErrorIs(t, err, ErrHeld)
			assert.Contains(t, err.Error(), "held: the guest serves (haproxy web/test UP L7OK 200): an automatic step restarts no serving guest")
			assert.Empty(t, f.domainState(t).Forced, "nothing was attempted")
			_, err = f.actor(t, Options{ForAlert: true, DryRun: true, Pool: &recordingPool{backend: serving}, Member: webMember}).ForcedRestart(ctx, testDomain)
			require.ErrorIs(t, err, ErrHeld, "a dry run tells the same")

			// the step runs (a reboot on the test driver is then "not done": its guest ignores ACPI)
			for what, opts := range map[string]Options{
				"the check fails":        {ForAlert: true, Pool: &recordingPool{backend: failing}, Member: webMember},
				"no haproxy to judge by": {ForAlert: true},
				"an operator's restart":  {Pool: &recordingPool{backend: serving}, Member: webMember},
			} {
				err := try(f.actor(t, opts))
				assert.NotErrorIs(t, err, ErrHeld, what)
				if verb != "reboot" {
					assert.NoError(t, err, what)
				}
			}
			held := 0
			for _, e := range readAudit(t, f.audit) {
				if e.Outcome == OutcomeHeld {
					held++
				}
			}
			assert.Equal(t, 2, held, "the refusals are audited")
		})
	}
}
