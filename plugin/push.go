package plugin

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/sender"
)

// Trapper items the templates define for pushed values.
const (
	pushKeyServer = "haproxy.server.status.push" // hypervisor host: haproxy.server.status.push[<backend>,<server>]
	pushKeyDomain = "kvm.domain.pool.push"       // guest host (named after the domain's UUID)
)

// pushAttempts bounds the retries of one change; a newer change of the same server replaces it.
const pushAttempts = 6

// Sender sends values to a Zabbix trapper (sender.Client); tests may put a stand-in here.
type Sender interface {
	Send(ctx context.Context, items ...sender.Item) (sender.Result, error)
}

// pusher sends haproxy pool-state changes to Zabbix. A send that fails (the server busy, a trapper
// timeout) is retried with backoff in the background, because the watcher reports each change once:
// a lost DOWN→UP would keep the guest's problem open and let the ladder restart a healthy guest.
type pusher struct {
	cfg   *Config
	deps  *Deps
	snd   Sender
	log   Logger
	retry time.Duration // first backoff

	mu      sync.Mutex
	seq     map[string]uint64 // latest change per backend/server
	stop    chan struct{}
	sending sync.WaitGroup

	errMu  sync.Mutex
	errLog time.Time
}

// startPush watches haproxy's server states and sends each change to Zabbix trapper items at once,
// so "out of the pool" opens without waiting for the next poll; polling keeps working without it.
// It returns the stop function, or nil when the push cannot run (logged).
func startPush(cfg *Config, deps *Deps, log Logger) func() {
	if deps == nil || deps.HAProxy == nil {
		log.Errf("haproxy push: %v", errNoHAProxy)
		return nil
	}
	snd, err := sender.New(cfg.PushServer, cfg.Timeout)
	if err != nil {
		log.Errf("haproxy push: %v", err)
		return nil
	}
	ps := newPusher(cfg, deps, snd, log)
	w := &haproxy.Watcher{Source: deps.HAProxy, Interval: cfg.PushInterval, OnChange: ps.change, OnError: ps.pollError}
	if err := w.Start(context.Background()); err != nil {
		log.Errf("haproxy push: %v", err)
		return nil
	}
	log.Infof("haproxy push: watching %s every %s, sending to %s as host %s", cfg.HAProxySocket, cfg.PushInterval, cfg.PushServer, cfg.PushHost)
	return func() {
		w.Stop()
		ps.close()
	}
}

func newPusher(cfg *Config, deps *Deps, snd Sender, log Logger) *pusher {
	return &pusher{cfg: cfg, deps: deps, snd: snd, log: log, retry: 500 * time.Millisecond,
		seq: map[string]uint64{}, stop: make(chan struct{})}
}

// close stops retries and waits for sends in flight.
func (ps *pusher) close() {
	close(ps.stop)
	ps.sending.Wait()
}

// items turns one change into sender values: the new pool state to the hypervisor's host, and, when
// the server belongs to a guest of this hypervisor, to the guest's host (its UUID).
func (ps *pusher) items(ctx context.Context, c haproxy.Change) []sender.Item {
	var clock, ns int64
	if !c.Time.IsZero() {
		clock, ns = c.Time.Unix(), int64(c.Time.Nanosecond())
	}
	items := []sender.Item{{
		Host: ps.cfg.PushHost, Key: fmt.Sprintf("%s[%s,%s]", pushKeyServer, keyParam(c.Backend), keyParam(c.Server)),
		Value: c.New, Clock: clock, NS: ns,
	}}
	if r, ok := serverOwner(ctx, ps.deps.Stats, ps.deps.Inventory)(c.Server, haproxy.AddrIP(c.Addr)); ok && r.UUID != "" {
		items = append(items, sender.Item{Host: r.UUID, Key: pushKeyDomain, Value: c.New, Clock: clock, NS: ns})
	}
	return items
}

// change runs on the watcher's goroutine: it resolves the guest (bounded by Timeout) and hands the
// send to a goroutine, so a slow Zabbix never delays the next haproxy poll.
func (ps *pusher) change(c haproxy.Change) {
	ctx, cancel := context.WithTimeout(context.Background(), ps.cfg.Timeout)
	items := ps.items(ctx, c)
	cancel()
	key := c.Backend + "/" + c.Server
	ps.mu.Lock()
	ps.seq[key]++
	mine := ps.seq[key]
	ps.mu.Unlock()
	ps.sending.Add(1)
	go func() {
		defer ps.sending.Done()
		ps.send(c, key, mine, items)
	}()
}

func (ps *pusher) send(c haproxy.Change, key string, mine uint64, items []sender.Item) {
	superseded := func() bool {
		ps.mu.Lock()
		defer ps.mu.Unlock()
		return ps.seq[key] != mine
	}
	deliver(ps.snd, ps.cfg.Timeout, ps.retry, ps.stop, ps.log, fmt.Sprintf("haproxy push %s %s→%s", key, c.Old, c.New), items, superseded)
}

// deliver sends items, retrying a send that got no answer with backoff (pushAttempts at most)
// until stop; superseded (may be nil) says a newer value replaced these, which are then dropped.
// A refusal by the server is not retried: sending the same values again changes nothing.
func deliver(snd Sender, timeout, retry time.Duration, stop <-chan struct{}, log Logger, what string, items []sender.Item, superseded func() bool) {
	backoff := retry
	for attempt := 1; ; attempt++ {
		if superseded != nil && superseded() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		res, err := snd.Send(ctx, items...)
		cancel()
		if err == nil {
			log.Debugf("%s: %s", what, res.Info)
			return
		}
		if res.Response != "" {
			// the server answered and refused some values (an item or host it does not know)
			log.Warningf("%s: %v", what, err)
			return
		}
		if attempt == pushAttempts {
			log.Warningf("%s: giving up after %d attempts: %v", what, attempt, err)
			return
		}
		log.Debugf("%s: attempt %d: %v", what, attempt, err)
		select {
		case <-stop:
			return
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

// pollError logs a failing haproxy poll once a minute: haproxy restarting fails every poll.
func (ps *pusher) pollError(err error) {
	ps.errMu.Lock()
	defer ps.errMu.Unlock()
	if time.Since(ps.errLog) > time.Minute {
		ps.errLog = time.Now()
		ps.log.Warningf("haproxy push: %v", err)
	}
}

// keyParam quotes a Zabbix item key parameter when its characters require it (comma, bracket,
// quote, leading space), the way Zabbix itself quotes LLD macro values in keys.
func keyParam(s string) string {
	if s != "" && !strings.ContainsAny(s, ",]\"[") && s[0] != ' ' {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}
