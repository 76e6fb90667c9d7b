package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// ErrAgent wraps every qemu-guest-agent failure (not connected, not responding, command error).
var ErrAgent = errors.New("guest agent")

// agentTimeout turns the time left on ctx into libvirt's whole-second agent timeout: libvirt waits
// on the agent itself, so the C call returns by our deadline instead of its default 5 s or forever.
func agentTimeout(ctx context.Context, fallback time.Duration) int {
	left := fallback
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	s := int(math.Floor(left.Seconds()))
	if s < 1 {
		s = 1
	}
	return s
}

// AgentCommand runs one qemu-guest-agent command ({"execute":cmd,"arguments":args}) through libvirt
// and returns the "return" member. It never touches the guest's network.
func (c *Conn) AgentCommand(ctx context.Context, domain, cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var reply string
	err = c.Do(ctx, func(l *libvirt.Connect) error {
		d, err := LookupDomain(l, domain)
		if err != nil {
			return err
		}
		defer d.Free()
		reply, err = d.QemuAgentCommand(string(body), libvirt.DomainQemuAgentCommandTimeout(agentTimeout(ctx, c.timeout)), 0)
		return err
	})
	if err != nil {
		if errors.Is(err, guest.ErrNoDomain) {
			return nil, err
		}
		return nil, fmt.Errorf("%w %s: %w", ErrAgent, cmd, err)
	}
	var out struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(reply), &out); err != nil {
		return nil, fmt.Errorf("%w %s: unreadable reply: %w", ErrAgent, cmd, err)
	}
	if out.Error != nil {
		return nil, fmt.Errorf("%w %s: %s: %s", ErrAgent, cmd, out.Error.Class, out.Error.Desc)
	}
	return out.Return, nil
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

// AgentGet collects OS, hostname, filesystems, users and interfaces from the guest agent. It fails
// only when no section could be read (agent absent or hung), with the first error.
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
	for _, s := range sections {
		r, err := c.AgentCommand(ctx, domain, s.cmd, nil)
		if err == nil {
			err = s.set(r)
		}
		if err != nil {
			if errors.Is(err, guest.ErrNoDomain) {
				return nil, err
			}
			if first == nil {
				first = err
				// a hung or absent agent fails every section the same way: stop spending the deadline
				if ok == 0 && ctx.Err() == nil && s.name == "os" && !isCommandError(err) {
					return nil, err
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
	if ok == 0 {
		return nil, first
	}
	return info, nil
}

// isCommandError tells an agent that answered with an error (command unsupported or failed in the
// guest) from one that did not answer at all.
func isCommandError(err error) bool {
	var lerr libvirt.Error
	return !errors.As(err, &lerr)
}
