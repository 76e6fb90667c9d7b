// Package zabbixapi is a small client of the Zabbix frontend's JSON-RPC API (6.0 to 7.x): login or
// API token, version detection, one call with a deadline. It knows nothing about the objects it
// carries; internal/provision builds those.
package zabbixapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultTimeout bounds a call whose context has no deadline: a stuck frontend must not hang the CLI.
const DefaultTimeout = 60 * time.Second

// Client calls one Zabbix frontend's api_jsonrpc.php. It is safe for concurrent use.
type Client struct {
	url  string
	http *http.Client
	// Timeout applies to calls whose context carries no deadline.
	Timeout time.Duration

	mu      sync.Mutex
	token   string
	version string
	id      atomic.Int64
}

// APIError is an error reply of the API; Message and Data are the server's own words
// (Data usually names the parameter that was wrong).
type APIError struct {
	Method  string
	Code    int
	Message string
	Data    string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("zabbix api %s: %s %s (code %d)", e.Method, e.Message, e.Data, e.Code)
}

// New returns a client for url, which may be the frontend root ("http://zbx/") or the full
// api_jsonrpc.php address.
func New(url string) *Client {
	u := strings.TrimRight(url, "/")
	if !strings.HasSuffix(u, ".php") {
		u += "/api_jsonrpc.php"
	}
	return &Client{url: u, http: &http.Client{}, Timeout: DefaultTimeout}
}

// URL is the api_jsonrpc.php address the client posts to.
func (c *Client) URL() string { return c.url }

// SetToken makes later calls authenticate with an API token (or a session id from Login).
func (c *Client) SetToken(token string) {
	c.mu.Lock()
	c.token = token
	c.mu.Unlock()
}

// Login opens a session with a user name and password. It sends "username", the only parameter
// name 7.0 accepts (6.0 takes it too).
func (c *Client) Login(ctx context.Context, user, password string) error {
	var tok string
	if err := c.call(ctx, "user.login", map[string]string{"username": user, "password": password}, &tok, false); err != nil {
		return err
	}
	c.SetToken(tok)
	return nil
}

// Version returns apiinfo.version (e.g. "7.0.9"), asked once and then cached.
func (c *Client) Version(ctx context.Context) (string, error) {
	c.mu.Lock()
	v := c.version
	c.mu.Unlock()
	if v != "" {
		return v, nil
	}
	if err := c.call(ctx, "apiinfo.version", []any{}, &v, false); err != nil {
		return "", err
	}
	c.mu.Lock()
	c.version = v
	c.mu.Unlock()
	return v, nil
}

// AtLeast reports whether the server's API version is major.minor or newer.
func (c *Client) AtLeast(ctx context.Context, major, minor int) (bool, error) {
	v, err := c.Version(ctx)
	if err != nil {
		return false, err
	}
	ma, mi, err := parseVersion(v)
	if err != nil {
		return false, err
	}
	return ma > major || (ma == major && mi >= minor), nil
}

func parseVersion(v string) (int, int, error) {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, fmt.Errorf("zabbix api version %q: want major.minor", v)
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("zabbix api version %q: want major.minor", v)
	}
	return ma, mi, nil
}

// Call runs an authenticated API method and decodes its result into out (nil to discard).
func (c *Client) Call(ctx context.Context, method string, params, out any) error {
	return c.call(ctx, method, params, out, true)
}

type rpcRequest struct {
	JSONRPC string `json:"jsonrpc"`
	Method  string `json:"method"`
	Params  any    `json:"params"`
	ID      int64  `json:"id"`
	Auth    string `json:"auth,omitempty"`
}

type rpcResponse struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Data    string `json:"data"`
	} `json:"error"`
}

func (c *Client) call(ctx context.Context, method string, params, out any, auth bool) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	req := rpcRequest{JSONRPC: "2.0", Method: method, Params: params, ID: c.id.Add(1)}
	var bearer string
	if auth {
		c.mu.Lock()
		tok := c.token
		c.mu.Unlock()
		if tok == "" {
			return fmt.Errorf("zabbix api %s: not logged in (no token)", method)
		}
		// 6.4 introduced the Authorization header and 7.2 dropped the "auth" field; older servers
		// know only the field.
		newer, err := c.AtLeast(ctx, 6, 4)
		if err != nil {
			return fmt.Errorf("zabbix api %s: %w", method, err)
		}
		if newer {
			bearer = tok
		} else {
			req.Auth = tok
		}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("zabbix api %s: encode params: %w", method, err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("zabbix api %s: %w", method, err)
	}
	hreq.Header.Set("Content-Type", "application/json-rpc")
	if bearer != "" {
		hreq.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.http.Do(hreq)
	if err != nil {
		return fmt.Errorf("zabbix api %s: %w", method, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("zabbix api %s: read reply: %w", method, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("zabbix api %s: HTTP %s: %s", method, resp.Status, snippet(raw))
	}
	var r rpcResponse
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("zabbix api %s: reply is not JSON-RPC: %w: %s", method, err, snippet(raw))
	}
	if r.Error != nil {
		return &APIError{Method: method, Code: r.Error.Code, Message: r.Error.Message, Data: r.Error.Data}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(r.Result, out); err != nil {
		return fmt.Errorf("zabbix api %s: decode result: %w: %s", method, err, snippet(r.Result))
	}
	return nil
}

func snippet(b []byte) string {
	const max = 300
	s := strings.TrimSpace(string(b))
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// IsAPIError reports whether err is an error reply of the API (as opposed to a transport failure).
func IsAPIError(err error) bool {
	var e *APIError
	return errors.As(err, &e)
}
