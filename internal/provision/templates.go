package provision

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"zabbix-agent2-plugin-kvm/conf/templates"
)

var pageMacro = regexp.MustCompile(`(macro: '\{\$KVM\.PAGE\.AFTER\}'\n\s+value: )(\S+)`)

// guestYAML sets {$KVM.PAGE.AFTER} in the guest template before import, so the template itself
// carries the site's value and a re-run with the same flags finds nothing to change.
func guestYAML(src []byte, pageAfter time.Duration) ([]byte, error) {
	if n := len(pageMacro.FindAllIndex(src, -1)); n != 1 {
		return nil, fmt.Errorf("zabbix setup: guest template has %d {$KVM.PAGE.AFTER} macros, want 1", n)
	}
	return pageMacro.ReplaceAll(src, []byte(fmt.Sprintf("${1}%ds", int(pageAfter/time.Second)))), nil
}

func (s *setup) importRules() map[string]any {
	all := map[string]any{"createMissing": true, "updateExisting": true, "deleteMissing": true}
	cu := map[string]any{"createMissing": true, "updateExisting": true}
	r := map[string]any{
		"templates":       cu,
		"items":           all,
		"triggers":        all,
		"discoveryRules":  all,
		"valueMaps":       all,
		"graphs":          all,
		"httptests":       all,
		"templateLinkage": map[string]any{"createMissing": true},
	}
	if s.groups62 {
		r["template_groups"] = map[string]any{"createMissing": true}
		r["host_groups"] = map[string]any{"createMissing": true}
	} else {
		r["groups"] = map[string]any{"createMissing": true}
	}
	return r
}

func (s *setup) templates(ctx context.Context) error {
	for _, t := range templates.All() {
		src := t.YAML
		if t.Name == templates.Guest {
			var err error
			if src, err = guestYAML(src, s.o.PageAfter); err != nil {
				return err
			}
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
