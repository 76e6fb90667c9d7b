//go:build integration

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/internal/provision"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

// The guest that can never come back: no kernel, no disk, it sits in SeaBIOS, ignores ACPI and
// never serves HTTP. It has no agent either, so its address comes from the domain metadata.
var deadGuest = guestSpec{name: "web-03", opts: lab.GuestOpts{Start: true, NoKernel: true}, metadataIP: true}

// TestScenarioSeed is issue 6's scenario: one hypervisor, three guests, the recovery ladder run by
// a real Zabbix server. Two guests break in parallel and must be repaired (one by the gentle step,
// one only by the forced step); the third cannot be repaired and must reach the page. Then an
// operator's intent must win (issue 9): a spoofed DOWN, a drained guest and a guest on hold fail
// without a ladder problem or a command.
func TestScenarioSeed(t *testing.T) {
	e := startEnv(t, []guestSpec{{name: "web-01", opts: servingGuest}, {name: "web-02", opts: servingGuest}, deadGuest})
	e.checkHypervisorItems()

	// web-03 has been out of the pool since its first poll: its ladder already runs.
	pageDone := make(chan error, 1)
	var page *repair
	go func() {
		var err error
		page, err = e.awaitPage(deadGuest.name)
		pageDone <- err
	}()

	faults, ws := e.breakAll(t, failures)
	rs, err := e.repairAll(failures, faults, ws)
	for _, r := range rs {
		if r != nil {
			report(t, r)
		}
	}
	if err != nil {
		t.Error(err)
	} else {
		e.checkOperatorIntent(t)
	}
	if err := <-pageDone; err != nil {
		t.Error(err)
	}
	if page != nil {
		for _, l := range page.lines() {
			l = strings.Replace(l, "MTTR", "PAGE", 1)
			t.Log(l)
			fmt.Println(l)
		}
	}
	if screenshotsWanted() && !t.Failed() && rs[0] != nil {
		e.screenshots(t, rs[0])
	}
}

// checkHypervisorItems waits until every item of the hypervisor host is supported and has a value,
// and the ladder's prerequisites hold for the agent's user (kvm.actions.check).
func (e *env) checkHypervisorItems() {
	e.t.Helper()
	want := []string{"agent.ping", "kvm.hypervisor.ping", "kvm.hypervisor.domains.running", "haproxy.version",
		"haproxy.server.state[web,web-01]", "haproxy.proxy.status[web,BACKEND]", "kvm.actions.ok", "kvm.actions.problems",
		"haproxy.backend.up.pct[web]"}
	var its []item
	harness.WaitFor(e.t, 2*time.Minute, 2*time.Second, "values for every item of "+hypervisor, func() (bool, error) {
		its = e.items(e.hosts[hypervisor])
		if bad := itemProblems(its, want); len(bad) > 0 {
			return false, fmt.Errorf("%d items of %d not ready: %s", len(bad), len(its), strings.Join(bad, "; "))
		}
		return true, nil
	})
	vals := map[string]string{}
	for _, it := range its {
		vals[it.Key] = it.LastValue
	}
	if vals["kvm.actions.ok"] != "1" {
		e.t.Errorf("kvm.actions.ok = %q: the ladder's commands cannot run here: %s", vals["kvm.actions.ok"], vals["kvm.actions.problems"])
	}
}

// awaitPage follows the guest that cannot come back up the whole ladder: the out-of-pool problem
// and its email, the gentle restart (ignored), the forced restart (done, to no avail), and, once
// the guest has been out of the pool for {$KVM.PAGE.AFTER}, the Disaster problem and the page.
func (e *env) awaitPage(guest string) (*repair, error) {
	poolTrig, err := e.triggerID(guest, poolTrigger)
	if err != nil {
		return nil, err
	}
	pageTrig, err := e.triggerID(guest, pageTrigger)
	if err != nil {
		return nil, err
	}
	var prob event
	err = harness.Wait(context.Background(), 2*time.Minute, time.Second, func() (bool, error) {
		ev, ok, err := e.firstProblem(poolTrig, time.Unix(0, 0))
		prob = ev
		return ok, err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: no out-of-pool problem: %w", guest, err)
	}
	var pg event
	err = harness.Wait(context.Background(), pageAfter+gentleAfter+forcedAfter+2*time.Minute, time.Second, func() (bool, error) {
		ev, ok, err := e.firstProblem(pageTrig, prob.at())
		pg = ev
		return ok, err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: no page problem %q: %w; audit: %s", guest, pageTrigger, err, describeAudit(e.zabbixAudit(guest, prob.at())))
	}
	var errs []string
	miss := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if pg.Severity != "5" || prob.Severity != "4" {
		miss("severities: page %s (want 5, Disaster), pool %s (want 4, High)", pg.Severity, prob.Severity)
	}
	if age := pg.at().Sub(prob.at()); age < pageAfter-2*time.Second {
		miss("page problem %.1fs after the out-of-pool problem, before {$KVM.PAGE.AFTER}=%s", age.Seconds(), pageAfter)
	}
	subject := fmt.Sprintf("Problem: Guest %s out of the haproxy pool for %ds", guest, int(pageAfter/time.Second))
	var pageMail time.Time
	err = harness.Wait(context.Background(), time.Minute, 500*time.Millisecond, func() (bool, error) {
		ms := e.zbx.SMTP.Find(subject)
		if len(ms) == 0 {
			return false, fmt.Errorf("%d messages, none %q", len(e.zbx.SMTP.Messages()), subject)
		}
		pageMail = ms[0].At
		return true, nil
	})
	if err != nil {
		miss("page email: %v", err)
	}
	pageAct, _ := e.rep.Find("action", provision.PageAction)
	if as, missing := e.awaitAlerts(pg.EventID, pageAct.ID, []alertStep{{"0", "1", "page message"}}); len(missing) > 0 {
		miss("alert.get: the page action did not do %s: %s", strings.Join(missing, ", "), describeAlerts(as))
	}
	ladder, _ := e.rep.Find("action", provision.LadderAction)
	if as, missing := e.awaitAlerts(prob.EventID, ladder.ID, []alertStep{{"0", "1", "email"}, {"1", "2", "gentle restart"},
		{"1", "3", "forced restart"}}); len(missing) > 0 {
		miss("alert.get: the ladder did not do %s: %s", strings.Join(missing, ", "), describeAlerts(as))
	}
	var mail time.Time
	if ms := e.zbx.SMTP.Find(fmt.Sprintf("Problem: Guest %s is out of the haproxy pool", guest)); len(ms) > 0 {
		mail = ms[0].At
	} else {
		miss("no ladder email for %s", guest)
	}
	audit := e.zabbixAudit(guest, prob.at().Add(-time.Second))
	gentle, okG := firstVerb(audit, "reboot")
	forced, okF := firstVerb(audit, "forced-restart")
	switch {
	case !okG || gentle.Outcome == "done":
		miss("audit log: want a gentle reboot that the guest ignored: %s", describeAudit(audit))
	case !okF || forced.Outcome != "done" || !strings.Contains(forced.Detail, "reset:done"):
		miss("audit log: want a forced restart done by its reset: %s", describeAudit(audit))
	case pg.at().Before(forced.Time):
		miss("the page (%s) came before the forced restart (%s)", pg.at().Format("15:04:05"), forced.Time.Format("15:04:05"))
	}
	r := &repair{kind: "cannot-come-back", fault: prob.at()}
	for _, p := range []phase{{"problem opened", prob.at()}, {"email delivered", mail}, {"gentle restart cmd", gentle.Time},
		{"forced restart cmd", forced.Time}, {"page problem opened", pg.at()}, {"page email delivered", pageMail}} {
		if !p.at.IsZero() {
			r.phases = append(r.phases, p)
		}
	}
	if len(errs) > 0 {
		return r, fmt.Errorf("%s: %s", guest, strings.Join(errs, "\n"))
	}
	return r, nil
}
