package main

import (
	"testing"
)

func TestHoistGlobalFlags(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"recover", "--dry-run", "web-07"}, []string{"--dry-run", "recover", "web-07"}},
		{[]string{"-c", "/etc/k.conf", "reboot", "web-07", "--caller", "zabbix"}, []string{"-c", "/etc/k.conf", "--caller", "zabbix", "reboot", "web-07"}},
		{[]string{"hold", "web-07", "--for", "1h", "--timeout=5"}, []string{"--timeout=5", "hold", "web-07", "--for", "1h"}},
		{[]string{"exec", "web-07", "--", "echo", "--dry-run"}, []string{"exec", "web-07", "--", "echo", "--dry-run"}},
		{[]string{"--dry-run", "forced-restart", "web-07"}, []string{"--dry-run", "forced-restart", "web-07"}},
	} {
		got := hoistGlobalFlags(tc.in)
		if len(got) != len(tc.want) {
			t.Fatalf("%v: got %v, want %v", tc.in, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("%v: got %v, want %v", tc.in, got, tc.want)
			}
		}
	}
}
