package plugin

import (
	"fmt"
	"strings"
)

// ParseItemKey splits a Zabbix item key such as kvm.domain.http[web-07,80,"/health check"] into its
// name and parameters, with Zabbix's quoting rules (a quoted parameter may hold commas and \"),
// so the CLI's `get` takes exactly what an item key field holds.
func ParseItemKey(s string) (string, []string, error) {
	s = strings.TrimSpace(s)
	open := strings.IndexByte(s, '[')
	if open < 0 {
		if s == "" || strings.ContainsAny(s, "],\" ") {
			return "", nil, fmt.Errorf("invalid item key %q", s)
		}
		return s, nil, nil
	}
	name := s[:open]
	if name == "" || !strings.HasSuffix(s, "]") {
		return "", nil, fmt.Errorf("invalid item key %q: expected name[params]", s)
	}
	body := s[open+1 : len(s)-1]
	var params []string
	i := 0
	for {
		for i < len(body) && body[i] == ' ' {
			i++
		}
		var p strings.Builder
		if i < len(body) && body[i] == '"' {
			i++
			closed := false
			for i < len(body) {
				c := body[i]
				if c == '\\' && i+1 < len(body) && body[i+1] == '"' {
					p.WriteByte('"')
					i += 2
					continue
				}
				if c == '"' {
					closed = true
					i++
					break
				}
				p.WriteByte(c)
				i++
			}
			if !closed {
				return "", nil, fmt.Errorf("invalid item key %q: unterminated quoted parameter", s)
			}
			for i < len(body) && body[i] == ' ' {
				i++
			}
			if i < len(body) && body[i] != ',' {
				return "", nil, fmt.Errorf("invalid item key %q: unexpected %q after a quoted parameter", s, body[i])
			}
		} else {
			for i < len(body) && body[i] != ',' {
				if body[i] == ']' || body[i] == '[' {
					return "", nil, fmt.Errorf("invalid item key %q: unquoted bracket in a parameter", s)
				}
				p.WriteByte(body[i])
				i++
			}
		}
		params = append(params, strings.TrimRight(p.String(), " "))
		if i >= len(body) {
			break
		}
		i++ // the comma
	}
	return name, params, nil
}
