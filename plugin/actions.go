package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/kvm"
)

// Policy maps the Plugins.KVM.Actions.* options onto the actions package's policy.
func (c *Config) Policy() actions.Policy {
	return actions.Policy{
		Enable: c.ActionsEnable, AllowDomains: c.AllowDomains, AllowCommands: c.ExecAllow,
		MaxForcedPerHour: c.MaxForcedPerHour, StateDir: c.StateDir, AuditLog: c.AuditLog,
		GentleMode: c.GentleMode, GentleTimeout: c.GentleTimeout, ForcedTimeout: c.ForcedTimeout,
		HealthTimeout: c.HealthTimeout, ExecTimeout: c.Timeout,
	}
}

// Actor returns an actions.Actor for this configuration; caller is written to the audit log.
func (p *Plugin) Actor(caller string, dryRun bool) (*actions.Actor, error) {
	conn, _, _, cfg := p.parts()
	if cfg == nil {
		return nil, errNotConfigured
	}
	opts := actions.Options{Caller: caller, DryRun: dryRun, Health: p.health(), Logf: func(f string, a ...any) { p.Debugf(f, a...) }}
	if pool := p.pool(); pool != nil {
		opts.Pool = pool
	}
	a, err := actions.New(conn, cfg.Policy(), opts)
	if err != nil {
		var fe *actions.FieldError
		if errors.As(err, &fe) {
			return nil, fmt.Errorf("actions: %s", fe.Reason)
		}
		return nil, err
	}
	return a, nil
}

// health composes recover's health check: HTTP (or TCP) on the guest's private address when it is
// known and inside GuestNetworks, else the guest agent.
func (p *Plugin) health() actions.Health {
	conn, _, _, cfg := p.parts()
	agent := actions.AgentHealth(conn)
	return func(ctx context.Context, domain string) (bool, string) {
		if cfg.HealthPort == 0 {
			return agent(ctx, domain)
		}
		ip, err := guestIP(p, ctx, domain)
		if err != nil {
			ok, detail := agent(ctx, domain)
			return ok, detail + " (no network check: " + err.Error() + ")"
		}
		if cfg.HealthPath == "" {
			if kvm.TCPCheck(ctx, ip, cfg.HealthPort) {
				return true, fmt.Sprintf("tcp %s:%d open", ip, cfg.HealthPort)
			}
			return false, fmt.Sprintf("tcp %s:%d closed", ip, cfg.HealthPort)
		}
		r := kvm.HTTPCheck(ctx, ip, cfg.HealthPort, cfg.HealthPath)
		if r.Status > 0 && r.Status < 400 {
			return true, fmt.Sprintf("http %s:%d%s %d in %.0f ms", ip, cfg.HealthPort, cfg.HealthPath, r.Status, r.TimeMs)
		}
		return false, fmt.Sprintf("http %s:%d%s: %d %s", ip, cfg.HealthPort, cfg.HealthPath, r.Status, r.Error)
	}
}

// SplitCommand splits a kvm.domain.exec command into argv: words separated by spaces, with '…' and
// "…" quoting and backslash escapes, and nothing else (no variables, globs or operators: no shell runs it).
func SplitCommand(s string) ([]string, error) {
	var argv []string
	var cur strings.Builder
	inWord, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else if c == '\\' && quote == '"' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
				i++
				cur.WriteByte(s[i])
			} else {
				cur.WriteByte(c)
			}
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				argv = append(argv, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote", quote)
	}
	if inWord {
		argv = append(argv, cur.String())
	}
	if len(argv) == 0 {
		return nil, errors.New("empty command")
	}
	return argv, nil
}

func domainExec(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	argv, err := SplitCommand(params["Command"])
	if err != nil {
		return nil, fmt.Errorf("invalid parameter Command: %w", err)
	}
	a, err := p.Actor("zabbix-agent", false)
	if err != nil {
		return nil, err
	}
	res, err := a.Exec(ctx, params["Domain"], argv, params["Mode"] != "nowait")
	if err != nil {
		return nil, err
	}
	if res.Waited {
		// like system.run: the command's output is the value; the exit code is in the JSON of the CLI
		return strings.TrimRight(res.Stdout, "\n"), nil
	}
	return "1", nil
}

// callerName is who the CLI acts for in the audit log: --caller, else the invoking user.
func callerName(flag string) string {
	if flag != "" {
		return flag
	}
	for _, k := range []string{"SUDO_USER", "USER", "LOGNAME"} {
		if v := os.Getenv(k); v != "" {
			return "cli:" + v
		}
	}
	return "cli"
}

// CallerName is exported for the CLI.
func CallerName(flag string) string { return callerName(flag) }
