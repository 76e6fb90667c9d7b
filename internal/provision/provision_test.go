package provision

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/conf/templates"
)

func TestOptionsRejectBadValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"gentle below the server minimum", Options{GentleAfter: 30 * time.Second}, "gentle-after 30s"},
		{"forced not whole seconds", Options{ForcedAfter: 90500 * time.Millisecond}, "forced-after 1m30.5s"},
		{"page before the forced restart", Options{GentleAfter: time.Minute, ForcedAfter: time.Minute, PageAfter: 2 * time.Minute}, "page-after 2m0s"},
		{"smtp port", Options{SMTPPort: 70000}, "smtp-port 70000"},
		{"hypervisor port", Options{HypervisorPort: -1}, "hypervisor-port -1"},
		{"shell in plugin path", Options{PluginPath: "/x; rm -rf /"}, "plugin-path"},
		{"media without user", Options{UserEmail: "a@b"}, "without a user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.defaults()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	o := Options{}
	require.NoError(t, o.defaults())
	assert.Equal(t, DefaultPlugin, o.PluginPath)
	assert.Equal(t, 2*time.Minute, o.GentleAfter)
	assert.Equal(t, 3*time.Minute, o.ForcedAfter)
	assert.Equal(t, 15*time.Minute, o.PageAfter)
}

func TestImportChanges(t *testing.T) {
	raw, err := os.ReadFile("testdata/importcompare-7.0-reimport.json")
	require.NoError(t, err)
	var reimport any
	require.NoError(t, json.Unmarshal(raw, &reimport))
	// Derived from the capture: one real difference in an item name.
	renamed := strings.Replace(string(raw), `"name":"Domain state"`, `"name":"Domain state (old)"`, 1)
	require.NotEqual(t, string(raw), renamed, "fixture lost the item the test edits")
	var changed any
	require.NoError(t, json.Unmarshal([]byte(renamed), &changed))
	for _, tc := range []struct {
		name string
		in   any
		want bool
	}{
		{"empty list (6.0 and 7.0 when nothing differs)", []any{}, false},
		{"7.0 re-import of the same file", reimport, false},
		{"an item renamed", changed, true},
		{"a template added", map[string]any{"templates": map[string]any{"added": []any{map[string]any{"after": map[string]any{}}}}}, true},
		{"an item removed", map[string]any{"templates": map[string]any{"updated": []any{map[string]any{"before": map[string]any{}, "after": map[string]any{},
			"items": map[string]any{"removed": []any{map[string]any{"before": map[string]any{"key": "x"}}}}}}}}, true},
		{"a non-default type appears", map[string]any{"templates": map[string]any{"updated": []any{map[string]any{
			"before": map[string]any{"name": "x"}, "after": map[string]any{"name": "x", "type": "TRAP"}}}}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, importChanges(tc.in)) })
	}
}

func TestGuestYAMLSetsPageAfter(t *testing.T) {
	g, err := templates.Get(templates.Guest)
	require.NoError(t, err)
	out, err := guestYAML(g.YAML, 17*time.Minute)
	require.NoError(t, err)
	assert.Contains(t, string(out), "macro: '{$KVM.PAGE.AFTER}'\n          value: 1020s\n")
	assert.Equal(t, len(strings.Split(string(g.YAML), "\n")), len(strings.Split(string(out), "\n")), "only the value changes")
	_, err = guestYAML([]byte("zabbix_export: {}"), time.Minute)
	assert.ErrorContains(t, err, "0 {$KVM.PAGE.AFTER} macros")
}

func TestSubset(t *testing.T) {
	have := map[string]any{"name": "a", "type": "4", "parameters": []any{
		map[string]any{"name": "URL", "value": "u", "sortorder": "0"}, map[string]any{"name": "To", "value": "t"}}}
	assert.True(t, subset(map[string]any{"type": 4, "parameters": []map[string]any{{"name": "To", "value": "t"}, {"name": "URL", "value": "u"}}}, have))
	assert.False(t, subset(map[string]any{"parameters": []map[string]any{{"name": "URL", "value": "u"}}}, have), "a missing list element is a change")
	assert.False(t, subset(map[string]any{"type": 1}, have))
	assert.False(t, subset(map[string]any{"missing": ""}, have))
}
