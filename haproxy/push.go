package haproxy

import (
	"context"
	"fmt"
	"strings"

	"zabbix-agent2-plugin-kvm/sender"
)

// Trapper item keys the templates define for pushed states.
const (
	PushServerKey = "haproxy.server.status.push" // on the hypervisor host: haproxy.server.status.push[<backend>,<server>]
	PushDomainKey = "kvm.domain.pool.push"       // on the guest host (its Zabbix host name is the domain name)
)

// Pusher turns Watcher changes into Zabbix sender values: the new status to the hypervisor's host
// under haproxy.server.status.push[<backend>,<server>], and, when the server's address belongs to a
// guest (DomainOf), to that guest's host under kvm.domain.pool.push.
type Pusher struct {
	Sender   *sender.Client
	Host     string   // the hypervisor's Zabbix host name
	DomainOf DomainOf // may be nil: then only the hypervisor host is sent to
}

// Items builds the sender values for one change.
func (p *Pusher) Items(c Change) []sender.Item {
	var clock, ns int64
	if !c.Time.IsZero() {
		clock, ns = c.Time.Unix(), int64(c.Time.Nanosecond())
	}
	items := []sender.Item{{
		Host: p.Host, Key: fmt.Sprintf("%s[%s,%s]", PushServerKey, KeyParam(c.Backend), KeyParam(c.Server)),
		Value: c.New, Clock: clock, NS: ns,
	}}
	if p.DomainOf != nil {
		if d, ok := p.DomainOf(c.Server, AddrIP(c.Addr)); ok && d != "" {
			items = append(items, sender.Item{Host: d, Key: PushDomainKey, Value: c.New, Clock: clock, NS: ns})
		}
	}
	return items
}

// Push sends one change's values in one request (the sender client applies its deadline).
func (p *Pusher) Push(ctx context.Context, c Change) error {
	if p.Sender == nil || p.Host == "" {
		return fmt.Errorf("haproxy push %s/%s: sender and host name must be configured", c.Backend, c.Server)
	}
	if _, err := p.Sender.Send(ctx, p.Items(c)...); err != nil {
		return fmt.Errorf("haproxy push %s/%s %s→%s: %w", c.Backend, c.Server, c.Old, c.New, err)
	}
	return nil
}

// KeyParam quotes a Zabbix item key parameter when its characters require it (comma, bracket,
// quote, leading space), the way Zabbix itself quotes LLD macro values in keys.
func KeyParam(s string) string {
	if s != "" && !strings.ContainsAny(s, ",]\"[") && s[0] != ' ' {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}
