package plugin

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"zabbix-agent2-plugin-kvm/statedir"
)

// prereqs is kvm.actions.check: whether the ladder's remote commands can run on this hypervisor,
// checked as the agent's user (whom system.run runs them as), so a broken ladder is a problem in
// Zabbix before it is needed rather than a failed command Zabbix records as "executed".
type prereqs struct {
	OK       int      `json:"ok"`
	Enabled  int      `json:"enabled"`
	Problems []string `json:"problems"`
}

func (c *Config) checkPrereqs(ctx context.Context, d *Deps, configFiles []string) prereqs {
	out := prereqs{OK: 1, Enabled: 1, Problems: []string{}}
	fail := func(format string, a ...any) {
		out.OK = 0
		out.Problems = append(out.Problems, fmt.Sprintf(format, a...))
	}
	if !c.ActionsEnable {
		out.Enabled = 0
		fail("actions are disabled (Plugins.%s.Actions.Enable=0): every ladder command will be refused", Name)
	}
	if c.ActionsEnable && c.AllowDomains == "" {
		fail("Plugins.%s.Actions.AllowDomains is empty: every ladder command will be refused", Name)
	}
	if err := statedir.CheckWritable(c.StateDir); err != nil {
		fail("StateDir: %v", err)
	}
	if err := statedir.CheckAppendable(c.AuditLog); err != nil {
		fail("AuditLog %s: %v", c.AuditLog, err)
	}
	if d.Host == nil || !d.Host.Ping(ctx) {
		fail("libvirt %s does not answer this user (is it in the libvirt group?)", c.URI)
	}
	if d.HAProxy != nil {
		if _, err := d.HAProxy.ShowInfo(ctx); err != nil {
			fail("haproxy runtime API: %v", err)
		}
	}
	if c.Path != "" {
		if err := unix.Access(c.Path, unix.X_OK); err != nil {
			fail("the plugin binary %s (the command the ladder's scripts run) is not executable by this user: %v", c.Path, err)
		}
	}
	for _, f := range configFiles {
		if err := configFileSafe(f); err != nil {
			fail("%v: the CLI refuses it, so every ladder command would fail", err)
		}
	}
	return out
}

// configFileSafe is the CLI's rule for the files its options come from: owned by root and
// writable by nobody else.
func configFileSafe(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("config file %s is not a regular file", path)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 {
		return fmt.Errorf("config file %s is owned by uid %d, not root", path, st.Uid)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("config file %s has mode %04o (group or others may write)", path, fi.Mode().Perm())
	}
	return nil
}

// pluginConfigFiles are the agent's configuration files that set Plugins.KVM options: the ones the
// ladder's CLI reads with -c.
func pluginConfigFiles() []string {
	var out []string
	for _, f := range agentConfigFiles() {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), "Plugins."+Name+".") {
			out = append(out, f)
		}
	}
	return out
}

func actionsCheck(cfg *Config, d *Deps) handler {
	return func(ctx context.Context, _ map[string]string) (any, error) {
		return jsonText(cfg.checkPrereqs(ctx, d, pluginConfigFiles()))
	}
}
