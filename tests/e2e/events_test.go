//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/internal/provision"
	"zabbix-agent2-plugin-kvm/internal/zabbixapi"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

// Trigger names of the guest template's event problems (issue 11).
const (
	eventTrigger   = "Guest {$KVM.DOMAIN} panicked, crashed or its watchdog fired"
	storageTrigger = "Guest {$KVM.DOMAIN} paused on a storage I/O error"
)

// repairHTTPD is the lab guests' service repair: busybox httpd started again, detached (with
// -b start-stop-daemon gives it /dev/null for stdio, so guest-exec sees the command end).
const repairHTTPD = "/sbin/start-stop-daemon -S -b -x /usr/sbin/httpd -- -f -p 80 -h /www"

// TestScenarioEvents is issue 11's part of the scenario, with `zabbix setup --repair` and the
// plugin's events pushed to the real server: a frontend button pressed through the API
// (script.execute), a dead service repaired through the guest agent, a guest panic (pvpanic)
// started again at once, a watchdog expiry (i6300esb, action none) that the timed ladder's gentle
// reboot closes, a pause on an I/O error that pages and is never restarted, and a hung QEMU. Each
// checks the causal order, the verdict and the explanation Zabbix got (kvm.domain.ladder.last),
// and prints "MTTR <kind>: <s>s" with its phases.
func TestScenarioEvents(t *testing.T) {
	e := startEnv(t, []guestSpec{
		{name: "web-01", opts: lab.GuestOpts{Start: true, Agent: true, ACPI: true, Panic: true}},
		{name: "web-02", opts: lab.GuestOpts{Start: true, Agent: true, ACPI: true, FullDisk: true}},
		{name: "web-03", opts: servingGuest},
		{name: "web-04", opts: servingGuest},
		{name: "web-05", opts: lab.GuestOpts{Start: true, Agent: true, ACPI: true, Watchdog: true}},
	}, func(e *env, p map[string]string, s *provision.Options) {
		p["Exec.RepairCommands"] = repairHTTPD
		s.Repair = provision.On
		// the ladder's outcomes as messages on the problems, through an API token of Admin
		p["Zabbix.URL"] = e.zbx.URL
		p["Zabbix.TokenFile"] = e.apiTokenFile()
	})
	e.checkButtons(t, "web-03")
	if r := e.deadServiceRepaired(t, "web-03"); r != nil {
		report(t, r)
	}
	if r := e.panicRestarted(t, "web-01"); r != nil {
		report(t, r)
	}
	wd := e.watchdogHeld(t, "web-05")
	if wd != nil {
		report(t, wd)
	}
	e.ioErrorHeld(t, "web-02")
	if r := e.hungRepaired(t, "web-04"); r != nil {
		report(t, r)
		if screenshotsWanted() && !t.Failed() {
			e.eventScreenshots(t, "web-04", r.fault)
		}
	}
	if wd != nil {
		e.watchdogNeverRestarted(t, "web-05", wd.fault)
	}
}

// apiTokenFile creates an API token for Admin and writes it to a file only its owner may read.
func (e *env) apiTokenFile() string {
	e.t.Helper()
	var created struct {
		IDs []string `json:"tokenids"`
	}
	e.call("token.create", map[string]any{"name": "kvm-plugin-e2e", "userid": "1"}, &created)
	var gen []struct {
		Token string `json:"token"`
	}
	e.call("token.generate", created.IDs, &gen)
	if len(gen) != 1 || gen[0].Token == "" {
		e.t.Fatalf("token.generate: %+v", gen)
	}
	f := filepath.Join(e.t.TempDir(), "zabbix-api.token")
	if err := os.WriteFile(f, []byte(gen[0].Token+"\n"), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return f
}

// problemMessages are the messages on a problem (event.acknowledge, action "add message").
func (e *env) problemMessages(eventID string) ([]string, error) {
	var evs []struct {
		Acks []struct {
			Message string `json:"message"`
		} `json:"acknowledges"`
	}
	if err := e.try("event.get", map[string]any{"eventids": eventID, "select_acknowledges": []string{"message"},
		"output": []string{"eventid"}}, &evs); err != nil {
		return nil, err
	}
	var out []string
	for _, ev := range evs {
		for _, a := range ev.Acks {
			out = append(out, a.Message)
		}
	}
	return out, nil
}

// awaitMessage waits until the problem has a message containing want.
func (e *env) awaitMessage(eventID, want string) (string, error) {
	var got string
	err := harness.Wait(context.Background(), 30*time.Second, 500*time.Millisecond, func() (bool, error) {
		ms, err := e.problemMessages(eventID)
		for _, m := range ms {
			if strings.Contains(m, want) {
				got = m
				return true, nil
			}
		}
		return false, fmt.Errorf("messages %q (%v)", ms, err)
	})
	return got, err
}

// ladderAudit is an audit line with the fields the ladder's explanation carries.
type ladderAudit struct {
	auditEntry
	Verdict  string `json:"verdict"`
	Evidence string `json:"evidence"`
}

// awaitAudit waits for the end line of verb on domain by caller at or after t0 that done accepts.
func (e *env) awaitAudit(domain, caller, verb string, t0 time.Time, timeout time.Duration, done func(ladderAudit) bool) (ladderAudit, error) {
	var got ladderAudit
	err := harness.Wait(context.Background(), timeout, 250*time.Millisecond, func() (bool, error) {
		b, err := os.ReadFile(e.audit)
		if err != nil {
			return false, err
		}
		var seen []string
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var a ladderAudit
			if json.Unmarshal([]byte(l), &a) != nil || a.Phase != "end" || a.Domain != domain || a.Caller != caller ||
				a.Verb != verb || a.Time.Before(t0.Add(-time.Second)) {
				continue
			}
			seen = append(seen, fmt.Sprintf("%s %s %s", a.Outcome, a.Verdict, a.Detail))
			if done(a) {
				got = a
				return true, nil
			}
		}
		return false, fmt.Errorf("%s %s by %s: %v", verb, domain, caller, seen)
	})
	return got, err
}

// ladderLast waits until the guest host's kvm.domain.ladder.last (what the plugin pushed to
// kvm.domain.ladder.push, as the operational data shows it) contains want.
func (e *env) ladderLast(host, want string, timeout time.Duration) (string, error) {
	var v string
	err := harness.Wait(context.Background(), timeout, 500*time.Millisecond, func() (bool, error) {
		var its []item
		if err := e.try("item.get", map[string]any{"hostids": e.hosts[host], "filter": map[string]any{"key_": "kvm.domain.ladder.last"},
			"output": []string{"itemid", "lastvalue", "state", "error"}}, &its); err != nil {
			return false, err
		}
		if len(its) != 1 {
			return false, fmt.Errorf("%d kvm.domain.ladder.last items", len(its))
		}
		v = its[0].LastValue
		return strings.Contains(v, want), fmt.Errorf("kvm.domain.ladder.last = %q (state %s %s)", v, its[0].State, its[0].Error)
	})
	return v, err
}

// awaitProblem waits for the first problem of host's trigger at or after t0.
func (e *env) awaitProblem(host, trigger string, t0 time.Time, timeout time.Duration) (event, error) {
	id, err := e.triggerID(host, trigger)
	if err != nil {
		return event{}, err
	}
	var ev event
	err = harness.Wait(context.Background(), timeout, 250*time.Millisecond, func() (bool, error) {
		p, ok, err := e.firstProblem(id, t0)
		ev = p
		return ok, err
	})
	if err != nil {
		return event{}, fmt.Errorf("%s: no problem %q since %s: %w", host, trigger, t0.Format("15:04:05"), err)
	}
	return ev, nil
}

// awaitResolved waits until the problem ev is resolved and returns when.
func (e *env) awaitResolved(ev event, timeout time.Duration) (time.Time, error) {
	var at time.Time
	err := harness.Wait(context.Background(), timeout, 500*time.Millisecond, func() (bool, error) {
		p, err := e.event(ev.EventID)
		if err != nil || p.REventID == "" || p.REventID == "0" {
			return false, err
		}
		r, err := e.event(p.REventID)
		if err != nil {
			return false, err
		}
		at = r.at()
		return true, nil
	})
	return at, err
}

// hungRepaired SIGSTOPs a guest's QEMU: the ladder's repair step finds QEMU hung (monitor stuck or
// no CPU time), keeps the evidence (the serial tail; no screenshot: that needs the monitor) and
// destroys and starts it at once, without waiting out a gentle step.
func (e *env) hungRepaired(t *testing.T, guest string) *repair {
	t.Helper()
	g := e.guests[guest]
	fault := time.Now()
	g.Freeze(t)
	r := &repair{kind: "hung-guest-repair", fault: fault}
	prob, err := e.awaitProblem(guest, poolTrigger, fault, time.Minute)
	if err != nil {
		t.Error(err)
		return nil
	}
	r.phases = append(r.phases, phase{"problem", prob.at()})
	a, err := e.awaitAudit(guest, provision.LadderCaller, "repair", fault, 3*time.Minute, func(a ladderAudit) bool { return a.Outcome == "done" })
	if err != nil {
		t.Errorf("hung guest: %v", err)
		return nil
	}
	if a.Verdict != "qemu-hung" || !strings.Contains(a.Detail, "destroy_start:done") {
		t.Errorf("hung guest: repair verdict %q: %s", a.Verdict, a.Detail)
	}
	r.phases = append(r.phases, phase{"destroyed+started", a.Time.Add(time.Duration(a.Duration * float64(time.Second)))})
	if a.Evidence == "" {
		t.Errorf("hung guest: no evidence before the destroy")
	} else {
		files, _ := os.ReadDir(a.Evidence)
		var names []string
		for _, f := range files {
			names = append(names, f.Name())
		}
		if !strings.Contains(strings.Join(names, " "), "serial.log") || !strings.Contains(strings.Join(names, " "), "diagnosis.json") {
			why, _ := os.ReadFile(filepath.Join(a.Evidence, "errors.txt"))
			t.Errorf("hung guest: evidence %s holds %v; errors.txt: %s", a.Evidence, names, why)
		}
		r.notes = append(r.notes, fmt.Sprintf("evidence %s: %s", a.Evidence, strings.Join(names, " ")))
	}
	resolved, err := e.awaitResolved(prob, 3*time.Minute)
	if err != nil {
		t.Errorf("hung guest: problem not resolved: %v", err)
		return nil
	}
	r.phases = append(r.phases, phase{"resolved", resolved})
	if as := e.zabbixAudit(guest, fault); len(as) > 0 {
		if _, rebooted := firstVerb(as, "reboot"); rebooted {
			r.notes = append(r.notes, "a gentle reboot ran too: "+describeAudit(as))
		}
	}
	return r
}

// checkButtons presses Diagnose, Hold 1h and Release on a guest through script.execute as a
// member of the operator group: the diagnosis is the button's output; hold and release go through
// the policy and the audit log as the frontend's caller, and Zabbix is told (ladder item).
func (e *env) checkButtons(t *testing.T, guest string) {
	t.Helper()
	ops, _ := e.rep.Find("user group", provision.DefaultOperatorGroup)
	const pw = "Kvm-e2e-Pa55word!"
	e.call("user.create", map[string]any{"username": "kvm-operator", "passwd": pw, "roleid": "1",
		"usrgrps": []map[string]any{{"usrgrpid": ops.ID}}}, nil)
	api := zabbixapi.New(e.zbx.URL)
	ctx, cancel := ctxT(30 * time.Second)
	defer cancel()
	if err := api.Login(ctx, "kvm-operator", pw); err != nil {
		t.Fatalf("login as kvm-operator: %v", err)
	}
	press := func(button string) string {
		t.Helper()
		var scripts []struct {
			ID string `json:"scriptid"`
		}
		e.call("script.get", map[string]any{"filter": map[string]any{"name": button}, "output": []string{"scriptid"}}, &scripts)
		if len(scripts) != 1 {
			t.Fatalf("button %q: %d scripts", button, len(scripts))
		}
		var res struct {
			Response string `json:"response"`
			Value    string `json:"value"`
		}
		ctx, cancel := ctxT(30 * time.Second)
		defer cancel()
		if err := api.Call(ctx, "script.execute", map[string]any{"scriptid": scripts[0].ID, "hostid": e.hosts[guest]}, &res); err != nil {
			t.Fatalf("press %q on %s: %v", button, guest, err)
		}
		if res.Response != "success" {
			t.Fatalf("press %q on %s: %+v", button, guest, res)
		}
		return res.Value
	}
	out := press("KVM: Diagnose")
	var diag struct {
		Verdict string `json:"verdict"`
		Signals struct {
			HAProxy string `json:"haproxy"`
		} `json:"signals"`
	}
	if err := json.Unmarshal([]byte(out), &diag); err != nil || diag.Verdict != "healthy" {
		t.Errorf("KVM: Diagnose on healthy %s: verdict %q (%v), output %q", guest, diag.Verdict, err, out)
	}
	t.Logf("button KVM: Diagnose on %s: verdict %s (%s)", guest, diag.Verdict, diag.Signals.HAProxy)
	for _, b := range []struct{ button, verb string }{{"KVM: Hold 1h", "hold"}, {"KVM: Release", "release"}} {
		t0 := time.Now()
		press(b.button)
		if a, err := e.awaitAudit(guest, provision.ButtonCaller, b.verb, t0, 30*time.Second, func(a ladderAudit) bool { return true }); err != nil {
			t.Errorf("button %q: %v", b.button, err)
		} else if a.Outcome != "done" {
			t.Errorf("button %q: audit outcome %s: %s", b.button, a.Outcome, a.Detail)
		}
		if v, err := e.ladderLast(guest, b.verb+" done", 30*time.Second); err != nil {
			t.Errorf("button %q: Zabbix was not told: %v", b.button, err)
		} else {
			t.Logf("button %q on %s: audit done, ladder item %q", b.button, guest, v)
		}
	}
}

// deadServiceRepaired kills httpd in a guest whose OS runs: the ladder's first step (repair)
// diagnoses service-dead and restarts it through the guest agent, before any reboot.
func (e *env) deadServiceRepaired(t *testing.T, guest string) *repair {
	t.Helper()
	g := e.guests[guest]
	fault := time.Now()
	g.KillHTTPD(t)
	r := &repair{kind: "dead-service-repair", fault: fault}
	prob, err := e.awaitProblem(guest, poolTrigger, fault, time.Minute)
	if err != nil {
		t.Error(err)
		return nil
	}
	r.phases = append(r.phases, phase{"problem", prob.at()})
	a, err := e.awaitAudit(guest, provision.LadderCaller, "repair", fault, 2*time.Minute, func(a ladderAudit) bool { return a.Outcome == "done" })
	if err != nil {
		t.Errorf("dead service: %v", err)
		return nil
	}
	if a.Verdict != "service-dead" || !strings.Contains(a.Detail, "repair_commands:done") {
		t.Errorf("dead service: repair verdict %q, detail %q", a.Verdict, a.Detail)
	}
	r.phases = append(r.phases, phase{"repaired (agent)", a.Time.Add(time.Duration(a.Duration * float64(time.Second)))})
	resolved, err := e.awaitResolved(prob, 2*time.Minute)
	if err != nil {
		t.Errorf("dead service: problem not resolved: %v", err)
		return nil
	}
	r.phases = append(r.phases, phase{"resolved", resolved})
	if as := e.zabbixAudit(guest, fault); len(as) > 0 {
		if _, rebooted := firstVerb(as, "reboot"); rebooted {
			t.Errorf("dead service: the guest was rebooted although the agent repaired it: %s", describeAudit(as))
		}
	}
	if v, err := e.ladderLast(guest, "repair done: service-dead", 30*time.Second); err != nil {
		t.Errorf("dead service: %v", err)
	} else {
		r.notes = append(r.notes, "Zabbix was told: "+v)
	}
	if m, err := e.awaitMessage(prob.EventID, "repair done: service-dead"); err != nil {
		t.Errorf("dead service: no message on the problem: %v", err)
	} else {
		r.notes = append(r.notes, "problem message: "+m)
	}
	return r
}

// panicRestarted panics a guest with a pvpanic device: the event opens the ladder's problem within
// seconds, the repair step (verdict crashed) starts it again, the guest serves again.
func (e *env) panicRestarted(t *testing.T, guest string) *repair {
	t.Helper()
	g := e.guests[guest]
	fault := time.Now()
	g.Panic(t)
	r := &repair{kind: "panic", fault: fault}
	prob, err := e.awaitProblem(guest, eventTrigger, fault, time.Minute)
	if err != nil {
		t.Error(err)
		return nil
	}
	r.phases = append(r.phases, phase{"event problem", prob.at()})
	r.notes = append(r.notes, fmt.Sprintf("event → problem %.2fs: %s", prob.at().Sub(fault).Seconds(), prob.Name))
	a, err := e.awaitAudit(guest, provision.LadderCaller, "repair", fault, 2*time.Minute, func(a ladderAudit) bool { return a.Verdict == "crashed" })
	if err != nil {
		t.Errorf("panic: %v", err)
		return nil
	}
	if a.Outcome != "done" || !strings.Contains(a.Detail, "start:done") {
		t.Errorf("panic: repair %s: %s", a.Outcome, a.Detail)
	}
	r.phases = append(r.phases, phase{"started (repair)", a.Time.Add(time.Duration(a.Duration * float64(time.Second)))})
	if _, err := e.awaitResolved(prob, time.Minute); err != nil {
		t.Errorf("panic: event problem not resolved by the start: %v", err)
	}
	g.WaitHTTP(t, 2*time.Minute)
	e.waitHAProxy(guest, "UP", time.Minute)
	r.phases = append(r.phases, phase{"serves (haproxy UP)", time.Now()})
	if pool, err := e.awaitProblem(guest, poolTrigger, fault, 5*time.Second); err == nil {
		if at, err := e.awaitResolved(pool, time.Minute); err == nil {
			r.phases = append(r.phases, phase{"pool problem resolved", at})
		} else {
			t.Errorf("panic: pool problem not resolved: %v", err)
		}
	}
	return r
}

// watchdogHeld starves a guest's watchdog (i6300esb, action none: QEMU leaves the guest running).
// The pushed watchdog event opens the ladder's problem; its repair step finds the guest healthy
// (its service still passes haproxy's check), changes nothing and keeps no evidence; the timed
// ladder's gentle step, {gentleAfter} later, is held because the guest serves (an automatic step
// restarts no serving guest), and the problem stays open for a human with the ladder's messages.
func (e *env) watchdogHeld(t *testing.T, guest string) *repair {
	t.Helper()
	g := e.guests[guest]
	fault := g.StarveWatchdog(t, 5)
	r := &repair{kind: "watchdog", fault: fault, held: "the guest serves: no restart, the problem stays for a human"}
	prob, err := e.awaitProblem(guest, eventTrigger, fault, time.Minute)
	if err != nil {
		t.Error(err)
		return nil
	}
	// the explanation the plugin pushed: kind watchdog, reason none (kvm.domain.event.push keeps no
	// history; its dependent kvm.domain.event.ladder keeps the value's ladder text)
	const fired = "watchdog fired (action none)"
	var pushed time.Time
	if err := harness.Wait(context.Background(), 10*time.Second, 500*time.Millisecond, func() (bool, error) {
		pushed, err = e.firstPushed(guest, "kvm.domain.event.ladder", fired, fault)
		return err == nil, err
	}); err != nil {
		t.Errorf("watchdog: %v", err)
		return nil
	}
	if pushed.Before(fault.Add(-2*time.Second)) || prob.at().Before(pushed) {
		t.Errorf("watchdog: daemon stopped %s, event %s, problem %s: out of order", fault.Format("15:04:05.000"),
			pushed.Format("15:04:05.000"), prob.at().Format("15:04:05.000"))
	}
	r.phases = append(r.phases, phase{"watchdog event pushed", pushed}, phase{"event problem", prob.at()})
	r.notes = append(r.notes, fmt.Sprintf("%s: %q (kvm.domain.event.ladder, the problem has its time)", prob.Name, fired))
	if st := g.State(t); st != "running" {
		t.Errorf("watchdog: guest is %q after its watchdog fired with action none", st)
	}
	a, err := e.awaitAudit(guest, provision.LadderCaller, "repair", fault, 2*time.Minute, func(a ladderAudit) bool { return true })
	if err != nil {
		t.Errorf("watchdog: %v", err)
		return nil
	}
	if a.Outcome != "done" || a.Verdict != "healthy" || a.Evidence != "" || a.Time.Before(prob.at()) {
		t.Errorf("watchdog: repair at %s %s verdict %q evidence %q: %s", a.Time.Format("15:04:05.000"), a.Outcome, a.Verdict, a.Evidence, a.Detail)
	}
	r.phases = append(r.phases, phase{"repair: healthy", a.Time.Add(time.Duration(a.Duration * float64(time.Second)))})
	if v, err := e.ladderLast(guest, "repair done: healthy", 30*time.Second); err != nil {
		t.Errorf("watchdog: %v", err)
	} else {
		r.notes = append(r.notes, "Zabbix was told: "+v)
	}
	if m, err := e.awaitMessage(prob.EventID, "repair done: healthy"); err != nil {
		t.Errorf("watchdog: no message on the problem: %v", err)
	} else {
		r.notes = append(r.notes, "problem message: "+m)
	}
	// the gentle step comes {gentleAfter} later and finds the guest serving: held, not rebooted
	rb, err := e.awaitAudit(guest, provision.LadderCaller, "reboot", fault, gentleAfter+2*time.Minute, func(a ladderAudit) bool { return true })
	if err != nil {
		t.Errorf("watchdog: no gentle step: %v", err)
		return nil
	}
	const serving = "the guest serves (haproxy "
	if rb.Outcome != "held" || !strings.Contains(rb.Detail, serving) || rb.Time.Before(prob.at().Add(gentleAfter-2*time.Second)) {
		t.Errorf("watchdog: gentle step %.1fs after the problem (escalation step %s): %s %q, want held: %s…",
			rb.Time.Sub(prob.at()).Seconds(), gentleAfter, rb.Outcome, rb.Detail, serving)
	}
	r.phases = append(r.phases, phase{"gentle step held (serves)", rb.Time.Add(time.Duration(rb.Duration * float64(time.Second)))})
	if m, err := e.awaitMessage(prob.EventID, "reboot held; "); err != nil {
		t.Errorf("watchdog: the held step told the problem nothing: %v", err)
	} else {
		r.notes = append(r.notes, "problem message: "+m)
	}
	if p, err := e.event(prob.EventID); err != nil || (p.REventID != "" && p.REventID != "0") {
		t.Errorf("watchdog: the problem must stay open for a human (r_eventid %q, %v)", p.REventID, err)
	}
	if st := g.State(t); st != "running" {
		t.Errorf("watchdog: guest is %q after the held step", st)
	}
	return r
}

// watchdogNeverRestarted checks, once the scenario's later steps gave the watchdog's ladder time
// to reach its forced step, that no step of it restarted the serving guest: each was held.
func (e *env) watchdogNeverRestarted(t *testing.T, guest string, since time.Time) {
	t.Helper()
	as := e.zabbixAudit(guest, since)
	for _, a := range as {
		switch a.Verb {
		case "reboot", "reset", "forced-restart", "recover", "start", "destroy":
			if a.Outcome != "held" {
				t.Errorf("watchdog: %s %s on the serving guest: %s", a.Verb, a.Outcome, describeAudit(as))
			}
		}
	}
	if _, ok := firstVerb(as, "reboot"); !ok {
		t.Errorf("watchdog: no gentle step at all: %s", describeAudit(as))
	}
	t.Logf("watchdog: the ladder's steps on the serving guest: %s", describeAudit(as))
}

// ioErrorHeld fills a guest's disk until QEMU pauses it on the I/O error: the storage problem
// opens from the event and pages; the ladder's repair step holds it (verdict io-error); nothing
// restarts it.
func (e *env) ioErrorHeld(t *testing.T, guest string) {
	t.Helper()
	g := e.guests[guest]
	fault := time.Now()
	g.FillDisk(t)
	prob, err := e.awaitProblem(guest, storageTrigger, fault, time.Minute)
	if err != nil {
		t.Error(err)
		return
	}
	if prob.Severity != "4" {
		t.Errorf("storage problem severity %s, want 4 (High)", prob.Severity)
	}
	msg := fmt.Sprintf("event → problem %.2fs: %s", prob.at().Sub(fault).Seconds(), prob.Name)
	t.Log("I/O error pause: " + msg)
	fmt.Println("EVENT io-error-pause: " + msg)
	subject := "Problem: Guest " + guest + " paused on a storage I/O error"
	if err := harness.Wait(context.Background(), time.Minute, 500*time.Millisecond, func() (bool, error) {
		return len(e.zbx.SMTP.Find(subject)) > 0, fmt.Errorf("no mail %q", subject)
	}); err != nil {
		t.Errorf("storage page: %v", err)
	}
	a, err := e.awaitAudit(guest, provision.LadderCaller, "repair", fault, 2*time.Minute, func(a ladderAudit) bool { return true })
	if err != nil {
		t.Errorf("I/O error: %v", err)
		return
	}
	if a.Outcome != "held" || a.Verdict != "io-error" {
		t.Errorf("I/O error: repair %s verdict %q: %s", a.Outcome, a.Verdict, a.Detail)
	}
	if v, err := e.ladderLast(guest, "repair held: io-error", 30*time.Second); err != nil {
		t.Errorf("I/O error: %v", err)
	} else {
		t.Logf("I/O error: Zabbix was told %q", v)
	}
	if st := g.State(t); st != "paused" {
		t.Errorf("I/O error: guest is %q: something restarted it", st)
	}
}
