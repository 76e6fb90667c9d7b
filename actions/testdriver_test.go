package actions

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

// The libvirt test driver (test:///default) runs in-process with no daemon; each connection gets a
// private copy of its state, with one domain "test", running. It has no guest agent and emits no
// reboot events, which the tests below rely on and state.

const testDomain = "test"

type fixture struct {
	conn  *kvm.Conn
	pol   Policy
	audit string
	clock *testClock
}

// testClock is a clock the test moves: both readings forward (time passes), or the wall clock alone
// (an operator or NTP steps it), which is what the rate limit must survive.
type testClock struct {
	mu  sync.Mutex
	now statedir.Stamp
}

func newClock() *testClock {
	return &testClock{now: statedir.Stamp{Wall: time.Now(), Boot: int64(time.Hour), BootID: "test-boot"}}
}

func (c *testClock) Now() statedir.Stamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now.Wall, c.now.Boot = c.now.Wall.Add(d), c.now.Boot+int64(d)
	c.mu.Unlock()
}

func (c *testClock) StepWall(d time.Duration) {
	c.mu.Lock()
	c.now.Wall = c.now.Wall.Add(d)
	c.mu.Unlock()
}

func newFixture(t *testing.T, mod func(*Policy)) *fixture {
	t.Helper()
	dir := t.TempDir()
	p := Policy{
		Enable:             true,
		AllowDomains:       "test|web-.*",
		AllowCommands:      []string{"uptime", `echo [a-z]+`, `echo '[a-z ]+'`},
		MaxForcedPerHour:   10,
		MaxRestartsPerHour: 100, // the loop guard has tests of its own
		StateDir:           filepath.Join(dir, "state"),
		AuditLog:           filepath.Join(dir, "audit.log"),
		GentleTimeout:      time.Second,
		ForcedTimeout:      5 * time.Second,
		HealthTimeout:      time.Second,
		LockWait:           time.Second,
	}
	if mod != nil {
		mod(&p)
	}
	conn := kvm.NewConn("test:///default", 5*time.Second, 8)
	t.Cleanup(conn.Close)
	return &fixture{conn: conn, pol: p, audit: p.AuditLog, clock: newClock()}
}

func (f *fixture) actor(t *testing.T, opts Options) *Actor {
	t.Helper()
	if opts.Caller == "" {
		opts.Caller = "test"
	}
	if opts.Clock == nil {
		opts.Clock = f.clock
	}
	a, err := New(f.conn, f.pol, opts)
	require.NoError(t, err)
	return a
}

func (f *fixture) state(t *testing.T) State {
	t.Helper()
	var st State
	require.NoError(t, f.conn.Do(context.Background(), func(c *libvirt.Connect) error {
		d, err := kvm.LookupDomain(c, testDomain)
		if err != nil {
			return err
		}
		defer d.Free()
		s, r, err := d.GetState()
		st = State{guest.Status{State: guest.State(s), Reason: r}}
		return err
	}))
	return st
}

func (f *fixture) domainID(t *testing.T) uint {
	t.Helper()
	var id uint
	require.NoError(t, f.conn.Do(context.Background(), func(c *libvirt.Connect) error {
		d, err := kvm.LookupDomain(c, testDomain)
		if err != nil {
			return err
		}
		defer d.Free()
		id, err = d.GetID()
		return err
	}))
	return id
}

// domainState reads the domain's record in StateDir.
func (f *fixture) domainState(t *testing.T) *statedir.Domain {
	t.Helper()
	dir, err := statedir.Open(f.pol.StateDir)
	require.NoError(t, err)
	ds, err := dir.ReadDomain(testDomain)
	require.NoError(t, err)
	return ds
}

// readAudit returns the end line of every audited attempt; readAuditAll every line.
func readAudit(t *testing.T, path string) []AuditEntry {
	t.Helper()
	var out []AuditEntry
	for _, e := range readAuditAll(t, path) {
		if e.Phase == PhaseEnd {
			out = append(out, e)
		}
	}
	return out
}

func readAuditAll(t *testing.T, path string) []AuditEntry {
	t.Helper()
	fh, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	defer fh.Close()
	var out []AuditEntry
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		var e AuditEntry
		require.NoError(t, json.Unmarshal(sc.Bytes(), &e), "audit line %q", sc.Text())
		out = append(out, e)
	}
	require.NoError(t, sc.Err())
	return out
}

// TestLifecycleTestDriver walks every verb through both states of the domain, twice where a verb is
// idempotent, checking the verified outcome and the state libvirt reports afterwards.
func TestLifecycleTestDriver(t *testing.T) {
	f := newFixture(t, nil)
	a := f.actor(t, Options{})
	ctx := context.Background()
	steps := []struct {
		verb    Verb
		outcome Outcome
		after   string
		detail  string
	}{
		{VerbStart, OutcomeDone, "running", "already running"},
		{VerbResume, OutcomeDone, "running", "already running"},
		{VerbSuspend, OutcomeDone, "paused", "paused"},
		{VerbSuspend, OutcomeDone, "paused", "already paused"},
		{VerbReboot, OutcomeNotDone, "paused", "use resume"},
		{VerbStart, OutcomeNotDone, "paused", "use resume"},
		{VerbResume, OutcomeDone, "running", "running"},
		{VerbReset, OutcomeDone, "running", "reset in"},
		// the test driver emits no reboot event, so the gentle reboot cannot be verified: not done
		{VerbReboot, OutcomeNotDone, "running", "no guest reset within 1s"},
		{VerbShutdown, OutcomeDone, "shutoff", "driver supports no mode flags"},
		{VerbShutdown, OutcomeDone, "shutoff", "already shut off"},
		{VerbDestroy, OutcomeDone, "shutoff", "already shut off"},
		{VerbReboot, OutcomeNotDone, "shutoff", "use start"},
		{VerbReset, OutcomeNotDone, "shutoff", "use start"},
		{VerbSuspend, OutcomeNotDone, "shutoff", "not running"},
		{VerbResume, OutcomeNotDone, "shutoff", "use start"},
		{VerbStart, OutcomeDone, "running", "started"},
		{VerbDestroy, OutcomeDone, "shutoff", "destroyed in"},
		{VerbStart, OutcomeDone, "running", "started"},
	}
	for i, s := range steps {
		res, err := a.Do(ctx, s.verb, testDomain)
		assert.Equal(t, s.outcome, res.Outcome, "step %d %s: %+v", i, s.verb, res)
		assert.Equal(t, s.outcome == OutcomeDone, res.Done, "step %d", i)
		if s.outcome == OutcomeDone {
			assert.NoError(t, err, "step %d", i)
		} else {
			require.Error(t, err, "step %d", i)
			assert.ErrorIs(t, err, ErrNotDone, "step %d", i)
			assert.Contains(t, err.Error(), string(s.verb)+" test: ", "error names verb and domain")
		}
		assert.Equal(t, s.after, res.After.State.String(), "step %d %s", i, s.verb)
		assert.Equal(t, s.after, f.state(t).State.String(), "step %d: libvirt's own answer", i)
		assert.Contains(t, res.Detail, s.detail, "step %d %s", i, s.verb)
		assert.Equal(t, s.verb, res.Verb)
	}
	// reset, destroy (not the no-op one), destroy → 3 forced actions counted
	ds := f.domainState(t)
	assert.Len(t, ds.Forced, 2, "reset + one real destroy; destroy of a stopped domain is no action")
	var restarts []string
	for _, r := range ds.Restarts {
		restarts = append(restarts, r.By)
	}
	assert.Equal(t, []string{"reset", "start", "start"}, restarts, "what the loop guard counts")
	assert.Len(t, readAudit(t, f.audit), len(steps), "one end line per attempt")
	all := readAuditAll(t, f.audit)
	assert.Len(t, all, 2*len(steps), "and a begin line before each changed something")
	assert.Equal(t, PhaseBegin, all[0].Phase)
	assert.Equal(t, OutcomeStarted, all[0].Outcome)
	assert.Equal(t, all[0].ID, all[1].ID, "begin and end share the id")
}

func TestVerbErrors(t *testing.T) {
	f := newFixture(t, nil)
	a := f.actor(t, Options{})
	ctx := context.Background()

	res, err := a.Do(ctx, "explode", testDomain)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), `"explode" is not a lifecycle verb`)
	assert.Equal(t, OutcomeRefused, res.Outcome)

	res, err = a.Do(ctx, VerbReset, "web-missing")
	require.ErrorIs(t, err, guest.ErrNoDomain)
	assert.Contains(t, err.Error(), "reset web-missing: ")
	assert.Equal(t, OutcomeFailed, res.Outcome)

	res, err = a.Do(ctx, VerbReset, "db-01")
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "does not match AllowDomains")
	assert.Equal(t, "running", f.state(t).State.String())

	// a hostile name is refused by policy, quoted in messages, and never reaches a shell or a path
	evil := "web-$(touch /tmp/pwned) 'x';rm ünï"
	_, err = a.Do(ctx, VerbReboot, evil)
	require.ErrorIs(t, err, guest.ErrNoDomain) // matches web-.*: libvirt simply has no such domain
	assert.Contains(t, err.Error(), `reboot "web-$(touch /tmp/pwned) 'x';rm ünï": `)
	_, err = a.Do(ctx, VerbReboot, "web-07\nreboot")
	require.ErrorIs(t, err, ErrRefused, "AllowDomains is anchored and . does not match a newline")
	entries, err := os.ReadDir(f.pol.StateDir)
	if !os.IsNotExist(err) {
		require.NoError(t, err)
	}
	for _, e := range entries {
		assert.Regexp(t, `^dom-[A-Za-z0-9_-]*-[0-9a-f]{16}\.(lock|json)$`, e.Name())
	}

	f2 := newFixture(t, func(p *Policy) { p.Enable = false })
	res, err = f2.actor(t, Options{}).Do(ctx, VerbDestroy, testDomain)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "actions are disabled")
	assert.Equal(t, "running", f2.state(t).State.String())
	assert.Equal(t, OutcomeRefused, res.Outcome)
	au := readAudit(t, f2.audit)
	require.Len(t, au, 1, "refused attempts are audited too")
	assert.Equal(t, OutcomeRefused, au[0].Outcome)
}

func TestDryRunChangesNothing(t *testing.T) {
	f := newFixture(t, nil)
	a := f.actor(t, Options{DryRun: true})
	ctx := context.Background()
	id, st0 := f.domainID(t), f.state(t)
	lifecycle := []Verb{VerbStart, VerbShutdown, VerbReboot, VerbReset, VerbDestroy, VerbSuspend, VerbResume}
	for _, verb := range lifecycle {
		res, err := a.Do(ctx, verb, testDomain)
		require.NoError(t, err, verb)
		assert.Equal(t, OutcomeDryRun, res.Outcome)
		assert.False(t, res.Done)
		assert.Contains(t, res.Detail, "would "+string(verb))
		assert.Equal(t, guest.Running, res.Before.State)
	}
	assert.Equal(t, st0, f.state(t))
	assert.Equal(t, id, f.domainID(t), "not restarted")
	assert.Empty(t, f.domainState(t).Forced)
	au := readAuditAll(t, f.audit)
	require.Len(t, au, len(lifecycle), "a dry run writes its end line only")
	for _, e := range au {
		assert.Equal(t, OutcomeDryRun, e.Outcome)
		assert.True(t, e.DryRun)
	}

	// a dry run still tells that the rate limit would refuse
	f0 := newFixture(t, func(p *Policy) { p.MaxForcedPerHour = 0 })
	_, err := f0.actor(t, Options{DryRun: true}).Do(ctx, VerbReset, testDomain)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "MaxForcedPerHour is 0")
}

func TestExecTestDriver(t *testing.T) {
	f := newFixture(t, func(p *Policy) { p.ExecTimeout = 3 * time.Second })
	a := f.actor(t, Options{})
	ctx := context.Background()

	t0 := time.Now()
	res, err := a.Exec(ctx, testDomain, []string{"uptime"}, true)
	require.ErrorIs(t, err, ErrNoAgent, "the test driver has no guest agent")
	assert.Less(t, time.Since(t0), 3*time.Second)
	assert.Contains(t, err.Error(), "exec test: guest-exec: guest agent unavailable")
	assert.Equal(t, OutcomeFailed, res.Outcome)

	res, err = a.Exec(ctx, testDomain, []string{"reboot"}, true)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "command reboot matches no AllowCommands pattern")
	assert.Equal(t, OutcomeRefused, res.Outcome)

	_, err = a.Exec(ctx, testDomain, []string{"echo", "hi;reboot"}, true)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), `'hi;reboot'`)

	_, err = a.Exec(ctx, "db-01", []string{"uptime"}, true)
	require.ErrorIs(t, err, ErrRefused)

	dry, err := f.actor(t, Options{DryRun: true}).Exec(ctx, testDomain, []string{"echo", "hi there"}, false)
	require.NoError(t, err)
	assert.Equal(t, OutcomeDryRun, dry.Outcome)
	assert.Equal(t, "would run echo 'hi there'", dry.Detail)

	au := readAudit(t, f.audit)
	require.Len(t, au, 5)
	assert.Equal(t, "uptime", au[0].Command)
	assert.Equal(t, []Outcome{OutcomeFailed, OutcomeRefused, OutcomeRefused, OutcomeRefused, OutcomeDryRun},
		[]Outcome{au[0].Outcome, au[1].Outcome, au[2].Outcome, au[3].Outcome, au[4].Outcome})
}

func TestResultJSON(t *testing.T) {
	f := newFixture(t, nil)
	res, err := f.actor(t, Options{}).Do(context.Background(), VerbSuspend, testDomain)
	require.NoError(t, err)
	b, err := json.Marshal(res)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	assert.Equal(t, "suspend", m["verb"])
	assert.Equal(t, "running", m["before"].(map[string]any)["state"])
	assert.Equal(t, map[string]any{"state": "paused", "reason": "user"}, m["after"])
	assert.Equal(t, true, m["done"])
	assert.IsType(t, float64(0), m["duration_s"])
}
