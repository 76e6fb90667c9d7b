package kvm

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
)

func TestConnDeadlineAndBusy(t *testing.T) {
	c := NewConn("test:///default", 200*time.Millisecond, 2)
	defer c.Close()
	release := make(chan struct{})
	defer close(release)
	// two calls stuck in "C" (blocked functions) occupy both workers
	for i := 0; i < 2; i++ {
		start := time.Now()
		err := c.Do(context.Background(), func(*libvirt.Connect) error { <-release; return nil })
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(start), time.Second)
	}
	// a third call cannot get a worker and says so within its deadline
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.Do(ctx, func(*libvirt.Connect) error { return nil })
	require.ErrorIs(t, err, ErrBusy)
}

func TestConnRecoversPanicAndLooksUp(t *testing.T) {
	c := NewConn("test:///default", 2*time.Second, 1)
	defer c.Close()
	err := c.Do(context.Background(), func(*libvirt.Connect) error { panic("boom") })
	require.ErrorContains(t, err, "libvirt call panicked: boom")
	err = c.Do(context.Background(), func(l *libvirt.Connect) error {
		_, err := LookupDomain(l, "nope")
		return err
	})
	require.ErrorIs(t, err, guest.ErrNoDomain)
	require.True(t, c.Ping(context.Background()))
	require.Equal(t, 1, c.Dials())
}

func TestConnUnreachable(t *testing.T) {
	c := NewConn("qemu:///system?socket=/nonexistent/libvirt-sock", time.Second, 1)
	defer c.Close()
	require.False(t, c.Ping(context.Background()))
	cache := NewCache(c, time.Second)
	_, err := cache.Get(context.Background())
	require.ErrorContains(t, err, "/nonexistent/libvirt-sock")
}

// One collection (two bulk calls) per cache period however many callers ask at once, counted rather than assumed.
func TestCacheSingleFlight(t *testing.T) {
	uri := kvmtest.NodeURI(t, kvmtest.Domains(1000))
	c := NewConn(uri, 30*time.Second, 4)
	defer c.Close()
	cache := NewCache(c, time.Hour)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := cache.Get(context.Background())
			if err == nil {
				_, err = s.Lookup("vm-" + pad(i%1000))
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, 2, cache.Calls(), "one collection: the fast and the monitor bulk call")
	s, err := cache.Get(context.Background())
	require.NoError(t, err)
	require.Len(t, s.Records, 1000)
	counts := guest.Counts(s.Records)
	require.Equal(t, 100, counts["shutoff"])
	require.Equal(t, 900, counts["running"])

	short := NewCache(c, 50*time.Millisecond)
	_, err = short.Get(context.Background())
	require.NoError(t, err)
	time.Sleep(60 * time.Millisecond) // let the period expire: the behaviour under test is time-based
	_, err = short.Get(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 4, short.Calls())
}

func pad(i int) string {
	s := strconv.Itoa(i)
	return strings.Repeat("0", 4-len(s)) + s
}

func TestInventoryFromXML(t *testing.T) {
	uri := kvmtest.NodeURI(t, []kvmtest.Domain{{Name: "web-01", Title: "Web 1", IP: "127.0.0.7"}, {Name: "db", Title: "DB"}})
	c := NewConn(uri, 5*time.Second, 2)
	defer c.Close()
	inv := NewInventories(c, time.Minute)
	i, err := inv.Get(context.Background(), "web-01", true)
	require.NoError(t, err)
	require.Equal(t, "Web 1", i.Title)
	require.Equal(t, "127.0.0.7", i.IP)
	require.Equal(t, "metadata", i.IPSource)
	require.Equal(t, []string{"52:54:00:00:00:00"}, i.MACs)
	require.NotEmpty(t, i.NICs[0].Target) // the test driver names running targets itself (testnet0)
	require.False(t, i.HasAgent)
	_, err = inv.Get(context.Background(), "missing", false)
	require.ErrorIs(t, err, guest.ErrNoDomain)
}

var errTest = errors.New("libvirt call on qemu:///system: context deadline exceeded")

// A monitor call that timed out keeps each domain's previous cpu/memory/disk values, marked stale,
// while state and network come from this collection.
func TestMergeKeepsPreviousMonitorValues(t *testing.T) {
	prev := guest.NewSnapshot([]guest.Record{{Name: "a", UUID: "u1", Params: map[string]string{"state.state": "1", "cpu.time": "7", "net.count": "0"}}}, time.Now())
	fast := []guest.Record{{Name: "a", UUID: "u1", Params: map[string]string{"state.state": "1", "net.count": "0"}},
		{Name: "b", UUID: "u2", Params: map[string]string{"state.state": "5"}}}
	merge(fast, nil, errTest, prev)
	require.Equal(t, "7", fast[0].Params["cpu.time"])
	require.Equal(t, errTest.Error(), fast[0].Domain().StatsError)
	require.NotContains(t, fast[1].Params, "cpu.time")

	fresh := []guest.Record{{Name: "a", UUID: "u1", Params: map[string]string{"state.state": "1"}}}
	merge(fresh, []guest.Record{{Name: "a", UUID: "u1", Params: map[string]string{"state.state": "3", "cpu.time": "9"}}}, nil, prev)
	require.Equal(t, "9", fresh[0].Params["cpu.time"])
	require.Equal(t, "1", fresh[0].Params["state.state"], "the fast call's state wins")
	require.Empty(t, fresh[0].Stale)
}
