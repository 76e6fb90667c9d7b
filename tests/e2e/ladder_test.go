//go:build integration

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/internal/provision"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

// Trigger names (descriptions with macros unexpanded) of the guest template the ladder works on.
const (
	poolTrigger = "Guest {$KVM.DOMAIN} is out of the haproxy pool"
	pageTrigger = "Guest {$KVM.DOMAIN} out of the haproxy pool for {$KVM.PAGE.AFTER}"
)

// failure is one kind of guest failure the ladder must repair.
type failure struct {
	kind   string // printed in "MTTR <kind>: ..."
	guest  string
	what   string
	forced bool // the gentle restart cannot work: the forced step must
	inject func(t testing.TB, g *lab.Guest)
}

// The two failure kinds of the scenario and the benchmark, and their guests.
var failures = []failure{
	{kind: "hung-guest", guest: "web-01", what: "QEMU SIGSTOPped: no gentle request reaches the guest", forced: true,
		inject: func(t testing.TB, g *lab.Guest) { g.Freeze(t) }},
	{kind: "dead-httpd", guest: "web-02", what: "httpd killed inside the guest: a gentle reboot repairs it",
		inject: func(t testing.TB, g *lab.Guest) { g.KillHTTPD(t) }},
}

var servingGuest = lab.GuestOpts{Start: true, Agent: true, ACPI: true}

// phase is one observed moment of a repair.
type phase struct {
	name string
	at   time.Time
}

// repair is what one failure's run observed, in order of the ladder.
type repair struct {
	kind   string
	fault  time.Time
	phases []phase
	notes  []string // observations that are not failures of the ladder (see docs/e2e.md)
	// held, when set, says why the ladder rightly restarted nothing: there is no MTTR to print
	held string
	// the Zabbix problem the ladder worked on
	eventID, triggerID string
}

func (r *repair) mttr() time.Duration { return r.phases[len(r.phases)-1].at.Sub(r.fault) }

// lines renders "MTTR <kind>: <s>s" and one line per phase, relative to the fault.
func (r *repair) lines() []string {
	out := []string{fmt.Sprintf("MTTR %s: %.1fs", r.kind, r.mttr().Seconds())}
	if r.held != "" {
		out[0] = fmt.Sprintf("HELD %s: %s; last step +%.1fs", r.kind, r.held, r.mttr().Seconds())
	}
	prev := r.fault
	for _, p := range r.phases {
		out = append(out, fmt.Sprintf("    %-22s +%6.1fs  (step %5.1fs)", p.name, p.at.Sub(r.fault).Seconds(), p.at.Sub(prev).Seconds()))
		prev = p.at
	}
	for _, n := range r.notes {
		out = append(out, "    note: "+n)
	}
	return out
}

// report prints a repair to the test log and to stdout, so CI logs show it without -v.
func report(t testing.TB, r *repair) {
	for _, l := range r.lines() {
		t.Log(l)
		fmt.Println(l)
	}
}

// watch records, from the outside, when haproxy took the guest out and back and when the guest
// answered HTTP again: the phases Zabbix does not timestamp.
type watch struct {
	mu             sync.Mutex
	down, up, http time.Time
	stop           chan struct{}
	wg             sync.WaitGroup
}

func (e *env) watchGuest(g *lab.Guest) *watch {
	w := &watch{stop: make(chan struct{})}
	w.wg.Add(2)
	go func() {
		defer w.wg.Done()
		for {
			if st, err := e.serverStatus(g.Name()); err == nil {
				now := time.Now()
				w.mu.Lock()
				if w.down.IsZero() && st == "DOWN" {
					w.down = now
				} else if !w.down.IsZero() && w.up.IsZero() && st == "UP" {
					w.up = now
				}
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	go func() {
		defer w.wg.Done()
		failed := false
		for {
			code, _, err := g.HTTP("/", time.Second)
			now := time.Now()
			if err != nil || code != http.StatusOK {
				failed = true
			} else if failed {
				w.mu.Lock()
				if w.http.IsZero() {
					w.http = now
				}
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *watch) close() (down, up, httpBack time.Time) {
	close(w.stop)
	w.wg.Wait()
	return w.down, w.up, w.http
}

type event struct {
	EventID  string `json:"eventid"`
	Clock    int64  `json:"clock,string"`
	NS       int64  `json:"ns,string"`
	REventID string `json:"r_eventid"`
	Name     string `json:"name"`
	Severity string `json:"severity"`
}

func (ev event) at() time.Time { return time.Unix(ev.Clock, ev.NS) }

// triggerID finds a guest host's trigger by its (unexpanded) name.
func (e *env) triggerID(host, description string) (string, error) {
	var trs []struct {
		TriggerID   string `json:"triggerid"`
		Description string `json:"description"`
	}
	if err := e.try("trigger.get", map[string]any{"hostids": e.hosts[host], "output": []string{"triggerid", "description"}}, &trs); err != nil {
		return "", err
	}
	for _, tr := range trs {
		if tr.Description == description {
			return tr.TriggerID, nil
		}
	}
	return "", fmt.Errorf("host %s has no trigger %q", host, description)
}

// firstProblem returns the first problem event of the trigger at or after since.
func (e *env) firstProblem(triggerID string, since time.Time) (event, bool, error) {
	var evs []event
	if err := e.try("event.get", map[string]any{"objectids": triggerID, "source": 0, "object": 0, "value": 1,
		"time_from": since.Unix(), "output": []string{"eventid", "clock", "ns", "r_eventid", "name", "severity"},
		"sortfield": []string{"clock", "eventid"}, "sortorder": "ASC"}, &evs); err != nil {
		return event{}, false, err
	}
	for _, ev := range evs {
		if !ev.at().Before(since.Truncate(time.Second)) {
			return ev, true, nil
		}
	}
	return event{}, false, nil
}

func (e *env) event(id string) (event, error) {
	var evs []event
	if err := e.try("event.get", map[string]any{"eventids": id, "output": []string{"eventid", "clock", "ns", "r_eventid", "name"}}, &evs); err != nil {
		return event{}, err
	}
	if len(evs) != 1 {
		return event{}, fmt.Errorf("event %s: got %d events", id, len(evs))
	}
	return evs[0], nil
}

type alert struct {
	ActionID  string `json:"actionid"`
	AlertType string `json:"alerttype"` // 0 message, 1 remote command
	Status    string `json:"status"`    // message: 1 sent; command: 1 executed
	EscStep   string `json:"esc_step"`
	Clock     int64  `json:"clock,string"`
	Error     string `json:"error"`
	Subject   string `json:"subject"`
	SendTo    string `json:"sendto"`
}

func (e *env) alerts(eventID string) ([]alert, error) {
	var as []alert
	err := e.try("alert.get", map[string]any{"eventids": eventID,
		"output": []string{"actionid", "alerttype", "status", "esc_step", "clock", "error", "subject", "sendto"}}, &as)
	return as, err
}

// alertStep is one escalation step an action must have done: kind 0 message sent, 1 command executed.
type alertStep struct{ kind, step, what string }

// awaitAlerts waits (the alerter records a delivery a moment after it) until the action did every
// step for the event, and returns the alerts and one message per step still missing.
func (e *env) awaitAlerts(eventID, actionID string, steps []alertStep) ([]alert, []string) {
	var as []alert
	var missing []string
	err := harness.Wait(context.Background(), 30*time.Second, 500*time.Millisecond, func() (bool, error) {
		var err error
		if as, err = e.alerts(eventID); err != nil {
			return false, err
		}
		missing = missing[:0]
		for _, s := range steps {
			if !alertDone(as, actionID, s.kind, s.step) {
				missing = append(missing, fmt.Sprintf("step %s (%s)", s.step, s.what))
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil && len(missing) == 0 {
		missing = append(missing, err.Error())
	}
	return as, missing
}

// alertDone says whether the action sent the message (kind 0) or ran the command (kind 1) of step.
func alertDone(as []alert, actionID, kind, step string) bool {
	for _, a := range as {
		if a.ActionID == actionID && a.AlertType == kind && a.EscStep == step && a.Status == "1" {
			return true
		}
	}
	return false
}

func describeAlerts(as []alert) string {
	var b []string
	for _, a := range as {
		b = append(b, fmt.Sprintf("{action %s type %s step %s status %s %q %s}", a.ActionID, a.AlertType, a.EscStep, a.Status, a.Subject, a.Error))
	}
	return strings.Join(b, " ")
}

// zabbixAudit returns the audit lines that close an action (phase end) the Zabbix remote commands
// (caller zabbix) wrote for domain since t0, in order.
func (e *env) zabbixAudit(domain string, t0 time.Time) []auditEntry {
	var out []auditEntry
	for _, a := range e.auditLog() {
		if a.Verb == "?" || a.Phase != "begin" && a.Caller == "zabbix" && a.Domain == domain && !a.Time.Before(t0) {
			out = append(out, a)
		}
	}
	return out
}

func firstVerb(as []auditEntry, verb string) (auditEntry, bool) {
	for _, a := range as {
		if a.Verb == verb {
			return a, true
		}
	}
	return auditEntry{}, false
}

func describeAudit(as []auditEntry) string {
	var b []string
	for _, a := range as {
		b = append(b, fmt.Sprintf("{%s %s %s %.1fs %q}", a.Time.Format("15:04:05.000"), a.Verb, a.Outcome, a.Duration, a.Detail))
	}
	return strings.Join(b, " ")
}

// repairTimeout bounds one repair: two escalation periods, a reset that times out, a destroy of a
// stopped QEMU (~12 s), a boot under TCG on a loaded machine (up to ~35 s), and slack.
const repairTimeout = 6 * time.Minute

// awaitRepair follows one injected failure through the ladder until its problem resolved, checks
// every observable step and returns the timed phases. It never calls t.Fatal (the benchmark runs
// it in goroutines); the error says which step is missing.
func (e *env) awaitRepair(f failure, fault time.Time, w *watch) (*repair, error) {
	trig, err := e.triggerID(f.guest, poolTrigger)
	if err != nil {
		return nil, err
	}
	var prob event
	err = harness.Wait(context.Background(), 90*time.Second, 250*time.Millisecond, func() (bool, error) {
		ev, ok, err := e.firstProblem(trig, fault)
		prob = ev
		return ok, err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: no out-of-pool problem for %s after the fault: %w", f.kind, f.guest, err)
	}
	var resolved event
	err = harness.Wait(context.Background(), repairTimeout, time.Second, func() (bool, error) {
		ev, err := e.event(prob.EventID)
		if err != nil {
			return false, err
		}
		if ev.REventID == "0" || ev.REventID == "" {
			return false, fmt.Errorf("problem %s (%s) still open; audit: %s", prob.EventID, prob.Name, describeAudit(e.zabbixAudit(f.guest, fault)))
		}
		resolved, err = e.event(ev.REventID)
		return err == nil, err
	})
	down, up, httpBack := w.close()
	if err != nil {
		return nil, fmt.Errorf("%s: problem of %s not resolved: %w", f.kind, f.guest, err)
	}
	var errs []error
	miss := func(format string, args ...any) { errs = append(errs, fmt.Errorf(f.kind+": "+format, args...)) }

	if down.IsZero() {
		miss("haproxy never showed %s DOWN", f.guest)
	}
	if up.IsZero() {
		miss("haproxy never showed %s UP again", f.guest)
	}
	if httpBack.IsZero() {
		miss("%s never answered HTTP 200 again", f.guest)
	}

	// the problem mail of step 1 (and the recovery mail) in the SMTP sink
	subject := fmt.Sprintf("Problem: Guest %s is out of the haproxy pool", f.guest)
	var mail time.Time
	for _, m := range e.zbx.SMTP.Find(subject) {
		if m.At.After(fault) && (mail.IsZero() || m.At.Before(mail)) {
			mail = m.At
			if len(m.To) != 1 || m.To[0] != oncall {
				miss("ladder email went to %v, want %s", m.To, oncall)
			}
		}
	}
	if mail.IsZero() {
		miss("no email %q in the SMTP sink (%d messages)", subject, len(e.zbx.SMTP.Messages()))
	}
	err = harness.Wait(context.Background(), 60*time.Second, 500*time.Millisecond, func() (bool, error) {
		for _, m := range e.zbx.SMTP.Find("Resolved in", fmt.Sprintf("Guest %s is out of the haproxy pool", f.guest)) {
			if m.At.After(fault) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		miss("no recovery email for %s", f.guest)
	}

	// the remote commands, as Zabbix recorded them and as the plugin audited them
	ladder, _ := e.rep.Find("action", provision.LadderAction)
	steps := []alertStep{{"0", "1", "email"}, {"1", "2", "gentle restart command"}}
	if f.forced {
		steps = append(steps, alertStep{"1", "3", "forced restart command"})
	}
	as, missing := e.awaitAlerts(prob.EventID, ladder.ID, steps)
	if len(missing) > 0 {
		miss("alert.get: ladder did not do %s: %s", strings.Join(missing, ", "), describeAlerts(as))
	}
	if !f.forced && alertDone(as, ladder.ID, "1", "3") {
		miss("alert.get: the forced restart ran although the gentle one should have repaired it: %s", describeAlerts(as))
	}
	audit := e.zabbixAudit(f.guest, fault)
	gentle, ok := firstVerb(audit, "reboot")
	if !ok {
		miss("audit log: no reboot by caller zabbix: %s", describeAudit(audit))
	}
	var forced auditEntry
	if f.forced {
		if gentle.Outcome == "done" {
			miss("audit log: the gentle reboot of a stopped QEMU cannot be done, got %+v", gentle)
		}
		// a stopped QEMU answers no monitor command: forced-restart skips the reset when the
		// monitor is seen hung (or the reset fails), and destroy + start repair it; its audit
		// line lists each step with its outcome ("reset:skipped destroy_start:done")
		fr, ok := firstVerb(audit, "forced-restart")
		switch {
		case !ok:
			miss("audit log: no forced restart by caller zabbix: %s", describeAudit(audit))
		case fr.Outcome != "done":
			miss("audit log: forced restart %s: %s", fr.Outcome, describeAudit(audit))
		case !strings.Contains(fr.Detail, "reset:done") && !strings.Contains(fr.Detail, "destroy_start:done"):
			miss("audit log: forced restart done by neither a reset nor destroy+start: %s", describeAudit(audit))
		case strings.Contains(fr.Detail, "reset:done") && strings.Contains(fr.Detail, "destroy_start"):
			miss("audit log: destroy+start ran after a successful reset: %s", describeAudit(audit))
		}
		forced = fr
	} else {
		if gentle.Outcome != "done" {
			miss("audit log: gentle reboot %s: %s", gentle.Outcome, describeAudit(audit))
		}
		for _, a := range audit {
			if a.Verb == "forced-restart" || a.Verb == "reset" || a.Verb == "destroy" {
				miss("audit log: forced %s although the gentle reboot repaired the guest: %s", a.Verb, describeAudit(audit))
			}
		}
	}

	// the plugin pushed the DOWN to the guest host (the problem may open on it within a second)
	pushed, perr := e.firstPushed(f.guest, "kvm.domain.pool.push", "DOWN", fault)
	if perr != nil {
		miss("%v", perr)
	}

	// The pushed UP lets the problem resolve within a second of haproxy's UP; without it the last
	// pushed DOWN holds the problem open for {$KVM.PUSH.HOLD}. Reported, not failed: the guest is
	// repaired either way.
	upFrom := fault
	if !pushed.IsZero() {
		upFrom = pushed
	}
	pushedUp, uerr := e.firstPushed(f.guest, "kvm.domain.pool.push", "UP", upFrom)
	r := &repair{kind: f.kind, fault: fault, eventID: prob.EventID, triggerID: trig}
	if uerr != nil {
		r.notes = append(r.notes, uerr.Error()+": the problem stayed open until the pushed DOWN aged out of {$KVM.PUSH.HOLD}")
	}
	add := func(name string, at time.Time) {
		if !at.IsZero() {
			r.phases = append(r.phases, phase{name, at})
		}
	}
	add("haproxy DOWN", down)
	add("push DOWN received", pushed)
	add("problem opened", prob.at())
	add("email delivered", mail)
	add("gentle restart cmd", gentle.Time)
	if f.forced {
		add("forced restart cmd", forced.Time)
	}
	add("HTTP 200 again", httpBack)
	add("haproxy UP", up)
	add("push UP received", pushedUp)
	add("problem resolved", resolved.at())
	sort.SliceStable(r.phases, func(i, j int) bool { return r.phases[i].at.Before(r.phases[j].at) })

	// causal order, with a second of slack for clocks read by different processes
	order := []struct{ a, b string }{{"haproxy DOWN", "problem opened"}, {"problem opened", "gentle restart cmd"},
		{"gentle restart cmd", "forced restart cmd"}, {"forced restart cmd", "HTTP 200 again"},
		{"gentle restart cmd", "HTTP 200 again"}, {"HTTP 200 again", "haproxy UP"}, {"haproxy UP", "problem resolved"}}
	at := map[string]time.Time{}
	for _, p := range r.phases {
		at[p.name] = p.at
	}
	for _, o := range order {
		a, okA := at[o.a]
		b, okB := at[o.b]
		if okA && okB && b.Before(a.Add(-time.Second)) {
			miss("%s (%s) came before %s (%s)", o.b, b.Format("15:04:05.000"), o.a, a.Format("15:04:05.000"))
		}
	}
	if g, ok := at["gentle restart cmd"]; ok && g.Sub(prob.at()) < gentleAfter-2*time.Second {
		miss("gentle restart %.1fs after the problem, before the %s escalation step", g.Sub(prob.at()).Seconds(), gentleAfter)
	}
	if len(errs) > 0 {
		return r, fmt.Errorf("%w\nphases:\n%s", errors.Join(errs...), strings.Join(r.lines(), "\n"))
	}
	return r, nil
}

// firstPushed is the time of the first value want of a character item of the guest host after t0:
// for the trapper item kvm.domain.pool.push, when the server received the plugin's pushed status;
// for kvm.domain.event.ladder, the pushed event's time (libvirt's callback).
func (e *env) firstPushed(host, key, want string, t0 time.Time) (time.Time, error) {
	var its []struct {
		ItemID string `json:"itemid"`
	}
	if err := e.try("item.get", map[string]any{"hostids": e.hosts[host], "filter": map[string]any{"key_": key},
		"output": []string{"itemid"}}, &its); err != nil {
		return time.Time{}, err
	}
	if len(its) != 1 {
		return time.Time{}, fmt.Errorf("host %s: %d %s items", host, len(its), key)
	}
	var hist []struct {
		Clock int64  `json:"clock,string"`
		NS    int64  `json:"ns,string"`
		Value string `json:"value"`
	}
	if err := e.try("history.get", map[string]any{"itemids": its[0].ItemID, "history": 1, "time_from": t0.Unix(),
		"sortfield": "clock", "sortorder": "ASC", "output": "extend"}, &hist); err != nil {
		return time.Time{}, err
	}
	var seen []string
	for _, h := range hist {
		seen = append(seen, h.Value)
		if h.Value == want {
			return time.Unix(h.Clock, h.NS), nil
		}
	}
	return time.Time{}, fmt.Errorf("push: no %q in %s %s since the fault (got %v)", want, host, key, seen)
}

// breakAll injects every failure, one right after the other, and starts watching each guest
// before its fault so the DOWN transition is not missed.
func (e *env) breakAll(t testing.TB, fs []failure) ([]time.Time, []*watch) {
	faults := make([]time.Time, len(fs))
	watches := make([]*watch, len(fs))
	for i, f := range fs {
		g := e.guests[f.guest]
		watches[i] = e.watchGuest(g)
		faults[i] = time.Now()
		f.inject(t, g)
		t.Logf("%s: %s (%s)", f.kind, f.what, f.guest)
	}
	return faults, watches
}

// repairAll waits for every failure's repair in parallel.
func (e *env) repairAll(fs []failure, faults []time.Time, ws []*watch) ([]*repair, error) {
	rs := make([]*repair, len(fs))
	errs := make([]error, len(fs))
	var wg sync.WaitGroup
	for i := range fs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs[i], errs[i] = e.awaitRepair(fs[i], faults[i], ws[i])
		}()
	}
	wg.Wait()
	return rs, errors.Join(errs...)
}

// settle waits until every serving guest is back in the pool with no open ladder problem, so the
// next run starts from a healthy service.
func (e *env) settle(fs []failure) error {
	for _, f := range fs {
		trig, err := e.triggerID(f.guest, poolTrigger)
		if err != nil {
			return err
		}
		err = harness.Wait(context.Background(), 2*time.Minute, time.Second, func() (bool, error) {
			st, err := e.serverStatus(f.guest)
			if err != nil || st != "UP" {
				return false, fmt.Errorf("%s haproxy %s %v", f.guest, st, err)
			}
			var ps []map[string]any
			if err := e.try("problem.get", map[string]any{"objectids": trig, "output": []string{"eventid"}}, &ps); err != nil {
				return false, err
			}
			return len(ps) == 0, fmt.Errorf("%s: %d open pool problems", f.guest, len(ps))
		})
		if err != nil {
			return err
		}
	}
	return nil
}
