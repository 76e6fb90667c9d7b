//go:build integration

package haproxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// TestCaptureFixtures regenerates testdata/ from a real haproxy. It runs only on request:
//
//	HAPROXY_CAPTURE=1 go test -tags integration ./haproxy -run TestCaptureFixtures -v
//	KVM_HAPROXY=3.0 HAPROXY_CAPTURE=1 go test -tags integration ./haproxy -run TestCaptureFixtures -v
//
// The first captures Debian 12's haproxy 2.6 into testdata/, the second trixie's 3.0 (the root
// scripts/deps.sh trixie makes) into testdata/3.0/ (captureDirs).
//
// It builds one backend per interesting server state, waits until haproxy shows each, then records
// haproxy's replies with socat (the commands are written to testdata/capture.cmd). The fixture tests
// then check what this setup guarantees (web-03 is MAINT because we put it there, …).
func TestCaptureFixtures(t *testing.T) {
	if os.Getenv("HAPROXY_CAPTURE") == "" {
		t.Skip("fixture generator: set HAPROXY_CAPTURE=1 to re-capture testdata/ from a real haproxy")
	}
	socat := harness.RequireTool(t, "socat", "scripts/deps.sh haproxy")
	dir, ok := captureDirs[harness.HAProxyVersion()]
	if !ok {
		t.Fatalf("no testdata directory for haproxy %s in captureDirs", harness.HAProxyVersion())
	}
	be := make([]*httpBackend, 10)
	for i := range be {
		be[i] = newBackend(t)
	}
	be[1].Stop()          // web-02: refused → DOWN (L4CON)
	be[9].Code.Store(500) // api-02: 500 → DOWN (L7STS)
	fePort := harness.Port(t)
	tcpPort := harness.Port(t)
	h := newHAProxy(t, func(sock string) string {
		return fmt.Sprintf(`global
  stats socket %s mode 600 level admin
  stats socket ipv4@127.0.0.1:%d level admin
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
  default-server inter 300ms fall 2 rise 2
frontend fe_http
  bind 127.0.0.1:%d
  default_backend web
backend web
  option httpchk GET /
  http-check disable-on-404
  http-check expect status 200
  server web-01 %s check
  server web-02 %s check
  server web-03 %s check
  server web-04 %s check
  server web-05 %s check
  server web-06 %s
  server web-07 %s check disabled
  server web-08 %s check weight 0
backend api
  option httpchk GET /health
  server api-01 %s check
  server api-02 %s check
`, sock, tcpPort, fePort, be[0].Addr(), be[1].Addr(), be[2].Addr(), be[3].Addr(), be[4].Addr(), be[5].Addr(),
			be[6].Addr(), be[7].Addr(), be[8].Addr(), be[9].Addr())
	})
	c := h.Client()
	ctx := context.Background()
	for _, s := range []string{"web-01", "web-03", "web-04", "web-05", "web-08"} {
		awaitStatus(t, c, "web", s, "UP", 10*time.Second)
	}
	awaitStatus(t, c, "web", "web-02", "DOWN", 10*time.Second)
	awaitStatus(t, c, "api", "api-01", "UP", 10*time.Second)
	awaitStatus(t, c, "api", "api-02", "DOWN", 10*time.Second)
	be[4].Code.Store(404) // web-05: 404 with disable-on-404 → NOLB
	awaitStatus(t, c, "web", "web-05", "NOLB", 10*time.Second)
	if err := c.SetServerState(ctx, "web", "web-03", "maint"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetServerState(ctx, "web", "web-04", "drain"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ { // traffic, so byte and response counters are not all zero
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", fePort))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}

	captures := []struct{ file, cmd string }{
		{"show_stat.csv", "show stat"},
		{"show_servers_state.txt", "show servers state"},
		{"show_info.txt", "show info"},
		{"set_ok.txt", "set server api/api-01 state ready"},
		{"err_no_backend.txt", "show servers state nope"},
		{"err_no_server.txt", "set server web/nope state drain"},
		{"err_bad_state.txt", "set server web/web-01 state bogus"},
		{"err_unknown_command.txt", "bogus"},
	}
	var log strings.Builder
	out, _ := harness.HAProxyCommand(t, "-v").Output()
	fmt.Fprintf(&log, "# Captured by TestCaptureFixtures (capture_test.go) from:\n# %s", strings.Split(string(out), "\n")[0]+"\n")
	fmt.Fprintf(&log, "# haproxy.cfg used:\n")
	cfg, _ := os.ReadFile(h.Cfg)
	for _, l := range strings.Split(strings.TrimSpace(string(cfg)), "\n") {
		fmt.Fprintf(&log, "#   %s\n", l)
	}
	capture := func(line string) []byte {
		cmd := exec.Command(socat, "-t", "5", "-", "UNIX-CONNECT:"+h.Sock)
		cmd.Stdin = strings.NewReader(line + "\n")
		reply, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		return reply
	}
	for _, cp := range captures {
		reply := capture(cp.cmd)
		if cp.cmd == "show stat" {
			// A check running at that instant shows as "* L7OK" with check_code 0 (both 2.6 and
			// 3.0): the states the fixture tests assert are those between checks.
			harness.WaitFor(t, 10*time.Second, 10*time.Millisecond, "show stat between checks", func() (bool, error) {
				if !strings.Contains(string(reply), ",* ") {
					return true, nil
				}
				reply = capture(cp.cmd)
				return false, errors.New("a check was in progress")
			})
		}
		if err := os.WriteFile(filepath.Join(dir, cp.file), reply, 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&log, "echo '%s' | socat -t 5 - UNIX-CONNECT:$SOCK > %s\n", cp.cmd, filepath.Join(dir, cp.file))
	}
	if err := os.WriteFile(filepath.Join(dir, "capture.cmd"), []byte(log.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
