package templates

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// keys collects every "key" and every uuid in an export document.
func walk(n any, keys map[string]bool, uuids *[]string) {
	switch v := n.(type) {
	case map[string]any:
		for k, sub := range v {
			if s, ok := sub.(string); ok && k == "key" {
				keys[s] = true
			}
			if s, ok := sub.(string); ok && k == "uuid" {
				*uuids = append(*uuids, s)
			}
			walk(sub, keys, uuids)
		}
	case []any:
		for _, sub := range v {
			walk(sub, keys, uuids)
		}
	}
}

// The plugin's public keys must appear in the templates exactly as the plugin registers them.
func TestTemplatesCarryThePluginKeys(t *testing.T) {
	want := map[string][]string{
		Hypervisor: {"kvm.hypervisor.ping", "kvm.hypervisor.get", "kvm.domain.discovery", "haproxy.get", "haproxy.info",
			"haproxy.discovery", "haproxy.server.discovery",
			"haproxy.server.status.push[{#HAPROXY.BACKEND},{#HAPROXY.SERVER}]", "agent.ping", "kvm.actions.check"},
		Guest: {"kvm.domain.state[{$KVM.DOMAIN}]", "kvm.domain.get[{$KVM.DOMAIN}]", "kvm.domain.disk.discovery[{$KVM.DOMAIN}]",
			"kvm.domain.net.discovery[{$KVM.DOMAIN}]", "kvm.domain.agent.ping[{$KVM.DOMAIN}]", "kvm.domain.agent.get[{$KVM.DOMAIN}]",
			"kvm.domain.tcp[{$KVM.DOMAIN},{$KVM.TCP.PORT}]", `kvm.domain.http[{$KVM.DOMAIN},{$KVM.HTTP.PORT},"{$KVM.HTTP.PATH}"]`,
			"haproxy.server.status[{$KVM.HAPROXY.BACKEND},{$KVM.HAPROXY.SERVER}]", "kvm.domain.pool.push", "kvm.domain.guard[{$KVM.DOMAIN}]"},
	}
	hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)
	seen := map[string]string{}
	all := All()
	require.Len(t, all, 2)
	assert.Equal(t, Guest, all[0].Name, "the guest template is imported first: the host prototype links it")
	for _, tpl := range all {
		var doc map[string]any
		require.NoError(t, yaml.Unmarshal(tpl.YAML, &doc), tpl.File)
		ex := doc["zabbix_export"].(map[string]any)
		assert.Equal(t, "6.0", ex["version"], "%s: 6.0 format imports on 6.0 and 7.0", tpl.File)
		keys := map[string]bool{}
		var uuids []string
		walk(doc, keys, &uuids)
		for _, k := range want[tpl.Name] {
			assert.True(t, keys[k], "%s lacks key %s", tpl.File, k)
		}
		for _, u := range uuids {
			assert.Regexp(t, hex32, u, tpl.File)
			// The group Templates/Virtualization is shared on purpose (the stock uuid).
			if prev, dup := seen[u]; dup && u != "02e4df4f20b848e79267641790f241da" {
				t.Errorf("uuid %s in %s and %s", u, prev, tpl.File)
			}
			seen[u] = tpl.File
		}
	}
	_, err := Get("nope")
	assert.ErrorContains(t, err, `no template "nope"`)
}

// collect gathers every item and item prototype (as maps) and every trigger and trigger prototype
// expression with its name, anywhere in an export document.
func collect(n any, items *[]map[string]any, triggers *[][2]string) {
	switch v := n.(type) {
	case map[string]any:
		if _, ok := v["key"].(string); ok {
			*items = append(*items, v)
		}
		if e, ok := v["expression"].(string); ok {
			name, _ := v["name"].(string)
			*triggers = append(*triggers, [2]string{name, e})
		}
		for _, sub := range v {
			collect(sub, items, triggers)
		}
	case []any:
		for _, sub := range v {
			collect(sub, items, triggers)
		}
	}
}

func collectAll(t *testing.T, tpl Template) (items []map[string]any, triggers [][2]string) {
	t.Helper()
	var doc map[string]any
	require.NoError(t, yaml.Unmarshal(tpl.YAML, &doc), tpl.File)
	collect(doc, &items, &triggers)
	return items, triggers
}

// Every trapper item the plugin pushes to accepts values only from the host's agent address
// ({HOST.CONN}; guest hosts inherit the hypervisor's interface): anyone else who reaches the
// trapper port could otherwise start the recovery ladder.
func TestTrapperItemsAllowOnlyTheHypervisor(t *testing.T) {
	n := 0
	for _, tpl := range All() {
		items, _ := collectAll(t, tpl)
		for _, it := range items {
			if it["type"] == "TRAP" {
				n++
				assert.Equal(t, "{HOST.CONN}", it["allowed_hosts"], "%s: trapper item %s", tpl.File, it["key"])
			}
		}
	}
	assert.GreaterOrEqual(t, n, 2, "kvm.domain.pool.push and haproxy.server.status.push[...] at least")
}

var periodFunc = regexp.MustCompile(`\b(max|min|avg|sum)\((/[^/]+/[^,]+),([^#)][^)]*)\)`)

// A trigger over a time period must not fire before that period has passed: max(item,5m)=0 is
// true on a new host's first 0 (a period holding fewer values still has a max). Each such
// function needs the guard "the value at now-period" (last(item,#1:now-period)), as the page
// trigger has; count() and nodata() forms do not need it.
func TestPeriodTriggersWaitForThePeriod(t *testing.T) {
	n := 0
	for _, tpl := range All() {
		_, triggers := collectAll(t, tpl)
		for _, tr := range triggers {
			for _, m := range periodFunc.FindAllStringSubmatch(tr[1], -1) {
				n++
				guard := "last(" + m[2] + ",#1:now-" + m[3] + ")"
				assert.Contains(t, tr[1], guard, "%s: trigger %q: %s over %s fires before %s has passed", tpl.File, tr[0], m[1], m[3], m[3])
			}
		}
	}
	assert.GreaterOrEqual(t, n, 2, "the page and guest-agent triggers at least")
	assert.Len(t, periodFunc.FindAllStringSubmatch("max(/T/k,#3)=0 or max(/T/k[a,b],5m)=0", -1), 1, "counts (#N) are not periods")
}

var itemRef = regexp.MustCompile(`\(/[^/]+/((?:[^,()\[]|\[[^\]]*\])+)`)

// A trigger kept under an item may use only that item: the server exports a trigger over several
// items in the template's top-level triggers, so configuration.importcompare would report the
// file as changed on every `zabbix setup` rerun (a removed top-level and an added item trigger),
// as it did for "Ladder actions cannot run" on 6.0.14 and 7.0.9.
func TestItemTriggersUseOnlyTheirItem(t *testing.T) {
	n := 0
	for _, tpl := range All() {
		var doc map[string]any
		require.NoError(t, yaml.Unmarshal(tpl.YAML, &doc))
		var visit func(v any)
		visit = func(v any) {
			switch x := v.(type) {
			case map[string]any:
				key, _ := x["key"].(string)
				for _, field := range []string{"triggers", "trigger_prototypes"} {
					trs, _ := x[field].([]any)
					for _, tr := range trs {
						expr, _ := tr.(map[string]any)["expression"].(string)
						for _, m := range itemRef.FindAllStringSubmatch(expr, -1) {
							n++
							assert.Equal(t, key, m[1], "%s: trigger %q under item %s uses another item", tpl.File, expr, key)
						}
					}
				}
				for _, sub := range x {
					visit(sub)
				}
			case []any:
				for _, sub := range x {
					visit(sub)
				}
			}
		}
		items := doc["zabbix_export"].(map[string]any)["templates"]
		visit(items)
	}
	assert.Greater(t, n, 5)
	assert.Equal(t, [][]string{{"(/T/a[x,y]", "a[x,y]"}, {"(/T/b", "b"}}, itemRef.FindAllStringSubmatch("last(/T/a[x,y])=0 and count(/T/b,5m)>1", -1))
}
