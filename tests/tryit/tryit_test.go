//go:build integration

package tryit

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

// testDriverUUID is the UUID of test:///default's one domain, "test": the guest host's name.
const testDriverUUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"

// TestTryIt runs README's trial as written against a Zabbix 7.0 stack of its own and checks the
// outcome through the API.
func TestTryIt(t *testing.T) {
	harness.RequireRoot(t)
	for _, tool := range []string{"unshare", "bash", "busybox", "haproxy", "jq", "curl", "make"} {
		harness.RequireTool(t, tool, "scripts/deps.sh all")
	}
	t0 := time.Now()
	root := harness.RepoRoot(t)
	blocks, err := ParseFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	checkSkipped(t, blocks)

	stack := zbx.Start(t, zbx.Options{})
	stackUp := time.Since(t0)

	home := t.TempDir()
	trial := filepath.Join(home, "kvm-trial")
	vars := map[string]string{
		"TRIAL":           trial,
		"ZABBIX_URL":      stack.URL,
		"ZABBIX_USER":     "Admin",
		"ZABBIX_PASSWORD": "zabbix",
		"ZABBIX_SERVER":   "127.0.0.1",
		"ZABBIX_TRAPPER":  fmt.Sprintf("127.0.0.1:%d", stack.ServerPort),
		"HV_NAME":         "kvm-trial",
		"HV_IP":           "127.0.0.1",
		"HV_PORT":         strconv.Itoa(harness.Port(t)),
		"GUEST_PORT":      strconv.Itoa(harness.Port(t)),
		"SPARE_PORT":      strconv.Itoa(harness.Port(t)),
		// the 7.0 package from bookworm-backports, unpacked by scripts/deps.sh as step 2 does
		"AGENT": zbx.Agent70,
	}
	sh := startShell(t, root, home, vars)

	var run []Block
	for _, b := range blocks {
		if b.Kind == Run {
			run = append(run, b)
		}
	}
	cleanup := run[len(run)-1]
	for _, b := range run[:len(run)-1] {
		sh.run(t, b)
	}
	checkOutcome(t, stack, trial)
	sh.run(t, cleanup)
	checkCleanedUp(t, stack, vars)

	var b strings.Builder
	for _, s := range sh.took {
		fmt.Fprintf(&b, "\n  README.md:%-4d %6.1fs  %s", s.line, s.took.Seconds(), s.first)
	}
	t.Logf("trial took %.1fs (Zabbix stack %.1fs, the README's blocks %.1fs):%s",
		time.Since(t0).Seconds(), stackUp.Seconds(), sh.total().Seconds(), b.String())
}

// checkSkipped stands in for step 2, which installs packages and downloads: what it installs must
// be installed (scripts/deps.sh did it), and the agent the test uses must be the 7.0 it fetches.
func checkSkipped(t *testing.T, blocks []Block) {
	t.Helper()
	for _, b := range blocks {
		if b.Kind != Skip {
			continue
		}
		for _, p := range AptPackages(b.Text) {
			out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", p).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "install ok installed") {
				t.Errorf("README.md:%d installs %s, which is not installed here (%v: %s): run scripts/deps.sh", b.Line, p, err, out)
			}
		}
	}
	out, err := exec.Command(zbx.Agent70, "-V").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "zabbix_agent2 (Zabbix) 7.0.") {
		t.Fatalf("%s -V: %v: %s", zbx.Agent70, err, out)
	}
}

// shell is one bash, as in the admin's terminal: the blocks share its variables and functions, and
// what a block starts in the background stays its child. It runs as PID 1 of a PID namespace of
// its own, so when it dies (the test ends, or is killed: Pdeathsig, and unshare --kill-child) the
// kernel kills everything the trial started; --mount-proc gives it a /proc of that namespace, which
// the plugin reads to find its agent's configuration.
type shell struct {
	cmd   *exec.Cmd
	stdin *os.File
	marks chan string
	exit  chan error
	log   *os.File

	mu         sync.Mutex
	transcript []string
	took       []step
}

type step struct {
	line  int
	took  time.Duration
	first string
}

func (s *shell) total() time.Duration {
	var d time.Duration
	for _, st := range s.took {
		d += st.took
	}
	return d
}

const markPrefix = "@@tryit-done "

func startShell(t *testing.T, root, home string, vars map[string]string) *shell {
	t.Helper()
	env := []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "LANG=C.UTF-8", "USER=root",
		// the build reuses the test's module and build caches, and may not reach the network
		"GOPROXY=off", "GOFLAGS=-buildvcs=false", "GOTOOLCHAIN=local"}
	goenv, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH").CombinedOutput()
	if err != nil {
		t.Fatalf("go env: %v: %s", err, goenv)
	}
	for i, v := range strings.Split(strings.TrimSpace(string(goenv)), "\n") {
		env = append(env, []string{"GOCACHE", "GOMODCACHE", "GOPATH"}[i]+"="+v)
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}

	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), "transcript"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", "-s")
	cmd.Dir, cmd.Env = root, env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, outW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := harness.StartDying(cmd, syscall.SIGKILL); err != nil {
		t.Fatalf("start the trial's shell: %v", err)
	}
	inR.Close()
	outW.Close() // the trial's processes hold the other copies
	s := &shell{cmd: cmd, stdin: inW, marks: make(chan string, 1), exit: make(chan error, 1), log: logf}
	go func() { s.exit <- cmd.Wait() }()
	go func() {
		sc := bufio.NewScanner(outR)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			if strings.HasPrefix(l, markPrefix) {
				s.marks <- strings.TrimPrefix(l, markPrefix)
				continue
			}
			fmt.Fprintln(logf, l)
			s.mu.Lock()
			s.transcript = append(s.transcript, l)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{"agent.log", "kvm-actions.log"} {
				b, _ := os.ReadFile(filepath.Join(vars["TRIAL"], f))
				t.Logf("%s (last 4 KiB):\n%s", f, lastBytes(b, 4096))
			}
			t.Logf("the trial's shell (last lines):\n%s", s.tail(60))
		}
		inW.Close() // bash reads EOF and exits; the namespace's processes die with it
		select {
		case <-s.exit:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-s.exit
		}
		outR.Close()
		logf.Close()
	})
	// -e as in a careful admin's terminal: any failing command ends the trial and fails the test.
	if _, err := fmt.Fprintln(inW, "set -e"); err != nil {
		t.Fatal(err)
	}
	return s
}

// blockTimeout bounds one block: the build, discovery (30 s interval, then the guest's first poll
// at its 1-minute interval) and the ladder (a minute to the gentle step, 20 s of GentleSeconds)
// take longest.
const blockTimeout = 5 * time.Minute

// run feeds one block and waits until bash has run all of it.
func (s *shell) run(t *testing.T, b Block) {
	t.Helper()
	id := strconv.Itoa(b.Line)
	start := time.Now()
	if _, err := fmt.Fprintf(s.stdin, "%s\necho '%s%s'\n", strings.TrimRight(b.Text, "\n"), markPrefix, id); err != nil {
		t.Fatalf("README.md:%d: write to the trial's shell: %v", b.Line, err)
	}
	fmt.Fprintf(s.log, "### README.md:%d\n%s", b.Line, b.Text)
	select {
	case got := <-s.marks:
		if got != id {
			t.Fatalf("README.md:%d: the shell finished block %s instead", b.Line, got)
		}
	case err := <-s.exit:
		s.exit <- err
		t.Fatalf("README.md:%d: the trial's shell ended (%v) after %.1fs; its last output:\n%s\nblock:\n%s",
			b.Line, err, time.Since(start).Seconds(), s.tail(40), b.Text)
	case <-time.After(blockTimeout):
		t.Fatalf("README.md:%d: not done after %s; the shell's last output:\n%s\nblock:\n%s", b.Line, blockTimeout, s.tail(40), b.Text)
	}
	first, _, _ := strings.Cut(strings.TrimSpace(b.Text), "\n")
	s.took = append(s.took, step{b.Line, time.Since(start), first})
	t.Logf("README.md:%d done in %.1fs", b.Line, time.Since(start).Seconds())
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func (s *shell) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.transcript
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

type host struct {
	HostID string `json:"hostid"`
	Host   string `json:"host"`
	Name   string `json:"name"`
}

type item struct {
	Key       string `json:"key_"`
	State     string `json:"state"` // 1: not supported
	Error     string `json:"error"`
	LastValue string `json:"lastvalue"`
	LastClock string `json:"lastclock"`
}

func call(t *testing.T, stack *zbx.Stack, method string, params, out any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := stack.API.Call(ctx, method, params, out); err != nil {
		t.Fatalf("%s: %v", method, err)
	}
}

func hostByName(t *testing.T, stack *zbx.Stack, name string) []host {
	t.Helper()
	var hs []host
	call(t, stack, "host.get", map[string]any{"filter": map[string]any{"host": []string{name}},
		"output": []string{"hostid", "host", "name"}}, &hs)
	return hs
}

func items(t *testing.T, stack *zbx.Stack, hostID string) map[string]item {
	t.Helper()
	var is []item
	call(t, stack, "item.get", map[string]any{"hostids": hostID,
		"output": []string{"key_", "state", "error", "lastvalue", "lastclock"}}, &is)
	m := map[string]item{}
	for _, i := range is {
		m[i.Key] = i
	}
	return m
}

// checkOutcome runs after step 9 (the problem opened, the ladder's gentle step ran, the problem
// resolved), before the cleanup deletes the hosts and $TRIAL.
func checkOutcome(t *testing.T, stack *zbx.Stack, trial string) {
	t.Helper()
	hv := hostByName(t, stack, "kvm-trial")
	if len(hv) != 1 {
		t.Fatalf("host kvm-trial: got %+v", hv)
	}
	guest := hostByName(t, stack, testDriverUUID)
	if len(guest) != 1 || guest[0].Name != "test" {
		t.Fatalf("discovered guest host %s (visible name test): got %+v", testDriverUUID, guest)
	}

	// The ladder's prerequisites, as the hypervisor's agent reports them to Zabbix (kvm.actions.ok
	// and kvm.actions.problems come from kvm.actions.check), and no "Ladder actions cannot run".
	harness.WaitFor(t, 90*time.Second, time.Second, "kvm.actions.ok = 1 on kvm-trial", func() (bool, error) {
		is := items(t, stack, hv[0].HostID)
		ok, found := is["kvm.actions.ok"]
		if !found {
			return false, fmt.Errorf("no item kvm.actions.ok")
		}
		if ok.LastClock == "0" {
			return false, fmt.Errorf("no value yet (state %s %s)", ok.State, ok.Error)
		}
		return ok.LastValue == "1", fmt.Errorf("kvm.actions.ok = %q, problems %q", ok.LastValue, is["kvm.actions.problems"].LastValue)
	})
	var cannot []struct {
		TriggerID string `json:"triggerid"`
	}
	call(t, stack, "trigger.get", map[string]any{"hostids": hv[0].HostID, "search": map[string]any{"description": "Ladder actions cannot run"},
		"output": []string{"triggerid"}}, &cannot)
	if len(cannot) != 1 {
		t.Fatalf("kvm-trial: want one trigger \"Ladder actions cannot run\", got %d", len(cannot))
	}
	var fired []struct {
		Name string `json:"name"`
	}
	call(t, stack, "event.get", map[string]any{"objectids": cannot[0].TriggerID, "source": 0, "object": 0, "value": 1,
		"output": []string{"name"}}, &fired)
	if len(fired) != 0 {
		t.Errorf("kvm-trial: %+v", fired)
	}

	// The guest's TCP and HTTP checks: not supported, refused before any dial because the address
	// is the test driver's fiction. This is what the plugin says, not a count of connections: the
	// refusal happens in Config.GuestAddressAllowed, which every guest check calls before dialling.
	harness.WaitFor(t, 2*time.Minute, 2*time.Second, "the guest's tcp and http checks refused", func() (bool, error) {
		var missing []string
		found := 0
		for key, it := range items(t, stack, guest[0].HostID) {
			if !strings.HasPrefix(key, "kvm.domain.tcp[") && !strings.HasPrefix(key, "kvm.domain.http[") {
				continue
			}
			found++
			if it.State != "1" || !strings.Contains(it.Error, "comes from libvirt's test driver") ||
				!strings.Contains(it.Error, "guest checks never dial them") || !strings.Contains(it.Error, "192.168.122.") {
				missing = append(missing, fmt.Sprintf("%s: state %s, value %q, error %q", key, it.State, it.LastValue, it.Error))
			}
		}
		if found != 2 {
			return false, fmt.Errorf("want the guest's kvm.domain.tcp and kvm.domain.http items, found %d", found)
		}
		return len(missing) == 0, fmt.Errorf("%s", strings.Join(missing, "; "))
	})

	// The problem opened and resolved (step 9 waited for that), and the ladder ran its command.
	var evs []struct {
		EventID  string `json:"eventid"`
		Clock    int64  `json:"clock,string"`
		REventID string `json:"r_eventid"`
		Name     string `json:"name"`
	}
	call(t, stack, "event.get", map[string]any{"hostids": guest[0].HostID, "source": 0, "object": 0, "value": 1,
		"output": []string{"eventid", "clock", "r_eventid", "name"}}, &evs)
	prob := -1
	for i, ev := range evs {
		if strings.Contains(ev.Name, "out of the haproxy pool (web/test)") {
			prob = i
		}
	}
	if prob < 0 {
		t.Fatalf("no problem \"Guest test is out of the haproxy pool (web/test)\" on the guest host; events: %+v", evs)
	}
	ev := evs[prob]
	if ev.REventID == "0" {
		t.Errorf("problem %s %q did not resolve", ev.EventID, ev.Name)
	}
	var alerts []struct {
		AlertType string `json:"alerttype"` // 1: remote command
		Status    string `json:"status"`    // 1: executed
		EscStep   string `json:"esc_step"`
		Error     string `json:"error"`
	}
	call(t, stack, "alert.get", map[string]any{"eventids": ev.EventID,
		"output": []string{"alerttype", "status", "esc_step", "error"}}, &alerts)
	ran := false
	for _, a := range alerts {
		if a.AlertType == "1" && a.Status == "1" {
			ran = true
		}
	}
	if !ran {
		t.Errorf("alert.get: no executed remote command for problem %s: %+v", ev.EventID, alerts)
	}

	// The plugin audited the command: a reboot of the guest by caller zabbix, after the problem,
	// not done (the test driver reboots nothing).
	var reboot map[string]any
	for _, a := range harness.AuditLines(t, filepath.Join(trial, "kvm-actions.log")) {
		if a["caller"] == "zabbix" && a["verb"] == "reboot" {
			reboot = a
		}
	}
	if reboot == nil {
		t.Fatalf("audit log: no reboot by caller zabbix: %v", harness.AllAuditLines(t, filepath.Join(trial, "kvm-actions.log")))
	}
	at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(reboot["time"]))
	if reboot["outcome"] != "not_done" || at.Before(time.Unix(ev.Clock, 0)) {
		t.Errorf("audit log: want the gentle reboot not_done after the problem (%s), got %v", time.Unix(ev.Clock, 0), reboot)
	}
	t.Logf("problem %q at %s; gentle reboot audited at %s (+%.0fs): %v", ev.Name,
		time.Unix(ev.Clock, 0).Format("15:04:05"), at.Format("15:04:05"), at.Sub(time.Unix(ev.Clock, 0)).Seconds(), reboot["detail"])
}

// checkCleanedUp: step 10 removed the hosts, stopped the agent and removed $TRIAL.
func checkCleanedUp(t *testing.T, stack *zbx.Stack, vars map[string]string) {
	t.Helper()
	for _, name := range []string{"kvm-trial", testDriverUUID} {
		if hs := hostByName(t, stack, name); len(hs) != 0 {
			t.Errorf("host %s still exists after the cleanup: %+v", name, hs)
		}
	}
	if _, err := os.Stat(vars["TRIAL"]); !os.IsNotExist(err) {
		t.Errorf("%s still exists after the cleanup (%v)", vars["TRIAL"], err)
	}
	for _, p := range []string{vars["HV_PORT"], vars["GUEST_PORT"], vars["SPARE_PORT"]} {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+p, time.Second); err == nil {
			c.Close()
			t.Errorf("127.0.0.1:%s still answers after the cleanup", p)
		}
	}
}
