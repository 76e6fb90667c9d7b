package templates

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// keys collects every "key" and every uuid in an export document.
func walk(n any, keys map[string]bool, uuids *[]string) {
	switch v := n.(type) {
	case map[string]any:
		for k, sub := range v {
			if s, ok := sub.(string); ok && k == "key" {
				keys[s] = true
			}
			if s, ok := sub.(string); ok && k == "uuid" {
				*uuids = append(*uuids, s)
			}
			walk(sub, keys, uuids)
		}
	case []any:
		for _, sub := range v {
			walk(sub, keys, uuids)
		}
	}
}

// The plugin's public keys must appear in the templates exactly as the plugin registers them.
func TestTemplatesCarryThePluginKeys(t *testing.T) {
	want := map[string][]string{
		Hypervisor: {"kvm.hypervisor.ping", "kvm.hypervisor.get", "kvm.domain.discovery", "haproxy.get", "haproxy.info",
			"haproxy.discovery", "haproxy.server.discovery", "haproxy.server.status[{#HAPROXY.BACKEND},{#HAPROXY.SERVER}]",
			"haproxy.server.status.push[{#HAPROXY.BACKEND},{#HAPROXY.SERVER}]", "agent.ping"},
		Guest: {"kvm.domain.state[{$KVM.DOMAIN}]", "kvm.domain.get[{$KVM.DOMAIN}]", "kvm.domain.disk.discovery[{$KVM.DOMAIN}]",
			"kvm.domain.net.discovery[{$KVM.DOMAIN}]", "kvm.domain.agent.ping[{$KVM.DOMAIN}]", "kvm.domain.agent.get[{$KVM.DOMAIN}]",
			"kvm.domain.tcp[{$KVM.DOMAIN},{$KVM.TCP.PORT}]", `kvm.domain.http[{$KVM.DOMAIN},{$KVM.HTTP.PORT},"{$KVM.HTTP.PATH}"]`,
			"haproxy.server.status[{$KVM.HAPROXY.BACKEND},{$KVM.HAPROXY.SERVER}]", "kvm.domain.pool.push"},
	}
	hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)
	seen := map[string]string{}
	all := All()
	require.Len(t, all, 2)
	assert.Equal(t, Guest, all[0].Name, "the guest template is imported first: the host prototype links it")
	for _, tpl := range all {
		var doc map[string]any
		require.NoError(t, yaml.Unmarshal(tpl.YAML, &doc), tpl.File)
		ex := doc["zabbix_export"].(map[string]any)
		assert.Equal(t, "6.0", ex["version"], "%s: 6.0 format imports on 6.0 and 7.0", tpl.File)
		keys := map[string]bool{}
		var uuids []string
		walk(doc, keys, &uuids)
		for _, k := range want[tpl.Name] {
			assert.True(t, keys[k], "%s lacks key %s", tpl.File, k)
		}
		for _, u := range uuids {
			assert.Regexp(t, hex32, u, tpl.File)
			// The group Templates/Virtualization is shared on purpose (the stock uuid).
			if prev, dup := seen[u]; dup && u != "02e4df4f20b848e79267641790f241da" {
				t.Errorf("uuid %s in %s and %s", u, prev, tpl.File)
			}
			seen[u] = tpl.File
		}
	}
	_, err := Get("nope")
	assert.ErrorContains(t, err, `no template "nope"`)
}
