// Package haproxy reads and drives haproxy through its runtime API (the stats socket): show stat,
// show info, show servers state and set server … state, plus the JSON values the plugin's haproxy.*
// keys return and a Watcher that reports server state changes as they happen.
//
// Every exchange is one non-interactive CLI session (connect, send one line, read to EOF) bounded by
// a deadline, so a wedged haproxy costs at most Client.Timeout and never a goroutine.
package haproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"zabbix-agent2-plugin-kvm/internal/netdeadline"
)

// DefaultTimeout bounds one runtime-API exchange when New is given 0.
const DefaultTimeout = 3 * time.Second

// maxReply caps what one command may return. 10,000 servers of show stat are ~4 MiB; the cap
// only stops a runaway peer from eating memory.
const maxReply = 256 << 20

// Client talks to one haproxy stats socket. The zero value is not usable: build it with New.
type Client struct {
	// Addr is the socket as configured: a unix path, or haproxy's own "ipv4@host:port" /
	// "ipv6@[host]:port" notation for a TCP stats socket. It names the socket in every error.
	Addr string
	// Timeout bounds each exchange (dial, write, read) on top of the caller's context.
	Timeout time.Duration
	// Dial opens the connection; tests swap it to inject faults. Defaults to a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)

	network, address string
}

// New validates addr and returns a Client for it. timeout <= 0 means DefaultTimeout.
func New(addr string, timeout time.Duration) (*Client, error) {
	network, address, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	var d net.Dialer
	return &Client{Addr: addr, Timeout: timeout, Dial: d.DialContext, network: network, address: address}, nil
}

// ParseAddr turns a stats socket address into a Go network and address: "/run/haproxy/admin.sock"
// (or "unix@/path") → unix; "ipv4@127.0.0.1:9999" → tcp4; "ipv6@[::1]:9999" → tcp6. A bare
// "host:port" is refused because haproxy itself would read it as a unix path.
func ParseAddr(addr string) (network, address string, err error) {
	if strings.TrimSpace(addr) == "" {
		return "", "", errors.New("haproxy socket address is empty")
	}
	prefix, rest, found := strings.Cut(addr, "@")
	if !found || strings.HasPrefix(addr, "/") {
		if !strings.HasPrefix(addr, "/") {
			return "", "", fmt.Errorf("haproxy socket %q: want an absolute unix path or ipv4@host:port / ipv6@[host]:port", addr)
		}
		return "unix", addr, nil
	}
	switch prefix {
	case "unix":
		if !strings.HasPrefix(rest, "/") {
			return "", "", fmt.Errorf("haproxy socket %q: unix@ needs an absolute path", addr)
		}
		return "unix", rest, nil
	case "ipv4", "ipv6":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return "", "", fmt.Errorf("haproxy socket %q: %w", addr, err)
		}
		ip := net.ParseIP(host)
		if ip == nil {
			return "", "", fmt.Errorf("haproxy socket %q: %q is not an IP address", addr, host)
		}
		if (prefix == "ipv4") != (ip.To4() != nil) {
			return "", "", fmt.Errorf("haproxy socket %q: %s is not an %s address", addr, host, prefix)
		}
		if port == "" || port == "0" {
			return "", "", fmt.Errorf("haproxy socket %q: missing port", addr)
		}
		if prefix == "ipv4" {
			return "tcp4", net.JoinHostPort(host, port), nil
		}
		return "tcp6", net.JoinHostPort(host, port), nil
	default:
		return "", "", fmt.Errorf("haproxy socket %q: unknown address family %q (want unix, ipv4 or ipv6)", addr, prefix)
	}
}

// Command runs one runtime-API command and returns haproxy's whole reply. It does not interpret
// the reply: haproxy answers errors as ordinary text, so callers that know the command's grammar
// decide (see ShowStat, SetServerState).
func (c *Client) Command(ctx context.Context, cmd string) (string, error) {
	if c == nil || c.Dial == nil {
		return "", errors.New("haproxy: client not initialised (use haproxy.New)")
	}
	if strings.ContainsAny(cmd, "\r\n") {
		return "", fmt.Errorf("haproxy socket %s: command %q contains a line break", c.Addr, cmd)
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	conn, err := c.Dial(ctx, c.network, c.address)
	if err != nil {
		return "", fmt.Errorf("haproxy socket %s: %q: %w", c.Addr, cmd, err)
	}
	defer conn.Close()
	// The context deadline covers the dial; the conn deadline covers I/O, and AfterFunc makes a
	// cancellation interrupt a blocked read at once instead of at the deadline.
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return "", fmt.Errorf("haproxy socket %s: set deadline: %w", c.Addr, err)
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", fmt.Errorf("haproxy socket %s: %q: write: %w", c.Addr, cmd, netdeadline.Err(ctx, err))
	}
	reply, n, err := readAll(io.LimitReader(conn, maxReply+1))
	if err != nil {
		return "", fmt.Errorf("haproxy socket %s: %q: read after %d bytes: %w", c.Addr, cmd, n, netdeadline.Err(ctx, err))
	}
	if n > maxReply {
		return "", fmt.Errorf("haproxy socket %s: %q: reply larger than %d bytes", c.Addr, cmd, maxReply)
	}
	return reply, nil
}

// readAll reads r to EOF in chunks and copies them once into a string of the exact size. Growing
// one buffer instead reallocates it by a quarter at a time: a 2.4 MB show stat (10,000 servers)
// would leave several times its size behind as garbage on every read.
func readAll(r io.Reader) (string, int, error) {
	var chunks [][]byte
	total, size := 0, 16<<10 // most replies (set server, show info) fit the first chunk
	for {
		buf := make([]byte, size)
		size = min(2*size, 1<<20)
		k, err := io.ReadFull(r, buf)
		if k > 0 {
			chunks = append(chunks, buf[:k])
			total += k
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return "", total, err
		}
	}
	var b strings.Builder
	b.Grow(total)
	for _, c := range chunks {
		b.Write(c)
	}
	return b.String(), total, nil
}

// replyText gives haproxy's message for an error reply, trimmed to something fit for one log line.
func replyText(reply string) string {
	s := strings.TrimSpace(reply)
	if s == "" {
		return "empty reply"
	}
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return fmt.Sprintf("%q", s)
}

// body checks the blank line that ends every non-interactive CLI reply and strips it, so a reply cut
// short by a dying haproxy is an error rather than a silently shorter table.
func body(cmd, reply string) (string, error) {
	if !strings.HasSuffix(reply, "\n\n") && reply != "\n" {
		if reply == "" {
			return "", fmt.Errorf("%s: empty reply (haproxy closed the connection)", cmd)
		}
		return "", fmt.Errorf("%s: truncated reply (%d bytes, no terminating empty line)", cmd, len(reply))
	}
	return reply[:len(reply)-1], nil
}
