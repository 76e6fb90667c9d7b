package plugin

import (
	"os"
	"path/filepath"
	"testing"

	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"

	"github.com/stretchr/testify/require"
)

// An invalid option in an included file is named with that file: the agent gives only the line.
func TestOptionFileFollowsIncludes(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, "zabbix_agent2.conf")
	plugins := filepath.Join(dir, "zabbix_agent2.d", "plugins.d")
	require.NoError(t, os.MkdirAll(plugins, 0o755))
	require.NoError(t, os.WriteFile(main, []byte("Server=127.0.0.1\nInclude=./zabbix_agent2.d/plugins.d/*.conf\n"), 0o644))
	kvmConf := filepath.Join(plugins, "kvm.conf")
	require.NoError(t, os.WriteFile(kvmConf, []byte("# KVM\n\nPlugins.KVM.URI=qemu:///system\nPlugins.KVM.CacheSecs=5\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(plugins, "other.conf"), []byte("Plugins.Foo.X=1\nPlugins.Foo.Y=2\nPlugins.Foo.Z=3\nPlugins.Foo.W=4\n"), 0o644))
	files := withIncludes(main, 0)
	require.Contains(t, files, kvmConf)
	require.Equal(t, kvmConf, optionFile(files, "CacheSecs", 4))
	require.Equal(t, "", optionFile(files, "CacheSecs", 3), "the line must hold that very option")
	_, err := ParseOptionsAt(map[string]conf.Value{"CacheSecs": {Value: "5", Line: 4}}, 3, func(n string, l int) string {
		return optionFile(files, n, l) + ", line 4"
	})
	require.EqualError(t, err, "unknown option Plugins.KVM.CacheSecs ("+kvmConf+", line 4) (see kvm.conf for the valid ones)")
}
