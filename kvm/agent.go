package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// ErrAgent wraps every qemu-guest-agent failure (not connected, not responding, command error).
var ErrAgent = errors.New("guest agent")

// ErrAgentBusy is returned, wrapped in ErrAgent, when an earlier call into the same domain's agent is
// still inside libvirt after its deadline, or is in flight to an agent that did not answer the call
// before it: a guest whose agent never answers holds one worker, not one per poll.
var ErrAgentBusy = errors.New("an earlier call into this agent has not returned")

// Every agent call runs under a response timeout. libvirt's default (virDomainAgentSetResponseTimeout
// BLOCK) makes the commands that take no timeout of their own (virDomainInterfaceAddresses with the
// agent source, fsinfo, ...) wait forever for a guest that stops answering, holding the domain's agent
// job, and its guest-sync before every command after a failed one waits 5 s
// (qemuAgentGuestSync, QEMU_AGENT_WAIT_TIME) whatever the command's own timeout. The response timeout
// is a property of the domain, shared with every other libvirt client, and libvirt offers no way to
// read it: kvm sets it right before each call, and sets it back to libvirt's default (BLOCK) right
// after, so a backup tool's fsfreeze is not cut short by our value. kvm's own calls into one domain's
// agent run one at a time, so they cannot undo each other's setting.
//
// The time left is split between the response timeout (guest-sync, and commands without a timeout
// of their own) and the timeout of each virDomainQemuAgentCommand: whole seconds, at least 1 each,
// together at most the seconds left when there are two or more.

// secondsLeft is the whole seconds left before ctx's deadline (1 without one).
func secondsLeft(ctx context.Context) int {
	if dl, ok := ctx.Deadline(); ok {
		return int(math.Floor(time.Until(dl).Seconds()))
	}
	return 1
}

// responseTimeout is half the seconds left, at least 1.
func responseTimeout(ctx context.Context) int { return max(1, secondsLeft(ctx)/2) }

// commandTimeout is what is left after the response timeout, at least 1.
func commandTimeout(ctx context.Context, resp int) int { return max(1, secondsLeft(ctx)-resp) }

// agentGates serialises kvm's calls into each domain's agent.
type agentGates struct {
	mu     sync.Mutex
	m      map[string]*agentGate
	silent map[string]bool // the domain's agent did not answer kvm's last call
}

type agentGate struct {
	free     chan struct{} // closed when the call in flight has returned from libvirt
	deadline time.Time     // of the call in flight
}

func (g *agentGates) init() { g.m, g.silent = map[string]*agentGate{}, map[string]bool{} }

// answered records whether the domain's agent answered kvm's last call.
func (g *agentGates) answered(domain string, yes bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if yes {
		delete(g.silent, domain)
	} else {
		g.silent[domain] = true
	}
}

// enter waits until no call of ours is in this domain's agent, and returns the function that ends
// ours. It fails at once when the call in flight is overdue, or goes to an agent that did not
// answer the call before: one call at a time finds out whether a silent agent is back.
func (g *agentGates) enter(ctx context.Context, domain string) (func(), error) {
	dl, _ := ctx.Deadline()
	for {
		g.mu.Lock()
		cur := g.m[domain]
		if cur == nil {
			mine := &agentGate{free: make(chan struct{}), deadline: dl}
			g.m[domain] = mine
			g.mu.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					g.mu.Lock()
					delete(g.m, domain)
					g.mu.Unlock()
					close(mine.free)
				})
			}, nil
		}
		silent := g.silent[domain]
		g.mu.Unlock()
		if !cur.deadline.IsZero() && time.Now().After(cur.deadline) {
			return nil, fmt.Errorf("%w (%s ago it should have)", ErrAgentBusy, time.Since(cur.deadline).Round(time.Millisecond))
		}
		if silent {
			return nil, fmt.Errorf("%w, and the agent did not answer the one before", ErrAgentBusy)
		}
		select {
		case <-cur.free:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for an earlier call into the same agent: %w", ErrAgentBusy, ctx.Err())
		}
	}
}

// agentCall runs fn on the domain with its agent response timeout set, on the guest lane, bounded
// like every key's call. fn issues its commands through the agentSession it gets.
func (c *Conn) agentCall(ctx context.Context, domain string, fn func(a *agentSession) error) error {
	ctx, cancel := c.Bound(ctx)
	defer cancel()
	release, err := c.agents.enter(ctx, domain)
	if err != nil {
		return err
	}
	resp := responseTimeout(ctx)
	var answered atomic.Bool // set in the worker, which may still run when exec returns
	err = c.exec(ctx, laneGuest, CallAgent, domain, func(l *libvirt.Connect) error {
		d, err := c.lookup(l, domain)
		if err != nil {
			return err
		}
		defer d.Free()
		c.calls.add(CallAgentTimeout, 1)
		if err := d.AgentSetResponseTimeout(resp, 0); err != nil {
			return fmt.Errorf("setting the agent response timeout (the call is not made without one): %w", err)
		}
		defer func() {
			c.calls.add(CallAgentTimeout, 1)
			_ = d.AgentSetResponseTimeout(int(libvirt.DOMAIN_AGENT_RESPONSE_TIMEOUT_BLOCK), 0)
		}()
		a := &agentSession{c: c, d: d, ctx: ctx, resp: resp}
		err = fn(a)
		answered.Store(a.answers > 0)
		return err
	}, release)
	switch {
	case answered.Load():
		c.agents.answered(domain, true)
	case silence(err):
		c.agents.answered(domain, false)
	}
	return err
}

// silence says whether err means the agent did not answer (as opposed to answering with an error,
// or not being there at all).
func silence(err error) bool {
	var lerr libvirt.Error
	if errors.As(err, &lerr) {
		return lerr.Code == libvirt.ERR_AGENT_UNRESPONSIVE || lerr.Code == libvirt.ERR_OPERATION_TIMEOUT
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errNoTimeLeft)
}

// agentSession is one agentCall's access to the domain's agent.
type agentSession struct {
	c       *Conn
	d       *libvirt.Domain
	ctx     context.Context
	resp    int
	answers int // commands the agent answered (with a result or an error of its own)
}

// errNoTimeLeft stops an agentSession before a command that could not finish by the deadline.
var errNoTimeLeft = errors.New("no time left before the deadline")

// command runs one agent command with a timeout that ends by the deadline: the whole seconds left
// after the response timeout (a guest-sync may use it first), at least 1.
func (a *agentSession) command(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if secondsLeft(a.ctx) < 1 {
		return nil, fmt.Errorf("%w %s: %w", ErrAgent, cmd, errNoTimeLeft)
	}
	a.c.calls.add(CallAgent, 1)
	reply, err := a.d.QemuAgentCommand(string(body), libvirt.DomainQemuAgentCommandTimeout(commandTimeout(a.ctx, a.resp)), 0)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrAgent, cmd, err)
	}
	var out struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	a.answers++
	if err := json.Unmarshal([]byte(reply), &out); err != nil {
		return nil, fmt.Errorf("%w %s: unreadable reply: %w", ErrAgent, cmd, err)
	}
	if out.Error != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrAgent, cmd, &agentError{class: out.Error.Class, desc: out.Error.Desc})
	}
	return out.Return, nil
}

// agentError is an error the agent answered with (the command is unsupported or failed in the
// guest), as opposed to no answer.
type agentError struct{ class, desc string }

func (e *agentError) Error() string { return e.class + ": " + e.desc }

// AgentCommand runs one qemu-guest-agent command ({"execute":cmd,"arguments":args}) through libvirt
// and returns the "return" member. It never touches the guest's network.
func (c *Conn) AgentCommand(ctx context.Context, domain, cmd string, args any) (json.RawMessage, error) {
	var ret json.RawMessage
	err := c.agentCall(ctx, domain, func(a *agentSession) error {
		var err error
		ret, err = a.command(cmd, args)
		return err
	})
	if err != nil {
		if errors.Is(err, guest.ErrNoDomain) || errors.Is(err, ErrAgent) {
			return nil, err
		}
		return nil, fmt.Errorf("%w %s: %w", ErrAgent, cmd, err)
	}
	return ret, nil
}

// AgentAddresses is virDomainInterfaceAddresses with the agent source: what the guest says its
// addresses are, under the same response timeout as every agent call.
func (c *Conn) AgentAddresses(ctx context.Context, domain string) ([]libvirt.DomainInterface, error) {
	var ifs []libvirt.DomainInterface
	err := c.agentCall(ctx, domain, func(a *agentSession) error {
		a.c.calls.add(CallAgent, 1)
		var err error
		ifs, err = a.d.ListAllInterfaceAddresses(libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
		if err == nil {
			a.answers++
		}
		return err
	})
	if err != nil && !errors.Is(err, guest.ErrNoDomain) {
		return nil, fmt.Errorf("%w guest-network-get-interfaces: %w", ErrAgent, err)
	}
	return ifs, err
}

// AgentPing is kvm.domain.agent.ping: true when the agent answers guest-ping in time.
func (c *Conn) AgentPing(ctx context.Context, domain string) (bool, error) {
	_, err := c.AgentCommand(ctx, domain, "guest-ping", nil)
	if err != nil {
		if errors.Is(err, guest.ErrNoDomain) {
			return false, err
		}
		return false, nil
	}
	return true, nil
}

// AgentGet collects OS, hostname, filesystems, users and interfaces from the guest agent, in one
// agent call (one response timeout set and restored for all five commands). It fails only when no
// section could be read (agent absent or hung), with the first error.
func (c *Conn) AgentGet(ctx context.Context, domain string) (*guest.AgentInfo, error) {
	info := &guest.AgentInfo{}
	sections := []struct {
		name, cmd string
		set       func(json.RawMessage) error
	}{
		{"os", "guest-get-osinfo", func(r json.RawMessage) error { info.OS = r; return nil }},
		{"hostname", "guest-get-host-name", func(r json.RawMessage) error {
			var h struct {
				Name string `json:"host-name"`
			}
			err := json.Unmarshal(r, &h)
			info.Hostname = h.Name
			return err
		}},
		{"filesystems", "guest-get-fsinfo", func(r json.RawMessage) error { info.Filesystems = r; return nil }},
		{"users", "guest-get-users", func(r json.RawMessage) error { info.Users = r; return nil }},
		{"interfaces", "guest-network-get-interfaces", func(r json.RawMessage) error { info.Interfaces = r; return nil }},
	}
	var first error
	ok := 0
	err := c.agentCall(ctx, domain, func(a *agentSession) error {
		for _, s := range sections {
			r, err := a.command(s.cmd, nil)
			if err == nil {
				err = s.set(r)
			}
			if err != nil {
				if first == nil {
					first = err
					// a hung or absent agent fails every section the same way: stop spending the deadline
					if ok == 0 && s.name == "os" && !isCommandError(err) {
						return err
					}
				}
				if info.Errors == nil {
					info.Errors = map[string]string{}
				}
				info.Errors[s.name] = err.Error()
				continue
			}
			ok++
		}
		return nil
	})
	switch {
	case err != nil && (errors.Is(err, guest.ErrNoDomain) || errors.Is(err, ErrAgent)):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrAgent, err)
	case ok == 0:
		return nil, first
	}
	return info, nil
}

// isCommandError tells an agent that answered with an error (command unsupported or failed in the
// guest) from one that did not answer at all.
func isCommandError(err error) bool {
	var aerr *agentError
	return errors.As(err, &aerr)
}
