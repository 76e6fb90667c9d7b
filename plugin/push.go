package plugin

import (
	"context"
	"sync"
	"time"

	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/sender"
)

// runners lists background jobs for Start; each starts its job and returns its stop function.
func (p *Plugin) runners() []func() func() {
	cfg := p.Config()
	if cfg == nil || cfg.PushServer == "" {
		return nil
	}
	return []func() func(){p.startPush}
}

// pushAttempts bounds the retries of one change; a newer change of the same server replaces it.
const pushAttempts = 6

// pusher sends haproxy state changes to Zabbix. A send that fails (the server busy, a trapper
// timeout) is retried with backoff in the background, because the watcher reports each change once:
// a lost DOWN→UP would keep the guest's problem open and let the ladder restart a healthy guest.
type pusher struct {
	p      *Plugin
	cfg    *Config
	snd    *sender.Client
	hv     *haproxy.Pusher
	mu     sync.Mutex
	seq    map[string]uint64 // latest change per backend/server
	stop   chan struct{}
	wg     sync.WaitGroup
	errMu  sync.Mutex
	errLog time.Time
}

// startPush watches haproxy's server states and sends each change to Zabbix trapper items at once
// (haproxy.server.status.push[<backend>,<server>] on the hypervisor's host, kvm.domain.pool.push on
// the guest's host), so "out of the pool" opens without waiting for the next poll. Polling keeps
// working without it.
func (p *Plugin) startPush() func() {
	cfg := p.Config()
	hap, err := p.haproxyClient()
	if err != nil {
		p.Errf("haproxy push: %v", err)
		return nil
	}
	snd, err := sender.New(cfg.PushServer, cfg.Timeout)
	if err != nil {
		p.Errf("haproxy push: %v", err)
		return nil
	}
	ps := &pusher{p: p, cfg: cfg, snd: snd, hv: &haproxy.Pusher{Sender: snd, Host: cfg.PushHost},
		seq: map[string]uint64{}, stop: make(chan struct{})}
	w := &haproxy.Watcher{Client: hap, Interval: cfg.PushInterval, OnChange: ps.change, OnError: ps.pollError}
	if err := w.Start(context.Background()); err != nil {
		p.Errf("haproxy push: %v", err)
		return nil
	}
	p.Infof("haproxy push: watching %s every %s, sending to %s as host %s", cfg.HAProxySocket, cfg.PushInterval, cfg.PushServer, cfg.PushHost)
	return func() {
		w.Stop()
		close(ps.stop)
		ps.wg.Wait()
	}
}

// change runs on the watcher's goroutine: it resolves the guest and hands the send to a goroutine,
// so a slow Zabbix never delays the next haproxy poll.
func (ps *pusher) change(c haproxy.Change) {
	ctx, cancel := context.WithTimeout(context.Background(), ps.cfg.Timeout)
	ps.hv.DomainOf = ps.p.domainOf(ctx)
	items := ps.hv.Items(c)
	cancel()
	key := c.Backend + "/" + c.Server
	ps.mu.Lock()
	ps.seq[key]++
	mine := ps.seq[key]
	ps.mu.Unlock()
	ps.wg.Add(1)
	go func() {
		defer ps.wg.Done()
		ps.send(c, key, mine, items)
	}()
}

func (ps *pusher) send(c haproxy.Change, key string, mine uint64, items []sender.Item) {
	backoff := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ps.mu.Lock()
		superseded := ps.seq[key] != mine
		ps.mu.Unlock()
		if superseded {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), ps.cfg.Timeout)
		res, err := ps.snd.Send(ctx, items...)
		cancel()
		if err == nil {
			ps.p.Debugf("haproxy push %s %s→%s: %s", key, c.Old, c.New, res.Info)
			return
		}
		if res.Response != "" {
			// the server answered and refused some values (an item or host it does not know):
			// sending them again changes nothing
			ps.p.Warningf("haproxy push %s %s→%s: %v", key, c.Old, c.New, err)
			return
		}
		if attempt == pushAttempts {
			ps.p.Warningf("haproxy push %s %s→%s: giving up after %d attempts: %v", key, c.Old, c.New, attempt, err)
			return
		}
		ps.p.Debugf("haproxy push %s %s→%s: attempt %d: %v", key, c.Old, c.New, attempt, err)
		select {
		case <-ps.stop:
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
		ps.p.Warningf("haproxy push: %v", err)
	}
}
