//go:build integration

package provision_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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

// checkPreconditions runs Setup on a fresh server with options whose preconditions fail: each is
// refused before anything is created.
func checkPreconditions(t *testing.T, s *zbx.Stack) {
	for _, tc := range []struct {
		o    provision.Options
		want string
	}{
		{provision.Options{User: "oncall", UserEmail: "oncall@kvm.test"}, `oncall-user "oncall" does not exist`},
		{provision.Options{User: "Admin", UserPhone: "+15550100"}, "oncall-phone needs --sms-script"},
		{provision.Options{User: "Admin", UserChat: "@oncall"}, "oncall-chat needs --chat-url"},
		{provision.Options{UserGroup: "Ops", OperatorGroup: "Ops"}, `both "Ops"`},
	} {
		_, err := setup(t, s, tc.o)
		require.Error(t, err, "%+v", tc.o)
		assert.Contains(t, err.Error(), tc.want)
		nothingCreated(t, s)
	}
}

// checkRerun: a rerun naming only a new hypervisor creates it and changes nothing else, and keeps
// what an admin changed by hand that no flag names (the ladder switched off, a template macro
// overridden, a macro added); --repair adds or removes the ladder's repair step and nothing more.
func checkRerun(t *testing.T, s *zbx.Stack, rep provision.Report, tpls []templates.Template) {
	ladder, _ := rep.Find("action", provision.LadderAction)
	call(t, s, "action.update", map[string]any{"actionid": ladder.ID, "status": 1}, nil)
	guestTpl, _ := rep.Find("template", templates.Guest)
	var ms []struct {
		ID    string `json:"hostmacroid"`
		Macro string `json:"macro"`
		Value string `json:"value"`
	}
	call(t, s, "usermacro.get", map[string]any{"hostids": guestTpl.ID, "output": "extend"}, &ms)
	for _, m := range ms {
		if m.Macro == "{$KVM.AGENT.SILENT}" {
			call(t, s, "usermacro.update", map[string]any{"hostmacroid": m.ID, "value": "9m"}, nil)
		}
	}
	call(t, s, "usermacro.create", map[string]any{"hostid": guestTpl.ID, "macro": "{$SITE.NOTE}", "value": "kept"}, nil)
	type mediaType struct {
		Server string `json:"smtp_server"`
		Port   string `json:"smtp_port"`
		From   string `json:"smtp_email"`
		Status string `json:"status"`
	}
	var before, after []mediaType
	call(t, s, "mediatype.get", map[string]any{"output": "extend", "filter": map[string]any{"name": provision.EmailMediaType}}, &before)
	shapeBefore, _, _ := ladderShape(t, s, rep, provision.LadderAction)

	again, err := setup(t, s, provision.Options{HypervisorHost: "kvm-hv02", HypervisorIP: "127.0.0.2", Templates: tpls})
	require.NoError(t, err)
	t.Logf("rerun with only --hypervisor kvm-hv02:\n%s", again)
	for _, e := range again.Entries {
		want := provision.Unchanged
		if e.Kind == "host" && e.Name == "kvm-hv02" {
			want = provision.Created
		}
		assert.Equal(t, want, e.Change, "%s %q", e.Kind, e.Name)
	}
	call(t, s, "mediatype.get", map[string]any{"output": "extend", "filter": map[string]any{"name": provision.EmailMediaType}}, &after)
	assert.Equal(t, before, after, "the SMTP settings survive a rerun that does not name them")
	shapeAfter, _, _ := ladderShape(t, s, again, provision.LadderAction)
	assert.ElementsMatch(t, shapeBefore, shapeAfter, "the ladder's periods survive")
	assert.Equal(t, "1", getAction(t, s, provision.LadderAction).Status, "the ladder the admin switched off stays off")
	vals := map[string]string{}
	call(t, s, "usermacro.get", map[string]any{"hostids": guestTpl.ID, "output": "extend"}, &ms)
	for _, m := range ms {
		vals[m.Macro] = m.Value
	}
	assert.Equal(t, "9m", vals["{$KVM.AGENT.SILENT}"], "the admin's template macro value survives")
	assert.Equal(t, "kept", vals["{$SITE.NOTE}"], "the admin's template macro survives")

	repairOn := false
	for _, l := range shapeBefore {
		repairOn = repairOn || strings.Contains(l, provision.RepairScript)
	}
	flip := provision.On
	if repairOn {
		flip = provision.Off
	}
	flipped, err := setup(t, s, provision.Options{Repair: flip, Templates: tpls})
	require.NoError(t, err)
	t.Logf("rerun with --repair=%v:\n%s", flip == provision.On, flipped)
	for _, e := range flipped.Entries {
		want := provision.Unchanged
		switch {
		case e.Kind == "action" && e.Name == provision.LadderAction:
			want = provision.Updated
		case e.Kind == "script" && e.Name == provision.RepairScript:
			want = provision.Created
		}
		assert.Equal(t, want, e.Change, "%s %q", e.Kind, e.Name)
	}
	shapeFlipped, _, _ := ladderShape(t, s, flipped, provision.LadderAction)
	assert.Len(t, shapeFlipped, len(shapeBefore)+map[bool]int{true: -1, false: 1}[repairOn])
	assert.Equal(t, "1", getAction(t, s, provision.LadderAction).Status, "still off")
}

func TestSetup60ImportsAndIsIdempotent(t *testing.T) {
	s := zbx.Start(t, zbx.Options{Version: "6.0"})
	checkPreconditions(t, s)
	tpls := withDashboard(t)
	o := provision.Options{PluginPath: "/usr/local/sbin/kvm-plugin", ConfigFile: "/etc/kvm-test.conf",
		SMTPServer: "smtp.kvm.test", SMTPPort: 2525, SMTPFrom: "zabbix@kvm.test",
		ChatURL: "http://127.0.0.1:9/hook", SMSScript: "kvm-sms-test.sh",
		User: "Admin", UserEmail: "oncall@kvm.test", UserChat: "@oncall", UserPhone: "+15550100",
		Repair: provision.On, HypervisorHost: "kvm-hv01", Templates: tpls}
	rep := checkIdempotent(t, s, o)
	checkTemplates(t, s, rep, tpls)
	shape, _, _ := ladderShape(t, s, rep, provision.LadderAction)
	assert.ElementsMatch(t, []string{"1-1 msg KVM email 120s", "1-1 msg KVM chat 120s", "1-1 cmd KVM service repair on 0 120s",
		"2-2 cmd KVM gentle restart on 0 180s", "3-3 cmd KVM forced restart on 0 0", "3-3 msg KVM email 0", "3-3 msg KVM chat 0"}, shape)
	shape, _, _ = ladderShape(t, s, rep, provision.NotifyAction)
	assert.ElementsMatch(t, []string{"1-1 msg KVM email 0", "1-1 msg KVM chat 0"}, shape)
	checkPauses(t, s, false)
	checkButtons(t, s, rep, o, provision.DefaultOperatorGroup)

	var sms []struct {
		ExecPath   string `json:"exec_path"`
		ExecParams string `json:"exec_params"`
	}
	call(t, s, "mediatype.get", map[string]any{"output": "extend", "filter": map[string]any{"name": provision.SMSMediaType}}, &sms)
	require.Len(t, sms, 1)
	assert.Equal(t, "kvm-sms-test.sh", sms[0].ExecPath)
	assert.Equal(t, "{ALERT.SENDTO}\n{ALERT.SUBJECT}\n{ALERT.MESSAGE}\n", sms[0].ExecParams, "6.0 spells the arguments as one string")
	var users []struct {
		Medias []struct {
			MediaTypeID string `json:"mediatypeid"`
		} `json:"medias"`
	}
	call(t, s, "user.get", map[string]any{"filter": map[string]any{"username": "Admin"}, "selectMedias": "extend", "output": []string{"userid"}}, &users)
	require.Len(t, users, 1)
	got := []string{}
	for _, m := range users[0].Medias {
		for _, e := range rep.Entries {
			if e.Kind == "media type" && e.ID == m.MediaTypeID {
				got = append(got, e.Name)
			}
		}
	}
	assert.ElementsMatch(t, []string{provision.EmailMediaType, provision.ChatMediaType, provision.SMSMediaType}, got)
	checkRerun(t, s, rep, tpls)
}

// TestLadder70 provisions a fresh 7.0 server and drives the guest template's triggers and the
// Actions on guest hosts whose values come from a real agent: the problem opens and resolves on
// polled values with pushing off, opens within seconds on a pushed status and only when the push
// comes from the hypervisor's address, the email reaches the SMTP sink, the page fires on the
// longer trigger, the gentle restart runs as a remote command on the agent at step 2 — and not
// for a guest in Zabbix maintenance —, the guest-agent trigger waits for its period, the buttons
// run for an operator and not for anyone else, and no alert fails.
func TestLadder70(t *testing.T) {
	s := zbx.Start(t, zbx.Options{Version: "7.0"})
	dir := t.TempDir()
	agentPort := harness.FreePort(t, 15000, 15999)
	startAgent(t, dir, agentPort)
	plugin := filepath.Join(dir, "plugin")
	cmdLog := filepath.Join(dir, "commands.log")
	// Stands in for the plugin binary the scripts call: records its arguments.
	require.NoError(t, os.WriteFile(plugin, []byte("#!/bin/sh\necho \"$@\" >> "+cmdLog+"\n"), 0o755))

	checkPreconditions(t, s)
	tpls := withDashboard(t)
	o := provision.Options{PluginPath: plugin, SMTPServer: "127.0.0.1", SMTPPort: s.SMTP.Port, SMTPFrom: "zabbix@kvm.test",
		User: "Admin", UserEmail: "oncall@kvm.test", GentleAfter: time.Minute, ForcedAfter: time.Minute, PageAfter: 121 * time.Second,
		HypervisorHost: "kvm-hv01", HypervisorIP: "127.0.0.1", HypervisorPort: agentPort, Templates: tpls}
	rep := checkIdempotent(t, s, o)
	checkTemplates(t, s, rep, tpls)
	for _, mt := range []string{provision.ChatMediaType, provision.SMSMediaType} {
		_, ok := rep.Find("media type", mt)
		assert.False(t, ok, "%s created although not configured", mt)
	}

	shape, filter, rec := ladderShape(t, s, rep, provision.LadderAction)
	assert.ElementsMatch(t, []string{"1-1 msg KVM email 60s", "2-2 cmd KVM gentle restart on 0 60s",
		"3-3 cmd KVM forced restart on 0 0", "3-3 msg KVM email 0"}, shape, "no chat operation without a chat media type")
	assert.Equal(t, "type 26 kvm.ladder=recover;", filter)
	assert.Equal(t, 1, rec)
	shape, filter, _ = ladderShape(t, s, rep, provision.PageAction)
	assert.Equal(t, []string{"1-1 msg all 0"}, shape)
	assert.Equal(t, "type 26 kvm.ladder=page;", filter)
	checkPauses(t, s, true)
	checkButtons(t, s, rep, o, provision.DefaultOperatorGroup)

	tid, _ := rep.Find("template", templates.Guest)
	var macros []struct{ Macro, Value string }
	call(t, s, "usermacro.get", map[string]any{"hostids": tid.ID, "filter": map[string]any{"macro": "{$KVM.PAGE.AFTER}"},
		"output": []string{"macro", "value"}}, &macros)
	require.Len(t, macros, 1)
	assert.Equal(t, "121s", macros[0].Value, "setup writes --page-after into the guest template")

	hv, _ := rep.Find("host", "kvm-hv01")
	call(t, s, "usermacro.create", map[string]any{"hostid": hv.ID, "macro": "{$KVM.DISCOVERY.INTERVAL}", "value": "2s"}, nil)
	writeFile(t, dir, "serverdiscovery.json", `[{"{#HAPROXY.BACKEND}":"web","{#HAPROXY.SERVER}":"web-01"}]`)

	// web-01: pushing off; pages after 20s out of the pool. web-02: a pushed status counts for
	// 30s; its guest agent is silent from the first poll and its trigger waits 30s. web-03: in
	// Zabbix maintenance.
	for g, ping := range map[string]string{"web-01": "1", "web-02": "0", "web-03": "1"} {
		setStatus(t, dir, "web", g, "UP")
		setHeld(t, dir, g, false)
		setRunning(t, dir, g)
		writeFile(t, dir, "agentping-"+g, ping)
	}
	t0 := time.Now()
	web1 := addGuest(t, s, rep, "web-01", agentPort, map[string]string{"{$KVM.PAGE.AFTER}": "20s"})
	web2 := addGuest(t, s, rep, "web-02", agentPort, map[string]string{"{$KVM.PUSH.HOLD}": "30s", "{$KVM.AGENT.SILENT}": "30s"})
	web3 := addGuest(t, s, rep, "web-03", agentPort, nil)
	now := time.Now().Unix()
	call(t, s, "maintenance.create", map[string]any{"name": "web-03 maintenance", "active_since": now - 60, "active_till": now + 3600,
		"hosts": []map[string]any{{"hostid": web3.hostid}}, "timeperiods": []map[string]any{{"timeperiod_type": 0, "start_date": now - 60, "period": 3660}}}, nil)
	for _, g := range []guest{web1, web2, web3} {
		harness.WaitFor(t, 60*time.Second, 250*time.Millisecond, g.name+" pool membership polled", func() (bool, error) {
			v, ok := lastValue(t, s, g.hostid, "kvm.domain.pool.in")
			return ok && v == "1", fmt.Errorf("kvm.domain.pool.in = %q (have value: %v)", v, ok)
		})
	}
	t.Logf("guest hosts polled through the agent %.2fs after creation", time.Since(t0).Seconds())
	assert.False(t, problemOpen(t, s, web1.pool), "web-01 is UP, yet out of the pool")
	// The server applies maintenances once a minute.
	harness.WaitFor(t, 150*time.Second, time.Second, "web-03 in maintenance", func() (bool, error) {
		var hs []struct {
			Status string `json:"maintenance_status"`
		}
		call(t, s, "host.get", map[string]any{"hostids": web3.hostid, "output": []string{"maintenance_status"}}, &hs)
		return len(hs) == 1 && hs[0].Status == "1", fmt.Errorf("hosts %+v", hs)
	})
	t.Logf("web-03 in maintenance %.2fs after creation", time.Since(t0).Seconds())

	// Only the hypervisor's address may push. The item must be in the server's configuration
	// cache before a refusal means anything: first an accepted UP from 127.0.0.1.
	ctx := context.Background()
	harness.WaitFor(t, 30*time.Second, time.Second, "web-02 push item accepts the hypervisor's address", func() (bool, error) {
		err := s.SendFrom(ctx, "127.0.0.1", "web-02", "kvm.domain.pool.push", "UP")
		return err == nil, err
	})
	err := s.SendFrom(ctx, "127.0.0.2", "web-02", "kvm.domain.pool.push", "DOWN")
	require.Error(t, err, "a DOWN from 127.0.0.2 must be refused")
	assert.Contains(t, err.Error(), "processed 0, failed 1")
	harness.WaitFor(t, 10*time.Second, 200*time.Millisecond, "server log names the refused address", func() (bool, error) {
		return strings.Contains(serverLog(t, s), `cannot process item "kvm.domain.pool.push" trap: connection from "127.0.0.2" rejected`), nil
	})
	assert.False(t, problemOpen(t, s, web2.pool), "a spoofed DOWN opened the problem")

	// web-03 (maintenance) goes DOWN first, then web-01: web-03's problem is at least as old as
	// web-01's when web-01's gentle restart runs.
	setStatus(t, dir, "web", "web-03", "DOWN")
	waitProblem(t, s, "web-03 out-of-pool problem (in maintenance)", web3.pool, true, 30*time.Second)
	var suppressed []map[string]any
	call(t, s, "problem.get", map[string]any{"objectids": web3.pool, "suppressed": true, "output": []string{"eventid"}}, &suppressed)
	assert.Len(t, suppressed, 1, "web-03's problem is suppressed by the maintenance")

	// Pushing off: the polled DOWN opens the problem and starts the ladder.
	setStatus(t, dir, "web", "web-01", "DOWN")
	down := time.Now()
	took := waitProblem(t, s, "web-01 out-of-pool problem (polled)", web1.pool, true, 30*time.Second)
	t.Logf("polled DOWN -> problem: %.2fs", took.Seconds())

	// Pushing on (web-02): the poll still says UP; the pushed DOWN from the hypervisor's address
	// alone opens the problem.
	require.False(t, problemOpen(t, s, web2.pool), "web-02 is UP, yet out of the pool")
	pushT := time.Now()
	require.NoError(t, s.SendFrom(ctx, "127.0.0.1", "web-02", "kvm.domain.pool.push", "DOWN"))
	waitProblem(t, s, "web-02 pushed DOWN -> problem", web2.pool, true, 15*time.Second)
	t.Logf("pushed DOWN -> problem: %.2fs", time.Since(pushT).Seconds())
	v, _ := lastValue(t, s, web2.hostid, "kvm.domain.pool.in")
	assert.Equal(t, "1", v, "web-02's polled status must still be UP: the push alone opened the problem")
	assert.Less(t, time.Since(pushT), 5*time.Second, "a pushed status should open the problem within seconds")
	require.NoError(t, s.Send(ctx, "web-02", "kvm.domain.pool.push", "UP"))
	took = waitProblem(t, s, "web-02 resolved by a pushed UP", web2.pool, false, 15*time.Second)
	t.Logf("pushed UP -> resolved: %.2fs", took.Seconds())

	checkOperatorIntent(t, s, dir, web2)

	// Step 1: the email reaches the sink.
	harness.WaitFor(t, 30*time.Second, 250*time.Millisecond, "ladder email for web-01 in the SMTP sink", func() (bool, error) {
		return len(s.SMTP.Find("Problem: Guest web-01 is out of the haproxy pool")) > 0, fmt.Errorf("%d messages", len(s.SMTP.Messages()))
	})
	m := s.SMTP.Find("Problem: Guest web-01 is out of the haproxy pool")[0]
	assert.Equal(t, []string{"oncall@kvm.test"}, m.To)
	assert.Equal(t, "zabbix@kvm.test", m.From)
	t.Logf("DOWN -> email delivered: %.2fs", m.At.Sub(down).Seconds())

	// Step 4 (its own trigger): out of the pool for {$KVM.PAGE.AFTER}=20s -> Disaster -> page.
	waitProblem(t, s, "web-01 page problem", web1.page, true, 60*time.Second)
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
	// the server expanded {EVENT.ID}: the step names its problem, for the outcome's message
	assert.Regexp(t, `^--caller zabbix --event [0-9]+ reboot web-01\n$`, string(b), "only the gentle restart of web-01 ran so far: none for web-03 in maintenance")

	ladder, _ := rep.Find("action", provision.LadderAction)
	steps := map[string]bool{}
	for _, a := range alerts(t, s, []string{ladder.ID}, web1.pool) {
		if a.Status == "1" {
			steps[a.EscStep+"/"+a.AlertType] = true
		}
	}
	assert.True(t, steps["1/0"], "step 1 message sent")
	assert.True(t, steps["2/1"], "step 2 command executed")
	assert.True(t, problemOpen(t, s, web3.pool), "web-03 is still out of the pool")
	w3 := alerts(t, s, []string{ladder.ID}, web3.pool)
	for _, a := range w3 {
		assert.NotEqual(t, "1", a.AlertType, "remote command for web-03 in maintenance: %+v", a)
	}
	t.Logf("web-03 in maintenance, out of the pool %.0fs: %d ladder alerts (%+v)", time.Since(down).Seconds(), len(w3), w3)

	// The guest agent trigger waits for its period: web-02's agent answered 0 from the first poll.
	waitProblem(t, s, "web-02 guest agent silent for 30s", web2.silent, true, 60*time.Second)
	first := firstValueClock(t, s, web2.hostid, "kvm.domain.agent.ping[{$KVM.DOMAIN}]", 3)
	opened := eventClock(t, s, web2.silent)
	assert.GreaterOrEqual(t, opened.Sub(first), 30*time.Second, "opened %s after the first 0, before {$KVM.AGENT.SILENT}=30s", opened.Sub(first))
	t.Logf("guest agent silent: first 0 at %s, problem at %s (+%s)", first.Format(time.TimeOnly), opened.Format(time.TimeOnly), opened.Sub(first))

	// The hypervisor's pushed haproxy item (discovered from the prototype) also takes values from
	// the hypervisor's address only.
	const hvKey = "haproxy.server.status.push[web,web-01]"
	harness.WaitFor(t, 60*time.Second, time.Second, "kvm-hv01 "+hvKey+" discovered and accepting 127.0.0.1", func() (bool, error) {
		err := s.SendFrom(ctx, "127.0.0.1", "kvm-hv01", hvKey, "DOWN")
		return err == nil, err
	})
	err = s.SendFrom(ctx, "127.0.0.2", "kvm-hv01", hvKey, "UP")
	require.Error(t, err, "a value for %s from 127.0.0.2 must be refused", hvKey)
	assert.Contains(t, err.Error(), "processed 0, failed 1")

	// Back in the pool with pushing off: both problems resolve on the polled value alone.
	setStatus(t, dir, "web", "web-01", "UP")
	took = waitProblem(t, s, "web-01 resolved (polled UP, push item empty)", web1.pool, false, 30*time.Second)
	waitProblem(t, s, "web-01 page problem resolved", web1.page, false, 30*time.Second)
	t.Logf("polled UP -> resolved: %.2fs", took.Seconds())
	harness.WaitFor(t, 30*time.Second, 250*time.Millisecond, "recovery email", func() (bool, error) {
		return len(s.SMTP.Find("Resolved in", "Guest web-01 is out of the haproxy pool")) > 0, nil
	})

	checkButtonsRun(t, s, rep, web1, cmdLog)

	// Nothing configured that cannot be delivered: no alert of ours failed.
	var ids []string
	for _, name := range []string{provision.LadderAction, provision.PageAction, provision.NotifyAction} {
		e, _ := rep.Find("action", name)
		ids = append(ids, e.ID)
	}
	all := alerts(t, s, ids, "")
	assert.NotEmpty(t, all)
	for _, a := range all {
		assert.NotEqual(t, "2", a.Status, "failed alert: %+v", a)
	}
	t.Logf("%d alerts of the KVM Actions, none failed", len(all))

	checkRerun(t, s, rep, tpls)
}

// checkButtonsRun presses "KVM: Reboot" on a guest through the API as a member of the operator
// group (the command runs on the agent with --caller zabbix-frontend) and as a user who can see
// the guest but is not an operator (refused).
func checkButtonsRun(t *testing.T, s *zbx.Stack, rep provision.Report, g guest, cmdLog string) {
	ops, _ := rep.Find("user group", provision.DefaultOperatorGroup)
	guests, _ := rep.Find("host group", provision.GuestGroup)
	var viewers struct {
		IDs []string `json:"usrgrpids"`
	}
	call(t, s, "usergroup.create", map[string]any{"name": "KVM viewers",
		"hostgroup_rights": []map[string]any{{"id": guests.ID, "permission": 2}}}, &viewers)
	const pw = "Kvm-test-Pa55word!"
	for user, grp := range map[string]string{"kvm-operator": ops.ID, "kvm-viewer": viewers.IDs[0]} {
		call(t, s, "user.create", map[string]any{"username": user, "passwd": pw, "roleid": "1",
			"usrgrps": []map[string]any{{"usrgrpid": grp}}}, nil)
	}
	var scripts []struct {
		ID string `json:"scriptid"`
	}
	call(t, s, "script.get", map[string]any{"filter": map[string]any{"name": "KVM: Reboot"}, "output": []string{"scriptid"}}, &scripts)
	require.Len(t, scripts, 1)
	before, _ := os.ReadFile(cmdLog)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	params := map[string]any{"scriptid": scripts[0].ID, "hostid": g.hostid}
	err := loginAs(t, s, "kvm-viewer", pw).API.Call(ctx, "script.execute", params, nil)
	require.Error(t, err, "a user outside the operator group pressed the button")
	t.Logf("kvm-viewer refused: %v", err)
	var res struct {
		Response string `json:"response"`
	}
	require.NoError(t, loginAs(t, s, "kvm-operator", pw).API.Call(ctx, "script.execute", params, &res))
	assert.Equal(t, "success", res.Response)
	after, _ := os.ReadFile(cmdLog)
	assert.Equal(t, "--caller zabbix-frontend --background reboot "+g.name+"\n", strings.TrimPrefix(string(after), string(before)))
}

// checkOperatorIntent: an operator's drain or maintenance of a guest's server is not a failure, and
// an operator's hold keeps the ladder's problem closed. Each "stays closed" is asserted only after
// the server has evaluated the trigger on the new values (another trigger on the same values
// opened, or the items hold them).
func checkOperatorIntent(t *testing.T, s *zbx.Stack, dir string, g guest) {
	t.Helper()
	ctx := context.Background()
	// Drained, and its check fails: haproxy says DOWN, the plugin's pool state says DRAIN.
	setPool(t, dir, "web", g.name, "DOWN", "DRAIN")
	require.NoError(t, s.Send(ctx, g.name, "kvm.domain.pool.push", "DRAIN"))
	waitProblem(t, s, g.name+" held out of the pool by an operator (informational)", g.heldOut, true, 30*time.Second)
	harness.WaitFor(t, 10*time.Second, 200*time.Millisecond, g.name+" pool membership after the drain", func() (bool, error) {
		v, ok := lastValue(t, s, g.hostid, "kvm.domain.pool.in")
		return ok && v == "1", fmt.Errorf("kvm.domain.pool.in = %q", v)
	})
	assert.False(t, problemOpen(t, s, g.pool), "a drained server opened the ladder's problem")
	setPool(t, dir, "web", g.name, "MAINT", "MAINT")
	require.NoError(t, s.Send(ctx, g.name, "kvm.domain.pool.push", "MAINT"))
	harness.WaitFor(t, 10*time.Second, 200*time.Millisecond, g.name+" pool state MAINT", func() (bool, error) {
		v, ok := lastValue(t, s, g.hostid, "kvm.domain.pool.state")
		return ok && v == "MAINT", fmt.Errorf("kvm.domain.pool.state = %q", v)
	})
	assert.False(t, problemOpen(t, s, g.pool), "a server in maintenance opened the ladder's problem")
	assert.True(t, problemOpen(t, s, g.heldOut), "maintenance is held out by an operator too")

	// Ready again, then a hold: a failed check keeps the problem closed while the hold is on.
	setHeld(t, dir, g.name, true)
	setStatus(t, dir, "web", g.name, "UP")
	require.NoError(t, s.Send(ctx, g.name, "kvm.domain.pool.push", "UP"))
	waitProblem(t, s, g.name+" no longer held out", g.heldOut, false, 30*time.Second)
	harness.WaitFor(t, 10*time.Second, 200*time.Millisecond, g.name+" on hold", func() (bool, error) {
		v, ok := lastValue(t, s, g.hostid, "kvm.domain.held")
		return ok && v == "1", fmt.Errorf("kvm.domain.held = %q", v)
	})
	setStatus(t, dir, "web", g.name, "DOWN")
	require.NoError(t, s.Send(ctx, g.name, "kvm.domain.pool.push", "DOWN"))
	harness.WaitFor(t, 10*time.Second, 200*time.Millisecond, g.name+" polled out of the pool", func() (bool, error) {
		v, ok := lastValue(t, s, g.hostid, "kvm.domain.pool.in")
		return ok && v == "0", fmt.Errorf("kvm.domain.pool.in = %q", v)
	})
	assert.False(t, problemOpen(t, s, g.pool), "a guest on hold got the ladder's problem")
	setHeld(t, dir, g.name, false)
	took := waitProblem(t, s, g.name+" released: the failed check opens the ladder's problem", g.pool, true, 30*time.Second)
	t.Logf("release -> problem: %.2fs", took.Seconds())
	setStatus(t, dir, "web", g.name, "UP")
	require.NoError(t, s.Send(ctx, g.name, "kvm.domain.pool.push", "UP"))
	waitProblem(t, s, g.name+" back in the pool", g.pool, false, 30*time.Second)
}
