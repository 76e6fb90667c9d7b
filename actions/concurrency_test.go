package actions

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

// TestRateLimitSharedAcrossActors: two Actors with their own libvirt connections (as the plugin and a
// CLI process would have) share one StateDir, so the forced-action count is theirs together. (Open
// test:///default connections share one copy of the driver's state, so both see the same domain.)
func TestRateLimitSharedAcrossActors(t *testing.T) {
	f1 := newFixture(t, func(p *Policy) { p.MaxForcedPerHour = 3 })
	f2 := newFixture(t, nil)
	f2.pol = f1.pol // same StateDir and AuditLog, own connection
	a1, a2 := f1.actor(t, Options{Caller: "zabbix"}), f2.actor(t, Options{Caller: "cli", Clock: f1.clock})
	ctx := context.Background()

	_, err := a1.Do(ctx, VerbReset, testDomain)
	require.NoError(t, err)
	_, err = a2.Do(ctx, VerbReset, testDomain)
	require.NoError(t, err)
	_, err = a1.Do(ctx, VerbDestroy, testDomain)
	require.NoError(t, err)
	assert.Equal(t, guest.Shutoff, f2.state(t).State)
	_, err = a2.Do(ctx, VerbStart, testDomain)
	require.NoError(t, err, "start is not a forced action")

	// the fourth forced action within the hour is refused, whoever asks, and nothing happens
	res, err := a2.Do(ctx, VerbReset, testDomain)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "reset test: refused by policy: rate limit: 3 forced actions in the last hour (MaxForcedPerHour 3); next allowed in ")
	assert.Equal(t, OutcomeRefused, res.Outcome)
	assert.Equal(t, guest.Running, f2.state(t).State)

	// non-forced verbs are not limited
	_, err = a2.Do(ctx, VerbSuspend, testDomain)
	require.NoError(t, err)
	_, err = a2.Do(ctx, VerbResume, testDomain)
	require.NoError(t, err)

	// the wall clock set back an hour (or forward) changes nothing: ages run on the boot clock
	f1.clock.StepWall(-time.Hour)
	_, err = a2.Do(ctx, VerbReset, testDomain)
	require.ErrorIs(t, err, ErrRefused, "a clock step back does not erase the history")
	f1.clock.StepWall(2 * time.Hour)
	_, err = a2.Do(ctx, VerbReset, testDomain)
	require.ErrorIs(t, err, ErrRefused, "nor does one forward")

	// an hour later forced actions are allowed again
	f1.clock.Advance(time.Hour + time.Second)
	_, err = a2.Do(ctx, VerbReset, testDomain)
	require.NoError(t, err)

	au := readAudit(t, f1.audit)
	require.Len(t, au, 10)
	assert.Equal(t, "cli", au[4].Caller)
	assert.Equal(t, OutcomeRefused, au[4].Outcome)
	assert.Contains(t, au[4].Detail, "rate limit")
}

type interval struct {
	who        string
	start, end time.Time
}

func assertNoOverlap(t *testing.T, iv []interval) {
	t.Helper()
	sort.Slice(iv, func(i, j int) bool { return iv[i].start.Before(iv[j].start) })
	for i := 1; i < len(iv); i++ {
		assert.False(t, iv[i].start.Before(iv[i-1].end), "%s [%s..%s] overlaps %s [%s..%s]",
			iv[i].who, iv[i].start.Format("15:04:05.000000"), iv[i].end.Format("15:04:05.000000"),
			iv[i-1].who, iv[i-1].start.Format("15:04:05.000000"), iv[i-1].end.Format("15:04:05.000000"))
	}
}

// TestLockSerialisesGoroutines runs recover from several goroutines on one domain. Their health probe
// runs under the domain lock; it records when it runs, and the intervals must never overlap.
func TestLockSerialisesGoroutines(t *testing.T) {
	f := newFixture(t, func(p *Policy) { p.LockWait = 10 * time.Second })
	var mu sync.Mutex
	var iv []interval
	health := func(ctx context.Context, domain string) (bool, string) {
		s := time.Now()
		time.Sleep(50 * time.Millisecond) // the work being serialised
		mu.Lock()
		iv = append(iv, interval{domain, s, time.Now()})
		mu.Unlock()
		return true, "fake service: healthy"
	}
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := f.actor(t, Options{Caller: fmt.Sprintf("g%d", i), Health: health})
			rep, err := a.Recover(context.Background(), testDomain)
			if err == nil && rep.Exit != ExitAlreadyHealthy {
				err = fmt.Errorf("exit %q", rep.Exit)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, iv, 6)
	assertNoOverlap(t, iv)
}

// TestLockRefusesAfterLockWait: a second action gives up after LockWait and names the holder.
func TestLockRefusesAfterLockWait(t *testing.T) {
	f := newFixture(t, func(p *Policy) { p.LockWait = 300 * time.Millisecond })
	inside, release := make(chan struct{}), make(chan struct{})
	slow := f.actor(t, Options{Caller: "zabbix", Health: func(ctx context.Context, d string) (bool, string) {
		close(inside)
		<-release
		return true, "fake service: healthy"
	}})
	done := make(chan error, 1)
	go func() {
		_, err := slow.Recover(context.Background(), testDomain)
		done <- err
	}()
	<-inside
	t0 := time.Now()
	res, err := f.actor(t, Options{Caller: "cli"}).Do(context.Background(), VerbReset, testDomain)
	waited := time.Since(t0)
	close(release)
	require.NoError(t, <-done)
	require.ErrorIs(t, err, ErrLocked)
	assert.Equal(t, OutcomeRefused, res.Outcome)
	assert.Contains(t, err.Error(), fmt.Sprintf("held by zabbix recover (pid %d)", os.Getpid()))
	assert.GreaterOrEqual(t, waited, 300*time.Millisecond)
	assert.Less(t, waited, 3*time.Second)
	assert.Empty(t, f.domainState(t).Forced, "a refused reset is not counted")
}

// TestLockSerialisesProcesses: separate processes (this test binary re-executed) take the same
// domain's lock; each records when it held it.
func TestLockSerialisesProcesses(t *testing.T) {
	dir := t.TempDir()
	const n = 4
	var cmds []*exec.Cmd
	for i := 0; i < n; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLockHolder$")
		cmd.Env = append(os.Environ(), "ACTIONS_LOCK_HELPER="+dir, "ACTIONS_LOCK_ID="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		require.NoError(t, cmd.Start())
		cmds = append(cmds, cmd)
		t.Cleanup(func() { _ = cmd.Process.Kill() })
	}
	for _, c := range cmds {
		require.NoError(t, c.Wait())
	}
	var iv []interval
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("held-%d", i)))
		require.NoError(t, err)
		var s, e int64
		_, err = fmt.Sscanf(strings.TrimSpace(string(b)), "%d %d", &s, &e)
		require.NoError(t, err)
		iv = append(iv, interval{fmt.Sprintf("process %d", i), time.Unix(0, s), time.Unix(0, e)})
	}
	assertNoOverlap(t, iv)
}

// TestHelperLockHolder is the child of TestLockSerialisesProcesses; it does nothing in a normal run.
func TestHelperLockHolder(t *testing.T) {
	dir := os.Getenv("ACTIONS_LOCK_HELPER")
	if dir == "" {
		return
	}
	id := os.Getenv("ACTIONS_LOCK_ID")
	sd, err := statedir.Open(filepath.Join(dir, "state"))
	require.NoError(t, err)
	l, err := sd.LockDomain(context.Background(), "web 07 ✓", 20*time.Second,
		statedir.Holder{PID: os.Getpid(), Caller: "helper" + id, Verb: "hold", Since: time.Now()})
	require.NoError(t, err)
	s := time.Now()
	time.Sleep(100 * time.Millisecond) // the work being serialised
	e := time.Now()
	l.Unlock()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "held-"+id), fmt.Appendf(nil, "%d %d\n", s.UnixNano(), e.UnixNano()), 0o644))
}
