package imp

import (
	"context"
	"testing"
	"encoding/json"
	"os"

	"zabbix-agent2-plugin-kvm/conf/templates"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

func TestImp(t *testing.T) {
	for _, v := range []string{"7.0", "6.0"} {
		t.Run(v, func(t *testing.T) {
			s := zbx.Start(t, zbx.Options{Version: v})
			ctx := context.Background()
			var gid []map[string]any
			if err := s.API.Call(ctx, "hostgroup.create", map[string]any{"name": "KVM guests"}, &gid); err != nil { t.Log(err) }
			g := "template_groups"
			if v == "6.0" { g = "groups" }
			rules := map[string]any{g: map[string]any{"createMissing": true},
				"templates": map[string]any{"createMissing": true, "updateExisting": true},
				"items": map[string]any{"createMissing": true, "updateExisting": true, "deleteMissing": true},
				"triggers": map[string]any{"createMissing": true, "updateExisting": true, "deleteMissing": true},
				"discoveryRules": map[string]any{"createMissing": true, "updateExisting": true, "deleteMissing": true},
				"valueMaps": map[string]any{"createMissing": true, "updateExisting": true, "deleteMissing": true},
				"templateLinkage": map[string]any{"createMissing": true},
			}
			for _, tp := range templates.All() {
				var cmp json.RawMessage
				err := s.API.Call(ctx, "configuration.importcompare", map[string]any{"format": "yaml", "source": string(tp.YAML), "rules": rules}, &cmp)
				t.Logf("%s compare1: %v %.300s", tp.Name, err, cmp)
				err = s.API.Call(ctx, "configuration.import", map[string]any{"format": "yaml", "source": string(tp.YAML), "rules": rules}, nil)
				t.Logf("%s import: %v", tp.Name, err)
				err = s.API.Call(ctx, "configuration.importcompare", map[string]any{"format": "yaml", "source": string(tp.YAML), "rules": rules}, &cmp)
				t.Logf("%s compare2: %v", tp.Name, err); os.WriteFile("/tmp/imp/cmp-"+v+"-"+tp.File+".json", cmp, 0o644)
			}
		})
	}
}
