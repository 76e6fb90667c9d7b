package kvm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Cache makes one collection (two bulk libvirt calls, see StatsFast) per period, however many keys
// and callers ask: concurrent callers of an expired snapshot share one in-flight collection.
type Cache struct {
	conn   *Conn
	period time.Duration

	mu     sync.Mutex
	snap   *guest.Snapshot
	flight *flight

	calls   atomic.Int64
	monitor atomic.Int32 // monitor calls still inside libvirt
}

// maxMonitorCalls bounds the monitor calls in flight. The first one after a QEMU hangs waits for it
// forever, holding that domain's job; later ones (NOWAIT) skip that domain and return. Each further
// domain that hangs can hold one more; beyond the bound the monitor groups of every domain stay at
// their previous values, marked stale, rather than pinning every guest-lane worker.
const maxMonitorCalls = 2

// bulk makes one NOWAIT bulk call on lane l; after, if set, runs when the call is over.
func (c *Cache) bulk(ctx context.Context, l lane, types libvirt.DomainStatsTypes, after func()) ([]guest.Record, error) {
	var recs []guest.Record
	err := c.conn.exec(ctx, l, CallStats, "", func(lc *libvirt.Connect) error {
		c.calls.Add(1)
		c.conn.calls.add(CallStats, 1)
		var err error
		recs, err = BulkStats(lc, types)
		return err
	}, after)
	return recs, err
}

// merge adds the monitor groups to the fast records. When that call failed (timed out on a hung
// QEMU), each domain keeps its previous monitor values, marked stale, rather than losing them.
func merge(recs, slow []guest.Record, slowErr error, prev *guest.Snapshot) {
	byUUID := make(map[string]*guest.Record, len(slow))
	for i := range slow {
		byUUID[slow[i].UUID] = &slow[i]
	}
	for i := range recs {
		r := &recs[i]
		if slowErr == nil {
			if s, ok := byUUID[r.UUID]; ok {
				for k, v := range s.Params {
					if _, fast := r.Params[k]; !fast {
						r.Params[k] = v
					}
				}
			}
			continue
		}
		r.Stale = slowErr.Error()
		if prev == nil {
			continue
		}
		if old, err := prev.Lookup(r.Name); err == nil && old.UUID == r.UUID {
			for k, v := range old.Params {
				if _, fast := r.Params[k]; !fast {
					r.Params[k] = v
				}
			}
		}
	}
}

type flight struct {
	done chan struct{} // closed when the call ends
	snap *guest.Snapshot
	err  error
}

// NewCache returns a cache over conn; period 0 means every Get makes a call (still shared by
// callers that arrive while it runs).
func NewCache(conn *Conn, period time.Duration) *Cache {
	return &Cache{conn: conn, period: period}
}

// Calls reports how many bulk libvirt calls the cache has made (two per collection).
func (c *Cache) Calls() int64 { return c.calls.Load() }

// Last returns the newest snapshot, however old, without waiting for libvirt (nil before the first).
// For what changes rarely (which domains exist), a slow libvirt must not stall the caller.
func (c *Cache) Last() *guest.Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snap
}

// staleGrace is how much older than the period a snapshot may be when it stands in for a collection
// libvirtd is slow to answer. virDomainDestroy holds the domain's lock while QEMU dies (up to 10 s
// after SIGTERM, then 5 s after SIGKILL: virProcessKillPainfully), and the bulk call waits for every
// domain's lock in turn; measured in the lab with guests booting and being destroyed: 6.3 s.
// Beyond it, a hung libvirtd shows as errors, not as old values.
const staleGrace = 20 * time.Second

// Get returns a snapshot no older than the period, waiting at most until Bound(ctx) ends. When a
// collection takes more than half the caller's time, or runs out of time, the previous snapshot is
// answered instead if it is at most staleGrace (or 2 × Timeout, if longer) older than the period:
// its Taken says how old it is.
func (c *Cache) Get(ctx context.Context) (*guest.Snapshot, error) {
	ctx, cancel := c.conn.Bound(ctx)
	defer cancel()
	c.mu.Lock()
	prev := c.snap
	if prev != nil && c.period > 0 && time.Since(prev.Taken) < c.period {
		c.mu.Unlock()
		return prev, nil
	}
	f := c.flight
	if f == nil {
		f = &flight{done: make(chan struct{})}
		c.flight = f
		go c.refresh(f)
	}
	c.mu.Unlock()

	usable := prev != nil && time.Since(prev.Taken) < c.period+max(staleGrace, 2*c.conn.Timeout())
	var patience <-chan time.Time
	if dl, ok := ctx.Deadline(); ok && usable {
		t := time.NewTimer(time.Until(dl) / 2)
		defer t.Stop()
		patience = t.C
	}
	select {
	case <-f.done:
		if f.err != nil && usable && (errors.Is(f.err, context.DeadlineExceeded) || errors.Is(f.err, ErrBusy)) {
			return prev, nil
		}
		return f.snap, f.err
	case <-patience:
		return prev, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for libvirt statistics: %w", ctx.Err())
	}
}

// refresh runs detached from any one caller, so a caller that gives up early does not cancel the
// call for the others. The whole collection is bounded like one key's call, so a caller that
// arrives while it runs waits no longer than its own Timeout.
func (c *Cache) refresh(f *flight) {
	start := time.Now()
	ctx, cancel := c.conn.Bound(context.Background())
	defer cancel()
	recs, err := c.bulk(ctx, laneHost, StatsFast, nil)
	if err != nil {
		f.err = fmt.Errorf("libvirt domain statistics: %w", err)
	} else {
		slow, serr := c.monitorStats(ctx)
		c.mu.Lock()
		prev := c.snap
		c.mu.Unlock()
		merge(recs, slow, serr, prev)
		f.snap = guest.NewSnapshot(recs, start)
	}
	c.mu.Lock()
	if f.snap != nil {
		c.snap = f.snap
	}
	c.flight = nil
	c.mu.Unlock()
	close(f.done)
}

// monitorStats makes the monitor bulk call on the guest lane with half the time left, so a first
// call stuck on a hung QEMU still leaves time to answer with the fast groups.
func (c *Cache) monitorStats(ctx context.Context) ([]guest.Record, error) {
	if n := c.monitor.Add(1); n > maxMonitorCalls {
		c.monitor.Add(-1)
		return nil, fmt.Errorf("skipped: %d earlier monitor statistics calls have not returned (a hung QEMU)", n-1)
	}
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
		defer cancel()
	}
	return c.bulk(ctx, laneGuest, StatsMonitor, func() { c.monitor.Add(-1) })
}
