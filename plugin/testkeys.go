//go:build testkeys

package plugin

import (
	"context"

	"zabbix-agent2-plugin-kvm/plugin/sdk/metric"
)

// testKeys exist only with -tags testkeys, for the test that proves a panicking handler cannot take
// a real zabbix_agent2 down. Release builds never contain them.
func testKeys() map[string]key {
	return map[string]key{"kvm.test.panic": {metric.New("Test only: panics.", nil, false), func(context.Context, map[string]string) (any, error) {
		var m map[string]int
		//lint:ignore SA5000 a nil map write is the real runtime panic this key exists for
		m["boom"] = 1
		return nil, nil
	}}}
}
