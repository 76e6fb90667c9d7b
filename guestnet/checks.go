// Package guestnet checks guests over their private network from the hypervisor: a TCP connect and
// an HTTP GET, each bounded by the caller's deadline. Which addresses may be dialled is the caller's
// policy (Plugins.KVM.GuestNetworks); this package dials what it is given.
package guestnet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// trim ends ctx a little before its deadline (a tenth of the time left, 20-500 ms): a check that
// waits until the end for an answer that never comes (a frozen guest) still answers the agent
// within its Timeout, even when a loaded machine wakes the waiting goroutine late (measured: 165 ms
// late at a load average of 30-50 on 2 cores).
func trim(ctx context.Context) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	m := min(max(time.Until(dl)/10, 20*time.Millisecond), 500*time.Millisecond)
	return context.WithDeadline(ctx, dl.Add(-m))
}

// TCPCheck is kvm.domain.tcp: can the hypervisor open a TCP connection to ip:port before ctx expires.
func TCPCheck(ctx context.Context, ip string, port int) bool {
	ctx, cancel := trim(ctx)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// HTTPResult is the value of kvm.domain.http. Status 0 means no HTTP answer (refused, timed out).
type HTTPResult struct {
	Status int     `json:"status"`
	TimeMs float64 `json:"time_ms"`
	Error  string  `json:"error"`
}

// HTTPCheck GETs http://ip:port/path with ctx's deadline, without following redirects or using
// any proxy from the environment (the guest network is private), and reads at most 64 KiB.
func HTTPCheck(ctx context.Context, ip string, port int, path string) HTTPResult {
	ctx, cancel := trim(ctx)
	defer cancel()
	if path == "" || path[0] != '/' {
		path = "/" + path
	}
	client := &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, DialContext: (&net.Dialer{}).DialContext},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	url := "http://" + net.JoinHostPort(ip, strconv.Itoa(port)) + path
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return HTTPResult{Error: err.Error()}
	}
	req.Header.Set("User-Agent", "zabbix-agent2-plugin-kvm")
	resp, err := client.Do(req)
	elapsed := float64(time.Since(start).Microseconds()) / 1000
	if err != nil {
		return HTTPResult{TimeMs: elapsed, Error: err.Error()}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	r := HTTPResult{Status: resp.StatusCode, TimeMs: float64(time.Since(start).Microseconds()) / 1000}
	if resp.StatusCode >= 400 {
		r.Error = fmt.Sprintf("HTTP %s", resp.Status)
	}
	return r
}
