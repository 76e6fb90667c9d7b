// Package zbx starts a real Zabbix stack for tests, all on loopback: PostgreSQL 15 in a throwaway
// initdb directory, zabbix_server (7.0 installed system-wide, or the unpacked 6.0), the frontend API
// under PHP's built-in web server, and an SMTP sink that records the emails the server sends.
//
// The frontend reads only /etc/zabbix/zabbix.conf.php, so one stack can run per machine: Start takes
// a machine-wide flock for the stack's lifetime and rewrites that file (restoring it at cleanup).
package zbx

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/internal/zabbixapi"
	"zabbix-agent2-plugin-kvm/tests/harness"
)

// Where the Debian packages put things (see scripts/deps.sh, target zabbix).
const (
	Cache      = "/var/cache/zabbix-agent2-plugin-kvm"
	PGBin      = "/usr/lib/postgresql/15/bin"
	FrontConf  = "/etc/zabbix/zabbix.conf.php"
	LockPath   = "/run/kvm-zbx.lock"
	SenderPath = "/usr/bin/zabbix_sender"
	// Agent70 is the real zabbix_agent2 7.0 tests may run next to a stack.
	Agent70 = Cache + "/zabbix_agent2-7.0"
)

// Port range of this package's listeners (PostgreSQL, server trapper, frontend, SMTP sink).
const portLo, portHi = 15000, 15999

// LockWait bounds how long Start waits for another package's stack to finish.
var lockWait = 20 * time.Minute

type layout struct {
	server, schemaDir, frontend string
	only70                      bool
}

var layouts = map[string]layout{
	"7.0": {server: "/usr/sbin/zabbix_server", schemaDir: "/usr/share/zabbix-server-pgsql", frontend: "/usr/share/zabbix", only70: true},
	"6.0": {server: Cache + "/server-6.0/usr/sbin/zabbix_server", schemaDir: Cache + "/server-6.0/usr/share/zabbix-server-pgsql",
		frontend: Cache + "/server-6.0/usr/share/zabbix"},
}

// Options select the server version and tune its configuration.
type Options struct {
	// Version is "7.0" (default) or "6.0".
	Version string
	// ServerConfig adds or overrides zabbix_server.conf keys (e.g. "Timeout": "10").
	ServerConfig map[string]string
	// KeepStockHost leaves the stock "Zabbix server" host (10084) enabled; by default it is disabled
	// so its Linux template does not poll whatever agent the test runs on 127.0.0.1.
	KeepStockHost bool
}

// Phase is one timed step of Start.
type Phase struct {
	Name string
	Took time.Duration
}

// Stack is a running Zabbix server with its database, API and SMTP sink.
type Stack struct {
	Version    string // "7.0" or "6.0" as asked
	APIVersion string // apiinfo.version, e.g. "7.0.9"
	Dir        string // all state: pg/, run/ (logs, pid files, sockets)
	// API is logged in as Admin.
	API        *zabbixapi.Client
	URL        string // frontend root, http://127.0.0.1:port/
	ServerConf string
	ServerLog  string
	ServerPort int
	PGPort     int
	WebPort    int
	SMTP       *SMTPSink
	Phases     []Phase

	serverBin string
}

// Start brings the stack up and registers its teardown with t.Cleanup; it fails the test when any
// part does not come up, naming the part and pointing at its log.
func Start(t testing.TB, o Options) *Stack {
	t.Helper()
	harness.RequireRoot(t)
	if o.Version == "" {
		o.Version = "7.0"
	}
	lay, ok := layouts[o.Version]
	if !ok {
		t.Fatalf("zbx: unknown version %q (want 7.0 or 6.0)", o.Version)
	}
	for _, p := range []string{lay.server, lay.schemaDir + "/schema.sql.gz", lay.frontend + "/api_jsonrpc.php", PGBin + "/initdb"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("zbx %s: %v: run scripts/deps.sh zabbix", o.Version, err)
		}
	}
	s := &Stack{Version: o.Version, serverBin: lay.server}
	t0 := time.Now()
	last := t0
	lap := func(name string) {
		now := time.Now()
		s.Phases = append(s.Phases, Phase{name, now.Sub(last)})
		last = now
	}

	lockMachine(t)
	lap("lock")

	dir, err := os.MkdirTemp("", "kvm-zbx-"+o.Version+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// postgres and zabbix (the users the daemons drop to) must reach their subdirectories.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s.Dir = dir
	run := filepath.Join(dir, "run")
	pgdir := filepath.Join(dir, "pg")
	for _, d := range []string{run, pgdir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	chownTo(t, pgdir, "postgres")
	chownTo(t, run, "zabbix")

	s.PGPort = harness.FreePort(t, portLo, portHi)
	s.ServerPort = harness.FreePort(t, portLo, portHi)
	s.WebPort = harness.FreePort(t, portLo, portHi)
	s.SMTP = StartSMTP(t, harness.FreePort(t, portLo, portHi))

	s.startPostgres(t, pgdir)
	lap("postgres")
	s.importSchema(t, lay.schemaDir)
	lap("schema")

	s.ServerConf = filepath.Join(dir, "zabbix_server.conf")
	s.ServerLog = filepath.Join(run, "zabbix_server.log")
	if err := os.WriteFile(s.ServerConf, []byte(serverConf(s, run, lay.only70, o.ServerConfig)), 0o644); err != nil {
		t.Fatal(err)
	}
	startGroup(t, "zabbix_server", filepath.Join(run, "server.out"), 20*time.Second,
		lay.server, "-f", "-c", s.ServerConf)

	writeFrontConf(t, s)
	s.URL = fmt.Sprintf("http://127.0.0.1:%d/", s.WebPort)
	startGroup(t, "php -S", filepath.Join(run, "php.log"), 5*time.Second,
		"/usr/bin/env", "PHP_CLI_SERVER_WORKERS=4", "php", "-d", "memory_limit=512M", "-d", "post_max_size=32M",
		"-d", "max_execution_time=300", "-S", fmt.Sprintf("127.0.0.1:%d", s.WebPort), "-t", lay.frontend)

	s.API = zabbixapi.New(s.URL)
	harness.WaitFor(t, 60*time.Second, 100*time.Millisecond, "frontend API (see "+run+"/php.log)", func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		v, err := s.API.Version(ctx)
		s.APIVersion = v
		return err == nil, err
	})
	if !strings.HasPrefix(s.APIVersion, o.Version+".") {
		t.Fatalf("zbx: asked for %s, the API says %s", o.Version, s.APIVersion)
	}
	lap("api")
	harness.WaitFor(t, 60*time.Second, 100*time.Millisecond, "zabbix_server trapper (see "+s.ServerLog+")", func() (bool, error) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.ServerPort), time.Second)
		if err != nil {
			return false, err
		}
		c.Close()
		return true, nil
	})
	lap("server")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.API.Login(ctx, "Admin", "zabbix"); err != nil {
		t.Fatalf("zbx: login: %v", err)
	}
	if !o.KeepStockHost {
		if err := s.API.Call(ctx, "host.update", map[string]any{"hostid": "10084", "status": 1}, nil); err != nil {
			t.Fatalf("zbx: disable stock host 10084: %v", err)
		}
	}
	lap("login")

	var b strings.Builder
	for _, p := range s.Phases {
		fmt.Fprintf(&b, " %s %.2fs", p.Name, p.Took.Seconds())
	}
	t.Logf("zbx %s (%s) up in %.2fs:%s; api %s, server port %d, smtp %s, dir %s",
		o.Version, s.APIVersion, time.Since(t0).Seconds(), b.String(), s.URL, s.ServerPort, s.SMTP.Addr, dir)
	return s
}

// lockMachine holds LockPath until the test ends: two stacks would fight over zabbix.conf.php.
func lockMachine(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("zbx: lock %s: %v", LockPath, err)
	}
	start := time.Now()
	err = harness.Wait(context.Background(), lockWait, 250*time.Millisecond, func() (bool, error) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return true, nil
		}
		return false, fmt.Errorf("another Zabbix stack holds %s: %w", LockPath, err)
	})
	if err != nil {
		f.Close()
		t.Fatalf("zbx: %v", err)
	}
	if w := time.Since(start); w > time.Second {
		t.Logf("zbx: waited %.1fs for %s", w.Seconds(), LockPath)
	}
	t.Cleanup(func() { f.Close() }) // closing the last descriptor releases the flock
}

func chownTo(t testing.TB, path, name string) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("zbx: user %s: %v (run scripts/deps.sh zabbix)", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
}

// runCmd runs a short command with a deadline and returns a clear error with its output.
func runCmd(timeout time.Duration, stdin io.Reader, env []string, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stderr = &out
	if stdin == nil {
		cmd.Stdout = &out
	}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLines(out.String(), 10))
	}
	return nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func (s *Stack) startPostgres(t testing.TB, pgdir string) {
	t.Helper()
	data := filepath.Join(pgdir, "data")
	log := filepath.Join(pgdir, "pg.log")
	if err := runCmd(60*time.Second, nil, nil, "runuser", "-u", "postgres", "--", PGBin+"/initdb",
		"-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"); err != nil {
		t.Fatalf("zbx: %v", err)
	}
	opts := fmt.Sprintf("-k %s -p %d -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off", pgdir, s.PGPort)
	if err := runCmd(60*time.Second, nil, nil, "runuser", "-u", "postgres", "--", PGBin+"/pg_ctl",
		"-D", data, "-l", log, "-w", "-s", "-o", opts, "start"); err != nil {
		t.Fatalf("zbx: postgres start (log %s): %v", log, err)
	}
	t.Cleanup(func() {
		if err := runCmd(30*time.Second, nil, nil, "runuser", "-u", "postgres", "--", PGBin+"/pg_ctl",
			"-D", data, "-m", "immediate", "-w", "-s", "stop"); err != nil {
			t.Logf("zbx: postgres stop: %v", err)
			// pg_ctl failed: fall back to the postmaster's pid (first line of postmaster.pid).
			if b, err := os.ReadFile(filepath.Join(data, "postmaster.pid")); err == nil {
				if pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0]); err == nil && pid > 1 {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	})
	if err := s.psql("postgres", "postgres", "CREATE ROLE zabbix LOGIN PASSWORD 'zabbix'"); err != nil {
		t.Fatalf("zbx: %v", err)
	}
	if err := s.psql("postgres", "postgres", "CREATE DATABASE zabbix OWNER zabbix TEMPLATE template0 ENCODING 'UTF8'"); err != nil {
		t.Fatalf("zbx: %v", err)
	}
}

func (s *Stack) psql(user, db, sql string) error {
	return runCmd(60*time.Second, nil, []string{"PGPASSWORD=zabbix"}, "psql", "-qX", "-h", "127.0.0.1",
		"-p", strconv.Itoa(s.PGPort), "-U", user, "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql)
}

func (s *Stack) importSchema(t testing.TB, schemaDir string) {
	t.Helper()
	for _, f := range []string{"schema", "images", "data"} {
		path := filepath.Join(schemaDir, f+".sql.gz")
		fh, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(fh)
		if err != nil {
			fh.Close()
			t.Fatalf("zbx: %s: %v", path, err)
		}
		err = runCmd(3*time.Minute, zr, []string{"PGPASSWORD=zabbix"}, "psql", "-qX1", "-h", "127.0.0.1",
			"-p", strconv.Itoa(s.PGPort), "-U", "zabbix", "-d", "zabbix", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null")
		fh.Close()
		if err != nil {
			t.Fatalf("zbx: import %s: %v", path, err)
		}
	}
	// Without planner statistics the server's first template link on discovered hosts takes 35-47 s.
	if err := s.psql("postgres", "zabbix", "ANALYZE"); err != nil {
		t.Fatalf("zbx: %v", err)
	}
}

func serverConf(s *Stack, run string, only70 bool, extra map[string]string) string {
	kv := [][2]string{
		{"ListenIP", "127.0.0.1"}, {"ListenPort", strconv.Itoa(s.ServerPort)}, {"SourceIP", "127.0.0.1"},
		{"LogFile", s.ServerLog}, {"LogFileSize", "0"}, {"PidFile", run + "/zabbix_server.pid"},
		{"SocketDir", run}, {"DBHost", "127.0.0.1"}, {"DBPort", strconv.Itoa(s.PGPort)},
		{"DBName", "zabbix"}, {"DBUser", "zabbix"}, {"DBPassword", "zabbix"},
		{"StartPollers", "2"}, {"StartPreprocessors", "2"}, {"StartTrappers", "2"}, {"StartPingers", "0"},
		{"StartDiscoverers", "0"}, {"StartHTTPPollers", "0"}, {"StartEscalators", "1"}, {"StartDBSyncers", "1"},
		{"StartODBCPollers", "0"}, {"StartHistoryPollers", "1"}, {"StartAlerters", "2"},
		{"CacheSize", "32M"}, {"CacheUpdateFrequency", "1"}, {"HousekeepingFrequency", "0"},
		{"Timeout", "4"}, {"StatsAllowedIP", "127.0.0.1"},
	}
	if only70 {
		kv = append(kv, [][2]string{{"EnableGlobalScripts", "1"}, {"StartAgentPollers", "1"},
			{"StartHTTPAgentPollers", "0"}, {"StartSNMPPollers", "0"}, {"StartBrowserPollers", "0"}}...)
	}
	seen := map[string]bool{}
	var b strings.Builder
	for _, p := range kv {
		v := p[1]
		if e, ok := extra[p[0]]; ok {
			v = e
		}
		seen[p[0]] = true
		fmt.Fprintf(&b, "%s=%s\n", p[0], v)
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		if !seen[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, extra[k])
	}
	return b.String()
}

// writeFrontConf points the (hard-coded) frontend config at this stack and restores the file that
// was there before when the test ends.
func writeFrontConf(t testing.TB, s *Stack) {
	t.Helper()
	old, err := os.ReadFile(FrontConf)
	existed := err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`<?php
$DB['TYPE'] = 'POSTGRESQL'; $DB['SERVER'] = '127.0.0.1'; $DB['PORT'] = '%d';
$DB['DATABASE'] = 'zabbix'; $DB['USER'] = 'zabbix'; $DB['PASSWORD'] = 'zabbix'; $DB['SCHEMA'] = '';
$DB['ENCRYPTION'] = false; $DB['KEY_FILE'] = ''; $DB['CERT_FILE'] = ''; $DB['CA_FILE'] = '';
$DB['VERIFY_HOST'] = false; $DB['CIPHER_LIST'] = ''; $DB['VAULT'] = ''; $DB['VAULT_URL'] = '';
$DB['VAULT_PREFIX'] = ''; $DB['VAULT_DB_PATH'] = ''; $DB['VAULT_TOKEN'] = ''; $DB['VAULT_CERT_FILE'] = ''; $DB['VAULT_KEY_FILE'] = '';
$DB['DOUBLE_IEEE754'] = true;
$ZBX_SERVER = '127.0.0.1'; $ZBX_SERVER_PORT = '%d'; $ZBX_SERVER_NAME = 'kvm-test';
$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;
`, s.PGPort, s.ServerPort)
	if err := os.MkdirAll(filepath.Dir(FrontConf), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(FrontConf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if existed {
			os.WriteFile(FrontConf, old, 0o644)
		} else {
			os.Remove(FrontConf)
		}
	})
}

// startGroup starts a daemon in the foreground in its own process group. At cleanup it gets
// SIGTERM, grace to exit, then the whole group gets SIGKILL (php -S workers and server children
// outlive a killed parent).
func startGroup(t testing.TB, what, logPath string, grace time.Duration, name string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("zbx: start %s: %v", what, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		start := time.Now()
		syscall.Kill(pgid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(grace):
			t.Logf("zbx: %s did not exit %s after SIGTERM; killing its group", what, grace)
		}
		syscall.Kill(-pgid, syscall.SIGKILL)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Errorf("zbx: %s (pid %d) still running after SIGKILL", what, pgid)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Logf("zbx: stopping %s took %.1fs", what, d.Seconds())
		}
	})
	return cmd
}

var senderResult = regexp.MustCompile(`processed: (\d+); failed: (\d+)`)

// Send delivers one value to a trapper item with the real zabbix_sender. An item the server's
// config cache does not know yet comes back as an error ("failed: 1"): callers that just created
// it retry (harness.WaitFor).
func (s *Stack) Send(ctx context.Context, host, key, value string) error {
	return s.SendFrom(ctx, "", host, key, value)
}

// SendFrom is Send from the loopback source address source (zabbix_sender -I), e.g. 127.0.0.2 to
// play someone other than the host; "" lets the kernel choose (127.0.0.1).
func (s *Stack) SendFrom(ctx context.Context, source, host, key, value string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	args := []string{"-z", "127.0.0.1", "-p", strconv.Itoa(s.ServerPort), "-s", host, "-k", key, "-o", value, "-t", "10"}
	if source != "" {
		if ip := net.ParseIP(source); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("zabbix_sender: source %q: tests send from loopback only", source)
		}
		args = append(args, "-I", source)
	}
	out, err := exec.CommandContext(ctx, SenderPath, args...).CombinedOutput()
	m := senderResult.FindStringSubmatch(string(out))
	if m == nil {
		return fmt.Errorf("zabbix_sender %s %s: %v: %s", host, key, err, lastLines(string(out), 5))
	}
	if m[1] != "1" {
		return fmt.Errorf("zabbix_sender %s %s: server answered processed %s, failed %s", host, key, m[1], m[2])
	}
	return nil
}

// Runtime runs a runtime control command (zabbix_server -R), e.g. "config_cache_reload".
func (s *Stack) Runtime(ctx context.Context, command string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, s.serverBin, "-c", s.ServerConf, "-R", command).CombinedOutput()
	if err != nil {
		return fmt.Errorf("zabbix_server -R %s: %w: %s", command, err, lastLines(string(out), 5))
	}
	return nil
}
