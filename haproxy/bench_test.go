package haproxy

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
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

func BenchmarkEncodeStats(b *testing.B) {
	stats, err := ParseStat(genStat(b, 10000))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if js := EncodeStats(stats); len(js) < 1<<20 {
			b.Fatalf("%d bytes of JSON for 10,000 servers", len(js))
		}
	}
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
			if v := s.values(nil); len(v) != len(s.Columns()) {
				t.Fatalf("row %d: %d values for %d columns", i, len(v), len(s.Columns()))
			}
		}
		if g := EncodeStats(stats); !json.Valid(g) {
			t.Fatalf("EncodeStats produced invalid JSON: %s", g)
		}
	})
}

func FuzzParseServersState(f *testing.F) {
	for _, name := range []string{"show_servers_state.txt", "err_no_backend.txt", "show_stat.csv"} {
		f.Add(fixture(f, name))
	}
	f.Fuzz(func(t *testing.T, reply string) {
		if ascii := strings.IndexFunc(reply, func(r rune) bool { return r >= 0x80 }) < 0; ascii {
			if got, want := appendFields(nil, reply), strings.Fields(reply); !slices.Equal(got, want) && len(got)+len(want) > 0 {
				t.Fatalf("appendFields(%q) = %q, strings.Fields: %q", reply, got, want)
			}
		}
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
