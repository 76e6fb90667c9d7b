package haproxy

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// genStat builds a show stat reply of n servers from the captured 2.6 columns and rows: the captured
// server rows (UP, DOWN, MAINT, DRAIN, NOLB, no check) are cycled with new names, addresses and
// counters, 100 servers per backend, with a BACKEND row after each and one frontend.
func genStat(tb testing.TB, n int) string {
	tb.Helper()
	lines := strings.Split(strings.TrimSuffix(fixture(tb, "show_stat.csv"), "\n\n"), "\n")
	header := lines[0]
	var frontend, backend string
	var servers [][]string
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		switch f[1] {
		case "FRONTEND":
			frontend = l
		case "BACKEND":
			backend = l
		default:
			servers = append(servers, f)
		}
	}
	cols := strings.Split(strings.TrimPrefix(header, "# "), ",")
	idx := map[string]int{}
	for i, c := range cols {
		idx[c] = i
	}
	var b strings.Builder
	b.Grow(n * 420)
	b.WriteString(header + "\n" + frontend + "\n")
	for i := 0; i < n; i++ {
		be := fmt.Sprintf("pool-%03d", i/100)
		f := append([]string(nil), servers[i%len(servers)]...)
		f[idx["pxname"]] = be
		f[idx["svname"]] = fmt.Sprintf("guest-%05d", i)
		f[idx["addr"]] = fmt.Sprintf("10.%d.%d.%d:80", i>>16&255, i>>8&255, i&255)
		f[idx["stot"]] = fmt.Sprint(i * 7)
		f[idx["bin"]] = fmt.Sprint(i * 1031)
		f[idx["bout"]] = fmt.Sprint(i * 40961)
		b.WriteString(strings.Join(f, ",") + "\n")
		if i%100 == 99 || i == n-1 {
			bf := strings.Split(backend, ",")
			bf[idx["pxname"]] = be
			b.WriteString(strings.Join(bf, ",") + "\n")
		}
	}
	b.WriteString("\n")
	return b.String()
}

func BenchmarkParseStat(b *testing.B) {
	reply := genStat(b, 10000)
	b.SetBytes(int64(len(reply)))
	b.ReportAllocs()
	for b.Loop() {
		stats, err := ParseStat(reply)
		if err != nil || len(stats) != 10101 {
			b.Fatalf("%d rows, %v", len(stats), err)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	stats, err := ParseStat(genStat(b, 10000))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Get(stats); err != nil {
			b.Fatal(err)
		}
	}
}

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
			if _, err := Get(stats); err != nil {
				b.Fatal(err)
			}
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

func FuzzParseStat(f *testing.F) {
	for _, name := range []string{"show_stat.csv", "err_unknown_command.txt", "set_ok.txt", "show_info.txt"} {
		f.Add(fixture(f, name))
	}
	f.Add("# pxname,svname,check_desc,\nweb,s1,\"a,\"\"b\"\"\",\n\n")
	f.Add("# pxname,svname,type,weight,\nweb,s,2,-1,\n\n")
	f.Fuzz(func(t *testing.T, reply string) {
		stats, err := ParseStat(reply)
		if err != nil {
			return
		}
		for i := range stats {
			s := &stats[i]
			if v, ok := s.Raw("pxname"); !ok || v != s.Proxy || s.Proxy == "" || s.Name == "" {
				t.Fatalf("row %d: pxname %q/%v vs %q", i, v, ok, s.Proxy)
			}
			if len(s.values) != len(s.Columns()) {
				t.Fatalf("row %d: %d values for %d columns", i, len(s.values), len(s.Columns()))
			}
		}
		g, err := Get(stats)
		if err != nil {
			t.Fatal(err)
		}
		if !jsonValid(g) {
			t.Fatalf("Get produced invalid JSON: %s", g)
		}
		for _, build := range []func([]Stat) (string, error){Discovery, func(s []Stat) (string, error) { return ServerDiscovery(s, nil) }} {
			if js, err := build(stats); err != nil || !jsonValid(js) {
				t.Fatalf("builder: %v %s", err, js)
			}
		}
	})
}

func FuzzParseServersState(f *testing.F) {
	for _, name := range []string{"show_servers_state.txt", "err_no_backend.txt", "show_stat.csv"} {
		f.Add(fixture(f, name))
	}
	f.Fuzz(func(t *testing.T, reply string) {
		states, err := ParseServersState(reply)
		if err != nil {
			return
		}
		for i := range states {
			_ = states[i].AdminState()
			if v, ok := states[i].Raw("srv_name"); !ok || v != states[i].Server {
				t.Fatalf("row %d: srv_name %q vs %q", i, v, states[i].Server)
			}
		}
	})
}

func FuzzParseInfo(f *testing.F) {
	for _, name := range []string{"show_info.txt", "err_unknown_command.txt", "show_stat.csv"} {
		f.Add(fixture(f, name))
	}
	f.Fuzz(func(t *testing.T, reply string) {
		info, err := ParseInfo(reply)
		if err != nil {
			return
		}
		if info["Name"] == "" || info["Version"] == "" {
			t.Fatalf("accepted without Name/Version: %q", reply)
		}
	})
}
