//go:build integration

package fleet

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

// BenchmarkFleet measures what a fleet costs (make bench-fleet, FLEET=NxG, default here 3x4 so
// that make test's one pass of every benchmark stays short; make bench-fleet asks for 100x30):
// the time from zabbix setup to every guest host discovered and polled through the proxy group,
// and which processes were busiest on the way; over a steady window (FLEET_WINDOW, default 2m) the
// CPU and memory of each part, the values the server stores and its queue; then push → problem
// latency with every guest of one hypervisor failing at once, a proxy killed, and one guest failing
// on each of up to 30 hypervisors while the group fails over. Use -benchtime 1x.
func BenchmarkFleet(b *testing.B) {
	n, g := fleetSize(b, "3x4")
	window := 2 * time.Minute
	if v := os.Getenv("FLEET_WINDOW"); v != "" {
		var err error
		if window, err = time.ParseDuration(v); err != nil || window < 10*time.Second {
			b.Fatalf("FLEET_WINDOW=%q: want a duration of at least 10s", v)
		}
	}
	discoveryLimit := 60 * time.Minute
	if v := os.Getenv("FLEET_DISCOVERY_LIMIT"); v != "" {
		var err error
		if discoveryLimit, err = time.ParseDuration(v); err != nil || discoveryLimit < time.Minute {
			b.Fatalf("FLEET_DISCOVERY_LIMIT=%q: want a duration of at least 1m", v)
		}
	}
	proxies := 2
	if n >= 20 {
		proxies = 3
	}
	f := Start(b, Options{Hypervisors: n, Guests: g, Proxies: proxies, Macros: map[string]string{"{$KVM.DISCOVERY.INTERVAL}": "1m"},
		GentleAfter: time.Minute})
	const queue, config, values = "zabbix[queue,10s]", "zabbix[rcache,buffer,used]", "zabbix[vcache,buffer,used]"
	internal := f.serverItems(b, queue, config, values)

	parts := map[string][]int{"zabbix_server": {f.Zabbix.PIDs["zabbix_server"]}, "postgres": {f.Zabbix.PIDs["postgres"]}}
	names := []string{"zabbix_server", "postgres"}
	for _, p := range f.Proxies {
		parts[p.Name] = []int{f.Zabbix.PIDs["zabbix_proxy "+p.Name]}
		names = append(names, p.Name)
	}
	for _, hv := range f.HVs {
		parts["agents"] = append(parts["agents"], hv.Agent.PID())
		parts["haproxy"] = append(parts["haproxy"], hv.HAProxy.PID())
	}
	names = append(names, "agents", "haproxy")

	// each figure is printed as soon as it is known: a run that fails later keeps what it measured
	s := printer{}
	fmt.Fprintf(&s, "\nfleet %dx%d through %d proxies of one group, 2 cores\n", n, g, len(f.Proxies))
	u0 := ReadUsage(parts)
	// a long discovery shows its progress, and a run stopped by its limit still says which
	// processes were busy
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(time.Minute)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				fmt.Printf("fleet: +%.0fs: %d of %d guest hosts; busiest since setup: %s\n",
					time.Since(f.SetupStart).Seconds(), f.countGuestHosts(), n*g, busiest(ReadUsage(parts).Since(u0), 5))
			}
		}
	}()
	b.Cleanup(func() {
		if b.Failed() {
			fmt.Printf("fleet %dx%d failed; busiest processes since zabbix setup: %s\n", n, g, busiest(ReadUsage(parts).Since(u0), 8))
		}
	})
	d := f.WaitDiscovered(b, discoveryLimit)
	close(done)
	u1 := ReadUsage(parts)
	fmt.Fprintf(&s, "  guest hosts: %d\n", d.Hosts)
	fmt.Fprintf(&s, "  zabbix setup → every guest host discovered: %6.1f s\n", d.Discovered.Seconds())
	fmt.Fprintf(&s, "  zabbix setup → every guest's statistics polled: %6.1f s\n", d.Polled.Seconds())
	fmt.Fprintf(&s, "  busiest during discovery (%% of one core): %s\n", busiest(u1.Since(u0), 6))

	time.Sleep(window / 4) // let the first polls of 3,000 new hosts settle before the steady window
	w0 := ReadUsage(parts)
	r0 := f.historyRows(b)
	time.Sleep(window) // a measurement window, not a wait for a condition
	w1 := ReadUsage(parts)
	r1 := f.historyRows(b)
	el := w1.At.Sub(w0.At)
	steady := w1.Since(w0)
	fmt.Fprintf(&s, "  steady window %.0f s:\n  | part | processes | CPU (%% of one core) | RSS MiB (summed: shared memory counts in each) | largest process MiB |\n  |---|---|---|---|---|\n", el.Seconds())
	for _, u := range ByPart(steady, names) {
		fmt.Fprintf(&s, "  | %s | %d | %.1f | %.0f | %.0f |\n", u.Role.Part, u.Procs, u.CPUPct, float64(u.RSSKiB)/1024, float64(u.MaxRSSKiB)/1024)
		b.ReportMetric(u.CPUPct, u.Role.Part+"-cpu%")
	}
	fmt.Fprintf(&s, "  busiest in the steady window: %s\n", busiest(steady, 6))
	vps := float64(r1-r0) / el.Seconds()
	q := f.maxValue(b, internal[queue], w0.At, w1.At)
	fmt.Fprintf(&s, "  values stored: %.1f/s (%.0f history rows a day); items delayed > 10 s (server queue, max over the window): %d\n", vps, vps*86400, q)
	fmt.Fprintf(&s, "  server caches in use: configuration %.1f MiB, values %.1f MiB\n",
		float64(f.maxValue(b, internal[config], w0.At, w1.At))/(1<<20), float64(f.maxValue(b, internal[values], w0.At, w1.At))/(1<<20))

	// every guest of one hypervisor fails at once (up to 30)
	all := f.HVs[0].Guests[:min(30, len(f.HVs[0].Guests))]
	a := f.Fail(b, all, 3*time.Minute)
	if a.Outcomes["held"] != len(all) {
		b.Errorf("fleet: every guest of %s down: the storm guard must hold every restart, outcomes %v", f.HVs[0].Name, a.Outcomes)
	}
	fmt.Fprintf(&s, "  %s\n", a.row(fmt.Sprintf("%d guests of %s fail at once", len(all), f.HVs[0].Name)))

	// a proxy dies; one guest on each of up to 30 other hypervisors fails while the group fails over
	killed, moved := f.killProxy(b)
	fmt.Fprintf(&s, "  proxy %s killed: its %d hosts on the other proxies after %.1f s (failover_delay 10 s)\n", killed.Name, moved.hosts, moved.took.Seconds())
	var spread []*Guest
	for _, hv := range f.HVs[1:min(len(f.HVs), 31)] {
		spread = append(spread, hv.Guests[0])
	}
	if len(spread) > 0 {
		sp := f.Fail(b, spread, 3*time.Minute)
		fmt.Fprintf(&s, "  %s\n", sp.row(fmt.Sprintf("1 guest on each of %d hypervisors fails, after the proxy's death", len(spread))))
	}
	b.ReportMetric(d.Discovered.Seconds(), "discovered-s")
	b.ReportMetric(vps, "values/s")
}

// printer writes to standard output at once.
type printer struct{}

func (printer) Write(p []byte) (int, error) { return os.Stdout.Write(p) }

// row prints a failure's latencies.
func (r Failure) row(what string) string {
	s := fmt.Sprintf("%s: push → problem p50 %.2f s, p99 %.2f s; service stop → problem p50 %.1f s, p99 %.1f s; %d problems for %d guests",
		what, Percentile(r.PushToProblem, 50).Seconds(), Percentile(r.PushToProblem, 99).Seconds(),
		Percentile(r.StopToProblem, 50).Seconds(), Percentile(r.StopToProblem, 99).Seconds(), r.Problems, r.Guests)
	if r.Outcomes != nil {
		s += fmt.Sprintf("; gentle step: %d remote commands, run p50 %.0f s, p99 %.0f s after its due time, outcomes %v",
			r.Commands, Percentile(r.StepLate, 50).Seconds(), Percentile(r.StepLate, 99).Seconds(), r.Outcomes)
	}
	return s + fmt.Sprintf("; all resolved %.1f s after the services came back", r.Resolved.Seconds())
}

// busiest names the k roles that used the most CPU.
func busiest(uses []Use, k int) string {
	var out []string
	for _, u := range uses[:min(k, len(uses))] {
		out = append(out, fmt.Sprintf("%s %s ×%d %.0f%%", u.Role.Part, u.Role.Name, u.Procs, u.CPUPct))
	}
	return strings.Join(out, ", ")
}

func (f *Fleet) call(tb testing.TB, method string, params map[string]any, out any) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.Zabbix.API.Call(ctx, method, params, out); err != nil {
		tb.Fatalf("fleet: %s: %v", method, err)
	}
}

// serverItems makes internal items of the server's own (on a host of its own, monitored by the
// server) and returns their ids by key.
func (f *Fleet) serverItems(tb testing.TB, keys ...string) map[string]string {
	var grp struct {
		IDs []string `json:"groupids"`
	}
	f.call(tb, "hostgroup.create", map[string]any{"name": "fleet bench"}, &grp)
	var h struct {
		IDs []string `json:"hostids"`
	}
	f.call(tb, "host.create", map[string]any{"host": "fleet-server", "groups": []map[string]string{{"groupid": grp.IDs[0]}}}, &h)
	ids := map[string]string{}
	for _, k := range keys {
		var it struct {
			IDs []string `json:"itemids"`
		}
		f.call(tb, "item.create", map[string]any{"hostid": h.IDs[0], "name": k, "key_": k, "type": 5, "value_type": 3, "delay": "10s"}, &it)
		ids[k] = it.IDs[0]
	}
	return ids
}

// maxValue is the largest value item stored between from and to; storing none fails the benchmark.
func (f *Fleet) maxValue(tb testing.TB, item string, from, to time.Time) int64 {
	var vals []struct {
		Value int64 `json:"value,string"`
	}
	f.call(tb, "history.get", map[string]any{"itemids": item, "history": 3, "time_from": from.Unix(), "time_till": to.Unix(), "output": "extend"}, &vals)
	if len(vals) == 0 {
		tb.Fatalf("fleet: the server stored no value of its internal item %s between %s and %s", item, from.Format(time.TimeOnly), to.Format(time.TimeOnly))
	}
	m := vals[0].Value
	for _, v := range vals {
		m = max(m, v.Value)
	}
	return m
}

func (f *Fleet) historyRows(tb testing.TB) int64 {
	var sum int64
	for _, t := range []string{"history", "history_uint", "history_str", "history_text", "history_log"} {
		c, err := f.Zabbix.QueryInt("SELECT count(*) FROM " + t)
		if err != nil {
			tb.Fatal(err)
		}
		sum += c
	}
	return sum
}

func (f *Fleet) countGuestHosts() int {
	var uuids []string
	for _, g := range f.Guests() {
		uuids = append(uuids, g.UUID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var n int
	var c string
	if err := f.Zabbix.API.Call(ctx, "host.get", map[string]any{"filter": map[string]any{"host": uuids}, "countOutput": true}, &c); err == nil {
		fmt.Sscan(c, &n)
	}
	return n
}

type reassigned struct {
	hosts int
	took  time.Duration
}

// killProxy kills the proxy that monitors the most hosts and waits until none is assigned to it.
func (f *Fleet) killProxy(tb testing.TB) (*zbx.Proxy, reassigned) {
	assigned := func() map[string]int {
		var hs []struct {
			Proxy string `json:"assigned_proxyid"`
		}
		f.call(tb, "host.get", map[string]any{"proxy_groupids": f.GroupID, "output": []string{"assigned_proxyid"}}, &hs)
		m := map[string]int{}
		for _, h := range hs {
			m[h.Proxy]++
		}
		return m
	}
	before := assigned()
	victim := f.Proxies[0]
	for _, p := range f.Proxies {
		if before[p.ID] > before[victim.ID] {
			victim = p
		}
	}
	victim.Kill()
	killed := time.Now()
	harness.WaitFor(tb, 5*time.Minute, time.Second, "every host of proxy "+victim.Name+" on another proxy", func() (bool, error) {
		m := assigned()
		return m[victim.ID] == 0 && m["0"] == 0, fmt.Errorf("%v", m)
	})
	return victim, reassigned{before[victim.ID], time.Since(killed)}
}
