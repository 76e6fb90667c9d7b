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
	pusher := &haproxy.Pusher{Sender: snd, Host: cfg.PushHost}
	var errMu sync.Mutex
	var lastErr time.Time
	w := &haproxy.Watcher{
		Client:   hap,
		Interval: cfg.PushInterval,
		OnChange: func(c haproxy.Change) {
			ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
			defer cancel()
			pusher.DomainOf = p.domainOf(ctx)
			res, err := snd.Send(ctx, pusher.Items(c)...)
			if err != nil {
				p.Warningf("haproxy push %s/%s %s→%s: %v", c.Backend, c.Server, c.Old, c.New, err)
				return
			}
			p.Debugf("haproxy push %s/%s %s→%s: %s", c.Backend, c.Server, c.Old, c.New, res.Info)
		},
		OnError: func(err error) {
			// haproxy restarting fails every poll: say so once a minute, not once a second
			errMu.Lock()
			defer errMu.Unlock()
			if time.Since(lastErr) > time.Minute {
				lastErr = time.Now()
				p.Warningf("haproxy push: %v", err)
			}
		},
	}
	if err := w.Start(context.Background()); err != nil {
		p.Errf("haproxy push: %v", err)
		return nil
	}
	p.Infof("haproxy push: watching %s every %s, sending to %s as host %s", cfg.HAProxySocket, cfg.PushInterval, cfg.PushServer, cfg.PushHost)
	return w.Stop
}
