package kvm

import (
	"context"
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

	calls atomic.Int64
}

func (c *Cache) bulk(ctx context.Context, types libvirt.DomainStatsTypes) ([]guest.Record, error) {
	var recs []guest.Record
	err := c.conn.Do(ctx, func(l *libvirt.Connect) error {
		c.calls.Add(1)
		var err error
		recs, err = BulkStats(l, types)
		return err
	})
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

// Get returns a snapshot no older than the period.
func (c *Cache) Get(ctx context.Context) (*guest.Snapshot, error) {
	c.mu.Lock()
	if c.snap != nil && c.period > 0 && time.Since(c.snap.Taken) < c.period {
		s := c.snap
		c.mu.Unlock()
		return s, nil
	}
	f := c.flight
	if f == nil {
		f = &flight{done: make(chan struct{})}
		c.flight = f
		go c.refresh(f)
	}
	c.mu.Unlock()

	select {
	case <-f.done:
		return f.snap, f.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for libvirt statistics: %w", ctx.Err())
	}
}

// refresh runs detached from any one caller, bounded by the connection's own timeout, so a caller
// that gives up early does not cancel the call for the others.
func (c *Cache) refresh(f *flight) {
	start := time.Now()
	recs, err := c.bulk(context.Background(), StatsFast)
	if err != nil {
		f.err = fmt.Errorf("libvirt domain statistics: %w", err)
	} else {
		// the monitor groups get half the deadline, so a first call stuck on a hung QEMU still
		// leaves time to answer with the fast groups
		ctx, cancel := context.WithTimeout(context.Background(), c.conn.Timeout()/2)
		slow, serr := c.bulk(ctx, StatsMonitor)
		cancel()
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
