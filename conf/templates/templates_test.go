package templates

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
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
	hex32 := regexp.MustCompile(`^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$`) // UUIDv4: the server refuses others
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

// export is one template file parsed: its template and its top-level triggers.
type export struct {
	file     string
	name     string
	tpl      map[string]any
	triggers []map[string]any // every trigger and trigger prototype, wherever it sits
	items    []map[string]any // every item, item prototype and discovery rule
	top      []any            // top-level triggers
}

func parse(t *testing.T, tpl Template) export {
	t.Helper()
	var doc map[string]any
	require.NoError(t, yaml.Unmarshal(tpl.YAML, &doc), tpl.File)
	ex := doc["zabbix_export"].(map[string]any)
	e := export{file: tpl.File, name: tpl.Name, tpl: ex["templates"].([]any)[0].(map[string]any)}
	e.top, _ = ex["triggers"].([]any)
	for _, tr := range e.top {
		e.triggers = append(e.triggers, tr.(map[string]any))
	}
	var visit func(v any)
	visit = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if _, ok := x["key"].(string); ok { // master_item and graph_items references are not visited
				e.items = append(e.items, x)
			}
			for _, field := range []string{"triggers", "trigger_prototypes"} {
				trs, _ := x[field].([]any)
				for _, tr := range trs {
					e.triggers = append(e.triggers, tr.(map[string]any))
				}
			}
			for k, sub := range x {
				if k != "master_item" && k != "graph_items" && k != "dashboards" {
					visit(sub)
				}
			}
		case []any:
			for _, sub := range x {
				visit(sub)
			}
		}
	}
	visit(e.tpl)
	return e
}

func parseAll(t *testing.T) []export {
	var out []export
	for _, tpl := range All() {
		out = append(out, parse(t, tpl))
	}
	return out
}

func tags(obj map[string]any) map[string][]string {
	out := map[string][]string{}
	ts, _ := obj["tags"].([]any)
	for _, x := range ts {
		m := x.(map[string]any)
		v, _ := m["value"].(string)
		out[m["tag"].(string)] = append(out[m["tag"].(string)], v)
	}
	return out
}

// Zabbix's template guidelines: every item, item prototype, discovery rule, trigger, trigger
// prototype and macro says what it is for.
func TestEverythingHasADescription(t *testing.T) {
	n := 0
	for _, e := range parseAll(t) {
		for _, it := range e.items {
			n++
			assert.NotEmpty(t, it["description"], "%s: item %s", e.file, it["key"])
		}
		for _, tr := range e.triggers {
			n++
			assert.NotEmpty(t, tr["description"], "%s: trigger %q", e.file, tr["name"])
		}
		ms, _ := e.tpl["macros"].([]any)
		for _, m := range ms {
			n++
			assert.NotEmpty(t, m.(map[string]any)["description"], "%s: macro %s", e.file, m.(map[string]any)["macro"])
		}
	}
	assert.Greater(t, n, 90)
}

// A master item's value is kept by its dependent items: storing the JSON too would double the
// history for nothing (the guideline: history 0 on masters).
func TestMastersKeepNoHistory(t *testing.T) {
	n := 0
	for _, e := range parseAll(t) {
		masters := map[string]bool{}
		var visit func(v any)
		visit = func(v any) {
			switch x := v.(type) {
			case map[string]any:
				if m, ok := x["master_item"].(map[string]any); ok {
					masters[m["key"].(string)] = true
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
		visit(e.tpl)
		for _, it := range e.items {
			if masters[it["key"].(string)] && it["lifetime"] == nil {
				n++
				assert.Equal(t, "0", it["history"], "%s: master item %s stores history", e.file, it["key"])
			}
		}
	}
	assert.GreaterOrEqual(t, n, 8)
}

// Trigger names carry no host macros (the frontend shows the host beside the problem) and no
// values: a value goes to opdata, so one problem keeps one name.
func TestTriggerNamesHaveNoHostOrValue(t *testing.T) {
	for _, e := range parseAll(t) {
		for _, tr := range e.triggers {
			for _, f := range []string{"name", "event_name"} {
				s, _ := tr[f].(string)
				assert.NotRegexp(t, `\{HOST\.(NAME|HOST)\}|\{ITEM\.(LASTVALUE|VALUE)`, s, "%s: trigger %s %q", e.file, f, s)
			}
		}
	}
}

// Every trigger has a scope tag and every item a component tag; each template a class and a
// target tag.
func TestTags(t *testing.T) {
	for _, e := range parseAll(t) {
		tt := tags(e.tpl)
		assert.NotEmpty(t, tt["class"], e.file)
		assert.Contains(t, tt["target"], "kvm", e.file)
		for _, tr := range e.triggers {
			assert.NotEmpty(t, tags(tr)["scope"], "%s: trigger %q has no scope tag", e.file, tr["name"])
		}
		for _, it := range e.items {
			if it["lifetime"] == nil { // discovery rules carry no tags in 6.0
				assert.NotEmpty(t, tags(it)["component"], "%s: item %s has no component tag", e.file, it["key"])
			}
		}
	}
}

const poolProblem = "Guest {$KVM.DOMAIN} is out of the haproxy pool"

// One failure, one actionable problem: every guest problem that only notifies depends on the
// ladder's problem (a hung guest fails its HTTP check and its agent too), is closable by hand, and
// looks at the guest's state (a guest that is not running, or stopped on purpose, raises nothing).
// The ladder's and the page's problems stay closed for a guest stopped on purpose.
func TestGuestProblemsDependOnTheLadder(t *testing.T) {
	g := parse(t, mustGet(t, Guest))
	var pool map[string]any
	for _, tr := range g.triggers {
		if tr["name"] == poolProblem {
			pool = tr
		}
	}
	require.NotNil(t, pool, "the ladder's problem %q", poolProblem)
	assert.Equal(t, []string{"recover"}, tags(pool)["kvm.ladder"])
	n := 0
	for _, tr := range g.triggers {
		expr := tr["expression"].(string)
		switch strings.Join(tags(tr)["kvm.ladder"], ",") {
		case "notify":
			n++
			deps, _ := tr["dependencies"].([]any)
			require.Len(t, deps, 1, "trigger %q", tr["name"])
			d := deps[0].(map[string]any)
			assert.Equal(t, poolProblem, d["name"], "trigger %q", tr["name"])
			assert.Equal(t, pool["expression"], d["expression"], "trigger %q: the dependency names the ladder's expression as it is", tr["name"])
			assert.Equal(t, "YES", tr["manual_close"], "trigger %q", tr["name"])
			assert.Regexp(t, `kvm\.domain\.(state\.code\)=1|stopped\)=0)`, expr, "trigger %q ignores the guest's state", tr["name"])
		case "recover", "page":
			if strings.Contains(expr, "kvm.domain.pool.in") {
				assert.Contains(t, expr, "last(/"+Guest+"/kvm.domain.stopped)=0", "trigger %q", tr["name"])
			}
			// the page counts from the first 0 of kvm.domain.pool.in, the ladder's problem opens once
			// kvm.domain.stopped has a value too: the page waits for that value to be as old
			if tags(tr)["kvm.ladder"][0] == "page" && strings.Contains(expr, "{$KVM.PAGE.AFTER}") {
				assert.Contains(t, expr, "last(/"+Guest+"/kvm.domain.stopped,#1:now-{$KVM.PAGE.AFTER})=0", "trigger %q", tr["name"])
			}
		}
	}
	assert.Equal(t, 3, n, "crashed or paused, guest agent silent, HTTP failing")
	for _, tr := range g.triggers {
		if strings.Contains(tr["name"].(string), "Guest agent") {
			assert.Contains(t, tr["expression"], "{$KVM.AGENT.CHANNEL}=1", "only guests with an agent channel")
		}
	}
}

// Hypervisor problems that a dead agent explains depend on the agent's availability problem; the
// haproxy server problem is left out for servers that are guests of this hypervisor (their guest
// host carries the actionable one).
func TestHypervisorProblemsDependOnTheAgent(t *testing.T) {
	h := parse(t, mustGet(t, Hypervisor))
	const agent = "Zabbix agent is not available (for {$KVM.AGENT.NODATA})"
	n := 0
	for _, tr := range h.triggers {
		if tr["name"] == agent {
			continue
		}
		n++
		deps, _ := tr["dependencies"].([]any)
		require.Len(t, deps, 1, "trigger %q", tr["name"])
		assert.Equal(t, agent, deps[0].(map[string]any)["name"], "trigger %q", tr["name"])
	}
	assert.GreaterOrEqual(t, n, 5)
	found := false
	for _, r := range h.tpl["discovery_rules"].([]any) {
		rule := r.(map[string]any)
		if rule["key"] != "haproxy.server.discovery" {
			continue
		}
		found = true
		ov := rule["overrides"].([]any)[0].(map[string]any)
		cond := ov["filter"].(map[string]any)["conditions"].([]any)[0].(map[string]any)
		assert.Equal(t, "{#KVM.DOMAIN.NAME}", cond["macro"])
		assert.Equal(t, "EXISTS", cond["operator"])
		op := ov["operations"].([]any)[0].(map[string]any)
		assert.Equal(t, "TRIGGER_PROTOTYPE", op["operationobject"])
		assert.Equal(t, "NO_DISCOVER", op["discover"])
	}
	assert.True(t, found)
}

var lastEq = regexp.MustCompile(`last\(/[^/]+/((?:[^,()\[]|\[[^\]]*\])+)\)\s*(=|<>)\s*"`)

// Status strings flap (a check failing once): a trigger on a CHAR status counts N values instead
// of comparing the last one. The exceptions act on the first value on purpose and say why.
func TestStatusTriggersCountValues(t *testing.T) {
	exempt := map[string]string{
		poolProblem: "the ladder opens on haproxy's verdict, which already counts failed checks (fall), and on a push",
		"Guest {$KVM.DOMAIN} held out of the haproxy pool by an operator": "an operator's intent shows at once",
	}
	n := 0
	for _, e := range parseAll(t) {
		for _, tr := range e.triggers {
			m := lastEq.FindAllStringSubmatch(tr["expression"].(string), -1)
			if len(m) == 0 {
				continue
			}
			n++
			if _, ok := exempt[tr["name"].(string)]; !ok {
				t.Errorf("%s: trigger %q compares the last status string (%s): count the last 3 values", e.file, tr["name"], m[0][1])
			}
		}
	}
	assert.Equal(t, len(exempt), n)
}

// Discovered guests can be limited by name, and land in one host group per hypervisor.
func TestGuestDiscoveryFiltersAndGroups(t *testing.T) {
	h := parse(t, mustGet(t, Hypervisor))
	for _, r := range h.tpl["discovery_rules"].([]any) {
		rule := r.(map[string]any)
		if rule["key"] != "kvm.domain.discovery" {
			continue
		}
		var macros []string
		for _, c := range rule["filter"].(map[string]any)["conditions"].([]any) {
			macros = append(macros, c.(map[string]any)["value"].(string))
		}
		assert.Equal(t, []string{"{$KVM.DOMAIN.NAME.MATCHES}", "{$KVM.DOMAIN.NAME.NOT_MATCHES}"}, macros)
		hp := rule["host_prototypes"].([]any)[0].(map[string]any)
		gp := hp["group_prototypes"].([]any)[0].(map[string]any)
		assert.Equal(t, "KVM guests/{#KVM.HYPERVISOR}", gp["name"])
		return
	}
	t.Fatal("no kvm.domain.discovery rule")
}

func mustGet(t *testing.T, name string) Template {
	tpl, err := Get(name)
	require.NoError(t, err)
	return tpl
}

// The server exports tags and macros sorted, and dashboard widgets by position (x, then y) on 7.0
// but by name on 6.0, and widget fields by name on 7.0 but by type on 6.0; a file in another
// order makes configuration.importcompare report a change on every `zabbix setup` rerun (seen on
// 7.0.9 with template tags, host prototype macros and widgets, and on 6.0.14). So widgets' names
// follow their positions, and a widget has one field.
func TestListsInTheServersOrder(t *testing.T) {
	n := 0
	var visit func(file string, v any)
	visit = func(file string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, sub := range x {
				l, _ := sub.([]any)
				var keys, names []string
				for _, e := range l {
					m, _ := e.(map[string]any)
					switch k {
					case "tags":
						keys = append(keys, m["tag"].(string)+"\x00"+fmt.Sprint(m["value"]))
					case "macros":
						keys = append(keys, m["macro"].(string))
					case "widgets":
						x, _ := strconv.Atoi(fmt.Sprint(m["x"]))
						y, _ := strconv.Atoi(fmt.Sprint(m["y"]))
						keys = append(keys, fmt.Sprintf("%04d%04d", x, y))
						names = append(names, strings.ToLower(fmt.Sprint(m["name"])))
						fields, _ := m["fields"].([]any)
						assert.Len(t, fields, 1, "%s: widget %q", file, m["name"])
					}
				}
				if len(keys) > 1 {
					n++
					assert.True(t, sort.StringsAreSorted(keys), "%s: %s not in the server's order: %q", file, k, keys)
					assert.True(t, sort.StringsAreSorted(names), "%s: %s not in 6.0's order (by name): %q", file, k, names)
				}
				visit(file, sub)
			}
		case []any:
			for _, sub := range x {
				visit(file, sub)
			}
		}
	}
	for _, tpl := range All() {
		var doc map[string]any
		require.NoError(t, yaml.Unmarshal(tpl.YAML, &doc))
		visit(tpl.File, doc)
	}
	assert.Greater(t, n, 20)
}
