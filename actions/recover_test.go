package actions

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

// recordingPool is a fake haproxy runtime API (named as such): the real client is tested in the haproxy
// package and end to end; here only the order of calls recover makes is under test.
type recordingPool struct {
	mu      sync.Mutex
	calls   []string
	backend map[string]ServerState
}

func (p *recordingPool) SetServerState(_ context.Context, backend, server, state string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, fmt.Sprintf("%s/%s=%s", backend, server, state))
	return nil
}

// Backend answers with the states the test set (the storm guard's input).
func (p *recordingPool) Backend(_ context.Context, backend string) (map[string]ServerState, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.backend == nil { // the other servers serve: the backend is healthy
		return map[string]ServerState{"test": {Pool: "DOWN"}, "web-02": {Pool: "UP", CheckUp: true}, "web-03": {Pool: "UP", CheckUp: true}}, nil
	}
	return p.backend, nil
}

// webMember puts the test domain into backend web as server test.
func webMember(context.Context, string) (string, string, bool) { return "web", "test", true }

// restartedHealth stands in for a guest service (the test driver has none): healthy once the domain
// has been through destroy+start, which libvirt shows as a new domain ID.
func restartedHealth(t *testing.T, f *fixture) Health {
	id0 := f.domainID(t)
	return func(ctx context.Context, domain string) (bool, string) {
		id := f.domainID(t)
		return id != id0 && id != 0, fmt.Sprintf("fake service: domain id %d (was %d)", id, id0)
	}
}

func steps(rep Report) []string {
	var out []string
	for _, s := range rep.Steps {
		out = append(out, s.Step+":"+string(s.Outcome))
	}
	return out
}

func TestRecoverAlreadyHealthy(t *testing.T) {
	f := newFixture(t, nil)
	pool := &recordingPool{}
	a := f.actor(t, Options{Pool: pool, Member: webMember, Health: func(context.Context, string) (bool, string) { return true, "fake service: ok" }})
	rep, err := a.Recover(context.Background(), testDomain)
	require.NoError(t, err)
	assert.Equal(t, ExitAlreadyHealthy, rep.Exit)
	assert.Equal(t, []string{"check:done"}, steps(rep))
	assert.Empty(t, pool.calls, "a healthy guest is not drained")
}

func TestRecoverLadderToDestroyStart(t *testing.T) {
	f := newFixture(t, nil)
	pool := &recordingPool{}
	id0 := f.domainID(t)
	a := f.actor(t, Options{Pool: pool, Member: webMember, Health: restartedHealth(t, f)})
	rep, err := a.Recover(context.Background(), testDomain)
	require.NoError(t, err, "%+v", rep)
	assert.Equal(t, []string{"check:not_done", "drain:done", "reboot:not_done", "reset:done", "wait_health:not_done",
		"destroy_start:done", "wait_health:done", "ready:done"}, steps(rep))
	assert.Equal(t, StepDestroyStart, rep.Exit)
	assert.True(t, rep.Healthy)
	assert.Equal(t, OutcomeDone, rep.Outcome)
	assert.Equal(t, []string{"web/test=drain", "web/test=ready"}, pool.calls)
	assert.NotEqual(t, id0, f.domainID(t))
	assert.Equal(t, guest.Running, rep.After.State)
	assert.Contains(t, rep.Steps[2].Detail, "no guest reset within", "the ignored gentle reboot says so")

	ds := f.domainState(t)
	assert.Len(t, ds.Forced, 2, "reset and destroy+start")
	assert.Nil(t, ds.OwnDestroy, "marker cleared after the start")

	au := readAudit(t, f.audit)
	require.Len(t, au, 1, "one audited attempt per recover")
	assert.Equal(t, string(VerbRecover), au[0].Verb)
	assert.Contains(t, au[0].Detail, "reset:done")

	b, err := json.Marshal(rep)
	require.NoError(t, err)
	var back map[string]any
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Len(t, back["steps"], 8)
	assert.Equal(t, "destroy_start", back["exit"])
}

func TestRecoverRateLimitStopsLadder(t *testing.T) {
	f := newFixture(t, func(p *Policy) { p.MaxForcedPerHour = 1 })
	pool := &recordingPool{}
	id0 := f.domainID(t)
	a := f.actor(t, Options{Pool: pool, Member: webMember, Health: restartedHealth(t, f)})
	rep, err := a.Recover(context.Background(), testDomain)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "recover test: ")
	assert.Contains(t, err.Error(), "rate limit")
	assert.Equal(t, OutcomeRefused, rep.Outcome)
	assert.Equal(t, []string{"check:not_done", "drain:done", "reboot:not_done", "reset:done", "wait_health:not_done",
		"destroy_start:refused"}, steps(rep))
	assert.Equal(t, id0, f.domainID(t), "not destroyed")
	assert.Equal(t, []string{"web/test=drain"}, pool.calls, "stays drained for the human")
}

func TestRecoverExhausted(t *testing.T) {
	f := newFixture(t, nil)
	pool := &recordingPool{}
	a := f.actor(t, Options{Pool: pool, Member: webMember, Health: func(context.Context, string) (bool, string) { return false, "fake service: down" }})
	t0 := time.Now()
	rep, err := a.Recover(context.Background(), testDomain)
	require.ErrorIs(t, err, ErrNotDone)
	assert.Contains(t, err.Error(), "every rung tried")
	assert.Equal(t, OutcomeNotDone, rep.Outcome)
	assert.False(t, rep.Healthy)
	assert.Empty(t, rep.Exit)
	assert.Equal(t, []string{"web/test=drain"}, pool.calls)
	// gentle 1 s + two health waits of 1 s each, plus libvirt calls
	assert.Less(t, time.Since(t0), 10*time.Second)
}

func TestRecoverRespectsDeliberateStops(t *testing.T) {
	ctx := context.Background()
	for _, verb := range []Verb{VerbShutdown, VerbDestroy} {
		t.Run(string(verb), func(t *testing.T) {
			f := newFixture(t, nil)
			a := f.actor(t, Options{Health: restartedHealth(t, f)})
			_, err := a.Do(ctx, verb, testDomain)
			require.NoError(t, err)
			st := f.state(t)
			for _, fn := range []func() (Report, error){
				func() (Report, error) { return a.Recover(ctx, testDomain) },
				func() (Report, error) { return a.ForcedRestart(ctx, testDomain) },
			} {
				rep, err := fn()
				require.ErrorIs(t, err, ErrHeld)
				assert.Contains(t, err.Error(), "stopped on purpose")
				assert.Equal(t, OutcomeHeld, rep.Outcome)
				assert.Equal(t, st, f.state(t), "still off")
				assert.Empty(t, rep.Steps)
			}

			// the same shut-off, left behind by our own forced step's destroy, is finished
			dir, err := statedir.Open(f.pol.StateDir)
			require.NoError(t, err)
			require.NoError(t, dir.UpdateDomain(testDomain, f.clock.Now(), func(s *statedir.Domain) error {
				now := f.clock.Now()
				s.OwnDestroy = &now
				return nil
			}))
			rep, err := a.Recover(ctx, testDomain)
			require.NoError(t, err, "%+v", rep)
			assert.Equal(t, []string{"drain:skipped", "start:done", "wait_health:done", "ready:skipped"}, steps(rep))
			assert.Equal(t, guest.Running, f.state(t).State)
			assert.Nil(t, f.domainState(t).OwnDestroy)
		})
	}
	t.Run("paused by user", func(t *testing.T) {
		f := newFixture(t, nil)
		a := f.actor(t, Options{})
		_, err := a.Do(ctx, VerbSuspend, testDomain)
		require.NoError(t, err)
		_, err = a.Recover(ctx, testDomain)
		require.ErrorIs(t, err, ErrHeld)
		assert.Contains(t, err.Error(), "paused by an operator")
		_, err = a.ForcedRestart(ctx, testDomain)
		require.ErrorIs(t, err, ErrHeld)
		assert.Equal(t, guest.Paused, f.state(t).State)
	})
}

func TestMayStart(t *testing.T) {
	st := func(s guest.State, r int) State { return State{guest.Status{State: s, Reason: r}} }
	own := &statedir.Domain{OwnDestroy: &statedir.Stamp{}}
	tests := []struct {
		s    State
		ds   *statedir.Domain
		want bool
	}{
		{st(guest.Shutoff, guest.ShutoffCrashed), &statedir.Domain{}, true},
		{st(guest.Shutoff, guest.ShutoffFailed), &statedir.Domain{}, true},
		{st(guest.Crashed, guest.CrashedPanicked), &statedir.Domain{}, true},
		{st(guest.Shutoff, guest.ShutoffShutdown), &statedir.Domain{}, false},
		{st(guest.Shutoff, guest.ShutoffDestroyed), &statedir.Domain{}, false},
		{st(guest.Shutoff, guest.ShutoffUnknown), &statedir.Domain{}, false},
		{st(guest.Shutoff, guest.ShutoffSaved), &statedir.Domain{}, false},
		{st(guest.Shutoff, guest.ShutoffMigrated), &statedir.Domain{}, false},
		{st(guest.Shutoff, guest.ShutoffDestroyed), own, true},
		{st(guest.Running, 1), &statedir.Domain{}, false},
	}
	for _, tc := range tests {
		got, why := mayStart(tc.s, tc.ds)
		assert.Equal(t, tc.want, got, "%s own=%v: %s", tc.s, tc.ds.OwnDestroy != nil, why)
	}
}

func TestRecoverDryRun(t *testing.T) {
	f := newFixture(t, nil)
	pool := &recordingPool{}
	id0 := f.domainID(t)
	a := f.actor(t, Options{DryRun: true, Pool: pool, Member: webMember, Health: func(context.Context, string) (bool, string) { return false, "fake service: down" }})
	rep, err := a.Recover(context.Background(), testDomain)
	require.NoError(t, err)
	assert.Equal(t, OutcomeDryRun, rep.Outcome)
	assert.Equal(t, []string{"check:not_done", "drain:dry_run", "reboot:dry_run", "reset:dry_run", "destroy_start:dry_run", "ready:dry_run"}, steps(rep))
	assert.Contains(t, rep.Steps[3].Detail, "forced: allowed now")
	assert.Empty(t, pool.calls)
	assert.Equal(t, id0, f.domainID(t))
	assert.Empty(t, f.domainState(t).Forced)
	au := readAuditAll(t, f.audit)
	require.Len(t, au, 1)
	assert.Equal(t, OutcomeDryRun, au[0].Outcome)
}

func TestRecoverRefusesOtherDomains(t *testing.T) {
	f := newFixture(t, nil)
	_, err := f.actor(t, Options{}).Recover(context.Background(), "other")
	require.ErrorIs(t, err, ErrRefused)
}
