package haproxy

import (
	"context"
	"errors"
	"sync"
	"time"
)

// DefaultInterval is the Watcher's poll period when none is given.
const DefaultInterval = time.Second

// Change is one server's transition of its pool state (ServerStatus.Pool), as seen between two polls.
type Change struct {
	Backend string
	Server  string
	Addr    string    // ip:port from show stat
	Old     string    // pool state before ("" for a server that appeared after the first poll)
	New     string    // pool state now: UP, DOWN, NOLB, no check, or MAINT/DRAIN when an operator holds it out
	Time    time.Time // when the poll that saw it was taken
}

// Watcher polls haproxy (a Snapshot: show stat and show servers state) and reports per-server
// pool-state transitions. It is the engine of the plugin's push Runner.
//
// Semantics: the first successful poll only records the baseline and reports nothing (the Zabbix
// items poll the current state anyway, and re-sending every state at each agent start would fire
// nothing useful). Later, a server whose normalized status differs from the last successful poll is
// reported once; a server that appears later is reported with Old ""; a server that disappears is
// forgotten silently. A failed poll (haproxy down or restarting) goes to OnError and keeps the last
// known states, so after a restart the watcher reports exactly what differs from before it.
// Callbacks run on the watcher's goroutine, in order; a slow OnChange delays the next poll.
type Watcher struct {
	Source   Source
	Interval time.Duration // poll period, DefaultInterval when 0
	Timeout  time.Duration // deadline of one poll, Interval when 0 (the Client's own timeout also applies)
	OnChange func(Change)
	OnError  func(error) // may be nil

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// Start begins polling in a goroutine until ctx ends or Stop is called.
func (w *Watcher) Start(ctx context.Context) error {
	if w.Source == nil || w.OnChange == nil {
		return errors.New("haproxy watcher: Source and OnChange are required")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done != nil {
		return errors.New("haproxy watcher: already started")
	}
	ctx, w.cancel = context.WithCancel(ctx)
	w.done = make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		w.run(ctx)
	}(w.done)
	return nil
}

// Stop ends polling and waits for the goroutine (and any callback in progress) to return. The
// Watcher may be started again afterwards; its baseline starts afresh.
func (w *Watcher) Stop() {
	w.mu.Lock()
	cancel, done := w.cancel, w.done
	w.cancel, w.done = nil, nil
	w.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

func (w *Watcher) run(ctx context.Context) {
	interval := w.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	timeout := w.Timeout
	if timeout <= 0 {
		timeout = interval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var last map[serverKey]string
	for {
		last = w.poll(ctx, timeout, last)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *Watcher) poll(ctx context.Context, timeout time.Duration, last map[serverKey]string) map[serverKey]string {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	snap, err := w.Source.Snapshot(pctx)
	cancel()
	if ctx.Err() != nil {
		return last
	}
	if err != nil {
		if w.OnError != nil {
			w.OnError(err)
		}
		return last
	}
	cur, changes := diff(last, snap)
	for _, c := range changes {
		w.OnChange(c)
	}
	return cur
}

// diff compares a poll with the previous pool states (nil: this is the baseline, report nothing)
// and returns the new states and the transitions, in show stat order.
func diff(prev map[serverKey]string, snap *Snapshot) (map[serverKey]string, []Change) {
	servers := snap.Servers()
	cur := make(map[serverKey]string, len(servers))
	var changes []Change
	for _, s := range servers {
		k := serverKey{s.Backend, s.Server}
		cur[k] = s.Pool
		if prev == nil {
			continue
		}
		if old, ok := prev[k]; !ok || old != s.Pool {
			changes = append(changes, Change{Backend: s.Backend, Server: s.Server, Addr: s.Addr, Old: old, New: s.Pool, Time: snap.Taken})
		}
	}
	return cur, changes
}
