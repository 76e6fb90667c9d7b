// Package sender is a client of the Zabbix sender protocol ("sender data" to a server's or proxy's
// trapper port), the one zabbix_sender speaks: a "ZBXD" frame carrying JSON, answered by a frame
// with {"response":"success","info":"processed: N; failed: M; …"}.
package sender

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"zabbix-agent2-plugin-kvm/internal/netdeadline"
)

// DefaultPort is the Zabbix trapper port.
const DefaultPort = "10051"

// DefaultTimeout bounds one exchange when New is given 0.
const DefaultTimeout = 3 * time.Second

// Header flags of a ZBXD frame.
const (
	FlagZabbix     = 0x01 // always set
	FlagCompressed = 0x02 // zlib payload; the second size field is the uncompressed length
	FlagLarge      = 0x04 // sizes are uint64 instead of uint32
)

// MaxFrame caps a frame we accept (the server's replies are a few hundred bytes).
const MaxFrame = 128 << 20

// Item is one value for a trapper item. Clock 0 means "let the server stamp it".
type Item struct {
	Host  string
	Key   string
	Value string
	Clock int64 // Unix seconds
	NS    int64 // nanoseconds within Clock (sent only when Clock is set and NS is not 0)
}

// Result is the server's account of one request.
type Result struct {
	Addr      string  // who answered (after failover or a redirect)
	Redirect  string  // a 7.0 proxy's "redirect" address: the proxy of its group that monitors the host
	Response  string  // "success" or "failed"
	Info      string  // the server's text, e.g. "processed: 1; failed: 0; total: 1; seconds spent: 0.000041"
	Processed int     // values accepted
	Failed    int     // values refused (no such host or item, wrong type, host not monitored here)
	Total     int     // values in the request
	Seconds   float64 // server-side time
}

// Client sends values to a Zabbix server, or to whichever proxy of a proxy group monitors the host.
type Client struct {
	Addr    string        // the first address, host:port (the default port filled in)
	Addrs   []string      // every address given, in order: a server, or the proxies of one group
	Timeout time.Duration // deadline of one exchange on top of the caller's context
	// Dial opens the connection; tests swap it to inject faults.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Now stamps the request; defaults to time.Now.
	Now func() time.Time

	mu     sync.Mutex
	prefer map[string]string // by host: the address that last took its values (after a redirect, the proxy that monitors it)
}

// New returns a Client for addrs: one address ("host" or "host:port"; the port defaults to 10051),
// or several separated by ';' or ',' — the proxies of a Zabbix 7.0 proxy group, tried in order
// until one takes the values (a proxy that does not monitor the host redirects to the one that does).
func New(addrs string, timeout time.Duration) (*Client, error) {
	var list []string
	for _, a := range strings.FieldsFunc(addrs, func(r rune) bool { return r == ';' || r == ',' }) {
		a, err := normAddr(a)
		if err != nil {
			return nil, err
		}
		list = append(list, a)
	}
	if len(list) == 0 {
		return nil, errors.New("zabbix sender: server address is empty")
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	var d net.Dialer
	return &Client{Addr: list[0], Addrs: list, Timeout: timeout, Dial: d.DialContext, Now: time.Now}, nil
}

func validAddr(a string) bool {
	n, err := normAddr(a)
	return err == nil && n == a
}

func normAddr(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", errors.New("zabbix sender: server address is empty")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		// no port: "host", "10.0.0.1", "::1" or "[::1]"
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), DefaultPort)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return "", fmt.Errorf("zabbix sender: server address %q: want host or host:port", addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("zabbix sender: server address %q: bad port %q", addr, port)
	}
	return addr, nil
}

type wireItem struct {
	Host  string `json:"host"`
	Key   string `json:"key"`
	Value string `json:"value"`
	Clock *int64 `json:"clock,omitempty"`
	NS    *int64 `json:"ns,omitempty"`
}

type wireRequest struct {
	Request string     `json:"request"`
	Data    []wireItem `json:"data"`
	Clock   int64      `json:"clock"`
	NS      int64      `json:"ns"`
}

// Request encodes items as the JSON body zabbix_sender sends (request, data, clock, ns).
func Request(items []Item, now time.Time) ([]byte, error) {
	if len(items) == 0 {
		return nil, errors.New("zabbix sender: no items to send")
	}
	req := wireRequest{Request: "sender data", Data: make([]wireItem, len(items)), Clock: now.Unix(), NS: int64(now.Nanosecond())}
	for i, it := range items {
		if it.Host == "" || it.Key == "" {
			return nil, fmt.Errorf("zabbix sender: item %d (host %q, key %q): host and key are required", i, it.Host, it.Key)
		}
		w := wireItem{Host: it.Host, Key: it.Key, Value: it.Value}
		// zabbix_sender sends "ns" only with --with-ns; the server reads a missing ns as 0
		if it.Clock != 0 {
			c := it.Clock
			w.Clock = &c
			if it.NS != 0 {
				ns := it.NS
				w.NS = &ns
			}
		}
		req.Data[i] = w
	}
	return json.Marshal(req)
}

// Frame wraps a payload in a ZBXD header: "ZBXD", flags 0x01, uint32 LE length, uint32 LE reserved
// (0). Together the two size fields read as the uint64 LE length older documents describe.
func Frame(payload []byte) []byte {
	b := make([]byte, 13, 13+len(payload))
	copy(b, "ZBXD")
	b[4] = FlagZabbix
	binary.LittleEndian.PutUint64(b[5:13], uint64(len(payload)))
	return append(b, payload...)
}

// ReadFrame reads one ZBXD frame and returns its (decompressed) payload. It accepts the large and
// compressed variants a server or proxy may send, and refuses frames over max bytes.
func ReadFrame(r io.Reader, max int) ([]byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	if string(h[:4]) != "ZBXD" {
		return nil, fmt.Errorf("not a ZBXD frame (starts %q)", h[:])
	}
	flags := h[4]
	if flags&FlagZabbix == 0 || flags&^(FlagZabbix|FlagCompressed|FlagLarge) != 0 {
		return nil, fmt.Errorf("unsupported ZBXD flags 0x%02x", flags)
	}
	var size, raw uint64
	if flags&FlagLarge != 0 {
		var s [16]byte
		if _, err := io.ReadFull(r, s[:]); err != nil {
			return nil, fmt.Errorf("read header: %w", err)
		}
		size, raw = binary.LittleEndian.Uint64(s[:8]), binary.LittleEndian.Uint64(s[8:])
	} else {
		var s [8]byte
		if _, err := io.ReadFull(r, s[:]); err != nil {
			return nil, fmt.Errorf("read header: %w", err)
		}
		size, raw = uint64(binary.LittleEndian.Uint32(s[:4])), uint64(binary.LittleEndian.Uint32(s[4:]))
	}
	if size > uint64(max) || (flags&FlagCompressed != 0 && raw > uint64(max)) {
		return nil, fmt.Errorf("frame of %d bytes exceeds the %d-byte limit", max64(size, raw), max)
	}
	payload := make([]byte, size)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, fmt.Errorf("read %d-byte payload: %w", size, err)
	}
	if flags&FlagCompressed == 0 {
		return payload, nil
	}
	zr, err := zlib.NewReader(bytes.NewReader(payload))
	if err != nil {
		return nil, fmt.Errorf("compressed payload: %w", err)
	}
	out, err := io.ReadAll(io.LimitReader(zr, int64(raw)+1))
	if err != nil {
		return nil, fmt.Errorf("compressed payload: %w", err)
	}
	if uint64(len(out)) != raw {
		return nil, fmt.Errorf("compressed payload: %d bytes, header says %d", len(out), raw)
	}
	return out, nil
}

func max64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// ParseResponse reads the server's reply JSON.
func ParseResponse(payload []byte) (Result, error) {
	var resp struct {
		Response string `json:"response"`
		Info     string `json:"info"`
		Redirect *struct {
			Address string `json:"address"`
		} `json:"redirect"`
	}
	if err := json.Unmarshal(payload, &resp); err != nil {
		return Result{}, fmt.Errorf("reply %q is not JSON: %w", clip(payload), err)
	}
	r := Result{Response: resp.Response, Info: resp.Info}
	if resp.Redirect != nil {
		// a proxy of a 7.0 proxy group that does not monitor the host, seen answering:
		// {"redirect":{"revision":1,"address":"127.0.0.1:15490"},"response":"failed"}
		r.Redirect = resp.Redirect.Address
		return r, fmt.Errorf("proxy redirects to %q (it does not monitor the host)", r.Redirect)
	}
	if resp.Response != "success" {
		if resp.Response == "" {
			return r, fmt.Errorf("reply %q has no response field", clip(payload))
		}
		return r, fmt.Errorf("server answered %q: %s", resp.Response, resp.Info)
	}
	seen := 0
	for _, part := range strings.Split(resp.Info, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var err error
		switch strings.TrimSpace(k) {
		case "processed":
			r.Processed, err = strconv.Atoi(v)
			seen++
		case "failed":
			r.Failed, err = strconv.Atoi(v)
			seen++
		case "total":
			r.Total, err = strconv.Atoi(v)
		case "seconds spent":
			r.Seconds, err = strconv.ParseFloat(v, 64)
		}
		if err != nil {
			return r, fmt.Errorf("info %q: %s: %w", resp.Info, k, err)
		}
	}
	if seen != 2 {
		return r, fmt.Errorf("info %q lacks processed/failed counts", resp.Info)
	}
	return r, nil
}

func clip(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

// Send delivers items and returns the server's counts. It is an error when the server does not
// answer success or refuses any value (failed > 0); the Result is returned with it.
// With several addresses it starts at the one that last took the host's values, goes on to the
// next when one cannot be reached, and follows a proxy's redirect once; each exchange has its own
// Timeout. With several addresses, items of several hosts go in one request per host: a 7.0 proxy
// group balances hosts on its own, so a hypervisor and its discovered guests may each be on a
// different proxy (seen in tests/fleet), and one request for both would be refused in part.
func (c *Client) Send(ctx context.Context, items ...Item) (Result, error) {
	if c == nil || c.Dial == nil {
		return Result{}, errors.New("zabbix sender: client not initialised (use sender.New)")
	}
	var hosts []string
	byHost := map[string][]Item{}
	for _, it := range items {
		if _, ok := byHost[it.Host]; !ok {
			hosts = append(hosts, it.Host)
		}
		byHost[it.Host] = append(byHost[it.Host], it)
	}
	if len(hosts) <= 1 || len(c.Addrs) <= 1 {
		// one address: a server, or the one proxy that monitors them all
		return c.send(ctx, items)
	}
	var sum Result
	var errs []error
	for _, h := range hosts {
		r, err := c.send(ctx, byHost[h])
		sum.Addr, sum.Redirect, sum.Response, sum.Info = r.Addr, r.Redirect, r.Response, r.Info
		sum.Processed += r.Processed
		sum.Failed += r.Failed
		sum.Total += r.Total
		sum.Seconds += r.Seconds
		if err != nil {
			errs = append(errs, fmt.Errorf("host %q: %w", h, err))
		}
	}
	return sum, errors.Join(errs...)
}

// send is Send of one host's items (or of items that name no two hosts).
func (c *Client) send(ctx context.Context, items []Item) (Result, error) {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	payload, err := Request(items, now())
	if err != nil {
		return Result{}, err
	}
	host := items[0].Host
	c.mu.Lock()
	order := []string{}
	if p := c.prefer[host]; p != "" {
		order = append(order, p)
	}
	c.mu.Unlock()
	for _, a := range append(c.Addrs, c.Addr) {
		if !slices.Contains(order, a) && a != "" {
			order = append(order, a)
		}
	}
	var errs []error
	redirected := false
	for i := 0; i < len(order); i++ {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		res, err := c.exchange(ctx, order[i], payload, len(items))
		res.Addr = order[i]
		switch {
		case err == nil:
			c.setPrefer(host, order[i])
			return res, nil
		case res.Redirect != "" && !redirected && validAddr(res.Redirect):
			// the group's own answer: go there next, and stay there while it takes values
			redirected = true
			order = slices.Insert(slices.DeleteFunc(order[i+1:], func(a string) bool { return a == res.Redirect }), 0, res.Redirect)
			i = -1
		case res.Response != "" && res.Redirect == "":
			// a server that answered and refused: another address would refuse too
			return res, err
		}
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return Result{}, errs[0]
	}
	return Result{}, fmt.Errorf("zabbix sender: no address took the values: %w", errors.Join(errs...))
}

func (c *Client) setPrefer(host, a string) {
	c.mu.Lock()
	if c.prefer == nil {
		c.prefer = map[string]string{}
	}
	if len(c.prefer) > 100000 { // a bound, not a cache policy: hosts are a hypervisor and its guests
		clear(c.prefer)
	}
	c.prefer[host] = a
	c.mu.Unlock()
}

// exchange is one request and its reply on a new connection to addr.
func (c *Client) exchange(ctx context.Context, addr string, payload []byte, n int) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	conn, err := c.Dial(ctx, "tcp", addr)
	if err != nil {
		return Result{}, fmt.Errorf("zabbix sender %s: %w", addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return Result{}, fmt.Errorf("zabbix sender %s: set deadline: %w", addr, err)
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write(Frame(payload)); err != nil {
		return Result{}, fmt.Errorf("zabbix sender %s: write: %w", addr, netdeadline.Err(ctx, err))
	}
	reply, err := ReadFrame(conn, MaxFrame)
	if err != nil {
		return Result{}, fmt.Errorf("zabbix sender %s: %w", addr, netdeadline.Err(ctx, err))
	}
	res, err := ParseResponse(reply)
	if err != nil {
		return res, fmt.Errorf("zabbix sender %s: %w", addr, err)
	}
	if res.Failed > 0 {
		return res, fmt.Errorf("zabbix sender %s: server refused %d of %d values (%s): check host names, item keys and that the items are trappers", addr, res.Failed, n, res.Info)
	}
	return res, nil
}
