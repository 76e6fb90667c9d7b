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

// yamlCounts is what one template file declares, counted from the YAML itself.
type yamlCounts struct {
	items, triggers, rules, itemProtos, triggerProtos, hostProtos, valuemaps, macros int
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
				Valuemaps []any
				Macros    []any
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
	c := yamlCounts{items: len(y.Items), rules: len(y.Rules), valuemaps: len(y.Valuemaps), macros: len(y.Macros)}
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
func checkTemplates(t *testing.T, s *zbx.Stack, rep provision.Report) {
	for _, tpl := range templates.All() {
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
		}
		if len(ruleIDs) > 0 {
			got.hostProtos = count(t, s, "hostprototype.get", map[string]any{"discoveryids": ruleIDs})
		}
		assert.Equal(t, want, got, "template %q: server vs %s", tpl.Name, tpl.File)
	}
}

func checkIdempotent(t *testing.T, s *zbx.Stack, o provision.Options) provision.Report {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	first, err := provision.Setup(ctx, s.API, o)
	require.NoError(t, err)
	t.Logf("setup #1 on %s took %.2fs:\n%s", s.APIVersion, time.Since(t0).Seconds(), first)
	require.True(t, first.Changed())
	for _, e := range first.Entries {
		assert.NotEqual(t, provision.Unchanged, e.Change, "fresh server, yet %s %q was already there", e.Kind, e.Name)
		assert.NotEmpty(t, e.ID, "%s %q", e.Kind, e.Name)
	}
	t0 = time.Now()
	second, err := provision.Setup(ctx, s.API, o)
	require.NoError(t, err)
	t.Logf("setup #2 took %.2fs", time.Since(t0).Seconds())
	assert.False(t, second.Changed(), "second run changed things:\n%s", second)
	require.Len(t, second.Entries, len(first.Entries))
	for i := range first.Entries {
		assert.Equal(t, first.Entries[i].ID, second.Entries[i].ID, "%s %q", first.Entries[i].Kind, first.Entries[i].Name)
	}
	return first
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

// ladderShape renders an action's operations as sorted "step:kind:target:period" strings.
func ladderShape(t *testing.T, s *zbx.Stack, rep provision.Report, name string) (shape []string, filter string, recovery int) {
	t.Helper()
	var acts []struct {
		Operations         []op `json:"operations"`
		RecoveryOperations []op `json:"recovery_operations"`
		Filter             struct {
			Conditions []struct {
				ConditionType string `json:"conditiontype"`
				Value         string `json:"value"`
				Value2        string `json:"value2"`
			} `json:"conditions"`
		} `json:"filter"`
	}
	call(t, s, "action.get", map[string]any{"filter": map[string]any{"name": name}, "output": "extend",
		"selectOperations": "extend", "selectRecoveryOperations": "extend", "selectFilter": "extend"}, &acts)
	require.Len(t, acts, 1, name)
	names := map[string]string{"0": "all"}
	for _, e := range rep.Entries {
		names[e.Kind+":"+e.ID] = e.Name
	}
	for _, o := range acts[0].Operations {
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
	for _, c := range acts[0].Filter.Conditions {
		filter += fmt.Sprintf("type %s %s=%s;", c.ConditionType, c.Value2, c.Value)
	}
	return shape, filter, len(acts[0].RecoveryOperations)
}

func TestSetup60ImportsAndIsIdempotent(t *testing.T) {
	s := zbx.Start(t, zbx.Options{Version: "6.0"})
	rep := checkIdempotent(t, s, provision.Options{User: "Admin", UserEmail: "oncall@kvm.test", HypervisorHost: "kvm-hv01"})
	checkTemplates(t, s, rep)
	shape, _, _ := ladderShape(t, s, rep, provision.LadderAction)
	assert.ElementsMatch(t, []string{"1-1 msg KVM email 120s", "1-1 msg KVM chat 120s", "2-2 cmd KVM gentle restart on 0 180s",
		"3-3 cmd KVM forced restart on 0 0", "3-3 msg KVM email 0", "3-3 msg KVM chat 0"}, shape)
}

// startAgent runs a real zabbix_agent2 7.0 for the test. UserParameters stand in for the plugin's
// haproxy key (values come from files the test writes), and system.run is allowed so the Action's
// remote commands run.
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
`, port, dir)), 0o644))
	cmd := exec.Command(zbx.Agent70, "-c", conf, "-f")
	out, err := os.Create(filepath.Join(dir, "agent2.out"))
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
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

func setStatus(t *testing.T, dir, backend, server, status string) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"status": status, "check_status": "L7OK", "addr": "10.0.0.1:80"})
	tmp := filepath.Join(dir, "status.tmp")
	require.NoError(t, os.WriteFile(tmp, b, 0o644))
	require.NoError(t, os.Rename(tmp, filepath.Join(dir, fmt.Sprintf("status-%s-%s.json", backend, server))))
}

type guest struct {
	name, hostid string
	pool, page   string // trigger ids
}

func addGuest(t *testing.T, s *zbx.Stack, rep provision.Report, name string, agentPort int, macros map[string]string) guest {
	t.Helper()
	gid, _ := rep.Find("host group", provision.GuestGroup)
	tid, _ := rep.Find("template", templates.Guest)
	ms := []map[string]string{{"macro": "{$KVM.DOMAIN}", "value": name}, {"macro": "{$KVM.HAPROXY.BACKEND}", "value": "web"},
		{"macro": "{$KVM.HAPROXY.SERVER}", "value": name}, {"macro": "{$KVM.POLL.INTERVAL}", "value": "1s"}}
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
		}
	}
	require.NotEmpty(t, g.pool, "pool trigger on %s: %v", name, trs)
	require.NotEmpty(t, g.page, "page trigger on %s: %v", name, trs)
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
		Error     string `json:"error"`
	}
	call(t, s, "item.get", map[string]any{"hostids": hostid, "filter": map[string]any{"key_": key},
		"output": []string{"lastvalue", "lastclock", "error"}}, &items)
	if len(items) != 1 || items[0].LastClock == "0" {
		return "", false
	}
	return items[0].LastValue, true
}

// TestLadder70 provisions a fresh 7.0 server and drives the guest template's triggers and the
// Actions on two guest hosts whose haproxy status comes from a real agent: the problem opens and
// resolves on polled values with pushing off, opens within seconds on a pushed status, the email
// reaches the SMTP sink, the page fires on the longer trigger, and the gentle restart runs as a
// remote command on the agent at step 2.
func TestLadder70(t *testing.T) {
	s := zbx.Start(t, zbx.Options{Version: "7.0"})
	dir := t.TempDir()
	agentPort := harness.FreePort(t, 15000, 15999)
	startAgent(t, dir, agentPort)
	plugin := filepath.Join(dir, "plugin")
	cmdLog := filepath.Join(dir, "commands.log")
	// Stands in for the plugin binary the restart scripts call: records its arguments.
	require.NoError(t, os.WriteFile(plugin, []byte("#!/bin/sh\necho \"$@\" >> "+cmdLog+"\n"), 0o755))

	o := provision.Options{PluginPath: plugin, SMTPServer: "127.0.0.1", SMTPPort: s.SMTP.Port, SMTPFrom: "zabbix@kvm.test",
		User: "Admin", UserEmail: "oncall@kvm.test", GentleAfter: time.Minute, ForcedAfter: time.Minute, PageAfter: 121 * time.Second}
	rep := checkIdempotent(t, s, o)
	checkTemplates(t, s, rep)

	shape, filter, rec := ladderShape(t, s, rep, provision.LadderAction)
	assert.ElementsMatch(t, []string{"1-1 msg KVM email 60s", "1-1 msg KVM chat 60s", "2-2 cmd KVM gentle restart on 0 60s",
		"3-3 cmd KVM forced restart on 0 0", "3-3 msg KVM email 0", "3-3 msg KVM chat 0"}, shape)
	assert.Equal(t, "type 26 kvm.ladder=recover;", filter)
	assert.Equal(t, 1, rec)
	shape, filter, _ = ladderShape(t, s, rep, provision.PageAction)
	assert.Equal(t, []string{"1-1 msg all 0"}, shape)
	assert.Equal(t, "type 26 kvm.ladder=page;", filter)

	tid, _ := rep.Find("template", templates.Guest)
	var macros []struct{ Macro, Value string }
	call(t, s, "usermacro.get", map[string]any{"hostids": tid.ID, "filter": map[string]any{"macro": "{$KVM.PAGE.AFTER}"},
		"output": []string{"macro", "value"}}, &macros)
	require.Len(t, macros, 1)
	assert.Equal(t, "121s", macros[0].Value, "setup writes --page-after into the guest template")

	// web-01: pushing off; pages after 20s out of the pool. web-02: a pushed status counts for 30s.
	setStatus(t, dir, "web", "web-01", "UP")
	setStatus(t, dir, "web", "web-02", "UP")
	t0 := time.Now()
	web1 := addGuest(t, s, rep, "web-01", agentPort, map[string]string{"{$KVM.PAGE.AFTER}": "20s"})
	web2 := addGuest(t, s, rep, "web-02", agentPort, map[string]string{"{$KVM.PUSH.HOLD}": "30s"})
	for _, g := range []guest{web1, web2} {
		harness.WaitFor(t, 60*time.Second, 250*time.Millisecond, g.name+" pool membership polled", func() (bool, error) {
			v, ok := lastValue(t, s, g.hostid, "kvm.domain.pool.in")
			return ok && v == "1", fmt.Errorf("kvm.domain.pool.in = %q (have value: %v)", v, ok)
		})
	}
	t.Logf("guest hosts polled through the agent %.2fs after creation", time.Since(t0).Seconds())
	assert.False(t, problemOpen(t, s, web1.pool), "web-01 is UP, yet out of the pool")

	// Pushing off: the polled DOWN opens the problem and starts the ladder.
	setStatus(t, dir, "web", "web-01", "DOWN")
	down := time.Now()
	took := waitProblem(t, s, "web-01 out-of-pool problem (polled)", web1.pool, true, 30*time.Second)
	t.Logf("polled DOWN -> problem: %.2fs", took.Seconds())

	// Pushing on (web-02): the poll still says UP; the pushed DOWN alone opens the problem.
	require.False(t, problemOpen(t, s, web2.pool), "web-02 is UP, yet out of the pool")
	pushT := time.Now()
	harness.WaitFor(t, 30*time.Second, time.Second, "web-02 pushed DOWN -> problem", func() (bool, error) {
		if err := s.Send(context.Background(), "web-02", "kvm.domain.pool.push", "DOWN"); err != nil {
			return false, err
		}
		return problemOpen(t, s, web2.pool), nil
	})
	t.Logf("pushed DOWN -> problem: %.2fs", time.Since(pushT).Seconds())
	v, _ := lastValue(t, s, web2.hostid, "kvm.domain.pool.in")
	assert.Equal(t, "1", v, "web-02's polled status must still be UP: the push alone opened the problem")
	assert.Less(t, time.Since(pushT), 5*time.Second, "a pushed status should open the problem within seconds")
	require.NoError(t, s.Send(context.Background(), "web-02", "kvm.domain.pool.push", "UP"))
	took = waitProblem(t, s, "web-02 resolved by a pushed UP", web2.pool, false, 15*time.Second)
	t.Logf("pushed UP -> resolved: %.2fs", took.Seconds())

	// Step 1: the email reaches the sink.
	harness.WaitFor(t, 30*time.Second, 250*time.Millisecond, "ladder email for web-01 in the SMTP sink", func() (bool, error) {
		return len(s.SMTP.Find("Problem: Guest web-01 is out of the haproxy pool")) > 0, fmt.Errorf("%d messages", len(s.SMTP.Messages()))
	})
	m := s.SMTP.Find("Problem: Guest web-01 is out of the haproxy pool")[0]
	assert.Equal(t, []string{"oncall@kvm.test"}, m.To)
	assert.Equal(t, "zabbix@kvm.test", m.From)
	t.Logf("DOWN -> email delivered: %.2fs", m.At.Sub(down).Seconds())

	// Step 4 (its own trigger): out of the pool for {$KVM.PAGE.AFTER}=20s -> Disaster -> page.
	took = waitProblem(t, s, "web-01 page problem", web1.page, true, 60*time.Second)
	harness.WaitFor(t, 30*time.Second, 250*time.Millisecond, "page email", func() (bool, error) {
		return len(s.SMTP.Find("Problem: Guest web-01 out of the haproxy pool for 20s")) > 0, nil
	})
	t.Logf("DOWN -> page problem: %.2fs", time.Since(down).Seconds())

	// Step 2: one escalation period (60s, the server's minimum) later, the gentle restart runs on
	// the agent with the guest's domain.
	harness.WaitFor(t, 100*time.Second, 500*time.Millisecond, "gentle restart command on the agent", func() (bool, error) {
		b, err := os.ReadFile(cmdLog)
		return err == nil && strings.Contains(string(b), "reboot web-01"), err
	})
	t.Logf("DOWN -> gentle restart ran: %.2fs", time.Since(down).Seconds())
	b, _ := os.ReadFile(cmdLog)
	assert.Equal(t, "--caller zabbix reboot web-01\n", string(b), "only the gentle restart of web-01 ran so far")

	var alerts []struct {
		AlertType string `json:"alerttype"`
		Status    string `json:"status"`
		EscStep   string `json:"esc_step"`
		Error     string `json:"error"`
	}
	ladder, _ := rep.Find("action", provision.LadderAction)
	call(t, s, "alert.get", map[string]any{"actionids": ladder.ID, "objectids": web1.pool,
		"output": []string{"alerttype", "status", "esc_step", "error"}}, &alerts)
	steps := map[string]bool{}
	for _, a := range alerts {
		if a.Status == "1" {
			steps[a.EscStep+"/"+a.AlertType] = true
		}
	}
	assert.True(t, steps["1/0"], "step 1 message sent: %+v", alerts)
	assert.True(t, steps["2/1"], "step 2 command executed: %+v", alerts)

	// Back in the pool with pushing off: both problems resolve on the polled value alone.
	setStatus(t, dir, "web", "web-01", "UP")
	took = waitProblem(t, s, "web-01 resolved (polled UP, push item empty)", web1.pool, false, 30*time.Second)
	waitProblem(t, s, "web-01 page problem resolved", web1.page, false, 30*time.Second)
	t.Logf("polled UP -> resolved: %.2fs", took.Seconds())
	harness.WaitFor(t, 30*time.Second, 250*time.Millisecond, "recovery email", func() (bool, error) {
		return len(s.SMTP.Find("Resolved in", "Guest web-01 is out of the haproxy pool")) > 0, nil
	})
}
