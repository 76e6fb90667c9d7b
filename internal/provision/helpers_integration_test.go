//go:build integration

package provision_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"zabbix-agent2-plugin-kvm/conf/templates"
	"zabbix-agent2-plugin-kvm/internal/provision"
	"zabbix-agent2-plugin-kvm/internal/zabbixapi"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

func call(t testing.TB, s *zbx.Stack, method string, params, out any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, s.API.Call(ctx, method, params, out), method)
}

func count(t testing.TB, s *zbx.Stack, method string, params map[string]any) int {
	t.Helper()
	params["countOutput"] = true
	var n json.Number
	call(t, s, method, params, &n)
	v, err := n.Int64()
	require.NoError(t, err)
	return int(v)
}

func setup(t *testing.T, s *zbx.Stack, o provision.Options) (provision.Report, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return provision.Setup(ctx, s.API, o)
}

// withDashboard is templates.All(), checked to carry a template dashboard on the hypervisor
// template: Setup must import whatever a template carries, and checkTemplates counts it.
func withDashboard(t testing.TB) []templates.Template {
	all := templates.All()
	for _, tpl := range all {
		if tpl.Name == templates.Hypervisor {
			require.Equal(t, 1, countYAML(t, tpl).dashboards, "%s: the shipped dashboard", tpl.File)
		}
	}
	return all
}

// yamlCounts is what one template file declares, counted from the YAML itself.
type yamlCounts struct {
	items, triggers, rules, itemProtos, triggerProtos, hostProtos, valuemaps, macros, dashboards int
}

func countYAML(t testing.TB, tpl templates.Template) yamlCounts {
	t.Helper()
	var doc struct {
		Export struct {
			Templates []struct {
				Template string
				Items    []struct {
					Triggers []any
				}
				Rules []struct {
					ItemPrototypes []struct {
						TriggerPrototypes []any `yaml:"trigger_prototypes"`
					} `yaml:"item_prototypes"`
					TriggerPrototypes []any `yaml:"trigger_prototypes"`
					HostPrototypes    []any `yaml:"host_prototypes"`
				} `yaml:"discovery_rules"`
				Valuemaps  []any
				Macros     []any
				Dashboards []any
			}
			Triggers []struct {
				Expression string
			}
		} `yaml:"zabbix_export"`
	}
	require.NoError(t, yaml.Unmarshal(tpl.YAML, &doc), tpl.File)
	require.Len(t, doc.Export.Templates, 1, tpl.File)
	y := doc.Export.Templates[0]
	require.Equal(t, tpl.Name, y.Template)
	c := yamlCounts{items: len(y.Items), rules: len(y.Rules), valuemaps: len(y.Valuemaps), macros: len(y.Macros), dashboards: len(y.Dashboards)}
	for _, i := range y.Items {
		c.triggers += len(i.Triggers)
	}
	for _, tr := range doc.Export.Triggers {
		if strings.Contains(tr.Expression, "/"+tpl.Name+"/") {
			c.triggers++
		}
	}
	for _, r := range y.Rules {
		c.itemProtos += len(r.ItemPrototypes)
		c.hostProtos += len(r.HostPrototypes)
		c.triggerProtos += len(r.TriggerPrototypes)
		for _, ip := range r.ItemPrototypes {
			c.triggerProtos += len(ip.TriggerPrototypes)
		}
	}
	return c
}

// checkTemplates compares what the server holds with what the YAML files declare.
func checkTemplates(t *testing.T, s *zbx.Stack, rep provision.Report, tpls []templates.Template) {
	for _, tpl := range tpls {
		e, ok := rep.Find("template", tpl.Name)
		require.True(t, ok, "report has no template %q", tpl.Name)
		want := countYAML(t, tpl)
		var rules []struct {
			ItemID string `json:"itemid"`
		}
		call(t, s, "discoveryrule.get", map[string]any{"templateids": e.ID, "output": []string{"itemid"}}, &rules)
		ruleIDs := []string{}
		for _, r := range rules {
			ruleIDs = append(ruleIDs, r.ItemID)
		}
		got := yamlCounts{
			items:         count(t, s, "item.get", map[string]any{"templateids": e.ID}),
			triggers:      count(t, s, "trigger.get", map[string]any{"templateids": e.ID}),
			rules:         len(rules),
			itemProtos:    count(t, s, "itemprototype.get", map[string]any{"templateids": e.ID}),
			triggerProtos: count(t, s, "triggerprototype.get", map[string]any{"templateids": e.ID}),
			valuemaps:     count(t, s, "valuemap.get", map[string]any{"hostids": e.ID}),
			macros:        count(t, s, "usermacro.get", map[string]any{"hostids": e.ID}),
			dashboards:    count(t, s, "templatedashboard.get", map[string]any{"templateids": e.ID}),
		}
		if len(ruleIDs) > 0 {
			got.hostProtos = count(t, s, "hostprototype.get", map[string]any{"discoveryids": ruleIDs})
		}
		assert.Equal(t, want, got, "template %q: server vs %s", tpl.Name, tpl.File)
	}
}

// checkIdempotent runs Setup on a fresh server, then again: the second run changes nothing.
func checkIdempotent(t *testing.T, s *zbx.Stack, o provision.Options) provision.Report {
	t0 := time.Now()
	first, err := setup(t, s, o)
	require.NoError(t, err)
	t.Logf("setup #1 on %s took %.2fs:\n%s", s.APIVersion, time.Since(t0).Seconds(), first)
	require.True(t, first.Changed())
	for _, e := range first.Entries {
		assert.NotEqual(t, provision.Unchanged, e.Change, "fresh server, yet %s %q was already there", e.Kind, e.Name)
		assert.NotEmpty(t, e.ID, "%s %q", e.Kind, e.Name)
	}
	t0 = time.Now()
	second, err := setup(t, s, o)
	require.NoError(t, err)
	t.Logf("setup #2 took %.2fs", time.Since(t0).Seconds())
	assert.False(t, second.Changed(), "second run changed things:\n%s", second)
	assert.Contains(t, second.String(), "nothing to change")
	require.Len(t, second.Entries, len(first.Entries))
	for i := range first.Entries {
		assert.Equal(t, first.Entries[i].ID, second.Entries[i].ID, "%s %q", first.Entries[i].Kind, first.Entries[i].Name)
	}
	return first
}

// nothingCreated asserts that none of Setup's objects exists (a failed precondition).
func nothingCreated(t *testing.T, s *zbx.Stack) {
	t.Helper()
	for method, filter := range map[string]map[string]any{
		"hostgroup.get": {"name": []string{provision.GuestGroup, provision.HypervisorGroup}},
		"template.get":  {"host": []string{templates.Guest, templates.Hypervisor}},
		"mediatype.get": {"name": []string{provision.EmailMediaType, provision.ChatMediaType, provision.SMSMediaType}},
		"usergroup.get": {"name": []string{provision.DefaultUserGroup, provision.DefaultOperatorGroup}},
		"script.get":    {"name": []string{provision.GentleScript, provision.ForcedScript, "KVM: Reboot"}},
		"action.get":    {"name": []string{provision.LadderAction, provision.PageAction, provision.NotifyAction}},
	} {
		assert.Zero(t, count(t, s, method, map[string]any{"filter": filter}), "%s %v after a failed precondition", method, filter)
	}
}

type op struct {
	OperationType string `json:"operationtype"`
	From          string `json:"esc_step_from"`
	To            string `json:"esc_step_to"`
	Period        string `json:"esc_period"`
	OpMessage     *struct {
		MediaTypeID string `json:"mediatypeid"`
	} `json:"opmessage"`
	OpCommand *struct {
		ScriptID string `json:"scriptid"`
	} `json:"opcommand"`
	OpCommandHst []struct {
		HostID string `json:"hostid"`
	} `json:"opcommand_hst"`
}

type action struct {
	Status             string `json:"status"`
	PauseSuppressed    string `json:"pause_suppressed"`
	PauseSymptoms      string `json:"pause_symptoms"`
	Operations         []op   `json:"operations"`
	RecoveryOperations []op   `json:"recovery_operations"`
	Filter             struct {
		Conditions []struct {
			ConditionType string `json:"conditiontype"`
			Value         string `json:"value"`
			Value2        string `json:"value2"`
		} `json:"conditions"`
	} `json:"filter"`
}

func getAction(t *testing.T, s *zbx.Stack, name string) action {
	t.Helper()
	var acts []action
	call(t, s, "action.get", map[string]any{"filter": map[string]any{"name": name}, "output": "extend",
		"selectOperations": "extend", "selectRecoveryOperations": "extend", "selectFilter": "extend"}, &acts)
	require.Len(t, acts, 1, name)
	return acts[0]
}

// ladderShape renders an action's operations as "step kind target period" strings.
func ladderShape(t *testing.T, s *zbx.Stack, rep provision.Report, name string) (shape []string, filter string, recovery int) {
	t.Helper()
	a := getAction(t, s, name)
	names := map[string]string{}
	for _, e := range rep.Entries {
		names[e.Kind+":"+e.ID] = e.Name
	}
	for _, o := range a.Operations {
		target := ""
		switch o.OperationType {
		case "0":
			target = "msg " + names["media type:"+o.OpMessage.MediaTypeID]
			if o.OpMessage.MediaTypeID == "0" {
				target = "msg all"
			}
		case "1":
			hosts := []string{}
			for _, h := range o.OpCommandHst {
				hosts = append(hosts, h.HostID)
			}
			target = fmt.Sprintf("cmd %s on %s", names["script:"+o.OpCommand.ScriptID], strings.Join(hosts, ","))
		}
		shape = append(shape, fmt.Sprintf("%s-%s %s %s", o.From, o.To, target, o.Period))
	}
	for _, c := range a.Filter.Conditions {
		filter += fmt.Sprintf("type %s %s=%s;", c.ConditionType, c.Value2, c.Value)
	}
	return shape, filter, len(a.RecoveryOperations)
}

// checkPauses: every Action pauses in maintenance (and, 6.4+, for symptom problems).
func checkPauses(t *testing.T, s *zbx.Stack, v64 bool) {
	for _, name := range []string{provision.LadderAction, provision.PageAction, provision.NotifyAction} {
		a := getAction(t, s, name)
		assert.Equal(t, "1", a.PauseSuppressed, "%s: pause_suppressed", name)
		if v64 {
			assert.Equal(t, "1", a.PauseSymptoms, "%s: pause_symptoms", name)
		}
	}
}

type scriptRow struct {
	Name         string `json:"name"`
	Command      string `json:"command"`
	Scope        string `json:"scope"`
	ExecuteOn    string `json:"execute_on"`
	UsrGrpID     string `json:"usrgrpid"`
	GroupID      string `json:"groupid"`
	HostAccess   string `json:"host_access"`
	Confirmation string `json:"confirmation"`
	MenuPath     string `json:"menu_path"`
}

// checkButtons: the guest buttons run the plugin with --caller zabbix-frontend on the agent, only
// for the operator group, only on guest hosts.
func checkButtons(t *testing.T, s *zbx.Stack, rep provision.Report, o provision.Options, operators string) {
	var got []scriptRow
	call(t, s, "script.get", map[string]any{"output": "extend", "filter": map[string]any{"scope": 2, "menu_path": provision.ButtonMenu}}, &got)
	grp, _ := rep.Find("user group", operators)
	guests, _ := rep.Find("host group", provision.GuestGroup)
	cmds := map[string]string{}
	for _, sc := range got {
		cmds[sc.Name] = sc.Command
		assert.Equal(t, "0", sc.ExecuteOn, "%s runs on the guest host's (= hypervisor's) agent", sc.Name)
		assert.Equal(t, grp.ID, sc.UsrGrpID, "%s: only %s", sc.Name, operators)
		assert.Equal(t, guests.ID, sc.GroupID, "%s: only on guest hosts", sc.Name)
		assert.Equal(t, sc.Name == "KVM: Diagnose", sc.Confirmation == "", "%s: confirmation %q", sc.Name, sc.Confirmation)
	}
	// exec: the agent's rules let only "exec <plugin> -<option> …" through; the buttons that may
	// take longer than the server waits for a script run detached (--background)
	p := "exec " + o.PluginPath + " --caller zabbix-frontend "
	if o.ConfigFile != "" {
		p = "exec " + o.PluginPath + " -c " + o.ConfigFile + " --caller zabbix-frontend "
	}
	assert.Equal(t, map[string]string{
		"KVM: Reboot":         p + "--background reboot '{HOST.HOST}'",
		"KVM: Forced restart": p + "--background forced-restart '{HOST.HOST}'",
		"KVM: Recover":        p + "--background recover '{HOST.HOST}'",
		"KVM: Drain":          p + "drain '{HOST.HOST}'",
		"KVM: Ready":          p + "ready '{HOST.HOST}'",
		"KVM: Hold 1h":        p + "hold '{HOST.HOST}' --for 1h --reason frontend",
		"KVM: Release":        p + "release '{HOST.HOST}'",
		"KVM: Diagnose":       p + "diagnose '{HOST.HOST}'",
	}, cmds)
}

// startAgent runs a real zabbix_agent2 7.0 for the test. UserParameters stand in for the plugin's
// keys the test drives (values come from files the test writes), and system.run is allowed so the
// Action's remote commands and the buttons run.
func startAgent(t *testing.T, dir string, port int) {
	t.Helper()
	conf := filepath.Join(dir, "agent2.conf")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(`Server=127.0.0.1
ServerActive=
ListenIP=127.0.0.1
ListenPort=%d
Hostname=kvm-test-agent
AllowKey=system.run[*]
LogType=file
LogFile=%[2]s/agent2.log
LogFileSize=0
PidFile=%[2]s/agent2.pid
ControlSocket=%[2]s/agent2.sock
PluginSocket=%[2]s/agent2-plugin.sock
Timeout=10
UserParameter=haproxy.server.status[*],cat %[2]s/status-$1-$2.json
UserParameter=kvm.domain.agent.ping[*],cat %[2]s/agentping-$1
UserParameter=haproxy.server.discovery,cat %[2]s/serverdiscovery.json
UserParameter=kvm.domain.guard[*],cat %[2]s/guard-$1.json
UserParameter=kvm.domain.get[*],cat %[2]s/get-$1.json
UserParameter=kvm.domain.state[*],cat %[2]s/state-$1
UserParameter=kvm.domain.http[*],cat %[2]s/http-$1.json
UserParameter=haproxy.get,cat %[2]s/haproxyget.json
UserParameter=kvm.domain.discovery,cat %[2]s/domaindiscovery.json
`, port, dir)), 0o644))
	cmd := exec.Command(zbx.Agent70, "-c", conf, "-f")
	out, err := os.Create(filepath.Join(dir, "agent2.out"))
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, harness.StartDying(cmd, syscall.SIGKILL))
	done := make(chan struct{})
	go func() { cmd.Wait(); out.Close(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	harness.WaitFor(t, 20*time.Second, 100*time.Millisecond, "zabbix_agent2 listening", func() (bool, error) {
		out, err := exec.Command("zabbix_get", "-s", "127.0.0.1", "-p", fmt.Sprint(port), "-k", "agent.ping", "-t", "2").CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) == "1", fmt.Errorf("zabbix_get: %v %s", err, out)
	})
}

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	tmp := filepath.Join(dir, name+".tmp")
	require.NoError(t, os.WriteFile(tmp, []byte(content), 0o644))
	require.NoError(t, os.Rename(tmp, filepath.Join(dir, name)))
}

func setStatus(t *testing.T, dir, backend, server, status string) {
	t.Helper()
	setPool(t, dir, backend, server, status, status)
}

// setPool writes a server status as the plugin reports it: status is haproxy's (a drained server
// whose check fails is DOWN), pool puts an operator's DRAIN or MAINT first.
func setPool(t *testing.T, dir, backend, server, status, pool string) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"status": status, "pool": pool, "check_status": "L7OK", "addr": "10.0.0.1:80"})
	writeFile(t, dir, fmt.Sprintf("status-%s-%s.json", backend, server), string(b))
}

// setRunning writes what kvm.domain.get answers for a running domain: the guest template's state
// items (and the triggers that need a running guest, or one not stopped on purpose) read it.
func setRunning(t *testing.T, dir, domain string) {
	t.Helper()
	writeFile(t, dir, "get-"+domain+".json", fmt.Sprintf(`{"name":%q,"state":"running","state_code":1,"reason":"booted","disks":[],"interfaces":[]}`, domain))
}

// setHeld writes what kvm.domain.guard answers for domain: an operator's hold on or off.
func setHeld(t *testing.T, dir, domain string, held bool) {
	t.Helper()
	n := 0
	if held {
		n = 1
	}
	writeFile(t, dir, "guard-"+domain+".json", fmt.Sprintf(`{"held":%d,"quarantined":0,"restarts_1h":0,"forced_1h":0}`, n))
}

type guest struct {
	name, hostid string
	pool, page   string // trigger ids
	silent       string // "guest agent silent" trigger id
	heldOut      string // "held out of the haproxy pool by an operator" trigger id
}

func addGuest(t *testing.T, s *zbx.Stack, rep provision.Report, name string, agentPort int, macros map[string]string) guest {
	t.Helper()
	gid, _ := rep.Find("host group", provision.GuestGroup)
	tid, _ := rep.Find("template", templates.Guest)
	ms := []map[string]string{{"macro": "{$KVM.DOMAIN}", "value": name}, {"macro": "{$KVM.HAPROXY.BACKEND}", "value": "web"},
		{"macro": "{$KVM.HAPROXY.SERVER}", "value": name}, {"macro": "{$KVM.POLL.INTERVAL}", "value": "1s"},
		{"macro": "{$KVM.STATS.INTERVAL}", "value": "1s"}}
	for k, v := range macros {
		ms = append(ms, map[string]string{"macro": k, "value": v})
	}
	var res struct {
		HostIDs []string `json:"hostids"`
	}
	call(t, s, "host.create", map[string]any{"host": name, "groups": []map[string]any{{"groupid": gid.ID}},
		"interfaces": []map[string]any{{"type": 1, "main": 1, "useip": 1, "ip": "127.0.0.1", "dns": "", "port": fmt.Sprint(agentPort)}},
		"templates":  []map[string]any{{"templateid": tid.ID}}, "macros": ms}, &res)
	g := guest{name: name, hostid: res.HostIDs[0]}
	var trs []struct {
		TriggerID   string `json:"triggerid"`
		Description string `json:"description"`
	}
	call(t, s, "trigger.get", map[string]any{"hostids": g.hostid, "output": []string{"triggerid", "description"}}, &trs)
	for _, tr := range trs {
		switch tr.Description {
		case "Guest {$KVM.DOMAIN} is out of the haproxy pool":
			g.pool = tr.TriggerID
		case "Guest {$KVM.DOMAIN} out of the haproxy pool for {$KVM.PAGE.AFTER}":
			g.page = tr.TriggerID
		case "Guest agent of {$KVM.DOMAIN} silent for {$KVM.AGENT.SILENT}":
			g.silent = tr.TriggerID
		case "Guest {$KVM.DOMAIN} held out of the haproxy pool by an operator":
			g.heldOut = tr.TriggerID
		}
	}
	require.NotEmpty(t, g.pool, "pool trigger on %s: %v", name, trs)
	require.NotEmpty(t, g.page, "page trigger on %s: %v", name, trs)
	require.NotEmpty(t, g.silent, "guest agent trigger on %s: %v", name, trs)
	require.NotEmpty(t, g.heldOut, "held-out trigger on %s: %v", name, trs)
	return g
}

func problemOpen(t *testing.T, s *zbx.Stack, triggerID string) bool {
	var ps []map[string]any
	call(t, s, "problem.get", map[string]any{"objectids": triggerID, "output": []string{"eventid"}}, &ps)
	return len(ps) > 0
}

func waitProblem(t *testing.T, s *zbx.Stack, what, triggerID string, open bool, timeout time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	harness.WaitFor(t, timeout, 200*time.Millisecond, what, func() (bool, error) {
		return problemOpen(t, s, triggerID) == open, nil
	})
	return time.Since(t0)
}

func lastValue(t *testing.T, s *zbx.Stack, hostid, key string) (string, bool) {
	var items []struct {
		LastValue string `json:"lastvalue"`
		LastClock string `json:"lastclock"`
	}
	call(t, s, "item.get", map[string]any{"hostids": hostid, "filter": map[string]any{"key_": key},
		"output": []string{"lastvalue", "lastclock"}}, &items)
	if len(items) != 1 || items[0].LastClock == "0" {
		return "", false
	}
	return items[0].LastValue, true
}

type alert struct {
	AlertType string `json:"alerttype"`
	Status    string `json:"status"`
	EscStep   string `json:"esc_step"`
	Error     string `json:"error"`
	EventID   string `json:"eventid"`
}

func alerts(t *testing.T, s *zbx.Stack, actionIDs []string, triggerID string) []alert {
	var out []alert
	params := map[string]any{"actionids": actionIDs, "output": []string{"alerttype", "status", "esc_step", "error", "eventid"}}
	if triggerID != "" {
		params["objectids"] = triggerID
	}
	call(t, s, "alert.get", params, &out)
	return out
}

func serverLog(t *testing.T, s *zbx.Stack) string {
	b, err := os.ReadFile(s.ServerLog)
	require.NoError(t, err)
	return string(b)
}

// eventClock is the time the trigger's first problem event opened, from the server.
func eventClock(t *testing.T, s *zbx.Stack, triggerID string) time.Time {
	var evs []struct {
		Clock json.Number `json:"clock"`
	}
	call(t, s, "event.get", map[string]any{"objectids": triggerID, "value": 1, "output": []string{"clock"},
		"sortfield": []string{"clock"}, "sortorder": "ASC", "limit": 1}, &evs)
	require.Len(t, evs, 1, "problem event of trigger %s", triggerID)
	sec, err := evs[0].Clock.Int64()
	require.NoError(t, err)
	return time.Unix(sec, 0)
}

// firstValueClock is the time of the item's first stored value.
func firstValueClock(t *testing.T, s *zbx.Stack, hostid, key string, history int) time.Time {
	var items []struct {
		ItemID string `json:"itemid"`
	}
	call(t, s, "item.get", map[string]any{"hostids": hostid, "filter": map[string]any{"key_": key}, "output": []string{"itemid"}}, &items)
	require.Len(t, items, 1, key)
	var h []struct {
		Clock json.Number `json:"clock"`
	}
	call(t, s, "history.get", map[string]any{"itemids": items[0].ItemID, "history": history, "output": "extend",
		"sortfield": "clock", "sortorder": "ASC", "limit": 1}, &h)
	require.Len(t, h, 1, "first value of %s", key)
	sec, err := h[0].Clock.Int64()
	require.NoError(t, err)
	return time.Unix(sec, 0)
}

func loginAs(t *testing.T, s *zbx.Stack, user, password string) *zbx.Stack {
	t.Helper()
	c := *s
	c.API = zabbixapi.New(s.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, c.API.Login(ctx, user, password), "login as %s", user)
	return &c
}
