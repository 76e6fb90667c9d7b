package kvm

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
)

// A libvirt call stuck on a hung guest (here: a closure that blocks, the test driver has no guest
// to hang) must not delay calls that never wait on a guest, however many are stuck.
func TestStuckCallsDoNotDelayHostLane(t *testing.T) {
	c := NewConn("test:///default", 2*time.Second, 2)
	defer c.Close()
	release := make(chan struct{})
	started := make(chan struct{}, guestWorkers+2)
	block := func(*libvirt.Connect) error { started <- struct{}{}; <-release; return nil }
	var stuck sync.WaitGroup
	hold := func(run func(ctx context.Context) error) {
		stuck.Add(1)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			defer stuck.Done()
			_ = run(ctx)
		}()
		<-started // the call is inside "libvirt" now; its caller gives up
		cancel()
	}
	for i := 0; i < guestWorkers; i++ {
		hold(func(ctx context.Context) error { return c.exec(ctx, laneGuest, CallAgent, "hung", block, nil) })
	}
	for i := 0; i < 2; i++ {
		hold(func(ctx context.Context) error { return c.Do(ctx, block) })
	}
	stuck.Wait()
	require.Equal(t, guestWorkers+2, c.Overdue(), "every guest-lane and Do worker is held by a call past its deadline")

	// the guest lane and Do are full: they say so within the caller's deadline (each its own: an
	// expired context is reported as expired, not as busy)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, c.exec(ctx, laneGuest, CallAgent, "other", func(*libvirt.Connect) error { return nil }, nil), ErrBusy)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	require.ErrorIs(t, c.Do(ctx2, func(*libvirt.Connect) error { return nil }), ErrBusy)

	// the host lane still answers
	for i := 0; i < 100; i++ {
		require.True(t, c.Ping(context.Background()))
		st, _, err := c.DomainState(context.Background(), "test")
		require.NoError(t, err)
		require.Equal(t, libvirt.DOMAIN_RUNNING, st)
	}
	close(release)
	require.Eventually(t, func() bool { return c.Overdue() == 0 }, 5*time.Second, 10*time.Millisecond)
}

// Every kvm call a key makes ends within the connection's timeout (less a margin for the answer),
// even when the caller would wait much longer.
func TestBoundUsesTheConnectionTimeout(t *testing.T) {
	c := NewConn("test:///default", 300*time.Millisecond, 1)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, bcancel := c.Bound(ctx)
	defer bcancel()
	dl, ok := b.Deadline()
	require.True(t, ok)
	require.WithinDuration(t, time.Now().Add(300*time.Millisecond-c.margin()), dl, 50*time.Millisecond)

	short, scancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer scancel()
	b2, b2cancel := c.Bound(short)
	defer b2cancel()
	dl2, _ := b2.Deadline()
	sdl, _ := short.Deadline()
	require.Equal(t, sdl.Add(-c.margin()), dl2, "a shorter caller deadline wins, less the margin")

	// a read that would block forever returns at the bound, not at the caller's minute
	release := make(chan struct{})
	defer close(release)
	start := time.Now()
	err := c.read(ctx, laneHost, CallHost, "", func(*libvirt.Connect) error { <-release; return nil })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 10*time.Second)
	require.NoError(t, ctx.Err(), "the caller's context is still running")
}

func TestIsTestURI(t *testing.T) {
	for uri, want := range map[string]bool{
		"test:///default": true, "test:///tmp/node.xml": true, "TEST:///default": true,
		"test+unix:///default?socket=/tmp/s": true, "test+ssh://h/default": true,
		"qemu:///system": false, "qemu+ssh://h/system": false, "": false, "testing:///x": false,
	} {
		require.Equal(t, want, IsTestURI(uri), uri)
	}
}

// Addresses from the test driver are fiction: the inventory says so, whatever their source.
func TestTestDriverAddressesAreFictional(t *testing.T) {
	c := NewConn(kvmtest.NodeURI(t, []kvmtest.Domain{{Name: "meta", IP: "10.1.2.3"}, {Name: "leased"}}), 2*time.Second, 1)
	defer c.Close()
	require.True(t, c.TestDriver())
	inv := NewInventories(c, time.Minute)
	for _, name := range []string{"meta", "leased"} {
		i, err := inv.Get(context.Background(), name, true)
		require.NoError(t, err)
		require.True(t, i.Fictional, name)
		require.NotEmpty(t, i.IP, name)
	}
	require.False(t, NewConn("qemu:///system?socket=/nonexistent", time.Second, 1).TestDriver(), "decided by the URI before any dial")
}

// One collection and one inventory read, counted call by call.
func TestCallsCounted(t *testing.T) {
	c := NewConn(kvmtest.NodeURI(t, kvmtest.Domains(10)), 2*time.Second, 1)
	defer c.Close()
	require.True(t, c.Ping(context.Background()))
	before := c.Calls()
	require.EqualValues(t, 1, before[CallConnect])
	require.EqualValues(t, 2, before[CallHost], "the driver type at connect, and the ping")

	_, err := NewCache(c, time.Hour).Get(context.Background())
	require.NoError(t, err)
	inv := NewInventories(c, time.Hour)
	_, err = inv.Get(context.Background(), "vm-0001", true)
	require.NoError(t, err)
	_, err = inv.Get(context.Background(), "vm-0001", true) // cached: no call
	require.NoError(t, err)
	require.Equal(t, []string{"lookup=1", "stats=2", "xml=1"}, CallsDiff(before, c.Calls()))
	require.EqualValues(t, 1+2+2+1+1, c.CallsTotal())

	_, err = inv.Refresh(context.Background(), "vm-0001", true)
	require.NoError(t, err)
	require.Equal(t, []string{"lookup=2", "stats=2", "xml=2"}, CallsDiff(before, c.Calls()))
}

// A cached inventory is answered at once, and re-read in the background once it is old.
func TestInventoryServedWhileRefreshing(t *testing.T) {
	c := NewConn(kvmtest.NodeURI(t, kvmtest.Domains(3)), 2*time.Second, 1)
	defer c.Close()
	inv := NewInventories(c, 20*time.Millisecond)
	first, err := inv.Get(context.Background(), "vm-0002", false)
	require.NoError(t, err)
	fetched := inv.cached("vm-0002").fetched
	require.Eventually(t, func() bool {
		_, err := inv.Get(context.Background(), "vm-0002", false)
		require.NoError(t, err)
		return inv.cached("vm-0002").fetched.After(fetched)
	}, 5*time.Second, 30*time.Millisecond, "the background refresh replaced the cached copy")
	require.Equal(t, first.UUID, inv.cached("vm-0002").UUID)
}

// The agent's response timeout and command timeout share the seconds left, at least 1 each.
func TestAgentTimeouts(t *testing.T) {
	for left, want := range map[time.Duration][2]int{
		500 * time.Millisecond: {1, 1}, 1900 * time.Millisecond: {1, 1}, 2900 * time.Millisecond: {1, 1},
		3 * time.Second: {1, 2}, 5 * time.Second: {2, 3}, 30 * time.Second: {15, 15},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), left+50*time.Millisecond)
		resp := responseTimeout(ctx)
		cmd := commandTimeout(ctx, resp)
		cancel()
		require.Equal(t, want, [2]int{resp, cmd}, left)
	}
}

// Calls into one domain's agent run one at a time; once the one in flight is past its deadline,
// the next is refused at once instead of queueing behind it.
func TestAgentGates(t *testing.T) {
	var g agentGates
	g.init()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done, err := g.enter(ctx, "web")
	require.NoError(t, err)

	other, err := g.enter(context.Background(), "db") // another domain: not affected
	require.NoError(t, err)
	other()

	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		d, err := g.enter(ctx, "web")
		if err == nil {
			d()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("the second call into the same agent did not wait for the first: %v", err)
	default:
	}
	done()
	require.NoError(t, <-got, "the second call ran once the first was done")

	overdue, err := g.enter(ctx, "web")
	require.NoError(t, err)
	<-ctx.Done()                                  // the call in flight outlives its deadline
	_, err = g.enter(context.Background(), "web") // no deadline: only failing at once returns
	require.ErrorIs(t, err, ErrAgentBusy)
	overdue()
	d, err := g.enter(context.Background(), "web")
	require.NoError(t, err)
	d()
}

// On the test driver every agent call fails (it has no agent, and no agent response timeout to
// set); the call is then not made, and the error says why.
func TestAgentCallNeedsAResponseTimeout(t *testing.T) {
	c := NewConn("test:///default", 2*time.Second, 1)
	defer c.Close()
	_, err := c.AgentCommand(context.Background(), "test", "guest-ping", nil)
	require.ErrorIs(t, err, ErrAgent)
	require.ErrorContains(t, err, "agent response timeout")
	require.EqualValues(t, 0, c.Calls()[CallAgent], "no agent command without a response timeout")
	_, err = c.AgentAddresses(context.Background(), "nope")
	require.ErrorIs(t, err, guest.ErrNoDomain)
	require.False(t, errors.Is(err, ErrAgent))
}

// While a collection cannot finish (here: every host-lane worker is held), callers get the previous
// snapshot after half their time instead of waiting for their deadline.
func TestCacheAnswersPreviousSnapshotWhileCollectionIsSlow(t *testing.T) {
	c := NewConn(kvmtest.NodeURI(t, kvmtest.Domains(5)), 2*time.Second, 1)
	defer c.Close()
	cache := NewCache(c, 0)
	first, err := cache.Get(context.Background())
	require.NoError(t, err)

	release := make(chan struct{})
	var held sync.WaitGroup
	for i := 0; i < hostWorkers; i++ {
		held.Add(1)
		go func() {
			defer held.Done()
			_ = c.exec(context.Background(), laneHost, CallHost, "", func(*libvirt.Connect) error { <-release; return nil }, nil)
		}()
	}
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		return errors.Is(c.exec(ctx, laneHost, CallHost, "", func(*libvirt.Connect) error { return nil }, nil), ErrBusy)
	}, 5*time.Second, 10*time.Millisecond, "every host worker is held")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := cache.Get(ctx)
	require.NoError(t, err)
	require.Same(t, first, s, "the previous snapshot")
	require.NoError(t, ctx.Err(), "before the caller's deadline")

	close(release)
	held.Wait()
	require.Eventually(t, func() bool {
		s, err := cache.Get(context.Background())
		return err == nil && s != first
	}, 5*time.Second, 20*time.Millisecond, "a new snapshot once libvirt answers again")
}
