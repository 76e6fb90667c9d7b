//go:build integration

package haproxy

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// BenchmarkLive1000 compares haproxy.get end to end (Client.ShowStat + Get) with haproxy's own
// show stat fetched by socat, on a live haproxy with 1,000 servers (10 backends × 100, checks off,
// pointing at 4 loopback HTTP servers). haproxy/bench.sh prints the ratio.
func BenchmarkLive1000(b *testing.B) {
	be := []*httpBackend{newBackend(b), newBackend(b), newBackend(b), newBackend(b)}
	h := newHAProxy(b, func(sock string) string {
		var s strings.Builder
		fmt.Fprintf(&s, "global\n  stats socket %s mode 600 level admin\n  maxconn 2000\n", sock)
		s.WriteString("defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n")
		for p := 0; p < 10; p++ {
			fmt.Fprintf(&s, "backend pool-%02d\n", p)
			for i := 0; i < 100; i++ {
				fmt.Fprintf(&s, "  server guest-%02d-%03d %s\n", p, i, be[i%len(be)].Addr())
			}
		}
		return s.String()
	})
	c := h.Client()
	c.Timeout = 10 * time.Second
	ctx := context.Background()
	b.Run("client_showstat_get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			stats, err := c.ShowStat(ctx)
			if err != nil || len(stats) != 1010 {
				b.Fatalf("%d rows, %v", len(stats), err)
			}
			_ = EncodeStats(stats)
		}
	})
	// the snapshot every key is served from: both commands on two connections at once (Snapshot)
	// next to one after the other
	b.Run("snapshot_concurrent", func(b *testing.B) {
		for b.Loop() {
			s, err := c.Snapshot(ctx)
			if err != nil || len(s.States) != 1000 {
				b.Fatal(err)
			}
		}
	})
	b.Run("snapshot_sequential", func(b *testing.B) {
		for b.Loop() {
			stats, err := c.ShowStat(ctx)
			if err != nil {
				b.Fatal(err)
			}
			states, err := c.ShowServersState(ctx, "")
			if err != nil || len(states) != 1000 {
				b.Fatal(err)
			}
			_ = NewSnapshot(stats, states, time.Now())
		}
	})
	b.Run("client_command_only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Command(ctx, "show stat"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("socat_show_stat", func(b *testing.B) {
		for b.Loop() {
			cmd := exec.Command("socat", "-t", "10", "-", "UNIX-CONNECT:"+h.Sock)
			cmd.Stdin = strings.NewReader("show stat\n")
			out, err := cmd.Output()
			if err != nil || strings.Count(string(out), "\n") != 1012 {
				b.Fatalf("%d lines, %v", strings.Count(string(out), "\n"), err)
			}
		}
	})
}
