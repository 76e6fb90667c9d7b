package kvm

import (
	"context"
	"fmt"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
)

// BenchmarkCollection1000 is one collection for a 1,000-domain hypervisor on the test driver: the
// statistics snapshot every key reads (warm: the inventory is fresh), and the same plus every
// domain's XML re-read (inventory-due: what happens once per InventorySeconds). Every libvirt call
// is counted in the connection, inventory reads included, and reported per collection.
func BenchmarkCollection1000(b *testing.B) {
	doms := kvmtest.Domains(1000)
	c := NewConn(kvmtest.NodeURI(b, doms), 30*time.Second, DefaultWorkers)
	defer c.Close()
	ctx := context.Background()
	inv := NewInventories(c, time.Hour)
	for _, d := range doms {
		if _, err := inv.Get(ctx, d.Name, true); err != nil {
			b.Fatal(err)
		}
	}
	for _, mode := range []string{"warm", "inventory-due"} {
		b.Run(mode, func(b *testing.B) {
			before := c.Calls()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s, err := NewCache(c, time.Hour).Get(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if len(s.Records) != len(doms) {
					b.Fatalf("%d records, want %d", len(s.Records), len(doms))
				}
				if mode == "warm" {
					continue
				}
				for _, d := range doms {
					if _, err := inv.Refresh(ctx, d.Name, true); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			after := c.Calls()
			total := int64(0)
			for k, v := range after {
				total += v - before[k]
			}
			b.ReportMetric(float64(total)/float64(b.N), "calls/collection")
			for _, k := range []string{CallStats, CallLookup, CallXML} {
				b.ReportMetric(float64(after[k]-before[k])/float64(b.N), k+"/collection")
			}
			if b.N == 1 || testing.Verbose() {
				b.Logf("%s: %s per collection", mode, fmt.Sprint(CallsDiff(before, after)))
			}
		})
	}
}
