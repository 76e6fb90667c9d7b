//go:build integration

package provision_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/conf/templates"
	"zabbix-agent2-plugin-kvm/internal/provision"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

// fleetGuests is the fleet size the cost is given for: one hypervisor with 30 guests, each with
// one disk, one interface and one haproxy server in one backend (one frontend beside it).
const fleetGuests = 30

type fleetItem struct {
	ID      string `json:"itemid"`
	Key     string `json:"key_"`
	Type    string `json:"type"`
	Delay   string `json:"delay"`
	History string `json:"history"`
	Master  string `json:"master_itemid"`
	Rule    struct {
		Key string `json:"key_"`
	} `json:"discoveryRule"`
	Preprocessing []struct {
		Type   string `json:"type"`
		Params string `json:"params"`
	} `json:"preprocessing"`
}

// seconds turns an interval as the server stores it ("1m", "{$KVM.POLL.INTERVAL}", "30") into
// seconds, with the template's macro defaults.
func seconds(t *testing.T, v string, macros map[string]string) float64 {
	t.Helper()
	if m, ok := macros[v]; ok {
		v = m
	}
	unit := map[byte]float64{'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}
	mul := 1.0
	if u, ok := unit[v[len(v)-1]]; ok {
		mul, v = u, v[:len(v)-1]
	}
	n, err := strconv.ParseFloat(v, 64)
	require.NoError(t, err, "interval %q", v)
	return n * mul
}

// fleetCost reads the imported templates back from the server and gives what one hypervisor with
// fleetGuests guests costs: agent requests per minute (polled items and discovery rules; dependent
// and trapper items make none) and history rows per day (each stored value; an item that discards
// unchanged values stores its heartbeat only, as a steady state would).
func fleetCost(t *testing.T, s *zbx.Stack, rep provision.Report) (perMin, rowsPerDay float64, detail string) {
	t.Helper()
	var lines []string
	for _, name := range []string{templates.Hypervisor, templates.Guest} {
		tpl, ok := rep.Find("template", name)
		require.True(t, ok, name)
		var ms []struct{ Macro, Value string }
		call(t, s, "usermacro.get", map[string]any{"hostids": tpl.ID, "output": []string{"macro", "value"}}, &ms)
		macros := map[string]string{}
		for _, m := range ms {
			macros[m.Macro] = m.Value
		}
		out := []string{"itemid", "key_", "type", "delay", "history", "master_itemid"}
		var items, protos, rules []fleetItem
		call(t, s, "item.get", map[string]any{"templateids": tpl.ID, "output": out, "selectPreprocessing": []string{"type", "params"}}, &items)
		call(t, s, "itemprototype.get", map[string]any{"templateids": tpl.ID, "output": out, "selectPreprocessing": []string{"type", "params"},
			"selectDiscoveryRule": []string{"key_"}}, &protos)
		call(t, s, "discoveryrule.get", map[string]any{"templateids": tpl.ID, "output": out}, &rules)
		byID := map[string]fleetItem{}
		for _, it := range append(append(items, protos...), rules...) {
			byID[it.ID] = it
		}
		// values per minute an item gets: its own polls, or its master's
		var rate func(it fleetItem) float64
		rate = func(it fleetItem) float64 {
			switch it.Type {
			case "18": // dependent
				return rate(byID[it.Master])
			case "2": // trapper: pushed on a change only
				return 0
			}
			return 60 / seconds(t, it.Delay, macros)
		}
		// how many of it one hypervisor with fleetGuests guests has
		copies := func(it fleetItem) float64 {
			n := 1.0
			if name == templates.Guest {
				n = fleetGuests // one guest host each; one disk and one interface per guest
			}
			switch {
			case strings.HasPrefix(it.Rule.Key, "haproxy.server.discovery"):
				n *= fleetGuests
			case it.Rule.Key == "haproxy.discovery":
				n *= 2
			}
			return n
		}
		var req, rows float64
		for _, it := range append(append(items, protos...), rules...) {
			if it.Type != "18" && it.Type != "2" {
				req += rate(it) * copies(it)
			}
			if it.History == "0" || it.Key == "" || isRule(it, rules) {
				continue
			}
			perDay := rate(it) * 1440
			for _, p := range it.Preprocessing {
				if p.Type == "20" { // discard unchanged with heartbeat
					if hb := 86400 / seconds(t, strings.TrimSpace(p.Params), macros); hb < perDay {
						perDay = hb
					}
				}
			}
			rows += perDay * copies(it)
		}
		lines = append(lines, fmt.Sprintf("%s: %.1f requests/min, %.0f history rows/day", name, req, rows))
		perMin += req
		rowsPerDay += rows
	}
	sort.Strings(lines)
	return perMin, rowsPerDay, strings.Join(lines, "; ")
}

func isRule(it fleetItem, rules []fleetItem) bool {
	for _, r := range rules {
		if r.ID == it.ID {
			return true
		}
	}
	return false
}

// TestOneFailureOneProblem70 imports the templates into a 7.0 server and gives, from what the
// server holds, the polling and history cost of one hypervisor with 30 guests; then it drives two
// guest hosts through a real agent (values from files): one hung (running, out of the haproxy
// pool, HTTP failing, guest agent silent) and one shut down on purpose (shut off, its haproxy
// server DOWN, HTTP and agent silent). Once every trigger's window has passed with values, the
// hung guest has one problem (the ladder's) and the shut-off guest none, on its host or on the
// hypervisor's.
func TestOneFailureOneProblem70(t *testing.T) {
	s := zbx.Start(t, zbx.Options{Version: "7.0"})
	dir := t.TempDir()
	agentPort := harness.FreePort(t, 15000, 15999)
	startAgent(t, dir, agentPort)
	plugin := filepath.Join(dir, "plugin")
	require.NoError(t, os.WriteFile(plugin, []byte("#!/bin/sh\nexit 0\n"), 0o755))
	o := provision.Options{PluginPath: plugin, SMTPServer: "127.0.0.1", SMTPPort: s.SMTP.Port, SMTPFrom: "zabbix@kvm.test",
		User: "Admin", UserEmail: "oncall@kvm.test", PageAfter: time.Hour,
		HypervisorHost: "kvm-hv01", HypervisorIP: "127.0.0.1", HypervisorPort: agentPort, Templates: templates.All()}
	rep, err := setup(t, s, o)
	require.NoError(t, err)

	perMin, rows, detail := fleetCost(t, s, rep)
	t.Logf("fleet cost, 1 hypervisor with %d guests (%s): %.1f agent requests/min, %.0f history rows/day (%s)",
		fleetGuests, s.APIVersion, perMin, rows, detail)
	// budgets just above what the templates cost (issue 14: 253.6 requests/min and 1,245,663 rows/day before)
	assert.Less(t, perMin, 200.0, "agent requests per minute")
	assert.Less(t, rows, 800000.0, "history rows per day")

	// One domain found by discovery: its host goes to the group of its hypervisor and carries the
	// agent channel discovery reports. Its items have no values: it raises nothing.
	writeFile(t, dir, "domaindiscovery.json", `[{"{#KVM.DOMAIN.NAME}":"found","{#KVM.DOMAIN.UUID}":"6f1c6a3e-2222-4222-8333-944455556666",`+
		`"{#KVM.DOMAIN.STATE}":"running","{#KVM.DOMAIN.TITLE}":"","{#KVM.DOMAIN.IP}":"","{#KVM.DOMAIN.HAPROXY.BACKEND}":"",`+
		`"{#KVM.DOMAIN.HAPROXY.SERVER}":"","{#KVM.DOMAIN.AGENT}":"0","{#KVM.HYPERVISOR}":"hv-test"}]`)
	hv, _ := rep.Find("host", "kvm-hv01")
	call(t, s, "usermacro.create", map[string]any{"hostid": hv.ID, "macro": "{$KVM.POLL.INTERVAL}", "value": "1s"}, nil)
	call(t, s, "usermacro.create", map[string]any{"hostid": hv.ID, "macro": "{$KVM.DISCOVERY.INTERVAL}", "value": "2s"}, nil)
	// The backend keeps three healthy servers: "most of the backend is down" stays closed.
	writeFile(t, dir, "serverdiscovery.json", `[{"{#HAPROXY.BACKEND}":"web","{#HAPROXY.SERVER}":"hung","{#KVM.DOMAIN.NAME}":"hung"},`+
		`{"{#HAPROXY.BACKEND}":"web","{#HAPROXY.SERVER}":"off","{#KVM.DOMAIN.NAME}":"off"}]`)
	haproxyGet := func(status string) {
		rows := []string{`{"pxname":"web","svname":"FRONTEND","status":"OPEN","scur":"0"}`}
		for _, sv := range []string{"s1", "s2", "s3"} {
			rows = append(rows, fmt.Sprintf(`{"pxname":"web","svname":%q,"status":"UP","scur":"0"}`, sv))
		}
		for _, sv := range []string{"hung", "off"} {
			rows = append(rows, fmt.Sprintf(`{"pxname":"web","svname":%q,"status":%q,"scur":"0"}`, sv, status))
		}
		rows = append(rows, `{"pxname":"web","svname":"BACKEND","status":"UP","scur":"0"}`)
		writeFile(t, dir, "haproxyget.json", "["+strings.Join(rows, ",")+"]")
	}
	healthy := func(g string) {
		setStatus(t, dir, "web", g, "UP")
		setHeld(t, dir, g, false)
		setRunning(t, dir, g)
		writeFile(t, dir, "state-"+g, "running")
		writeFile(t, dir, "agentping-"+g, "1")
		writeFile(t, dir, "http-"+g+".json", `{"status":200,"time_ms":3,"error":""}`)
	}
	haproxyGet("UP")
	macros := map[string]string{"{$KVM.AGENT.SILENT}": "20s"}
	var guests []guest
	for _, g := range []string{"hung", "off"} {
		healthy(g)
		guests = append(guests, addGuest(t, s, rep, g, agentPort, macros))
	}
	for _, g := range guests {
		harness.WaitFor(t, 60*time.Second, 250*time.Millisecond, g.name+" healthy values", func() (bool, error) {
			pool, ok1 := lastValue(t, s, g.hostid, "kvm.domain.pool.in")
			http, ok2 := lastValue(t, s, g.hostid, "kvm.domain.http.status")
			return ok1 && ok2 && pool == "1" && http == "200", fmt.Errorf("pool.in %q, http.status %q", pool, http)
		})
	}
	// The failures.
	failed := time.Now()
	haproxyGet("DOWN")
	for _, g := range []string{"hung", "off"} {
		setStatus(t, dir, "web", g, "DOWN")
		writeFile(t, dir, "agentping-"+g, "0")
		writeFile(t, dir, "http-"+g+".json", `{"status":0,"time_ms":0,"error":"timeout"}`)
	}
	writeFile(t, dir, "get-off.json", `{"name":"off","state":"shutoff","state_code":5,"reason":"shutdown","disks":[],"interfaces":[]}`)
	writeFile(t, dir, "state-off", "shutoff")

	// Every window (guest agent 20s, 3 HTTP values, 3 haproxy values on the hypervisor) has passed
	// once values newer than it have arrived.
	for _, g := range guests {
		harness.WaitFor(t, 90*time.Second, time.Second, g.name+": agent ping values 25s after the failure", func() (bool, error) {
			var items []struct {
				LastClock string `json:"lastclock"`
				LastValue string `json:"lastvalue"`
			}
			call(t, s, "item.get", map[string]any{"hostids": g.hostid, "filter": map[string]any{"key_": "kvm.domain.agent.ping[{$KVM.DOMAIN}]"},
				"output": []string{"lastclock", "lastvalue"}}, &items)
			if len(items) != 1 {
				return false, fmt.Errorf("%d items", len(items))
			}
			c, _ := strconv.ParseInt(items[0].LastClock, 10, 64)
			return items[0].LastValue == "0" && time.Unix(c, 0).After(failed.Add(25*time.Second)), fmt.Errorf("last %s at %s", items[0].LastValue, items[0].LastClock)
		})
	}
	problems := func(hostid string) []string {
		var ps []struct {
			Name string `json:"name"`
		}
		call(t, s, "problem.get", map[string]any{"hostids": hostid, "output": []string{"name"}}, &ps)
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		sort.Strings(out)
		return out
	}
	hung, off, hyp := problems(guests[0].hostid), problems(guests[1].hostid), problems(hv.ID)
	var hvGuests []string
	for _, p := range hyp {
		if strings.Contains(p, "hung") || strings.Contains(p, "off") || strings.Contains(p, "web") {
			hvGuests = append(hvGuests, p)
		}
	}
	t.Logf("problems: hung guest %d %q, shut-off guest %d %q, on the hypervisor about them %d %q (all on the hypervisor: %q)",
		len(hung), hung, len(off), off, len(hvGuests), hvGuests, hyp)
	assert.Equal(t, []string{"Guest hung is out of the haproxy pool (web/hung)"}, hung, "one hung guest, one problem")
	assert.Empty(t, off, "a guest shut down on purpose raises nothing")
	assert.Empty(t, hvGuests, "the hypervisor adds nothing for its own guests")

	var found []struct {
		Groups []struct {
			Name string `json:"name"`
		} `json:"hostgroups"`
		Macros []struct {
			Macro string `json:"macro"`
			Value string `json:"value"`
		} `json:"macros"`
	}
	harness.WaitFor(t, 60*time.Second, time.Second, "discovered guest host", func() (bool, error) {
		call(t, s, "host.get", map[string]any{"filter": map[string]any{"host": "6f1c6a3e-2222-4222-8333-944455556666"},
			"selectHostGroups": []string{"name"}, "selectMacros": []string{"macro", "value"}, "output": []string{"hostid"}}, &found)
		return len(found) == 1, fmt.Errorf("%d hosts", len(found))
	})
	var groups []string
	for _, g := range found[0].Groups {
		groups = append(groups, g.Name)
	}
	assert.ElementsMatch(t, []string{provision.GuestGroup, provision.GuestGroup + "/hv-test"}, groups, "one group per hypervisor")
	channel := ""
	for _, m := range found[0].Macros {
		if m.Macro == "{$KVM.AGENT.CHANNEL}" {
			channel = m.Value
		}
	}
	assert.Equal(t, "0", channel, "{$KVM.AGENT.CHANNEL} from discovery")
}
