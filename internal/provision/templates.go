package provision

import (
	"context"
	"fmt"
	"strings"

	"zabbix-agent2-plugin-kvm/conf/templates"
)

const pageMacro = "{$KVM.PAGE.AFTER}"

// importRules cover everything a template export may carry, so nothing in the YAML is dropped:
// template dashboards, value maps, graphs, web scenarios, linked templates, and (6.2+) template
// and host groups. "deleteMissing" makes the server's template equal to the file.
func (s *setup) importRules() map[string]any {
	all := map[string]any{"createMissing": true, "updateExisting": true, "deleteMissing": true}
	r := map[string]any{
		"templates":          map[string]any{"createMissing": true, "updateExisting": true},
		"items":              all,
		"triggers":           all,
		"discoveryRules":     all,
		"valueMaps":          all,
		"graphs":             all,
		"httptests":          all,
		"templateDashboards": all,
		"templateLinkage":    map[string]any{"createMissing": true, "deleteMissing": true},
	}
	if s.groups62 {
		r["template_groups"] = map[string]any{"createMissing": true}
		r["host_groups"] = map[string]any{"createMissing": true}
	} else {
		r["groups"] = map[string]any{"createMissing": true}
	}
	return r
}

// templateYAML is the file as Setup imports it: the template's macros carry the values the server
// already has (an admin's override of {$KVM.POLL.INTERVAL} survives a rerun, and a macro the admin
// added stays), and {$KVM.PAGE.AFTER} carries --page-after (or the server's value).
func (s *setup) templateYAML(t templates.Template) ([]byte, error) {
	var vals []macro
	for _, m := range s.cur.macros[t.Name] {
		if m.Type != "0" && m.Type != "" { // a secret's value is not readable; vault paths stay the admin's
			continue
		}
		vals = append(vals, m)
	}
	if t.Name == templates.Guest {
		vals = append(vals, macro{Macro: pageMacro, Value: secs(s.o.PageAfter)})
	}
	return setMacros(t.YAML, vals)
}

// templateMacros is the line of the template's own macros list in the 6.0 export layout; host
// prototypes carry macros too, further in.
const templateMacros = "      macros:\n"

// setMacros sets the values of the template-level macros in src and appends those it lacks. Only
// the template's own macros block is touched, as text, so the file keeps its layout.
func setMacros(src []byte, vals []macro) ([]byte, error) {
	lines := strings.SplitAfter(string(src), "\n")
	start := -1
	for i, l := range lines {
		if l == templateMacros {
			if start >= 0 {
				return nil, fmt.Errorf("zabbix setup: template file has two template macro lists")
			}
			start = i
		}
	}
	if start < 0 {
		return nil, fmt.Errorf("zabbix setup: template file has no template macro list (%q)", strings.TrimSpace(templateMacros))
	}
	end := start + 1
	for end < len(lines) && strings.HasPrefix(lines[end], "        ") {
		end++
	}
	const entry, field = "        -\n", "          "
	block := append([]string{}, lines[start+1:end]...)
	for _, m := range vals {
		if strings.ContainsAny(m.Value, "\r\n") {
			continue // not a value the text layout can carry; the file's own stays
		}
		value := field + "value: " + yamlQuote(m.Value) + "\n"
		at := -1
		for i, l := range block {
			if strings.HasPrefix(l, field+"macro: ") && yamlUnquote(strings.TrimSpace(strings.TrimPrefix(l, field+"macro: "))) == m.Macro {
				at = i
			}
		}
		switch {
		case at < 0:
			block = append(block, entry, field+"macro: "+yamlQuote(m.Macro)+"\n", value)
			if m.Description != "" && !strings.ContainsAny(m.Description, "\r\n") {
				block = append(block, field+"description: "+yamlQuote(m.Description)+"\n")
			}
		case at+1 < len(block) && strings.HasPrefix(block[at+1], field+"value: "):
			block[at+1] = value
		default:
			block = append(block[:at+1], append([]string{value}, block[at+1:]...)...)
		}
	}
	out := append(append(append([]string{}, lines[:start+1]...), block...), lines[end:]...)
	return []byte(strings.Join(out, "")), nil
}

func yamlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func yamlUnquote(s string) string {
	if len(s) >= 2 && s[0] == '\'' && s[len(s)-1] == '\'' {
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'")
	}
	return s
}

func (s *setup) templates(ctx context.Context) error {
	for _, t := range s.o.Templates {
		src, err := s.templateYAML(t)
		if err != nil {
			return fmt.Errorf("%w (%s)", err, t.File)
		}
		before, err := s.templateID(ctx, t.Name)
		if err != nil {
			return err
		}
		params := map[string]any{"format": "yaml", "source": string(src), "rules": s.importRules()}
		var cmp any
		if err := s.api.Call(ctx, "configuration.importcompare", params, &cmp); err != nil {
			return fmt.Errorf("zabbix setup: compare template %q: %w", t.Name, err)
		}
		if before != "" && !importChanges(cmp) {
			s.add("template", t.Name, before, Unchanged)
			continue
		}
		if err := s.api.Call(ctx, "configuration.import", params, nil); err != nil {
			return fmt.Errorf("zabbix setup: import template %q (%s): %w", t.Name, t.File, err)
		}
		id, err := s.templateID(ctx, t.Name)
		if err != nil {
			return err
		}
		if id == "" {
			return fmt.Errorf("zabbix setup: template %q missing after its import", t.Name)
		}
		c := Updated
		if before == "" {
			c = Created
		}
		s.add("template", t.Name, id, c)
	}
	return nil
}

func (s *setup) templateID(ctx context.Context, name string) (string, error) {
	var got []struct {
		TemplateID string `json:"templateid"`
	}
	if err := s.api.Call(ctx, "template.get", map[string]any{"output": []string{"templateid"}, "filter": map[string]any{"host": name}}, &got); err != nil {
		return "", fmt.Errorf("zabbix setup: find template %q: %w", name, err)
	}
	if len(got) == 0 {
		return "", nil
	}
	return got[0].TemplateID, nil
}

// importDefaults are fields a newer server's converter spells out although the stored template
// leaves them at their default; importcompare shows them as changes that are not changes.
var importDefaults = map[string]string{"type": "ZABBIX_PASSIVE"}

// importChanges reads a configuration.importcompare result: anything added or removed, or an
// update whose before and after differ beyond importDefaults, is a change.
func importChanges(v any) bool {
	switch t := v.(type) {
	case map[string]any:
		for k, sub := range t {
			switch k {
			case "added", "removed":
				if l, ok := sub.([]any); !ok || len(l) > 0 {
					return true
				}
			case "updated":
				l, _ := sub.([]any)
				for _, e := range l {
					m, _ := e.(map[string]any)
					if !sameModuloDefaults(m["before"], m["after"]) {
						return true
					}
					rest := map[string]any{}
					for k2, v2 := range m {
						if k2 != "before" && k2 != "after" {
							rest[k2] = v2
						}
					}
					if importChanges(rest) {
						return true
					}
				}
			default:
				if importChanges(sub) {
					return true
				}
			}
		}
	case []any:
		for _, e := range t {
			if importChanges(e) {
				return true
			}
		}
	}
	return false
}

func sameModuloDefaults(a, b any) bool {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		for k, av := range am {
			bv, ok := bm[k]
			if !ok {
				if importDefaults[k] != fmt.Sprint(av) {
					return false
				}
				continue
			}
			if !sameModuloDefaults(av, bv) {
				return false
			}
		}
		for k, bv := range bm {
			if _, ok := am[k]; !ok && importDefaults[k] != fmt.Sprint(bv) {
				return false
			}
		}
		return true
	}
	al, aok := a.([]any)
	bl, bok := b.([]any)
	if aok && bok {
		if len(al) != len(bl) {
			return false
		}
		for i := range al {
			if !sameModuloDefaults(al[i], bl[i]) {
				return false
			}
		}
		return true
	}
	return fmt.Sprint(a) == fmt.Sprint(b)
}
