package hypervisor

import (
	"context"
	"fmt"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
	"zabbix-agent2-plugin-kvm/plugin"
)

// In-process cost of one kvm.domain.state export on a warm cache (the steady state between polls).
func BenchmarkExportDomainState(b *testing.B) {
	p, _ := configured(b, "test:///default", "CacheSeconds", "3600")
	ctx := context.Background()
	if _, err := p.ExportContext(ctx, "kvm.domain.state", []string{"test"}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.ExportContext(ctx, "kvm.domain.state", []string{"test"}); err != nil {
			b.Fatal(err)
		}
	}
}

// Every key of 30 guests (50 items each: 1,500 values) served from one collection cycle: the bulk
// calls, then the per-item work. Reports libvirt calls per cycle, counted by the connection (bulk
// statistics and inventory reads alike).
func BenchmarkCycle30Guests1500Items(b *testing.B) { benchCycle(b, 30) }

// The same for a 1,000-domain hypervisor (50,000 values).
func BenchmarkCycle1000Guests(b *testing.B) { benchCycle(b, 1000) }

func benchCycle(b *testing.B, n int) {
	uri := kvmtest.NodeURI(b, kvmtest.Domains(n))
	cfg, err := plugin.ParseOptions(options("URI", uri, "Timeout", "5", "CacheSeconds", "3600"), 3)
	if err != nil {
		b.Fatal(err)
	}
	// the hypervisor outlives the cycles: Use closes the dependencies it replaces, so the cycles'
	// dependencies carry no Close and the connection is closed once, at the end
	h, err := New(cfg, testLog{b})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(h.Close)
	p := plugin.New(nil)
	b.Cleanup(p.Stop)
	ctx := context.Background()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("vm-%04d", i)
	}
	b.ReportAllocs()
	var bulk int64
	for b.Loop() {
		// a new cycle: the statistics snapshot has expired (a fresh cache), the connection and the
		// slowly changing inventory stay, as between two polls of a running agent
		cache := kvm.NewCache(h.Conn, time.Hour)
		d := h.Deps(plugin.AgentCaller)
		d.Stats, d.Close = cache, nil
		p.Use(h.Cfg, d)
		for _, name := range names {
			for k := 0; k < 25; k++ {
				if _, err := p.ExportContext(ctx, "kvm.domain.state", []string{name}); err != nil {
					b.Fatal(err)
				}
				if _, err := p.ExportContext(ctx, "kvm.domain.get", []string{name}); err != nil {
					b.Fatal(err)
				}
			}
		}
		bulk += cache.Calls()
	}
	b.ReportMetric(float64(bulk)/float64(b.N), "bulkcalls/cycle")
}
