// Package deb tests the Debian package the way a user installs it (deb_test.go, build tag
// integration): Debian's own zabbix-agent2 6.0 or 7.0 installed with apt in a throwaway overlay of a
// Debian 12 root, then the package; the agent started the way its systemd unit starts it. This file
// reads systemd units and decides, by systemd's documented rules, whether systemd restarts a
// service after a given exit: there is no systemd on the test machine, so the test applies the
// rule to the exit it observed.
package deb

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Unit is the [Service] section of a unit file with its drop-ins applied, in systemd's order.
type Unit struct {
	Name string // e.g. zabbix-agent2.service
	set  map[string][]string
}

// ParseUnit reads the unit file and then each drop-in, as systemd does: a later assignment of a
// single-valued setting replaces the earlier one, an empty assignment resets a list (Environment=).
func ParseUnit(name string, files ...string) (*Unit, error) {
	u := &Unit{Name: name, set: map[string][]string{}}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("unit %s: %w", name, err)
		}
		section := ""
		sc := bufio.NewScanner(bytes.NewReader(b))
		for n := 1; sc.Scan(); n++ {
			l := strings.TrimSpace(sc.Text())
			switch {
			case l == "" || l[0] == '#' || l[0] == ';':
			case l[0] == '[':
				section = strings.Trim(l, "[]")
			case section == "Service":
				k, v, ok := strings.Cut(l, "=")
				if !ok {
					return nil, fmt.Errorf("unit %s: %s, line %d: not Key=Value: %q", name, f, n, l)
				}
				k, v = strings.TrimSpace(k), strings.TrimSpace(v)
				if v == "" {
					delete(u.set, k)
					continue
				}
				u.set[k] = append(u.set[k], v)
			}
		}
	}
	return u, nil
}

// Get is the value in force of a single-valued setting ("" when unset).
func (u *Unit) Get(key string) string {
	v := u.set[key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// Environment is the service's environment from Environment= and EnvironmentFile= (read with
// readFile, a path inside the root the unit belongs to; a "-" prefix makes a missing file fine).
func (u *Unit) Environment(readFile func(string) ([]byte, error)) (map[string]string, error) {
	env := map[string]string{}
	for _, line := range u.set["Environment"] {
		words, err := splitWords(line)
		if err != nil {
			return nil, fmt.Errorf("unit %s: Environment=%s: %w", u.Name, line, err)
		}
		for _, w := range words {
			k, v, ok := strings.Cut(w, "=")
			if !ok {
				return nil, fmt.Errorf("unit %s: Environment=%s: %q is not NAME=VALUE", u.Name, line, w)
			}
			env[k] = v
		}
	}
	for _, f := range u.set["EnvironmentFile"] {
		optional := strings.HasPrefix(f, "-")
		path := strings.ReplaceAll(strings.TrimPrefix(f, "-"), "%p", strings.TrimSuffix(u.Name, ".service"))
		b, err := readFile(path)
		if err != nil {
			if optional && os.IsNotExist(err) {
				continue
			}
			return nil, fmt.Errorf("unit %s: EnvironmentFile=%s: %w", u.Name, f, err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			l = strings.TrimSpace(l)
			if l == "" || l[0] == '#' || l[0] == ';' {
				continue
			}
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				continue
			}
			env[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	return env, nil
}

// ExecStart is the argv systemd runs: the ExecStart= line split like systemd splits it, a word that
// is $NAME replaced by the variable's value split at white space, ${NAME} by its value as is.
func (u *Unit) ExecStart(env map[string]string) ([]string, error) {
	line := u.Get("ExecStart")
	if line == "" {
		return nil, fmt.Errorf("unit %s has no ExecStart=", u.Name)
	}
	line = strings.TrimLeft(line, "-@:+!") // prefixes that change how systemd treats the command
	words, err := splitWords(line)
	if err != nil {
		return nil, fmt.Errorf("unit %s: ExecStart=%s: %w", u.Name, line, err)
	}
	var argv []string
	for _, w := range words {
		if name, ok := strings.CutPrefix(w, "$"); ok && !strings.HasPrefix(name, "{") {
			argv = append(argv, strings.Fields(env[name])...)
			continue
		}
		argv = append(argv, os.Expand(w, func(k string) string { return env[k] }))
	}
	return argv, nil
}

// splitWords splits at white space outside double or single quotes, removing the quotes.
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	in, quote := false, rune(0)
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, in = r, true
		case r == ' ' || r == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unbalanced quote")
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}

// Exit is how a service's main process ended: an exit status, or the signal that killed it.
type Exit struct {
	Code   int
	Signal syscall.Signal // non-zero: killed by it
}

func (e Exit) String() string {
	if e.Signal != 0 {
		return "killed by " + e.Signal.String()
	}
	return "exit status " + strconv.Itoa(e.Code)
}

// Restarts says whether systemd restarts the service after e, by the table in systemd.service(5)
// under Restart=: a clean exit is status 0 (or one listed in SuccessExitStatus=) or SIGHUP, SIGINT,
// SIGTERM, SIGPIPE; no/always/on-success/on-failure/on-abnormal/on-abort/on-watchdog restart on
// the cases the table lists (timeouts and watchdog do not arise here). RestartPreventExitStatus=
// and RestartForceExitStatus= override the table.
func (u *Unit) Restarts(e Exit) (bool, error) {
	if listed(u.set["RestartPreventExitStatus"], e) {
		return false, nil
	}
	if listed(u.set["RestartForceExitStatus"], e) {
		return true, nil
	}
	clean := false
	switch {
	case e.Signal == 0:
		clean = e.Code == 0 || listed(u.set["SuccessExitStatus"], e)
	default:
		switch e.Signal {
		case syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE:
			clean = true
		default:
			clean = listed(u.set["SuccessExitStatus"], e)
		}
	}
	uncleanSignal := !clean && e.Signal != 0
	switch r := u.Get("Restart"); r {
	case "", "no":
		return false, nil
	case "always":
		return true, nil
	case "on-success":
		return clean, nil
	case "on-failure":
		return !clean, nil
	case "on-abnormal", "on-abort":
		return uncleanSignal, nil
	case "on-watchdog":
		return false, nil
	default:
		return false, fmt.Errorf("unit %s: Restart=%s is not one of systemd's values", u.Name, r)
	}
}

// listed reports whether e is among the statuses and signal names of the lines.
func listed(lines []string, e Exit) bool {
	for _, l := range lines {
		for _, f := range strings.Fields(l) {
			if n, err := strconv.Atoi(f); err == nil && e.Signal == 0 && n == e.Code {
				return true
			}
			if e.Signal != 0 && strings.TrimPrefix(f, "SIG") == strings.TrimPrefix(signame(e.Signal), "SIG") {
				return true
			}
		}
	}
	return false
}

var signames = map[syscall.Signal]string{syscall.SIGHUP: "HUP", syscall.SIGINT: "INT", syscall.SIGKILL: "KILL",
	syscall.SIGTERM: "TERM", syscall.SIGPIPE: "PIPE", syscall.SIGSEGV: "SEGV", syscall.SIGABRT: "ABRT", syscall.SIGUSR1: "USR1"}

func signame(s syscall.Signal) string {
	if n, ok := signames[s]; ok {
		return n
	}
	return strconv.Itoa(int(s))
}
