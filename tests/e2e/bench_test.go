//go:build integration

package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
)

// BenchmarkMTTR breaks both guests (hung QEMU, dead httpd) once per iteration on one environment,
// waits for the ladder to repair them, and prints the median time of every phase per failure kind
// (`make bench-e2e` runs three iterations). Escalation steps are Zabbix's minimum (60 s), so the
// gentle step comes about a minute after the problem and the forced step a minute later.
func BenchmarkMTTR(b *testing.B) {
	e := startEnv(b, []guestSpec{{name: "web-01", opts: servingGuest}, {name: "web-02", opts: servingGuest}})
	var runs [][]*repair
	for b.Loop() {
		faults, ws := e.breakAll(b, failures)
		rs, err := e.repairAll(failures, faults, ws)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rs {
			report(b, r)
		}
		runs = append(runs, rs)
		b.StopTimer()
		if err := e.settle(failures); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	table := mttrTable(runs)
	b.Log("\n" + table)
	fmt.Print(table)
	for i, f := range failures {
		var ms []float64
		for _, rs := range runs {
			ms = append(ms, rs[i].mttr().Seconds())
		}
		b.ReportMetric(median(ms), "s-mttr-"+f.kind)
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// mttrTable is one block per failure kind: each phase's median offset from the fault over the runs
// (and min-max), then the median MTTR.
func mttrTable(runs [][]*repair) string {
	var b strings.Builder
	for i, f := range failures {
		offsets := map[string][]float64{}
		var names []string
		var mttrs []float64
		for _, rs := range runs {
			r := rs[i]
			mttrs = append(mttrs, r.mttr().Seconds())
			for _, p := range r.phases {
				if _, ok := offsets[p.name]; !ok {
					names = append(names, p.name)
				}
				offsets[p.name] = append(offsets[p.name], p.at.Sub(r.fault).Seconds())
			}
		}
		sort.SliceStable(names, func(a, c int) bool { return median(offsets[names[a]]) < median(offsets[names[c]]) })
		fmt.Fprintf(&b, "MTTR %s (%s), %d runs: median %.1fs\n", f.kind, f.what, len(runs), median(mttrs))
		fmt.Fprintf(&b, "  %-22s %10s %16s\n", "phase", "median", "min-max")
		for _, n := range names {
			v := offsets[n]
			s := append([]float64(nil), v...)
			sort.Float64s(s)
			seen := ""
			if len(v) < len(runs) {
				seen = fmt.Sprintf("  (in %d of %d runs)", len(v), len(runs))
			}
			fmt.Fprintf(&b, "  %-22s %9.1fs %7.1f-%6.1fs%s\n", n, median(v), s[0], s[len(s)-1], seen)
		}
	}
	return b.String()
}
