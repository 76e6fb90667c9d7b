package haproxy

import (
	"context"
	"fmt"
	"sync"
	"time"
	"unsafe"
)

// Snapshot is one read of haproxy's state: show stat and show servers state taken together, so a
// server's check result and its admin state (drain, maint) come from the same moment. A drained or
// maintained server can also be DOWN (haproxy prints DOWN for a drained server whose check fails),
// so telling an operator's hold from a failure needs both.
type Snapshot struct {
	Taken  time.Time
	Stats  []Stat
	States []ServerState

	servers  map[serverKey]int // server rows of Stats
	admin    map[serverKey]int // rows of States
	backends map[string][]int  // rows of Stats by backend: its servers and its BACKEND row
	proxies  []int             // FRONTEND and BACKEND rows

	jsonOnce, proxiesOnce sync.Once
	json, proxiesJSON     string
}

type serverKey struct{ backend, server string }

// NewSnapshot indexes stats and states (states may be nil: admin states are then read off the
// status column, which misses a drained server that is DOWN).
func NewSnapshot(stats []Stat, states []ServerState, at time.Time) *Snapshot {
	s := &Snapshot{Taken: at, Stats: stats, States: states,
		servers: make(map[serverKey]int, len(stats)), admin: make(map[serverKey]int, len(states)),
		backends: map[string][]int{}}
	for i := range stats {
		switch stats[i].Type {
		case Server:
			s.servers[serverKey{stats[i].Proxy, stats[i].Name}] = i
			s.backends[stats[i].Proxy] = append(s.backends[stats[i].Proxy], i)
		case Backend:
			s.backends[stats[i].Proxy] = append(s.backends[stats[i].Proxy], i)
			s.proxies = append(s.proxies, i)
		case Frontend:
			s.proxies = append(s.proxies, i)
		}
	}
	for i := range states {
		s.admin[serverKey{states[i].Backend, states[i].Server}] = i
	}
	return s
}

// Snapshot reads show stat and show servers state within ctx, on two connections at once, so
// haproxy writes one reply while the plugin reads and parses the other (BenchmarkLive1000 measures
// both orders).
func (c *Client) Snapshot(ctx context.Context) (*Snapshot, error) {
	at := time.Now()
	type result struct {
		states []ServerState
		err    error
	}
	ch := make(chan result, 1)
	go func() {
		states, err := c.ShowServersState(ctx, "")
		ch <- result{states, err}
	}()
	stats, err := c.ShowStat(ctx)
	r := <-ch
	if err != nil {
		return nil, err
	}
	if r.err != nil {
		return nil, r.err
	}
	return NewSnapshot(stats, r.states, at), nil
}

// JSON is every show stat row as a JSON object keyed by column name (EncodeStats), built once per
// snapshot however many callers ask, and kept as a string so callers share it without a copy.
func (s *Snapshot) JSON() string {
	s.jsonOnce.Do(func() { s.json = bytesToString(EncodeStats(s.Stats)) })
	return s.json
}

// ProxiesJSON is JSON restricted to the FRONTEND and BACKEND rows: what per-proxy items need,
// without a row per server (a thousandth of the size with 10,000 servers in 100 backends).
func (s *Snapshot) ProxiesJSON() string {
	s.proxiesOnce.Do(func() { s.proxiesJSON = s.encode(s.proxies) })
	return s.proxiesJSON
}

// BackendJSON is JSON restricted to one backend: its servers and its BACKEND row, in show stat
// order. It is built per call (a hundred rows take microseconds), so a snapshot holds no copy per
// backend.
func (s *Snapshot) BackendJSON(backend string) (string, error) {
	rows, ok := s.backends[backend]
	if !ok {
		return "", fmt.Errorf("no backend %q in show stat", backend)
	}
	return s.encode(rows), nil
}

func (s *Snapshot) encode(rows []int) string {
	e := statEncoder{}
	e.grow(s.Stats, rows)
	for _, i := range rows {
		e.row(&s.Stats[i])
	}
	return bytesToString(e.end())
}

// bytesToString hands the encoder's buffer over as a string without copying megabytes (the same
// move strings.Builder makes); the buffer is never written again.
func bytesToString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

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
