package actions

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPolicyValidate(t *testing.T) {
	dir := t.TempDir()
	ok := Policy{Enable: true, AllowDomains: "web-.*", StateDir: dir, AuditLog: filepath.Join(dir, "audit.log"), MaxForcedPerHour: 3}
	with := func(f func(*Policy)) Policy { p := ok; f(&p); return p }
	tests := []struct {
		name  string
		p     Policy
		field string // "" = valid
		msg   string
	}{
		{"+enabled", ok, "", ""},
		{"+disabled needs nothing", Policy{}, "", ""},
		{"+zero forced", with(func(p *Policy) { p.MaxForcedPerHour = 0 }), "", ""},
		{"+all modes", with(func(p *Policy) { p.GentleMode = ModeAgentACPI }), "", ""},
		{"+commands", with(func(p *Policy) { p.AllowCommands = []string{"uptime", `systemctl restart [a-z-]+`} }), "", ""},
		{"-bad domain regex", with(func(p *Policy) { p.AllowDomains = "web-(" }), "AllowDomains", "invalid regular expression"},
		{"-bad domain regex even when disabled", Policy{AllowDomains: "("}, "AllowDomains", "invalid"},
		{"-no domains", with(func(p *Policy) { p.AllowDomains = "" }), "AllowDomains", "required"},
		{"-bad command regex", with(func(p *Policy) { p.AllowCommands = []string{"ok", "a["} }), "AllowCommands[1]", "invalid regular expression"},
		{"-empty command pattern", with(func(p *Policy) { p.AllowCommands = []string{" "} }), "AllowCommands[0]", "empty"},
		{"-negative forced", with(func(p *Policy) { p.MaxForcedPerHour = -1 }), "MaxForcedPerHour", "0 or more"},
		{"-no state dir", with(func(p *Policy) { p.StateDir = "" }), "StateDir", "required"},
		{"-relative state dir", with(func(p *Policy) { p.StateDir = "state" }), "StateDir", "absolute"},
		{"-no audit", with(func(p *Policy) { p.AuditLog = "" }), "AuditLog", "required"},
		{"-audit dir missing", with(func(p *Policy) { p.AuditLog = filepath.Join(dir, "nope", "a.log") }), "AuditLog", "does not exist"},
		{"-negative timeout", with(func(p *Policy) { p.GentleTimeout = -time.Second }), "GentleTimeout", "negative"},
		{"-huge timeout", with(func(p *Policy) { p.HealthTimeout = 25 * time.Hour }), "HealthTimeout", "at most"},
		{"-bad mode", with(func(p *Policy) { p.GentleMode = "ACPI" }), "GentleMode", `got "ACPI"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if tc.field == "" {
				require.NoError(t, err)
				return
			}
			var fe *FieldError
			require.True(t, errors.As(err, &fe), "want *FieldError, got %v", err)
			assert.Equal(t, tc.field, fe.Field)
			assert.Contains(t, err.Error(), tc.msg)
			assert.Contains(t, err.Error(), tc.field)
		})
	}
}

func TestCheckDomain(t *testing.T) {
	dir := t.TempDir()
	c, err := Policy{Enable: true, AllowDomains: "web-[0-9]+|db", StateDir: dir, AuditLog: dir + "/a"}.compile()
	require.NoError(t, err)
	off, err := Policy{AllowDomains: ".*"}.compile()
	require.NoError(t, err)
	tests := []struct {
		name   string
		c      *compiled
		domain string
		err    string
	}{
		{"+match", c, "web-07", ""},
		{"+alternation", c, "db", ""},
		{"-anchored prefix", c, "xweb-07", "does not match"},
		{"-anchored suffix", c, "web-07;reboot", "does not match"},
		{"-alternation anchored", c, "dbx", "does not match"},
		{"-empty", c, "", "empty domain"},
		{"-disabled", off, "web-07", "disabled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.checkDomain(tc.domain)
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrRefused)
			assert.Contains(t, err.Error(), tc.err)
		})
	}
}

func TestCommandLineAndAllowCommands(t *testing.T) {
	lines := []struct {
		argv []string
		want string
	}{
		{[]string{"uptime"}, "uptime"},
		{[]string{"systemctl", "restart", "nginx"}, "systemctl restart nginx"},
		{[]string{"echo", "a b"}, "echo 'a b'"},
		{[]string{"echo", "it's"}, `echo 'it'\''s'`},
		{[]string{"echo", ""}, "echo ''"},
		{[]string{"sh", "-c", "id; reboot"}, "sh -c 'id; reboot'"},
		{[]string{"echo", "héllo"}, "echo 'héllo'"},
		{[]string{"/usr/bin/curl", "-s", "http://127.0.0.1/x?a=1"}, "/usr/bin/curl -s 'http://127.0.0.1/x?a=1'"},
	}
	for _, l := range lines {
		assert.Equal(t, l.want, CommandLine(l.argv), "%q", l.argv)
	}

	dir := t.TempDir()
	c, err := Policy{Enable: true, AllowDomains: ".*", StateDir: dir, AuditLog: dir + "/a",
		AllowCommands: []string{"uptime", `systemctl restart [a-z-]+`, `echo .*`}}.compile()
	require.NoError(t, err)
	none, err := Policy{Enable: true, AllowDomains: ".*", StateDir: dir, AuditLog: dir + "/a"}.compile()
	require.NoError(t, err)
	tests := []struct {
		name string
		c    *compiled
		argv []string
		err  string
	}{
		{"+exact", c, []string{"uptime"}, ""},
		{"+pattern", c, []string{"systemctl", "restart", "nginx"}, ""},
		{"+echo anything", c, []string{"echo", "a b; c"}, ""},
		{"-extra argument", c, []string{"uptime", "-p"}, "matches no AllowCommands"},
		{"-metacharacters in one argument", c, []string{"systemctl", "restart", "nginx; reboot"}, "matches no"},
		{"-split injection", c, []string{"systemctl", "restart", "nginx", "reboot"}, "matches no"},
		{"-prefix", c, []string{"/bin/uptime"}, "matches no"},
		{"-empty argv", c, nil, "empty command"},
		{"-empty path", c, []string{""}, "empty command"},
		{"-empty allowlist", none, []string{"uptime"}, "AllowCommands is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.checkCommand(tc.argv)
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrRefused)
			assert.Contains(t, err.Error(), tc.err)
		})
	}
}
