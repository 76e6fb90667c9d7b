//go:build integration

// Package bench compares the plugin with the obvious alternative through a real zabbix_agent2:
// a UserParameter that runs virsh. Run it with scripts/bench.sh (make bench), not as a test.
package bench

import (
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

const checks = 1000

type result struct {
	name  string
	total time.Duration
	lat   []time.Duration
}

func (r result) pct(p float64) time.Duration {
	s := append([]time.Duration(nil), r.lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(p*float64(len(s)-1))]
}

func run(b *testing.B, a *harness.Agent, name, key, want string) result {
	r := result{name: name}
	start := time.Now()
	for i := 0; i < checks; i++ {
		t0 := time.Now()
		v, err := a.Query(key, 10*time.Second)
		if err != nil || v != want {
			b.Fatalf("%s: %q %v", key, v, err)
		}
		r.lat = append(r.lat, time.Since(t0))
	}
	r.total = time.Since(start)
	return r
}

// BenchmarkPassive1000 sends 1,000 sequential passive checks of kvm.domain.state[test] through agent
// 7.0 + the plugin, then 1,000 of a UserParameter running `virsh -c test:///default domstate test`
// on the same agent, and prints both with their ratio. Use -benchtime 1x.
func BenchmarkPassive1000(b *testing.B) {
	harness.RequireTool(b, "virsh", "scripts/deps.sh build")
	for i := 0; i < b.N; i++ {
		a := harness.WriteAgentConf(b, "7.0", harness.AgentOptions{
			Options: map[string]string{"URI": "test:///default", "CacheSeconds": "1"},
			Extra:   []string{"UserParameter=virsh.domstate[*],virsh -c test:///default domstate $1"},
			Timeout: 10,
		})
		a.Start(b)
		plugin := run(b, a, "plugin kvm.domain.state[test]", "kvm.domain.state[test]", "running")
		virsh := run(b, a, "UserParameter virsh domstate", "virsh.domstate[test]", "running")
		w := os.Stdout
		fmt.Fprintf(w, "\n%-34s %10s %10s %10s %10s\n", "1,000 passive checks via agent 7.0", "total", "mean", "p50", "p99")
		for _, r := range []result{plugin, virsh} {
			fmt.Fprintf(w, "%-34s %10s %10s %10s %10s\n", r.name, r.total.Round(time.Millisecond),
				(r.total / checks).Round(time.Microsecond), r.pct(0.5).Round(time.Microsecond), r.pct(0.99).Round(time.Microsecond))
		}
		fmt.Fprintf(w, "ratio (virsh / plugin, mean latency): %.1fx\n", float64(virsh.total)/float64(plugin.total))
		b.ReportMetric(float64(plugin.total.Microseconds())/checks, "plugin-us/check")
		b.ReportMetric(float64(virsh.total.Microseconds())/checks, "virsh-us/check")
		a.Stop()
	}
}
