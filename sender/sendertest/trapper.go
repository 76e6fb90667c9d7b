// Package sendertest is a loopback stand-in for a Zabbix trapper (server or proxy port 10051), for
// tests of what sends to one. The real server and proxies are exercised by tests/e2e and tests/fleet;
// this stand-in exists for what they cannot be made to do on demand: lose or stall a given request.
package sendertest

import (
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/sender"
)

// Options choose the faults: the first Drop requests are read and then the connection is closed
// without an answer (a server that died mid-request); the next Stall requests get their answer only
// after StallFor (a busy server, longer than the sender's deadline).
type Options struct {
	Drop     int
	Stall    int
	StallFor time.Duration
}

// Trapper records every request it reads, in order, faulty ones included.
type Trapper struct {
	Addr string
	opts Options

	mu   sync.Mutex
	seen int
	reqs chan []sender.Item
}

// Start listens on 127.0.0.1 until the test ends.
func Start(t testing.TB, o Options) *Trapper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("trapper stand-in: %v", err)
	}
	tr := &Trapper{Addr: ln.Addr().String(), opts: o, reqs: make(chan []sender.Item, 256)}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go tr.serve(c, done)
		}
	}()
	return tr
}

// Requests delivers the items of each request read, in arrival order.
func (tr *Trapper) Requests() <-chan []sender.Item { return tr.reqs }

// Seen is how many requests were read so far.
func (tr *Trapper) Seen() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.seen
}

func (tr *Trapper) serve(c net.Conn, done <-chan struct{}) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	payload, err := sender.ReadFrame(c, 1<<20)
	if err != nil {
		return
	}
	var req struct {
		Request string        `json:"request"`
		Data    []sender.Item `json:"data"`
	}
	if json.Unmarshal(payload, &req) != nil || req.Request != "sender data" {
		return
	}
	tr.mu.Lock()
	tr.seen++
	n := tr.seen
	tr.mu.Unlock()
	tr.reqs <- req.Data
	switch {
	case n <= tr.opts.Drop:
		return
	case n <= tr.opts.Drop+tr.opts.Stall:
		select {
		case <-time.After(tr.opts.StallFor):
		case <-done:
			return
		}
	}
	resp := fmt.Sprintf(`{"response":"success","info":"processed: %d; failed: 0; total: %d; seconds spent: 0.000050"}`, len(req.Data), len(req.Data))
	_, _ = c.Write(sender.Frame([]byte(resp)))
}
