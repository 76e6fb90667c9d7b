//go:build integration

package remote

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// The agent's answers (ZBX_NOTSUPPORTED reasons), the same in 6.0.14 and 7.0.9 (7.0.22 words the
// exec failures its own way: agentAnswer).
const (
	denied       = "Unknown metric system.run"                                             // an AllowKey/DenyKey rule refused the key
	badKey       = "Invalid item key format."                                              // the key does not parse
	nulByte      = "Cannot execute command: fork/exec /usr/bin/sh: invalid argument"       // exec cannot pass a NUL in an argument
	tooLong      = "Cannot execute command: fork/exec /usr/bin/sh: argument list too long" // one argument > 128 KiB
	manyParams   = "Too many parameters."
	badMode      = "Invalid second parameter."
	noParameters = "Invalid first parameter."
)

// hostile is one corpus entry: a system.run key nobody should be able to turn into anything but
// the plugin refusing. {P} is the plugin's path as the rules name it, {C} the hypervisor's kvm.conf,
// {D} the test's directory, {T} a tripwire executable (also on the agent's PATH as kvmtrip, touch
// and id), {M} a marker file a shell would create, {S} the agent's plugin socket.
type hostile struct {
	name string
	cmd  string // system.run's command parameter; sent as [cmd], [cmd,wait] and [cmd,nowait] when refused by the agent
	key  string // or the whole key, verbatim (tricks with the key's own syntax)

	agent string // refused by the agent: its exact answer; "" when the key reaches the plugin

	// reaching the plugin:
	nowait bool     // send [cmd,nowait] (the agent answers 1 at once) instead of [cmd,wait]
	argv   []string // the arguments the plugin must get, literally
	rc     int      // its exit status
	out    string   // part of its output (wait)
	audit  string   // the outcome of its audit line; "" when it refuses before acting (no line)
	domain string   // the name in that line
}

// script is what a provisioned Zabbix script runs, with {HOST.HOST} expanded to name.
func script(verb, name string) string {
	return "exec {P} -c {C} --caller zabbix " + verb + " '" + name + "'"
}

// scriptArgv is the argv the plugin gets from script(verb, name).
func scriptArgv(verb, name string) []string {
	return []string{"-c", "{C}", "--caller", "zabbix", verb, name}
}

// cmdlineConfig is a whole permissive plugin configuration carried in the caller's own arguments:
// read back from /proc/self/cmdline, each of its lines would be an option.
const cmdlineConfig = "x\nPlugins.KVM.System.Path={P}\nPlugins.KVM.URI=test:///default\nPlugins.KVM.Actions.Enable=1\n" +
	"Plugins.KVM.Actions.AllowDomains=.*\nPlugins.KVM.StateDir={D}/evil-state\nPlugins.KVM.AuditLog={D}/evil-audit.log\nz"

func corpus() []hostile {
	refusedByPolicy := func(name string) hostile {
		return hostile{cmd: script("suspend", name), argv: scriptArgv("suspend", name), rc: 3,
			out: `"outcome": "refused"`, audit: "refused", domain: name}
	}
	badConfig := func(conf, why string) hostile {
		return hostile{cmd: "exec {P} -c " + conf + " --caller zabbix suspend 'test'",
			argv: []string{"-c", conf, "--caller", "zabbix", "suspend", "test"}, rc: 1, out: why}
	}
	with := func(h hostile, name string, f func(*hostile)) hostile {
		h.name = name
		if f != nil {
			f(&h)
		}
		return h
	}
	return []hostile{
		// --- shell syntax: refused by the DenyKey rules, wherever it stands ---
		{name: "; after the command", cmd: "exec {P} -c {C} version; {T}", agent: denied},
		{name: "; inside the quoted name", cmd: script("suspend", "test;{T}"), agent: denied},
		{name: "&& and-list", cmd: "exec {P} -c {C} version && {T}", agent: denied},
		{name: "& background", cmd: "exec {P} -c {C} version & {T}", agent: denied},
		{name: "| pipe", cmd: "exec {P} -c {C} version | {T}", agent: denied},
		{name: "|| or-list", cmd: "exec {P} -c {C} nosuchverb || {T}", agent: denied},
		{name: "$() command substitution", cmd: "exec {P} -c {C} --caller zabbix suspend $({T})", agent: denied},
		{name: "$() inside the quoted name", cmd: script("suspend", "$({T})"), agent: denied},
		{name: "backquote substitution", cmd: "exec {P} -c {C} --caller zabbix suspend `{T}`", agent: denied},
		{name: "${IFS} word splitting", cmd: "exec {P} -c {C} --caller zabbix suspend test${IFS}{T}", agent: denied},
		{name: "$VAR expansion", cmd: "exec {P} -c $HOME/kvm.conf version", agent: denied},
		{name: "$(()) arithmetic", cmd: "exec {P} -c {C} --timeout $((1+1)) version", agent: denied},
		{name: "> creates a file", cmd: "exec {P} -c {C} version > {M}", agent: denied},
		{name: ">> appends to a file", cmd: "exec {P} -c {C} version >> {M}", agent: denied},
		{name: "< reads a file", cmd: "exec {P} -c {C} version < /etc/shadow", agent: denied},
		{name: "<< here-document", cmd: "exec {P} -c {C} version <<EOF\n{T}\nEOF", agent: denied},
		{name: "() subshell", cmd: "exec {P} -c {C} version ({T})", agent: denied},
		{name: "backslash-newline joins lines", cmd: "exec {P} -c {C} --caller zabbix suspend te\\\nst", agent: denied},
		{name: "backslash escape", cmd: "exec {P} -c {C} --caller zabbix suspend \\t\\e\\s\\t", agent: denied},
		{name: "double quotes", cmd: `exec {P} -c {C} --caller zabbix suspend "test"`, agent: denied},
		{name: "$() inside double quotes", cmd: `exec {P} -c {C} --caller zabbix suspend "$({T})"`, agent: denied},
		{name: "' in the name ends the quoting", cmd: script("suspend", "te'st"), agent: denied},
		{name: "' in the name adds an option", cmd: script("suspend", "test' '--dry-run"), agent: denied},
		{name: "' in the name adds a -c", cmd: script("suspend", "test' -c '{D}/kvm-nobody.conf"), agent: denied},
		{name: "' in the name runs a command", cmd: script("suspend", "x';{T};'"), agent: denied},
		{name: "? file-name pattern", cmd: "exec {P} -c {D}/kvm.con? version", agent: denied},
		{name: "[] file-name pattern", cmd: "exec {P} -c {D}/kvm.con[f] version", agent: denied},
		{name: "] inside the quoted key parameter", key: `system.run["` + script("suspend", "te]st") + `",wait]`, agent: denied},
		{name: "{} brace group", cmd: "exec {P} -c {C} --caller zabbix suspend {test,x}", agent: denied},
		{name: "# comment hides the rest", cmd: "exec {P} -c {C} --caller zabbix suspend 'x' # --dry-run", agent: denied},
		{name: "~ home directory", cmd: "exec {P} -c ~/kvm.conf version", agent: denied},
		{name: "! negation", cmd: "exec {P} -c {C} ! version", agent: denied},
		{name: ".. in the name", cmd: script("suspend", "../../etc/passwd"), agent: denied},

		// --- the caller's own arguments as the config file (a root agent owns /proc/self/cmdline) ---
		{name: "-c /proc/self/cmdline", cmd: "exec {P} -c /proc/self/cmdline --caller '" + cmdlineConfig + "' suspend test", agent: denied},
		{name: "-c /dev/fd/../cmdline", cmd: "exec {P} -c /dev/fd/../cmdline --caller '" + cmdlineConfig + "' suspend test", agent: denied},
		{name: "-c relative proc/self/cmdline", cmd: "exec {P} -c proc/self/cmdline --caller '" + cmdlineConfig + "' suspend test", agent: denied},

		// --- anything but `exec <plugin> -…` ---
		{name: "another program", cmd: "touch {M}", agent: denied},
		{name: "a shell", cmd: "/bin/sh -c 'touch {M}'", agent: denied},
		{name: "the tripwire", cmd: "{T}", agent: denied},
		{name: "the plugin without exec", cmd: "{P} -c {C} version", agent: denied},
		{name: "the plugin through env", cmd: "/usr/bin/env {P} -c {C} version", agent: denied},
		{name: "a longer path with the plugin's prefix", cmd: "exec {P}-evil -c {C} version", agent: denied},
		{name: "the plugin's path then ../", cmd: "exec {P}/../../../../usr/bin/touch {M}", agent: denied},
		{name: "two spaces after exec", cmd: "exec  {P} -c {C} version", agent: denied},
		{name: "tab after exec", cmd: "exec\t{P} -c {C} version", agent: denied},
		{name: "leading space in a quoted parameter", key: `system.run[" ` + script("suspend", "test") + `",wait]`, agent: denied},
		{name: "a verb first, not an option", cmd: "exec {P} version", agent: denied},
		{name: "quoted first option", cmd: "exec {P} '-c' {C} version", agent: denied},
		{name: "plugin mode on the agent's socket", cmd: "exec {P} {S} false", agent: denied},
		{name: "exec and the plugin, nothing else", cmd: "exec {P}", agent: denied},
		{name: "empty parameter", key: "system.run[]", agent: denied},

		// --- the key's own syntax ---
		{name: "text after the key", key: "system.run[exec {P} -c {C} version,wait];touch {M}", agent: badKey},
		{name: "unterminated quoted parameter", key: `system.run["exec {P} -c {C} version\",nowait]`, agent: badKey},
		{name: "a third parameter", key: "system.run[exec {P} -c {C} version,wait,{T}]", agent: manyParams},
		{name: "a command as the mode", key: "system.run[exec {P} -c {C} version,{T}]", agent: badMode},
		{name: "no parameters", key: "system.run", agent: noParameters},
		{name: "NUL byte", cmd: script("suspend", "te\x00st"), agent: nulByte},
		{name: "argument over 128 KiB", cmd: script("suspend", strings.Repeat("a", 140<<10)), agent: tooLong},

		// --- reaching the plugin as literal arguments; the plugin refuses ---
		{name: "newline then commands", cmd: script("suspend", "web-01") + "\n{T}\n/usr/bin/touch {M}",
			argv: scriptArgv("suspend", "web-01"), rc: 3, out: `"outcome": "refused"`, audit: "refused", domain: "web-01"},
		{name: "newline then commands, nowait", nowait: true, cmd: script("suspend", "web-01") + "\n{T}\n/usr/bin/touch {M}",
			argv: scriptArgv("suspend", "web-01"), rc: 3, audit: "refused", domain: "web-01"},
		{name: "newline then a broken line", cmd: "exec {P} -c {C} --caller zabbix suspend web-01\n{T} 'x",
			argv: scriptArgv("suspend", "web-01"), rc: 3, out: `"outcome": "refused"`, audit: "refused", domain: "web-01"},
		with(refusedByPolicy("x\n{T}\n/usr/bin/touch {M}"), "newline inside the quoted name", nil),
		with(refusedByPolicy("test\r{T}"), "carriage return inside the quoted name", nil),
		{name: "carriage return outside quotes", nowait: true, cmd: "exec {P} -c {C} --caller zabbix suspend test\r{T}",
			argv: scriptArgv("suspend", "test\r{T}"), rc: 3, audit: "refused", domain: "test\r{T}"},
		{name: "tabs split words", cmd: "exec {P} -c {C} --caller zabbix suspend\ttest\t{T}",
			argv: []string{"-c", "{C}", "--caller", "zabbix", "suspend", "test", "{T}"}, rc: 2, out: "usage: suspend"},
		with(refusedByPolicy("wéb-ünïcode-01"), "non-ASCII name", nil),
		with(refusedByPolicy("web\xff\xfe-01"), "invalid UTF-8 name", nil),
		with(refusedByPolicy("web\x01\x07\x1b\x7f-01"), "control characters in the name", nil),
		with(refusedByPolicy(strings.Repeat("a", 5<<10)), "5 KiB name", nil),
		with(refusedByPolicy("--dry-run"), "an option as the name", nil),
		with(refusedByPolicy("-c"), "-c as the name", nil),
		with(refusedByPolicy("Web 01.example_x-y"), "a Zabbix host name not in AllowDomains", func(h *hostile) { h.nowait, h.out = true, "" }),
		{name: "an option after the name", cmd: script("suspend", "test") + " --dry-run",
			argv: append(scriptArgv("suspend", "test"), "--dry-run"), rc: 2, out: "usage: suspend"},
		{name: "unknown verb", cmd: script("sh", "test"), argv: scriptArgv("sh", "test"), rc: 2, out: `unknown verb "sh"`},
		{name: "provisioning through system.run", cmd: "exec {P} -c {C} zabbix setup --url http://127.0.0.1:9 --token x",
			argv: []string{"-c", "{C}", "zabbix", "setup", "--url", "http://127.0.0.1:9", "--token", "x"}, rc: 3, out: "refuses to run under zabbix_agent2"},
		{name: "a guest command the policy does not allow", cmd: "exec {P} -c {C} --caller zabbix exec 'test' -- /bin/sh -c id",
			argv: []string{"-c", "{C}", "--caller", "zabbix", "exec", "test", "--", "/bin/sh", "-c", "id"}, rc: 3, out: `"outcome": "refused"`, audit: "refused", domain: "test"},
		{name: "timeout out of range", cmd: "exec {P} --timeout 99999999999999999999 -c {C} suspend test",
			argv: []string{"--timeout", "99999999999999999999", "-c", "{C}", "suspend", "test"}, rc: 2, out: "invalid value"},
		{name: "* expands into arguments", cmd: "exec {P} -c {C} --caller zabbix suspend /*",
			argv: append(scriptArgv("suspend", "/*")[:5], "{GLOB /*}"), rc: 2, out: "usage: suspend"},

		// --- another config file: the plugin takes only a regular file owned by root that nobody else may write ---
		with(badConfig("{D}/kvm-nobody.conf", "owned by uid 65534, not root: refused"), "-c owned by another user", nil),
		with(badConfig("{D}/kvm-nobody.conf", ""), "-c owned by another user, nowait", func(h *hostile) { h.nowait = true }),
		with(badConfig("{D}/kvm-world.conf", "mode 0666 lets group or others write it: refused"), "-c world-writable", nil),
		with(badConfig("{D}/kvm-group.conf", "mode 0664 lets group or others write it: refused"), "-c group-writable", nil),
		with(badConfig("{D}/kvm-link.conf", "not a regular file (a symlink is refused)"), "-c a symlink to a good file", nil),
		with(badConfig("{D}", "not a regular file"), "-c a directory", nil),
		with(badConfig("{D}/absent.conf", "no such file or directory"), "-c a missing file", nil),
		{name: "-c given twice, the second hostile", cmd: "exec {P} -c {C} -c {D}/kvm-world.conf --caller zabbix suspend 'test'",
			argv: []string{"-c", "{C}", "-c", "{D}/kvm-world.conf", "--caller", "zabbix", "suspend", "test"}, rc: 1, out: "mode 0666"},
		{name: "-c=FILE", cmd: "exec {P} -c={D}/kvm-nobody.conf --caller zabbix suspend 'test'",
			argv: []string{"-c={D}/kvm-nobody.conf", "--caller", "zabbix", "suspend", "test"}, rc: 1, out: "not root: refused"},
		{name: "--c FILE", cmd: "exec {P} --c {D}/kvm-nobody.conf --caller zabbix suspend 'test'",
			argv: []string{"--c", "{D}/kvm-nobody.conf", "--caller", "zabbix", "suspend", "test"}, rc: 1, out: "not root: refused"},
	}
}

// corpusEnv is one real agent with the shipped rules, the plugin's path in them taken by a recorder.
type corpusEnv struct {
	agent  *harness.Agent
	dir    string
	calls  string // the recorder's records
	audit  string
	state  string
	marker string
	trips  string // what the tripwires wrote
	vars   *strings.Replacer
	seen   map[string]bool
}

// recorder stands at the plugin's path in the rules: it records the arguments the agent's shell
// produced (NUL-separated) and the real plugin's exit status, and passes both on. It is the only
// stand-in; the agents, their rules, the shell and the plugin are real.
const recorder = `#!/bin/sh
r=%[1]s/$$
/bin/mkdir "$r.tmp" || exit 99
for a in "$@"; do printf '%%s\000' "$a"; done > "$r.tmp/argv"
'%[2]s' "$@"
rc=$?
echo "$rc" > "$r.tmp/rc"
/bin/mv "$r.tmp" "$r"
exit "$rc"
`

// tripwire is what the shell would run if a hostile key got through.
const tripwire = "#!/bin/sh\necho \"$0 $*\" >> '%s'\n"

func newCorpusEnv(t *testing.T, version string) *corpusEnv {
	real := harness.PluginBinary(t)
	dir := t.TempDir()
	e := &corpusEnv{dir: dir, calls: filepath.Join(dir, "calls"), audit: filepath.Join(dir, "audit.log"),
		state: filepath.Join(dir, "state"), marker: filepath.Join(dir, "pwned"), trips: filepath.Join(dir, "tripped"), seen: map[string]bool{}}
	for _, d := range []string{"bin", "trip", "calls"} {
		require.NoError(t, os.Mkdir(filepath.Join(dir, d), 0o755))
	}
	plugin := filepath.Join(dir, "bin", "zabbix-agent2-plugin-kvm")
	writeExec(t, plugin, fmt.Sprintf(recorder, e.calls, real))
	trip := filepath.Join(dir, "trip", "kvmtrip")
	for _, n := range []string{"kvmtrip", "touch", "id"} {
		writeExec(t, filepath.Join(dir, "trip", n), fmt.Sprintf(tripwire, e.trips))
	}

	conf := func(domains, commands, state, audit string) string {
		return fmt.Sprintf("Plugins.KVM.System.Path=%s\nPlugins.KVM.URI=test:///default\nPlugins.KVM.Actions.Enable=1\n"+
			"Plugins.KVM.Actions.AllowDomains=%s\nPlugins.KVM.Exec.AllowCommands=%s\nPlugins.KVM.StateDir=%s\nPlugins.KVM.AuditLog=%s\n",
			real, domains, commands, state, audit)
	}
	// the hypervisor's config: actions on the test driver's domain "test" only, one harmless guest command
	good := filepath.Join(dir, "kvm.conf")
	require.NoError(t, os.WriteFile(good, []byte(conf("test", "uptime", e.state, e.audit)), 0o644))
	// the hostile configs would allow everything and audit elsewhere: had the plugin taken one,
	// suspend 'test' would be done and evil-audit.log would exist
	evil := conf(".*", ".*", filepath.Join(dir, "evil-state"), filepath.Join(dir, "evil-audit.log"))
	for name, mode := range map[string]os.FileMode{"kvm-nobody.conf": 0o644, "kvm-world.conf": 0o666, "kvm-group.conf": 0o664} {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(evil), 0o600))
		require.NoError(t, os.Chmod(p, mode))
	}
	require.NoError(t, os.Chown(filepath.Join(dir, "kvm-nobody.conf"), 65534, 65534))
	require.NoError(t, os.Symlink(good, filepath.Join(dir, "kvm-link.conf")))

	e.agent = harness.WriteAgentConf(t, version, harness.AgentOptions{Plugin: real, Timeout: 15,
		Extra: harness.SystemRunRules(t, plugin),
		Env:   []string{"PATH=" + filepath.Join(dir, "trip") + ":/usr/sbin:/usr/bin:/sbin:/bin"}})
	e.vars = strings.NewReplacer("{P}", plugin, "{C}", good, "{D}", dir, "{T}", trip, "{M}", e.marker,
		"{S}", filepath.Join(e.agent.Dir, "plugin.sock"))
	e.agent.Start(t)
	return e
}

func writeExec(t *testing.T, path, text string) {
	require.NoError(t, os.WriteFile(path, []byte(text), 0o755))
}

// agentAnswer is the answer want to key as the agent of version words it: 7.0.22 wraps system.run's
// exec failures ("Execute failed: cannot execute command: ….", "Background execute failed: …" for
// nowait).
func agentAnswer(version, key, want string) string {
	if version != "7.0.22" || !strings.HasPrefix(want, "Cannot execute command: ") {
		return want
	}
	prefix := "Execute failed: c"
	if strings.HasSuffix(key, ",nowait]") {
		prefix = "Background execute failed: c"
	}
	return prefix + want[1:] + "."
}

// call is one recorded run of the plugin.
type call struct {
	argv []string
	rc   int
}

// newCall waits for the one plugin run that finished since the last call and returns it.
func (e *corpusEnv) newCall(t *testing.T) call {
	var name string
	harness.WaitFor(t, 60*time.Second, 20*time.Millisecond, "the plugin run to end", func() (bool, error) {
		var fresh []string
		for _, n := range e.finished(t) {
			if !e.seen[n] {
				fresh = append(fresh, n)
			}
		}
		if len(fresh) > 1 {
			t.Fatalf("%d plugin runs, want 1: %v", len(fresh), fresh)
		}
		if len(fresh) == 1 {
			name = fresh[0]
		}
		return name != "", nil
	})
	e.seen[name] = true
	argv, err := os.ReadFile(filepath.Join(e.calls, name, "argv"))
	require.NoError(t, err)
	rc, err := os.ReadFile(filepath.Join(e.calls, name, "rc"))
	require.NoError(t, err)
	c := call{argv: strings.Split(strings.TrimSuffix(string(argv), "\x00"), "\x00")}
	c.rc, err = strconv.Atoi(strings.TrimSpace(string(rc)))
	require.NoError(t, err)
	return c
}

// finished lists the recorder's completed runs (a run in progress is NAME.tmp).
func (e *corpusEnv) finished(t *testing.T) []string {
	ents, err := os.ReadDir(e.calls)
	require.NoError(t, err)
	var out []string
	for _, d := range ents {
		if !strings.HasSuffix(d.Name(), ".tmp") {
			out = append(out, d.Name())
		}
	}
	return out
}

// stateFiles is what the plugin keeps in StateDir (holds, rate-limit and loop-guard history), by
// name; lock files come and go with every attempt and are left out.
func (e *corpusEnv) stateFiles(t *testing.T) map[string]string {
	out := map[string]string{}
	ents, err := os.ReadDir(e.state)
	if os.IsNotExist(err) {
		return out
	}
	require.NoError(t, err)
	for _, d := range ents {
		if strings.HasSuffix(d.Name(), ".lock") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(e.state, d.Name()))
		require.NoError(t, err)
		out[d.Name()] = string(b)
	}
	return out
}

// keys are the keys sent for h: verbatim, or its command in each form Zabbix uses.
func (e *corpusEnv) keys(h hostile) []string {
	if h.key != "" {
		return []string{e.vars.Replace(h.key)}
	}
	q := quoteParam(e.vars.Replace(h.cmd))
	if h.agent != "" {
		return []string{"system.run[" + q + "]", "system.run[" + q + ",wait]", "system.run[" + q + ",nowait]"}
	}
	if h.nowait {
		return []string{"system.run[" + q + ",nowait]"}
	}
	return []string{"system.run[" + q + ",wait]"}
}

// argv expands h.argv's placeholders; {GLOB pattern} is the sorted list of names the shell expands
// pattern to (a * does not match a leading dot).
func (e *corpusEnv) argv(t *testing.T, h hostile) []string {
	var out []string
	for _, a := range h.argv {
		if p, ok := strings.CutPrefix(a, "{GLOB "); ok {
			m, err := filepath.Glob(strings.TrimSuffix(p, "}"))
			require.NoError(t, err)
			for _, n := range m {
				if !strings.HasPrefix(filepath.Base(n), ".") {
					out = append(out, n)
				}
			}
			require.Greater(t, len(out), 6, "the glob must expand to several names")
			continue
		}
		out = append(out, e.vars.Replace(a))
	}
	return out
}

func (e *corpusEnv) check(t *testing.T, h hostile) {
	auditBefore, stateBefore := len(harness.AuditLines(t, e.audit)), e.stateFiles(t)
	for _, key := range e.keys(h) {
		out, err := e.agent.Query(key, 60*time.Second)
		if h.agent != "" {
			var ns *harness.ErrNotSupported
			require.ErrorAs(t, err, &ns, "the agent must refuse %.300q, answered %.300q", key, out)
			require.Equal(t, agentAnswer(e.agent.Version, key, h.agent), ns.Reason, "%.300q", key)
			continue
		}
		require.NoError(t, err, "%.300q", key)
		if h.nowait {
			require.Equal(t, "1", out, "nowait: the agent answers at once")
		} else {
			require.Contains(t, out, h.out, "the plugin's answer")
		}
		c := e.newCall(t)
		want := e.argv(t, h)
		if strings.HasPrefix(h.argv[len(h.argv)-1], "{GLOB ") {
			sort.Strings(c.argv[len(h.argv)-1:]) // the shell sorts by its locale
		}
		require.Equal(t, want, c.argv, "the plugin got the arguments literally")
		require.NotZero(t, c.rc, "the plugin must refuse")
		require.Equal(t, h.rc, c.rc, "the plugin's exit status")
	}
	if h.agent != "" {
		require.Empty(t, e.fresh(t), "the agent refused the key, yet the plugin ran")
	}
	lines := harness.AuditLines(t, e.audit)
	if h.audit == "" {
		require.Len(t, lines, auditBefore, "no audit line: the plugin refused before acting")
	} else {
		require.Len(t, lines, auditBefore+1, "one audit line per attempt")
		l := lines[auditBefore]
		require.Equal(t, h.audit, l["outcome"], "%v", l)
		if dom := e.vars.Replace(h.domain); utf8.ValidString(dom) { // JSON turns invalid UTF-8 into U+FFFD
			require.Equal(t, dom, l["domain"], "the plugin audits the name it got")
		}
	}
	require.Equal(t, stateBefore, e.stateFiles(t), "no hold, rate-limit or quarantine state changed")
	e.requireNothingElseRan(t)
}

// fresh lists plugin runs not yet looked at, finished or not.
func (e *corpusEnv) fresh(t *testing.T) []string {
	ents, err := os.ReadDir(e.calls)
	require.NoError(t, err)
	var out []string
	for _, d := range ents {
		if !e.seen[strings.TrimSuffix(d.Name(), ".tmp")] {
			out = append(out, d.Name())
		}
	}
	return out
}

func (e *corpusEnv) requireNothingElseRan(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(e.trips)
	require.True(t, os.IsNotExist(err), "a tripwire ran: %s", b)
	_, err = os.Stat(e.marker)
	require.True(t, os.IsNotExist(err), "the marker file exists: a shell construct ran")
	for _, p := range []string{"evil-audit.log", "evil-state"} {
		_, err = os.Stat(filepath.Join(e.dir, p))
		require.True(t, os.IsNotExist(err), "%s exists: the plugin took a hostile config", p)
	}
}

// TestHostileKeys sends the corpus through real agents 6.0 and 7.0 configured with the shipped
// rules: each key is refused by the agent with a known answer, or reaches the plugin as literal
// arguments and is refused by it (non-zero exit, the expected audit line, no state changed), and
// nothing but the plugin ever runs. Positive controls before and after prove the allowed form works.
func TestHostileKeys(t *testing.T) {
	cases := corpus()
	require.GreaterOrEqual(t, len(cases), 40)
	names := map[string]bool{}
	for _, h := range cases {
		require.False(t, names[h.name], "duplicate corpus name %q", h.name)
		names[h.name] = true
		require.True(t, (h.agent == "") == (len(h.argv) > 0), "%s: either an agent answer or the plugin's argv", h.name)
	}
	for _, v := range harness.AgentVersions {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			e := newCorpusEnv(t, v)
			e.positive(t)
			for _, h := range cases {
				t.Run(h.name, func(t *testing.T) { e.check(t, h) })
			}
			e.positive(t)
			e.requireNothingElseRan(t)
			require.Empty(t, e.fresh(t), "a plugin run nobody asked for")
		})
	}
}

// positive: the allowed form runs the plugin, read-only and acting, wait and nowait.
func (e *corpusEnv) positive(t *testing.T) {
	out, err := e.agent.Query(e.vars.Replace("system.run[exec {P} -c {C} version]"), 30*time.Second)
	require.NoError(t, err)
	require.Contains(t, out, "zabbix-agent2-plugin-kvm ")
	c := e.newCall(t)
	require.Equal(t, []string{"-c", e.vars.Replace("{C}"), "version"}, c.argv)
	require.Zero(t, c.rc)

	before := len(harness.AuditLines(t, e.audit))
	out, err = e.agent.Query(e.vars.Replace("system.run["+script("suspend", "test")+",nowait]"), 30*time.Second)
	require.NoError(t, err)
	require.Equal(t, "1", out)
	c = e.newCall(t)
	require.Equal(t, e.vars.Replace(strings.Join(scriptArgv("suspend", "test"), "\x00")), strings.Join(c.argv, "\x00"))
	require.Zero(t, c.rc, "suspend of the test driver's domain is done")
	lines := harness.AuditLines(t, e.audit)
	require.Len(t, lines, before+1)
	require.Equal(t, "done", lines[before]["outcome"], "%v", lines[before])
	require.Equal(t, "zabbix", lines[before]["caller"])
	require.Equal(t, "test", lines[before]["domain"])
}
