// Package kvm reads libvirt: a connection manager that bounds every C call with a deadline,
// a bulk statistics cache, and the per-domain views the plugin's keys return.
package kvm

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// ErrBusy means every libvirt worker is stuck in a C call that has not returned (a hung QEMU monitor,
// a dead daemon): the caller gets an answer within its deadline instead of queueing behind them.
var ErrBusy = errors.New("libvirt busy: every worker is waiting on an earlier call")

// DefaultWorkers bounds how many libvirt C calls may be in flight at once. C calls cannot be
// cancelled, so a hung call keeps its worker; the bound keeps a hung hypervisor from growing
// one OS thread per poll.
const DefaultWorkers = 4

// Worker counts of the lanes kvm uses for its own calls (Do has the count given to NewConn).
const (
	hostWorkers  = 6
	guestWorkers = 6
)

// A libvirt connection must never carry a call that may wait forever next to calls that must not.
// libvirt's RPC client lets one thread (the one "holding the buck") do the socket I/O for every call
// in flight on a connection, and wakes it with g_main_loop_quit when another thread queues a call. A
// quit that lands before that thread has re-entered g_main_loop_run is lost (libvirt 9.0,
// virNetClientIO): the new call is not even sent until something arrives on the socket. While the
// buck holder is waiting on a frozen QEMU, nothing arrives but libvirtd's keepalive ping, every
// 5 s: a healthy domain's call then waits up to 5 s (measured: kvm.domain.get 5.0 s with a 3 s
// Timeout). So calls run in lanes:
//
//   - laneHost: what libvirtd answers from its own state (lookups, domain state and interface
//     counters, host facts, lease and ARP addresses): no call on it waits on a guest, though one may
//     wait for a domain that libvirtd is starting or stopping;
//   - laneGuest: what may wait on a guest's QEMU monitor or agent (monitor statistics, agent
//     commands), and the domain XML: libvirt 11.3 reads it under the domain's job, so with a frozen
//     QEMU busy in a statistics call it waits 30 s and fails ("cannot acquire state change lock";
//     the compatibility matrix saw kvm.hypervisor.ping answer 0 in 93 of 200 polls while it sat on
//     the host lane; libvirt 9.0 answers at once);
//   - laneDo: closures other packages run through Do (actions: reset, destroy, event callbacks);
//     their workers share one connection, as event registration needs.
//
// Every host and guest worker owns its connection: a slow or stuck call delays no other call, and
// libvirtd's per-client request limit (max_client_requests, 5) never applies to more than one.
//
// libvirt's test driver runs in the calling process and never waits on a guest; and every
// connection to test:///FILE gets its own copy of the node. There, every lane uses one connection.
type lane int

const (
	laneHost lane = iota
	laneGuest
	laneDo
	nLanes
)

func (l lane) String() string {
	return [...]string{"host", "guest", "do"}[l]
}

type job struct {
	ctx    context.Context
	fn     func(*libvirt.Connect) error
	done   chan error
	after  func() // runs once the call is over, or when it never started
	kind   string
	domain string

	mu        sync.Mutex
	finished  bool // the worker is done with it
	abandoned bool // its caller stopped waiting first
}

// link is one libvirt connection, opened on first use and reopened after the daemon went away.
type link struct {
	mu   sync.Mutex
	conn *libvirt.Connect
}

// Conn is a lazily opened, self-healing libvirt connection manager shared by every key and action.
type Conn struct {
	uri     string
	timeout time.Duration
	stop    chan struct{}
	jobs    [nLanes]chan *job
	do      *link // shared by Do's workers; by every worker when the URI is the test driver
	test    bool

	mu     sync.Mutex
	links  []*link // every link, for Close
	dials  int
	driver string // virConnectGetType of the last connection opened: "QEMU", "Test", ...

	calls    callCounts
	overdue  [nLanes]atomic.Int64 // calls still in C after their caller gave up
	observer atomic.Pointer[func(Call)]

	agents agentGates
	facts  hostFacts
}

var eventLoop sync.Once

// startEventLoop runs libvirt's default event loop, which keepalive needs; libvirt allows one per process.
func startEventLoop() {
	eventLoop.Do(func() {
		if err := libvirt.EventRegisterDefaultImpl(); err != nil {
			return
		}
		go func() {
			for {
				if err := libvirt.EventRunDefaultImpl(); err != nil {
					time.Sleep(time.Second)
				}
			}
		}()
	})
}

// IsTestURI says whether uri names libvirt's test driver (test:///default, test:///PATH,
// test+unix://…): its domains, states and addresses are made up.
func IsTestURI(uri string) bool {
	u, err := url.Parse(uri)
	if err != nil {
		return false
	}
	s := strings.ToLower(u.Scheme)
	return s == "test" || strings.HasPrefix(s, "test+")
}

// NewConn returns a connection manager for uri; nothing is dialled until the first call.
// timeout bounds every call kvm makes for a key, and Do calls whose context has no deadline.
// workers is the number of Do calls that may be in flight at once.
func NewConn(uri string, timeout time.Duration, workers int) *Conn {
	if workers <= 0 {
		workers = DefaultWorkers
	}
	c := &Conn{uri: uri, timeout: timeout, stop: make(chan struct{}), test: IsTestURI(uri)}
	c.calls.init()
	c.agents.init()
	c.do = c.newLink()
	for l, n := range [nLanes]int{hostWorkers, guestWorkers, workers} {
		c.jobs[l] = make(chan *job)
		for i := 0; i < n; i++ {
			ln := c.do
			if !c.test && lane(l) != laneDo {
				ln = c.newLink()
			}
			go c.worker(lane(l), ln)
		}
	}
	return c
}

func (c *Conn) newLink() *link {
	l := &link{}
	c.mu.Lock()
	c.links = append(c.links, l)
	c.mu.Unlock()
	return l
}

// URI returns the libvirt URI this manager connects to.
func (c *Conn) URI() string { return c.uri }

// Timeout returns the per-call deadline.
func (c *Conn) Timeout() time.Duration { return c.timeout }

// Dials reports how many connections were opened so far (one per lane worker that needed one on a
// healthy run; more after reconnects).
func (c *Conn) Dials() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dials
}

// TestDriver says whether this manager talks to libvirt's test driver, by its URI or by what the
// connected driver called itself. Everything such a connection reports is fiction: its addresses
// (the test driver answers 192.168.x.y for any interface) must never be dialled.
func (c *Conn) TestDriver() bool {
	if c.test {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.driver == "Test"
}

// Overdue reports how many calls are still inside libvirt after their caller's deadline passed:
// each holds a worker (and, on the guest lane, its connection) until libvirt returns.
func (c *Conn) Overdue() int {
	n := int64(0)
	for i := range c.overdue {
		n += c.overdue[i].Load()
	}
	return int(n)
}

func (c *Conn) worker(l lane, ln *link) {
	for {
		select {
		case <-c.stop:
			return
		case j := <-c.jobs[l]:
			start := time.Now()
			err := c.run(j.ctx, ln, j.fn)
			if j.after != nil {
				j.after()
			}
			j.mu.Lock()
			j.finished = true
			late := j.abandoned
			j.mu.Unlock()
			if late {
				c.overdue[l].Add(-1)
			}
			j.done <- err
			if o := c.observer.Load(); o != nil {
				(*o)(Call{Lane: l.String(), Kind: j.kind, Domain: j.domain, Took: time.Since(start), Err: err, Overdue: late})
			}
		}
	}
}

// run executes fn on the link's connection, reconnecting once when the daemon went away
// (libvirtd restart: "Cannot write data: Broken pipe", or an invalidated connection pointer).
func (c *Conn) run(ctx context.Context, ln *link, fn func(*libvirt.Connect) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("libvirt call panicked: %v", r)
		}
	}()
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		conn, err := c.get(ln)
		if err != nil {
			return err
		}
		err = fn(conn)
		if err == nil || !connectionLost(err) || attempt > 0 {
			return err
		}
		c.drop(ln, conn)
	}
}

func (c *Conn) get(ln *link) (*libvirt.Connect, error) {
	ln.mu.Lock()
	defer ln.mu.Unlock()
	if ln.conn != nil {
		if alive, err := ln.conn.IsAlive(); err == nil && alive {
			return ln.conn, nil
		}
		ln.conn.Close()
		ln.conn = nil
	}
	startEventLoop()
	c.calls.add(CallConnect, 1)
	conn, err := libvirt.NewConnect(c.uri)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", c.uri, err)
	}
	// keepalive lets libvirt notice a dead daemon between polls; the test driver has none (error ignored)
	_ = conn.SetKeepAlive(5, 3)
	c.calls.add(CallHost, 1)
	driver, _ := conn.GetType()
	ln.conn = conn
	c.mu.Lock()
	c.dials++
	if driver != "" {
		c.driver = driver
	}
	c.mu.Unlock()
	return conn, nil
}

func (c *Conn) drop(ln *link, conn *libvirt.Connect) {
	ln.mu.Lock()
	defer ln.mu.Unlock()
	if ln.conn == conn {
		ln.conn.Close()
		ln.conn = nil
	}
}

func connectionLost(err error) bool {
	var lerr libvirt.Error
	if !errors.As(err, &lerr) {
		return false
	}
	switch lerr.Code {
	case libvirt.ERR_SYSTEM_ERROR, libvirt.ERR_INVALID_CONN, libvirt.ERR_NO_CONNECT, libvirt.ERR_RPC:
		return true
	case libvirt.ERR_INTERNAL_ERROR:
		return lerr.Domain == libvirt.FROM_RPC
	}
	return false
}

// Do runs fn with a libvirt connection on a bounded worker, and returns when fn does or when ctx
// (or, if ctx has no deadline, the manager's timeout) expires, whichever is first. A call that
// outlives its deadline keeps running in its worker; its result is discarded. Do's calls share one
// connection among themselves (event callbacks registered in one Do can be deregistered in
// another) and never one with kvm's own reads, so a Do stuck on a hung QEMU delays no key.
func (c *Conn) Do(ctx context.Context, fn func(*libvirt.Connect) error) error {
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if err := ctx.Err(); err != nil {
		// an expired context is not a busy pool: say why, and do not hand a worker a dead job
		return fmt.Errorf("libvirt call on %s: %w", c.uri, err)
	}
	c.calls.add(CallDo, 1)
	return c.exec(ctx, laneDo, "do", "", fn, nil)
}

// exec queues fn on lane l. after, if set, runs exactly once: when fn has returned (in the worker,
// however late) or when fn never runs.
func (c *Conn) exec(ctx context.Context, l lane, kind, domain string, fn func(*libvirt.Connect) error, after func()) error {
	j := &job{ctx: ctx, fn: fn, done: make(chan error, 1), after: after, kind: kind, domain: domain}
	select {
	case c.jobs[l] <- j:
	case <-ctx.Done():
		if after != nil {
			after()
		}
		return fmt.Errorf("%w (%s, %s lane)", ErrBusy, c.uri, l)
	case <-c.stop:
		if after != nil {
			after()
		}
		return errors.New("libvirt connection manager closed")
	}
	select {
	case err := <-j.done:
		return err
	case <-ctx.Done():
		j.mu.Lock()
		if !j.finished {
			j.abandoned = true // the worker counts it down when the call finally returns
			c.overdue[l].Add(1)
		}
		j.mu.Unlock()
		return fmt.Errorf("libvirt call on %s: %w", c.uri, ctx.Err())
	}
}

// margin is what a bounded call leaves of its deadline for the caller to build its answer: the
// agent drops an answer that arrives after its Timeout, and a loaded machine wakes a waiting
// goroutine late. A tenth of the timeout, 20-500 ms.
func (c *Conn) margin() time.Duration {
	return min(max(c.timeout/10, 20*time.Millisecond), 500*time.Millisecond)
}

// Bound returns ctx limited to the manager's timeout and ended a little before its own deadline
// (see margin), so whatever runs under it answers within the agent's Timeout even when the
// caller's context is longer. Every kvm method a key calls is bounded this way.
func (c *Conn) Bound(ctx context.Context) (context.Context, context.CancelFunc) {
	dl := time.Now().Add(c.timeout)
	if c.timeout <= 0 {
		dl = time.Now().Add(30 * time.Second)
	}
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	return context.WithDeadline(ctx, dl.Add(-c.margin()))
}

// read runs fn on lane l under Bound(ctx).
func (c *Conn) read(ctx context.Context, l lane, kind, domain string, fn func(*libvirt.Connect) error) error {
	ctx, cancel := c.Bound(ctx)
	defer cancel()
	return c.exec(ctx, l, kind, domain, fn, nil)
}

// Close stops the workers that are idle and closes the connections. Workers stuck in C calls exit
// when their call returns.
func (c *Conn) Close() {
	select {
	case <-c.stop:
		return
	default:
	}
	close(c.stop)
	c.mu.Lock()
	links := c.links
	c.mu.Unlock()
	for _, ln := range links {
		ln.mu.Lock()
		if ln.conn != nil {
			ln.conn.Close()
			ln.conn = nil
		}
		ln.mu.Unlock()
	}
}

// LookupDomain finds a domain by name, or by UUID when no domain has that name (Zabbix names a
// guest host after its domain's UUID); the error wraps guest.ErrNoDomain when libvirt knows neither.
// The caller must Free the domain.
func LookupDomain(conn *libvirt.Connect, nameOrUUID string) (*libvirt.Domain, error) {
	d, err := conn.LookupDomainByName(nameOrUUID)
	if err != nil && noDomain(err) && uuidText.MatchString(nameOrUUID) {
		d, err = conn.LookupDomainByUUIDString(nameOrUUID)
	}
	if err != nil {
		if noDomain(err) {
			return nil, fmt.Errorf("%w: %q", guest.ErrNoDomain, nameOrUUID)
		}
		return nil, fmt.Errorf("lookup domain %q: %w", nameOrUUID, err)
	}
	return d, nil
}

var uuidText = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)

func noDomain(err error) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == libvirt.ERR_NO_DOMAIN
}

// lookup is LookupDomain, counted.
func (c *Conn) lookup(l *libvirt.Connect, name string) (*libvirt.Domain, error) {
	c.calls.add(CallLookup, 1)
	return LookupDomain(l, name)
}

// DomainState reads a domain's state and reason (virDomainGetState, which libvirt answers without
// QEMU's monitor), on the lane that never waits on a guest, bounded like every key's call.
func (c *Conn) DomainState(ctx context.Context, name string) (libvirt.DomainState, int, error) {
	var st libvirt.DomainState
	var reason int
	err := c.read(ctx, laneHost, CallState, name, func(l *libvirt.Connect) error {
		d, err := c.lookup(l, name)
		if err != nil {
			return err
		}
		defer d.Free()
		c.calls.add(CallState, 1)
		st, reason, err = d.GetState()
		return err
	})
	return st, reason, err
}
