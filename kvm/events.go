package kvm

import (
	"context"
	"fmt"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// eventQueue bounds the events waiting for the handler; libvirt's event loop must never block on us.
const eventQueue = 1024

// Watch subscribes to the domain events of every domain on a connection of its own and hands each
// to fn, in order, on one goroutine. When the connection is lost (libvirtd restarted) it subscribes
// again, with backoff, and then calls resync, so the caller can reconcile from the current state
// what it missed. Every subscription call is bounded by the manager's timeout. stop ends it.
func (c *Conn) Watch(fn func(guest.Event), resync func()) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	q := make(chan guest.Event, eventQueue)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case e := <-q:
				fn(e)
			}
		}
	}()
	go c.watch(ctx, q, resync)
	return func() { cancel(); <-done }
}

func (c *Conn) watch(ctx context.Context, q chan<- guest.Event, resync func()) {
	startEventLoop()
	backoff := time.Second
	for first := true; ctx.Err() == nil; first = false {
		closed := make(chan struct{})
		conn, ids, err := c.subscribe(q, closed)
		if err == nil {
			backoff = time.Second
			if !first && resync != nil {
				resync()
			}
			select {
			case <-ctx.Done():
			case <-closed:
			}
			c.unsubscribe(conn, ids)
			if ctx.Err() != nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// bounded runs a libvirt call that may hang (an RPC to a wedged daemon) with the manager's
// timeout; a call that outlives it is abandoned to its goroutine.
func (c *Conn) bounded(fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(c.timeout):
		return fmt.Errorf("libvirt %s: no answer within %s", c.uri, c.timeout)
	}
}

// subscribe opens the watching connection and registers every callback, within the manager's
// timeout; a subscription that completes after its caller gave up is taken down again.
func (c *Conn) subscribe(q chan<- guest.Event, closed chan struct{}) (*libvirt.Connect, []int, error) {
	type result struct {
		conn *libvirt.Connect
		ids  []int
		err  error
	}
	res := make(chan result, 1)
	go func() {
		conn, ids, err := c.register(q, closed)
		res <- result{conn, ids, err}
	}()
	select {
	case r := <-res:
		return r.conn, r.ids, r.err
	case <-time.After(c.timeout):
		go func() {
			if r := <-res; r.err == nil {
				c.unsubscribe(r.conn, r.ids)
			}
		}()
		return nil, nil, fmt.Errorf("libvirt %s: event subscription got no answer within %s", c.uri, c.timeout)
	}
}

func (c *Conn) register(q chan<- guest.Event, closed chan struct{}) (*libvirt.Connect, []int, error) {
	var conn *libvirt.Connect
	var ids []int
	err := func() error {
		var err error
		if conn, err = libvirt.NewConnect(c.uri); err != nil {
			return err
		}
		_ = conn.SetKeepAlive(5, 3) // notices a dead daemon between events (the test driver has none)
		once := make(chan struct{}, 1)
		if err := conn.RegisterCloseCallback(func(*libvirt.Connect, libvirt.ConnectCloseReason) {
			select {
			case once <- struct{}{}:
				close(closed)
			default:
			}
		}); err != nil {
			return err
		}
		send := func(d *libvirt.Domain, kind, reason string) {
			e := guest.Event{Kind: kind, Reason: reason, Time: time.Now()}
			e.Domain, _ = d.GetName()
			e.UUID, _ = d.GetUUIDString()
			select {
			case q <- e:
			default: // the handler is far behind: drop rather than stall libvirt's event loop
			}
		}
		regs := []func() (int, error){
			func() (int, error) {
				return conn.DomainEventLifecycleRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventLifecycle) {
					if kind, reason, ok := lifecycle(ev); ok {
						send(d, kind, reason)
					}
				})
			},
			func() (int, error) {
				return conn.DomainEventRebootRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain) { send(d, "reboot", "") })
			},
			func() (int, error) {
				return conn.DomainEventWatchdogRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventWatchdog) {
					send(d, "watchdog", watchdogAction(ev.Action))
				})
			},
			func() (int, error) {
				return conn.DomainEventIOErrorReasonRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventIOErrorReason) {
					send(d, "io-error", fmt.Sprintf("%s on %s (%s)", ev.Reason, ev.DevAlias, ev.SrcPath))
				})
			},
			func() (int, error) {
				return conn.DomainEventAgentLifecycleRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventAgentLifecycle) {
					if ev.State == libvirt.CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED {
						send(d, "agent-connected", "")
					} else {
						send(d, "agent-disconnected", "")
					}
				})
			},
		}
		for _, reg := range regs {
			id, err := reg()
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return nil
	}()
	if err != nil && conn != nil {
		c.unsubscribe(conn, ids)
		conn = nil
	}
	return conn, ids, err
}

func (c *Conn) unsubscribe(conn *libvirt.Connect, ids []int) {
	_ = c.bounded(func() error {
		for _, id := range ids {
			_ = conn.DomainEventDeregister(id)
		}
		_ = conn.UnregisterCloseCallback()
		_, err := conn.Close()
		return err
	})
}

// lifecycle names a lifecycle event as guest.Event does; define/undefine are left out.
func lifecycle(ev *libvirt.DomainEventLifecycle) (string, string, bool) {
	d := ev.Detail
	pick := func(names ...string) string {
		if d >= 0 && d < len(names) {
			return names[d]
		}
		return fmt.Sprintf("detail(%d)", d)
	}
	switch ev.Event {
	case libvirt.DOMAIN_EVENT_STARTED:
		return "started", pick("booted", "migrated", "restored", "from snapshot", "wakeup", "recreated"), true
	case libvirt.DOMAIN_EVENT_SUSPENDED:
		return "paused", pick("paused", "migrated", "io error", "watchdog", "restored", "from snapshot", "api error", "postcopy", "postcopy failed"), true
	case libvirt.DOMAIN_EVENT_RESUMED:
		return "resumed", pick("unpaused", "migrated", "from snapshot", "postcopy", "postcopy failed"), true
	case libvirt.DOMAIN_EVENT_STOPPED:
		return "stopped", pick("shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from snapshot"), true
	case libvirt.DOMAIN_EVENT_SHUTDOWN:
		return "shutdown", pick("finished", "guest", "host"), true
	case libvirt.DOMAIN_EVENT_CRASHED:
		return "crashed", pick("panicked", "crashloaded"), true
	case libvirt.DOMAIN_EVENT_PMSUSPENDED:
		return "pmsuspended", pick("memory", "disk"), true
	}
	return "", "", false
}

func watchdogAction(a libvirt.DomainEventWatchdogAction) string {
	names := []string{"none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi"}
	if int(a) >= 0 && int(a) < len(names) {
		return names[a]
	}
	return fmt.Sprintf("action(%d)", a)
}

// States reads the state and reason of every domain in one call libvirtd answers from its own
// state (no QEMU monitor), on the host lane: what the event watcher reconciles from after it
// subscribed again.
func (c *Conn) States(ctx context.Context) ([]guest.Record, error) {
	var recs []guest.Record
	err := c.read(ctx, laneHost, CallStats, "", func(l *libvirt.Connect) error {
		var err error
		recs, err = BulkStats(l, libvirt.DOMAIN_STATS_STATE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("domain states: %w", err)
	}
	return recs, nil
}
