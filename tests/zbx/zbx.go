// Package zbx starts a real Zabbix stack for tests, all on loopback: PostgreSQL 15 in a throwaway
// initdb directory, zabbix_server (7.0 installed system-wide, or the unpacked 6.0), the frontend API
// under PHP's built-in web server, and an SMTP sink that records the emails the server sends.
//
// Nothing outside the stack's temp dir is written. Debian's frontend reads its configuration from
// the absolute path /etc/zabbix/zabbix.conf.php (CConfigFile::CONFIG_FILE_PATH), so php -S serves a
// private tree in the temp dir (see privateFrontend) whose CConfigFile.php names the private conf.
//
// Nothing of a stack outlives its test process, even a SIGKILLed one: every daemon is started with a
// parent-death signal. PostgreSQL's postmaster gets SIGQUIT (immediate shutdown: it stops its
// backends); zabbix_server and php -S, whose children outlive their parent, each run in a PID
// namespace held by unshare, which gets SIGKILL and takes its namespace down with it. The temp dir,
// which a killed process cannot remove, carries an owner file (pid and start time) by which the next
// Start's reaper recognises it as dead and removes it, after killing any process still working in
// it. tests/zbxkill proves both.
//
// Start still takes a machine-wide flock for the stack's lifetime: every stack takes its ports from
// one range (15000-15999) by probing, and a second server with its database on this 2-core machine
// would slow the first one's tests into their deadlines.
package zbx

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
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
	Cache = "/var/cache/zabbix-agent2-plugin-kvm"
	PGBin = "/usr/lib/postgresql/15/bin"
	// SystemFrontConf is the installed frontend's configuration, which a stack never touches.
	SystemFrontConf = "/etc/zabbix/zabbix.conf.php"
	LockPath        = "/run/kvm-zbx.lock"
	SenderPath      = "/usr/bin/zabbix_sender"
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
	// ProxyConfig adds or overrides zabbix_proxy.conf keys of every proxy StartProxy starts.
	ProxyConfig map[string]string
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
	Dir        string // all state: pg/, run/ (logs, pid files, sockets), front/, owner
	// API is logged in as Admin.
	API        *zabbixapi.Client
	URL        string // frontend root, http://127.0.0.1:port/
	ServerConf string
	ServerLog  string
	// FrontConf is the private frontend's configuration (Dir/front/conf/zabbix.conf.php), FrontName
	// its $ZBX_SERVER_NAME, which the frontend shows in page titles.
	FrontConf, FrontName string
	// PIDs are the daemons' main processes by name: "postgres" (the postmaster), "zabbix_server" and
	// "php" (the unshare that holds each in a PID namespace of its own).
	PIDs       map[string]int
	proxyConf  map[string]string
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
	s := &Stack{Version: o.Version, serverBin: lay.server, PIDs: map[string]int{}, proxyConf: o.ProxyConfig}
	t0 := time.Now()
	last := t0
	lap := func(name string) {
		now := time.Now()
		s.Phases = append(s.Phases, Phase{name, now.Sub(last)})
		last = now
	}

	LockMachine(t)
	lap("lock")
	Reap(t)

	dir, err := os.MkdirTemp("", dirPrefix+o.Version+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := writeOwner(dir); err != nil {
		t.Fatalf("zbx: %v", err)
	}
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
	// zabbix_server's children ignore the death of their parent, and on SIGTERM the server's HA
	// manager waits forever for the database that dies with us too. So the server runs in a PID
	// namespace of its own whose PID 1 is a shell that stays root, holding unshare's parent-death
	// signal (a change of user would clear it): unshare dies with us (SIGKILL), the shell with
	// unshare (--kill-child), and with the namespace's PID 1 the kernel kills the server and every
	// child. The server itself runs as zabbix (setpriv), as packaged. Runtime control (-R) goes
	// through a socket in SocketDir, so namespace pids in its pid file are never signalled.
	// SIGTERM to the group reaches only the server: unshare blocks it, and a namespace's PID 1 does
	// not get signals it has no handler for.
	zs := credOf(t, "zabbix")
	srv := daemon{what: "zabbix_server", log: filepath.Join(run, "server.out"), dir: run,
		stop: syscall.SIGTERM, group: true, death: syscall.SIGKILL, grace: 20 * time.Second}
	s.PIDs["zabbix_server"] = srv.start(t, "unshare", "--pid", "--kill-child=SIGKILL", "/bin/sh", "-c", `"$@"; exit $?`, "sh",
		"setpriv", fmt.Sprintf("--reuid=%d", zs.Uid), fmt.Sprintf("--regid=%d", zs.Gid), "--clear-groups",
		lay.server, "-f", "-c", s.ServerConf).Process.Pid

	front := filepath.Join(dir, "front")
	s.FrontName = "kvm-test " + filepath.Base(dir)
	if s.FrontConf, err = privateFrontend(lay.frontend, front, frontConf(s, s.FrontName)); err != nil {
		t.Fatalf("zbx: private frontend from %s: %v", lay.frontend, err)
	}
	lap("frontend")
	s.startWeb(t, front, run)
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

func chownTo(t testing.TB, path, name string) {
	t.Helper()
	c := credOf(t, name)
	if err := os.Chown(path, int(c.Uid), int(c.Gid)); err != nil {
		t.Fatal(err)
	}
}

// credOf is the user name's uid and primary gid, without supplementary groups.
func credOf(t testing.TB, name string) *syscall.Credential {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("zbx: user %s: %v (run scripts/deps.sh zabbix)", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
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
	// The postmaster runs in the foreground as postgres (pg_ctl would detach it from us). SIGQUIT is
	// PostgreSQL's immediate shutdown: it stops every backend and exits, with nothing to keep.
	pg := daemon{what: "postgres", log: log, dir: pgdir, cred: credOf(t, "postgres"),
		stop: syscall.SIGQUIT, death: syscall.SIGQUIT, grace: 10 * time.Second}
	s.PIDs["postgres"] = pg.start(t, PGBin+"/postgres", "-D", data, "-k", pgdir, "-p", strconv.Itoa(s.PGPort),
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off").Process.Pid
	harness.WaitFor(t, 60*time.Second, 100*time.Millisecond, "postgres to accept connections (log "+log+")", func() (bool, error) {
		err := runCmd(10*time.Second, nil, nil, PGBin+"/pg_isready", "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(s.PGPort))
		return err == nil, err
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
	var b strings.Builder
	for _, p := range kv {
		fmt.Fprintf(&b, "%s=%s\n", p[0], p[1])
	}
	return override(b.String(), extra)
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

// QueryInt runs one SQL query returning a single integer against the stack's database (as zabbix),
// e.g. a row count for a benchmark.
func (s *Stack) QueryInt(sql string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-qXtA", "-h", "127.0.0.1", "-p", strconv.Itoa(s.PGPort), "-U", "zabbix", "-d", "zabbix", "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD=zabbix")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("psql %q: %w: %s", sql, err, lastLines(string(out), 3))
	}
	return strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
}

// startWeb serves the private frontend with php -S and waits for its API. php -S is a development
// server: once in a CI run (of dozens) it accepted every connection and closed it unanswered (the
// client saw EOF) for the whole minute it was given. A second php -S on another port is started
// then, after logging what the first one said and who listened on its port, so that a stack test
// fails only when the frontend itself cannot answer.
func (s *Stack) startWeb(t testing.TB, front, run string) {
	t.Helper()
	var lastErr error
	for attempt := 1; attempt <= 2; attempt++ {
		s.WebPort = harness.FreePort(t, portLo, portHi)
		s.URL = fmt.Sprintf("http://127.0.0.1:%d/", s.WebPort)
		logPath := filepath.Join(run, fmt.Sprintf("php-%d.log", attempt))
		// php -S workers outlive their parent whatever signal it gets, so php runs as PID 1 of a PID
		// namespace held by unshare: unshare dies with us (parent-death signal), php with unshare
		// (--kill-child), the workers with their namespace's PID 1 (the kernel kills the rest).
		// SIGTERM would stop nothing (unshare blocks it, and a namespace's PID 1 ignores signals it has
		// no handler for) and php -S keeps no state: the whole group gets SIGKILL.
		web := daemon{what: "php -S", log: logPath, dir: run,
			stop: syscall.SIGKILL, group: true, death: syscall.SIGKILL, grace: 5 * time.Second}
		cmd := web.start(t, "/usr/bin/env", "PHP_CLI_SERVER_WORKERS=4", "unshare", "--pid", "--kill-child=SIGKILL",
			"php", "-d", "memory_limit=512M", "-d", "post_max_size=32M", "-d", "max_execution_time=300",
			"-S", fmt.Sprintf("127.0.0.1:%d", s.WebPort), "-t", front)
		s.PIDs["php"] = cmd.Process.Pid
		s.API = zabbixapi.New(s.URL)
		wait := 30 * time.Second
		if attempt == 2 {
			wait = 60 * time.Second
		}
		lastErr = harness.Wait(context.Background(), wait, 100*time.Millisecond, func() (bool, error) {
			if harness.StartTime(cmd.Process.Pid) == "" {
				return false, harness.Final(fmt.Errorf("php -S exited: %s", harness.TailFile(logPath, 20)))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			v, err := s.API.Version(ctx)
			s.APIVersion = v
			return err == nil, err
		})
		if lastErr == nil {
			return
		}
		t.Logf("zbx: frontend API on port %d not ready after %s: %v; listening there: %v; %s:\n%s",
			s.WebPort, wait, lastErr, listeners(s.WebPort), logPath, harness.TailFile(logPath, 20))
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	t.Fatalf("zbx: waiting for the frontend API (see %s/php-*.log): %v", run, lastErr)
}

// listeners names the processes with a TCP socket listening on port (IPv4), for a failure message.
func listeners(port int) []string {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return []string{err.Error()}
	}
	inodes := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		// local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 is the inode
		if len(f) < 10 || f[3] != "0A" || !strings.HasSuffix(f[1], fmt.Sprintf(":%04X", port)) {
			continue
		}
		inodes["socket:["+f[9]+"]"] = true
	}
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range procs {
		if l, err := os.Readlink(fd); err == nil && inodes[l] {
			pid := strings.Split(fd, "/")[2]
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			out = append(out, fmt.Sprintf("%s(%s)", strings.TrimSpace(string(comm)), pid))
		}
	}
	if len(out) == 0 && len(inodes) > 0 {
		out = append(out, fmt.Sprintf("%d socket(s), no process found", len(inodes)))
	}
	return out
}
