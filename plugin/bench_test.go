package plugin

import (
	"context"
	"fmt"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
)

// In-process cost of one kvm.domain.state export on a warm cache (the steady state between polls).
func BenchmarkExportDomainState(b *testing.B) {
	p := configured(&testing.T{}, "test:///default", "CacheSeconds", "3600")
	ctx := context.Background()
	if _, err := p.ExportContext(ctx, "kvm.domain.state", []string{"test"}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := p.ExportContext(ctx, "kvm.domain.state", []string{"test"}); err != nil {
			b.Fatal(err)
		}
	}
}

// Every key of 30 guests (50 items each: 1,500 values) served from one collection cycle: one bulk
// call, then the per-item work. Reports bulk calls per cycle as a metric, counted by the cache.
func BenchmarkCycle30Guests1500Items(b *testing.B) { benchCycle(b, 30) }

// The same for a 1,000-domain hypervisor (50,000 values).
func BenchmarkCycle1000Guests(b *testing.B) { benchCycle(b, 1000) }

func benchCycle(b *testing.B, n int) {
	t := &testing.T{}
	uri := kvmtest.NodeURI(b, kvmtest.Domains(n))
	p := configured(t, uri, "CacheSeconds", "3600")
	ctx := context.Background()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("vm-%04d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// a new cycle: the statistics snapshot has expired (a fresh cache), the connection and the
		// slowly changing inventory stay, as between two polls of a running agent
		p.mu.Lock()
		p.cache = kvm.NewCache(p.conn, time.Hour)
		p.mu.Unlock()
		for _, d := range names {
			for k := 0; k < 25; k++ {
				if _, err := p.ExportContext(ctx, "kvm.domain.state", []string{d}); err != nil {
					b.Fatal(err)
				}
				if _, err := p.ExportContext(ctx, "kvm.domain.get", []string{d}); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(p.cache.Calls()), "bulkcalls/cycle")
	}
}
