//go:build integration

package fleet

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkFleet measures what a fleet costs (make bench-fleet, FLEET=NxG, default here 3x4 so
// that make test's one pass of every benchmark stays short; make bench-fleet asks for 100x30):
// the time from zabbix setup to every guest host discovered and polled through the proxy group,
// then, over a steady window (FLEET_WINDOW, default 2m), the CPU and memory of each part and the
// values the server stores. Use -benchtime 1x.
func BenchmarkFleet(b *testing.B) {
	n, g := fleetSize(b, "3x4")
	window := 2 * time.Minute
	if v := os.Getenv("FLEET_WINDOW"); v != "" {
		var err error
		if window, err = time.ParseDuration(v); err != nil || window < 10*time.Second {
			b.Fatalf("FLEET_WINDOW=%q: want a duration of at least 10s", v)
		}
	}
	f := Start(b, Options{Hypervisors: n, Guests: g, Macros: map[string]string{"{$KVM.DISCOVERY.INTERVAL}": "1m"}})
	d := f.WaitDiscovered(b, 90*time.Minute)

	parts := map[string][]int{"zabbix_server": {f.Zabbix.PIDs["zabbix_server"]}, "postgres": {f.Zabbix.PIDs["postgres"]}}
	for _, p := range f.Proxies {
		parts["proxies"] = append(parts["proxies"], f.Zabbix.PIDs["zabbix_proxy "+p.Name])
	}
	for _, hv := range f.HVs {
		parts["agents+plugins"] = append(parts["agents+plugins"], hv.Agent.PID())
		parts["haproxy"] = append(parts["haproxy"], hv.HAProxy.PID())
	}
	names := []string{"zabbix_server", "proxies", "postgres", "agents+plugins", "haproxy"}
	rows := func() int64 {
		var sum int64
		for _, tb := range []string{"history", "history_uint", "history_str", "history_text", "history_log"} {
			c, err := f.Zabbix.QueryInt("SELECT count(*) FROM " + tb)
			if err != nil {
				b.Fatal(err)
			}
			sum += c
		}
		return sum
	}
	cpu0 := map[string]time.Duration{}
	for _, k := range names {
		cpu0[k], _ = treeCPU(parts[k]...)
	}
	r0, t0 := rows(), time.Now()
	time.Sleep(window) // a measurement window, not a wait for a condition
	el := time.Since(t0)
	r1 := rows()

	var s strings.Builder
	fmt.Fprintf(&s, "\nfleet %dx%d (%d guest hosts) through %d proxies of one group, 2 cores\n", n, g, d.Hosts, len(f.Proxies))
	fmt.Fprintf(&s, "  zabbix setup → every guest host discovered: %6.1f s\n", d.Discovered.Seconds())
	fmt.Fprintf(&s, "  zabbix setup → every guest's statistics polled: %6.1f s\n", d.Polled.Seconds())
	fmt.Fprintf(&s, "  steady window %.0f s:\n  | part | CPU (%% of one core) | RSS MiB (summed over its processes: shared memory counts in each) |\n  |---|---|---|\n", el.Seconds())
	for _, k := range names {
		c, rss := treeCPU(parts[k]...)
		pct := 100 * (c - cpu0[k]).Seconds() / el.Seconds()
		fmt.Fprintf(&s, "  | %s | %.1f | %.0f |\n", k, pct, float64(rss)/1024)
		b.ReportMetric(pct, strings.ReplaceAll(k, "+", "_")+"-cpu%")
	}
	vps := float64(r1-r0) / el.Seconds()
	fmt.Fprintf(&s, "  values stored: %.1f/s (%.0f history rows a day)\n", vps, vps*86400)
	b.ReportMetric(d.Discovered.Seconds(), "discovered-s")
	b.ReportMetric(vps, "values/s")
	b.Log(s.String())
	fmt.Print(s.String())
}

// treeCPU is the CPU time (user+system) used so far by each process tree rooted at roots (a
// daemon's holder process and everything under it, as read from /proc), and the sum of their
// resident memory in KiB.
func treeCPU(roots ...int) (time.Duration, int64) {
	type proc struct {
		ppid       int
		ticks, rss int64
	}
	procs := map[int]proc{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		st := string(b)
		f := strings.Fields(st[strings.LastIndexByte(st, ')')+2:])
		if len(f) < 22 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		stt, _ := strconv.ParseInt(f[12], 10, 64)
		rss, _ := strconv.ParseInt(f[21], 10, 64)
		procs[pid] = proc{ppid, ut + stt, rss * int64(os.Getpagesize()) / 1024}
	}
	in := map[int]bool{}
	for _, r := range roots {
		in[r] = true
	}
	var ticks, rss int64
	for pid, p := range procs {
		for q, depth := pid, 0; q > 1 && depth < 32; q, depth = procs[q].ppid, depth+1 {
			if in[q] {
				ticks += p.ticks
				rss += p.rss
				break
			}
		}
	}
	return time.Duration(ticks) * time.Second / 100, rss
}
