//go:build testkeys

package plugin

import (
	"context"

	"zabbix-agent2-plugin-kvm/plugin/sdk/metric"
)

// Built only with -tags testkeys, for the test that proves a panicking handler cannot take a real
// zabbix_agent2 down. Release builds never contain this key.
func init() {
	keyTable["kvm.test.panic"] = keyDef{metric.New("Test only: panics.", nil, false), func(*Plugin, context.Context, map[string]string) (any, error) {
		var m map[string]int
		m["boom"] = 1
		return nil, nil
	}}
}
