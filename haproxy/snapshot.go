package haproxy

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Snapshot is one read of haproxy's state: show stat and show servers state taken together, so a
// server's check result and its admin state (drain, maint) come from the same moment. A drained or
// maintained server can also be DOWN (haproxy prints DOWN for a drained server whose check fails),
// so telling an operator's hold from a failure needs both.
type Snapshot struct {
	Taken  time.Time
	Stats  []Stat
	States []ServerState

	servers map[serverKey]int // server rows of Stats
	admin   map[serverKey]int // rows of States

	jsonOnce sync.Once
	json     []byte
}

type serverKey struct{ backend, server string }

// NewSnapshot indexes stats and states (states may be nil: admin states are then read off the
// status column, which misses a drained server that is DOWN).
func NewSnapshot(stats []Stat, states []ServerState, at time.Time) *Snapshot {
	s := &Snapshot{Taken: at, Stats: stats, States: states,
		servers: make(map[serverKey]int, len(stats)), admin: make(map[serverKey]int, len(states))}
	for i := range stats {
		if stats[i].Type == Server {
			s.servers[serverKey{stats[i].Proxy, stats[i].Name}] = i
		}
	}
	for i := range states {
		s.admin[serverKey{states[i].Backend, states[i].Server}] = i
	}
	return s
}

// Snapshot reads show stat, then show servers state, within ctx.
func (c *Client) Snapshot(ctx context.Context) (*Snapshot, error) {
	at := time.Now()
	stats, err := c.ShowStat(ctx)
	if err != nil {
		return nil, err
	}
	states, err := c.ShowServersState(ctx, "")
	if err != nil {
		return nil, err
	}
	return NewSnapshot(stats, states, at), nil
}

// JSON is every show stat row as a JSON object keyed by column name (EncodeStats), built once per
// snapshot however many callers ask.
func (s *Snapshot) JSON() []byte {
	s.jsonOnce.Do(func() { s.json = EncodeStats(s.Stats) })
	return s.json
}

// Server returns one server's status; the lookup is a map access, not a scan of show stat.
func (s *Snapshot) Server(backend, server string) (ServerStatus, error) {
	i, ok := s.servers[serverKey{backend, server}]
	if !ok {
		for j := range s.Stats {
			if s.Stats[j].Proxy == backend && s.Stats[j].Type != Frontend {
				return ServerStatus{}, fmt.Errorf("backend %q has no server %q", backend, server)
			}
		}
		return ServerStatus{}, fmt.Errorf("no backend %q in show stat", backend)
	}
	var st *ServerState
	if j, ok := s.admin[serverKey{backend, server}]; ok {
		st = &s.States[j]
	}
	return newServerStatus(&s.Stats[i], st), nil
}

// Servers returns the status of every server, in show stat order.
func (s *Snapshot) Servers() []ServerStatus {
	out := make([]ServerStatus, 0, len(s.servers))
	for i := range s.Stats {
		if s.Stats[i].Type != Server {
			continue
		}
		var st *ServerState
		if j, ok := s.admin[serverKey{s.Stats[i].Proxy, s.Stats[i].Name}]; ok {
			st = &s.States[j]
		}
		out = append(out, newServerStatus(&s.Stats[i], st))
	}
	return out
}

// Source is where snapshots come from: a Client, or a test's stand-in for a fault haproxy cannot
// produce.
type Source interface {
	Snapshot(ctx context.Context) (*Snapshot, error)
}

var (
	_ Source = (*Client)(nil)
	_ Source = (*Cache)(nil)
)

// Cache serves one snapshot per period to every caller; callers arriving while a read is in flight
// share it (single flight), so a thousand keys polled at once cost one show stat.
type Cache struct {
	src    Source
	period time.Duration

	mu     sync.Mutex
	snap   *Snapshot
	flight *snapFlight
}

type snapFlight struct {
	done chan struct{}
	snap *Snapshot
	err  error
}

// NewCache returns a cache over src; period 0 makes every Get a read (still shared while in flight).
func NewCache(src Source, period time.Duration) *Cache { return &Cache{src: src, period: period} }

// Snapshot reads haproxy now, whatever the period (the push watcher polls every second), and keeps
// the result, so keys polled meanwhile reuse it instead of reading again.
func (c *Cache) Snapshot(ctx context.Context) (*Snapshot, error) {
	s, err := c.src.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	c.keep(s)
	return s, nil
}

func (c *Cache) keep(s *Snapshot) {
	c.mu.Lock()
	if c.snap == nil || s.Taken.After(c.snap.Taken) {
		c.snap = s
	}
	c.mu.Unlock()
}

// Last returns the newest snapshot however old, without reading haproxy (nil before the first).
func (c *Cache) Last() *Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snap
}

// Get returns a snapshot no older than the period, reading haproxy when needed. The read is bounded
// by the client's own timeout, not by the first caller's context, so a caller that gives up early
// does not fail the others.
func (c *Cache) Get(ctx context.Context) (*Snapshot, error) {
	c.mu.Lock()
	if c.snap != nil && c.period > 0 && time.Since(c.snap.Taken) < c.period {
		s := c.snap
		c.mu.Unlock()
		return s, nil
	}
	f := c.flight
	if f == nil {
		f = &snapFlight{done: make(chan struct{})}
		c.flight = f
		go c.refresh(context.WithoutCancel(ctx), f)
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.snap, f.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for haproxy: %w", ctx.Err())
	}
}

func (c *Cache) refresh(ctx context.Context, f *snapFlight) {
	f.snap, f.err = c.src.Snapshot(ctx)
	if f.err == nil {
		c.keep(f.snap)
	}
	c.mu.Lock()
	c.flight = nil
	c.mu.Unlock()
	close(f.done)
}
