package kvm

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
)

func TestStateAndReasonNames(t *testing.T) {
	tests := []struct {
		state  libvirt.DomainState
		reason int
		name   string
		why    string
	}{
		{libvirt.DOMAIN_RUNNING, 1, "running", "booted"},
		{libvirt.DOMAIN_PAUSED, 1, "paused", "user"},
		{libvirt.DOMAIN_PAUSED, 5, "paused", "I/O error"},
		{libvirt.DOMAIN_SHUTOFF, 1, "shutoff", "shutdown"},
		{libvirt.DOMAIN_SHUTOFF, 2, "shutoff", "destroyed"},
		{libvirt.DOMAIN_SHUTOFF, 3, "shutoff", "crashed"},
		{libvirt.DOMAIN_CRASHED, 1, "crashed", "panicked"},
		{libvirt.DOMAIN_PMSUSPENDED, 0, "pmsuspended", "unknown"},
		{libvirt.DomainState(42), 0, "unknown(42)", "reason(0)"},
		{libvirt.DOMAIN_RUNNING, 99, "running", "reason(99)"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.name, StateName(tt.state))
		require.Equal(t, tt.why, ReasonName(tt.state, tt.reason))
	}
}

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
	require.ErrorIs(t, err, ErrNoDomain)
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
	c := NewConn(uri, 5*time.Second, 4)
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
	counts := Counts(s.Records)
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
	require.ErrorIs(t, err, ErrNoDomain)
}

func TestParseDomainXMLAgentChannel(t *testing.T) {
	inv, err := ParseDomainXML("g", `<domain><devices><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices></domain>`)
	require.NoError(t, err)
	require.True(t, inv.HasAgent)
	_, err = ParseDomainXML("g", `<domain><devices>`)
	require.ErrorContains(t, err, `domain "g" XML`)
}

func TestChecksOnLoopback(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			w.WriteHeader(204)
			return
		}
		http.Error(w, "nope", 503)
	}))
	defer srv.Close()
	host, portS, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portS)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	require.True(t, TCPCheck(ctx, host, port))
	r := HTTPCheck(ctx, host, port, "/health")
	require.Equal(t, 204, r.Status)
	require.Empty(t, r.Error)
	r = HTTPCheck(ctx, host, port, "other")
	require.Equal(t, 503, r.Status)
	require.Equal(t, "HTTP 503 Service Unavailable", r.Error)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := l.Addr().(*net.TCPAddr).Port
	l.Close()
	require.False(t, TCPCheck(ctx, "127.0.0.1", closed))
	r = HTTPCheck(ctx, "127.0.0.1", closed, "/")
	require.Equal(t, 0, r.Status)
	require.Contains(t, r.Error, "connection refused")

	// a listener that accepts but never answers: the check ends at the deadline
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer hang.Close()
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	start := time.Now()
	r = HTTPCheck(short, "127.0.0.1", hang.Addr().(*net.TCPAddr).Port, "/")
	require.Equal(t, 0, r.Status)
	require.True(t, errors.Is(short.Err(), context.DeadlineExceeded))
	require.Less(t, time.Since(start), 2*time.Second)
}

var errTest = errors.New("libvirt call on qemu:///system: context deadline exceeded")
