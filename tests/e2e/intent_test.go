//go:build integration

package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

const heldOutTrigger = "Guest {$KVM.DOMAIN} held out of the haproxy pool by an operator"

// checkOperatorIntent runs once web-01 and web-02 are repaired: what an operator meant wins over
// the ladder, through the real server, agent, plugin, haproxy and guests. A spoofed DOWN from
// another address is refused; web-01 drained in haproxy and then failing its check is no failure;
// web-02 on hold and failing gets no problem. "No remote command" follows from "no ladder problem"
// (the Actions start only on a problem event) and is also read from the audit log. Every
// "stays closed" is checked after the server has evaluated the trigger on the new values.
func (e *env) checkOperatorIntent(t *testing.T) {
	t.Helper()
	t0 := time.Now()
	web1, web2 := e.guests["web-01"], e.guests["web-02"]
	pool1, err := e.triggerID("web-01", poolTrigger)
	if err != nil {
		t.Fatal(err)
	}
	pool2, err := e.triggerID("web-02", poolTrigger)
	if err != nil {
		t.Fatal(err)
	}
	heldOut1, err := e.triggerID("web-01", heldOutTrigger)
	if err != nil {
		t.Fatal(err)
	}

	// Only the hypervisor may push: a DOWN from 127.0.0.2 is refused by the server.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.zbx.SendFrom(ctx, "127.0.0.2", web2.UUID(), "kvm.domain.pool.push", "DOWN"); err == nil {
		t.Error("a DOWN for web-02 pushed from 127.0.0.2 was accepted")
	}

	// An operator drains web-01, then its service dies: haproxy says DOWN, the operator said drain.
	if err := e.hapc.SetServerState(ctx, backend, "web-01", "drain"); err != nil {
		t.Fatal(err)
	}
	web1.KillHTTPD(t)
	harness.WaitFor(t, 60*time.Second, time.Second, "web-01 held out of the pool by an operator (informational problem)", func() (bool, error) {
		_, ok, err := e.firstProblem(heldOut1, t0)
		return ok, err
	})
	e.waitItem(t, "web-01", "kvm.domain.haproxy.status", "DOWN")
	if open := e.problemOpen(t, pool1); open {
		t.Error("web-01, drained by an operator, got the ladder's problem")
	}

	// web-02 on hold, then its service dies.
	out, err := exec.Command(e.bin, "-c", e.kvmConf, "--caller", "cli:e2e", "hold", "web-02", "--for", "30m", "--reason", "e2e operator").CombinedOutput()
	if err != nil {
		t.Fatalf("hold web-02: %v\n%s", err, out)
	}
	e.waitItem(t, "web-02", "kvm.domain.held", "1")
	web2.KillHTTPD(t)
	e.waitItem(t, "web-02", "kvm.domain.pool.in", "0")
	if open := e.problemOpen(t, pool2); open {
		t.Error("web-02, on hold, got the ladder's problem")
	}

	for _, a := range e.auditLog() {
		if a.Time.After(t0) && a.Verb != "hold" && (a.Domain == "web-01" || a.Domain == "web-02") {
			t.Errorf("action on a guest an operator holds: %+v", a)
		}
	}
	t.Logf("operator intent: spoofed DOWN refused, drained web-01 and held web-02 failing without a ladder problem (%.1fs)", time.Since(t0).Seconds())
}

// waitItem waits until the host's item has the value want.
func (e *env) waitItem(t *testing.T, host, key, want string) {
	t.Helper()
	harness.WaitFor(t, 60*time.Second, time.Second, fmt.Sprintf("%s %s = %s", host, key, want), func() (bool, error) {
		for _, it := range e.items(e.hosts[host]) {
			if it.Key == key {
				return it.LastValue == want, fmt.Errorf("%s = %q", key, it.LastValue)
			}
		}
		return false, fmt.Errorf("%s has no item %s", host, key)
	})
}

func (e *env) problemOpen(t *testing.T, triggerID string) bool {
	t.Helper()
	var ps []map[string]any
	e.call("problem.get", map[string]any{"objectids": triggerID, "output": []string{"eventid"}}, &ps)
	return len(ps) > 0
}
