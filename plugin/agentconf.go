package plugin

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// agentDefaultConfig is where Debian's and Zabbix's packages put the agent's configuration.
const agentDefaultConfig = "/etc/zabbix/zabbix_agent2.conf"

// agentConfigFiles lists the configuration files of the agent that started this plugin: the file
// it was given with -c (read from the parent's command line), else the packaged default, followed
// by every file its Include lines pull in. The agent hands the plugin each option with its line but
// not its file; this is how an error can name the file too.
func agentConfigFiles() []string {
	main := agentDefaultConfig
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", os.Getppid())); err == nil {
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		for i, a := range args {
			switch {
			case (a == "-c" || a == "--config") && i+1 < len(args):
				main = args[i+1]
			case strings.HasPrefix(a, "--config="):
				main = strings.TrimPrefix(a, "--config=")
			}
		}
	}
	return withIncludes(main, 0)
}

// withIncludes returns path and, depth-first, what its Include lines name (a file, a glob or a
// directory), as the agent reads them.
func withIncludes(path string, depth int) []string {
	out := []string{path}
	f, err := os.Open(path)
	if err != nil || depth > 8 {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.TrimSpace(k) != "Include" {
			continue
		}
		inc := strings.TrimSpace(v)
		if !filepath.IsAbs(inc) {
			inc = filepath.Join(filepath.Dir(path), inc)
		}
		if fi, err := os.Stat(inc); err == nil && fi.IsDir() {
			inc = filepath.Join(inc, "*")
		}
		matches, _ := filepath.Glob(inc)
		for _, m := range matches {
			if fi, err := os.Stat(m); err == nil && fi.Mode().IsRegular() {
				out = append(out, withIncludes(m, depth+1)...)
			}
		}
	}
	return out
}

// optionFile names the file among files whose line sets Plugins.KVM.<name>, or "" when none does.
func optionFile(files []string, name string, line int) string {
	want := "Plugins." + Name + "." + name
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := bytes.Split(b, []byte("\n"))
		if line < 1 || line > len(lines) {
			continue
		}
		k, _, ok := strings.Cut(strings.TrimSpace(string(lines[line-1])), "=")
		if ok && strings.TrimSpace(k) == want {
			return f
		}
	}
	return ""
}

// agentLocator says where the agent's configuration sets an option: "file, line N".
func agentLocator() func(name string, line int) string {
	files := agentConfigFiles()
	return func(name string, line int) string {
		if f := optionFile(files, name, line); f != "" {
			return fmt.Sprintf("%s, line %d", f, line)
		}
		return fmt.Sprintf("line %d", line)
	}
}

// FileLocator says an option is on a line of one known file (the CLI's -c file).
func FileLocator(path string) func(name string, line int) string {
	return func(_ string, line int) string { return fmt.Sprintf("%s, line %d", path, line) }
}
