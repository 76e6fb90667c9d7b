//go:build integration

package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/internal/provision"
	"zabbix-agent2-plugin-kvm/tests/harness"
)

// screenshotsWanted: KVM_SCREENSHOTS=1 makes the scenario save pictures of the Zabbix frontend into
// docs/img/ with Debian's chromium (apt-get install chromium); CI does not set it.
func screenshotsWanted() bool { return os.Getenv("KVM_SCREENSHOTS") == "1" }

// screenshots opens the frontend to the "guest" user with read access to the KVM host groups (no
// login form to drive headless) and saves what an admin sees after the scenario: the discovered
// guest hosts, the problems (resolved and the paged one), and the recovered problem's event page
// with the ladder's steps.
func (e *env) screenshots(t *testing.T, r *repair) {
	guests, _ := e.rep.Find("host group", provision.GuestGroup)
	e.shoot(t, []shot{
		{"zabbix-guest-hosts.png", "zabbix.php?action=host.view&filter_groupids%5B%5D=" + guests.ID + "&filter_set=1"},
		{"zabbix-problems.png", "zabbix.php?action=problem.view&filter_set=1&show=1&filter_show_timeline=0"},
		{"zabbix-recovered-problem.png", fmt.Sprintf("tr_events.php?triggerid=%s&eventid=%s", r.triggerID, r.eventID)},
	})
}

// shot is a frontend page (path under the frontend's URL) and the file in docs/img it is saved to.
type shot struct{ file, path string }

// guestCanRead gives the frontend's "guest" user read access to the KVM host groups, the
// "KVM guests/<hypervisor>" groups the host prototype made included.
func (e *env) guestCanRead(t *testing.T) {
	t.Helper()
	var groups []struct {
		ID string `json:"usrgrpid"`
	}
	e.call("usergroup.get", map[string]any{"filter": map[string]any{"name": "Guests"}, "output": []string{"usrgrpid"}}, &groups)
	var users []struct {
		ID string `json:"userid"`
	}
	e.call("user.get", map[string]any{"filter": map[string]any{"username": "guest"}, "output": []string{"userid"}}, &users)
	if len(groups) != 1 || len(users) != 1 {
		t.Fatalf("screenshots: no Guests group (%v) or guest user (%v)", groups, users)
	}
	var rights []map[string]any
	for _, g := range []string{provision.GuestGroup, provision.HypervisorGroup} {
		hg, _ := e.rep.Find("host group", g)
		rights = append(rights, map[string]any{"id": hg.ID, "permission": 2})
	}
	// also the "KVM guests/<hypervisor>" groups the host prototype made
	var sub []struct {
		ID string `json:"groupid"`
	}
	e.call("hostgroup.get", map[string]any{"search": map[string]any{"name": provision.GuestGroup + "/"}, "output": []string{"groupid"}}, &sub)
	for _, g := range sub {
		rights = append(rights, map[string]any{"id": g.ID, "permission": 2})
	}
	e.call("usergroup.update", map[string]any{"usrgrpid": groups[0].ID, "users_status": 0, "gui_access": 0, "hostgroup_rights": rights}, nil)
	e.call("user.update", map[string]any{"userid": users[0].ID, "usrgrps": []map[string]any{{"usrgrpid": groups[0].ID}}}, nil)
}

// shoot saves each page, as the read-only guest user sees it, with headless chromium; a missing,
// tiny or repeated picture (a login or error page) fails the test.
func (e *env) shoot(t *testing.T, shots []shot) {
	t.Helper()
	chromium := harness.RequireTool(t, "chromium", "apt-get install chromium (only for KVM_SCREENSHOTS=1)")
	e.guestCanRead(t)
	out := filepath.Join(harness.RepoRoot(t), "docs", "img")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	seen := map[[32]byte]string{}
	for _, s := range shots {
		file := filepath.Join(out, s.file)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
			"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--hide-scrollbars", "--user-data-dir="+t.TempDir(), "--window-size=1440,1000", "--virtual-time-budget=8000",
			// the "sign in as guest" link, then the page (the login form's own redirect parameter)
			"--screenshot="+file, e.zbx.URL+"index.php?enter=guest&request="+url.QueryEscape(s.path))
		cmd.WaitDelay = 5 * time.Second
		b, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("chromium %s: %v\n%s", s.path, err, lastLines(string(b), 20))
		}
		st, err := os.Stat(file)
		if err != nil || st.Size() < 10_000 {
			t.Fatalf("screenshot %s: %v (size %v)", file, err, st)
		}
		t.Logf("screenshot %s (%d bytes) of %s", file, st.Size(), s.path)
		b, _ = os.ReadFile(file)
		sum := sha256.Sum256(b)
		if prev, dup := seen[sum]; dup {
			t.Fatalf("screenshots %s and %s are the same picture (a login or error page?)", prev, s.file)
		}
		seen[sum] = s.file
	}
}

// eventScreenshots saves, after the events scenario, the problems with their operational data
// (kvm.domain.ladder.last: each ladder's story, as the template's triggers show it) and prints the
// evidence the forced restart of forced kept, with sizes, for docs/e2e.md; the console picture,
// when the step could take one, goes to docs/img too.
func (e *env) eventScreenshots(t *testing.T, forced string, since time.Time) {
	t.Helper()
	// the list cuts the operational data short; the problem's page has it whole, and the message
	// the plugin added with the same story
	trig, err := e.triggerID(forced, poolTrigger)
	if err != nil {
		t.Fatal(err)
	}
	prob, err := e.awaitProblem(forced, poolTrigger, since, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// kiosk=1: without the filter form and the menu, so the stories fit
	e.shoot(t, []shot{
		{"zabbix-ladder-story.png",
			"zabbix.php?action=problem.view&filter_set=1&show=1&show_timeline=0&show_opdata=1&sort=host&sortorder=ASC&kiosk=1"},
		{"zabbix-forced-restart-problem.png", fmt.Sprintf("tr_events.php?triggerid=%s&eventid=%s&kiosk=1", trig, prob.EventID)},
	})
	a, err := e.awaitAudit(forced, provision.LadderCaller, "repair", since, 5*time.Second, func(a ladderAudit) bool { return a.Evidence != "" })
	if err != nil {
		t.Fatalf("evidence of %s: %v", forced, err)
	}
	files, err := os.ReadDir(a.Evidence)
	if err != nil || len(files) == 0 {
		t.Fatalf("evidence of %s: %s: %d files, %v", forced, a.Evidence, len(files), err)
	}
	lines := []string{fmt.Sprintf("EVIDENCE %s (%s %s: %s)", filepath.Base(a.Evidence), a.Verb, a.Outcome, a.Verdict)}
	for _, f := range files {
		st, err := f.Info()
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, fmt.Sprintf("    %8d  %s", st.Size(), f.Name()))
		if f.Name() == "screenshot.png" {
			b, err := os.ReadFile(filepath.Join(a.Evidence, f.Name()))
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(harness.RepoRoot(t), "docs", "img", "evidence-console.png")
			if err := os.WriteFile(file, b, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("console picture of %s saved as %s", forced, file)
		}
	}
	for _, l := range lines {
		t.Log(l)
		fmt.Println(l)
	}
}
