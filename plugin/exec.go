package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

var errNoActions = errors.New("actions are not available (see Plugins.KVM.Actions.*)")

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

func domainExec(act Actions) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		argv, err := SplitCommand(params["Command"])
		if err != nil {
			return nil, fmt.Errorf("invalid parameter Command: %w", err)
		}
		if act == nil {
			return nil, errNoActions
		}
		wait := params["Mode"] != "nowait"
		out, err := act.Exec(ctx, params["Domain"], argv, wait)
		if err != nil {
			return nil, err
		}
		if !wait {
			return "1", nil
		}
		// like system.run: the command's output is the value; the exit code is in the CLI's JSON
		return strings.TrimRight(out, "\n"), nil
	}
}

func haproxyServerSet(act Actions) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		if act == nil {
			return nil, errNoActions
		}
		if err := act.PoolSet(ctx, params["Backend"], params["Server"], params["State"]); err != nil {
			return nil, err
		}
		return "1", nil
	}
}
