// Package kvm reads libvirt: a connection manager that bounds every C call with a deadline,
// a bulk statistics cache, and the per-domain views the plugin's keys return.
package kvm

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
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

type job struct {
	ctx  context.Context
	fn   func(*libvirt.Connect) error
	done chan error
}

// Conn is a lazily opened, self-healing libvirt connection shared by every key and action.
type Conn struct {
	uri     string
	timeout time.Duration
	jobs    chan job
	stop    chan struct{}

	mu    sync.Mutex
	conn  *libvirt.Connect
	dials int // connections opened, for tests and for the reconnect log line
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

// NewConn returns a connection manager for uri; nothing is dialled until the first call.
// timeout is the default deadline for calls whose context has none.
func NewConn(uri string, timeout time.Duration, workers int) *Conn {
	if workers <= 0 {
		workers = DefaultWorkers
	}
	c := &Conn{uri: uri, timeout: timeout, jobs: make(chan job), stop: make(chan struct{})}
	for i := 0; i < workers; i++ {
		go c.worker()
	}
	return c
}

// URI returns the libvirt URI this manager connects to.
func (c *Conn) URI() string { return c.uri }

// Timeout returns the default per-call deadline.
func (c *Conn) Timeout() time.Duration { return c.timeout }

// Dials reports how many connections were opened so far (1 on a healthy run; more after reconnects).
func (c *Conn) Dials() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dials
}

func (c *Conn) worker() {
	for {
		select {
		case <-c.stop:
			return
		case j := <-c.jobs:
			j.done <- c.run(j.ctx, j.fn)
		}
	}
}

// run executes fn on the current connection, reconnecting once when the daemon went away
// (libvirtd restart: "Cannot write data: Broken pipe", or an invalidated connection pointer).
func (c *Conn) run(ctx context.Context, fn func(*libvirt.Connect) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("libvirt call panicked: %v", r)
		}
	}()
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		conn, err := c.get()
		if err != nil {
			return err
		}
		err = fn(conn)
		if err == nil || !connectionLost(err) || attempt > 0 {
			return err
		}
		c.drop(conn)
	}
}

func (c *Conn) get() (*libvirt.Connect, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		if alive, err := c.conn.IsAlive(); err == nil && alive {
			return c.conn, nil
		}
		c.conn.Close()
		c.conn = nil
	}
	startEventLoop()
	conn, err := libvirt.NewConnect(c.uri)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", c.uri, err)
	}
	// keepalive lets libvirt notice a dead daemon between polls; the test driver has none (error ignored)
	_ = conn.SetKeepAlive(5, 3)
	c.conn = conn
	c.dials++
	return conn, nil
}

func (c *Conn) drop(conn *libvirt.Connect) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == conn {
		c.conn.Close()
		c.conn = nil
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

// Do runs fn with the libvirt connection on a bounded worker, and returns when fn does or when ctx
// (or, if ctx has no deadline, the manager's timeout) expires, whichever is first. A call that
// outlives its deadline keeps running in its worker; its result is discarded.
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
	j := job{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case c.jobs <- j:
	case <-ctx.Done():
		return fmt.Errorf("%w (%s)", ErrBusy, c.uri)
	case <-c.stop:
		return errors.New("libvirt connection manager closed")
	}
	select {
	case err := <-j.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("libvirt call on %s: %w", c.uri, ctx.Err())
	}
}

// Close stops the workers that are idle and closes the connection. Workers stuck in C calls exit
// when their call returns.
func (c *Conn) Close() {
	select {
	case <-c.stop:
		return
	default:
	}
	close(c.stop)
	c.mu.Lock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
	c.mu.Unlock()
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
