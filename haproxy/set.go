package haproxy

import (
	"context"
	"fmt"
	"strings"
)

// AdminStates are the words set server … state accepts.
var AdminStates = []string{"ready", "drain", "maint"}

// checkName enforces haproxy's own rule for proxy and server names (letters, digits, '-', '_', '.',
// ':'). Beyond catching typos, it keeps a name from smuggling a second command (';') or a line.
func checkName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s name is empty", what)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return fmt.Errorf("%s name %q: character %q is not allowed in haproxy names", what, name, c)
		}
	}
	return nil
}

// SetServerState puts backend/server into state ready, drain or maint through the runtime API and
// then re-reads show servers state to verify haproxy applied it. haproxy answers an empty line on
// success and a message ("No such server.") on failure; both are handled here.
func (c *Client) SetServerState(ctx context.Context, backend, server, state string) error {
	key := fmt.Sprintf("set server %q/%q state %q", backend, server, state)
	switch state {
	case "ready", "drain", "maint":
	default:
		return fmt.Errorf("%s: state %q: want one of %s", key, state, strings.Join(AdminStates, ", "))
	}
	if err := checkName("backend", backend); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if err := checkName("server", server); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	reply, err := c.Command(ctx, fmt.Sprintf("set server %s/%s state %s", backend, server, state))
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if strings.TrimSpace(reply) != "" {
		return fmt.Errorf("%s: haproxy socket %s refused: %s", key, c.Addr, replyText(reply))
	}
	if reply != "\n" {
		return fmt.Errorf("%s: haproxy socket %s: unexpected reply %q", key, c.Addr, reply)
	}
	states, err := c.ShowServersState(ctx, backend)
	if err != nil {
		return fmt.Errorf("%s: verify: %w", key, err)
	}
	for i := range states {
		if states[i].Server != server {
			continue
		}
		if ok, got := applied(states[i].AdminBits, state); !ok {
			return fmt.Errorf("%s: haproxy accepted the command but the server's admin state is %s (bits 0x%x)", key, got, states[i].AdminBits)
		}
		return nil
	}
	return fmt.Errorf("%s: verify: server %q not in show servers state %s", key, server, backend)
}

// applied checks the forced bits the command sets: an inherited maintenance (tracking) or a
// resolution failure is not something set server can clear, so it does not count against ready.
func applied(bits int64, state string) (bool, string) {
	got := adminState(bits)
	switch state {
	case "maint":
		return bits&AdminForcedMaint != 0, got
	case "drain":
		return bits&AdminForcedDrain != 0 && bits&AdminForcedMaint == 0, got
	default:
		return bits&(AdminForcedMaint|AdminForcedDrain) == 0, got
	}
}
