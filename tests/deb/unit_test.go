package deb

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// debianUnit is zabbix-agent2.service as Debian ships it (6.0.14 and 7.0.9 alike); the
// integration test reads the installed one.
const debianUnit = `[Unit]
Description=Zabbix Agent 2
After=network.target

[Service]
Environment="DAEMON_ARGS= -c /etc/zabbix/zabbix_agent2.conf"
EnvironmentFile=-/etc/default/%p
Type=simple
ExecStart=/usr/sbin/zabbix_agent2 -foreground $DAEMON_ARGS
RestartSec=10s
User=zabbix
Group=zabbix
Restart=on-abnormal

[Install]
WantedBy=multi-user.target
`

func TestRestartTable(t *testing.T) {
	dir := t.TempDir()
	unit := filepath.Join(dir, "zabbix-agent2.service")
	require.NoError(t, os.WriteFile(unit, []byte(debianUnit), 0o644))
	debian, err := ParseUnit("zabbix-agent2.service", unit)
	require.NoError(t, err)
	withDropIn, err := ParseUnit("zabbix-agent2.service", unit, "../../packaging/deb/kvm-plugin.conf")
	require.NoError(t, err)
	require.Equal(t, "always", withDropIn.Get("Restart"))

	for _, tt := range []struct {
		exit           Exit
		debian, dropIn bool
	}{
		{Exit{Code: 0}, false, true},                 // agent 6.0.14 after its plugin was killed
		{Exit{Code: 2}, false, true},                 // agent 7.0.9 after its plugin was killed
		{Exit{Signal: syscall.SIGKILL}, true, true},  // the agent itself killed
		{Exit{Signal: syscall.SIGTERM}, false, true}, // a clean stop signal
	} {
		got, err := debian.Restarts(tt.exit)
		require.NoError(t, err)
		require.Equal(t, tt.debian, got, "Debian's unit after %s", tt.exit)
		got, err = withDropIn.Restarts(tt.exit)
		require.NoError(t, err)
		require.Equal(t, tt.dropIn, got, "with the drop-in after %s", tt.exit)
	}

	env, err := debian.Environment(func(string) ([]byte, error) { return nil, os.ErrNotExist })
	require.NoError(t, err)
	argv, err := debian.ExecStart(env)
	require.NoError(t, err)
	require.Equal(t, []string{"/usr/sbin/zabbix_agent2", "-foreground", "-c", "/etc/zabbix/zabbix_agent2.conf"}, argv)
}

func TestRestartPreventAndSuccessStatus(t *testing.T) {
	f := filepath.Join(t.TempDir(), "x.service")
	require.NoError(t, os.WriteFile(f, []byte("[Service]\nRestart=on-failure\nSuccessExitStatus=2\nRestartPreventExitStatus=3 SIGUSR1\n"), 0o644))
	u, err := ParseUnit("x.service", f)
	require.NoError(t, err)
	for _, tt := range []struct {
		exit Exit
		want bool
	}{{Exit{Code: 1}, true}, {Exit{Code: 2}, false}, {Exit{Code: 3}, false}, {Exit{Signal: syscall.SIGUSR1}, false}, {Exit{Signal: syscall.SIGSEGV}, true}} {
		got, err := u.Restarts(tt.exit)
		require.NoError(t, err)
		require.Equal(t, tt.want, got, tt.exit.String())
	}
	f2 := filepath.Join(t.TempDir(), "y.service")
	require.NoError(t, os.WriteFile(f2, []byte("[Service]\nRestart=sometimes\n"), 0o644))
	u2, err := ParseUnit("y.service", f2)
	require.NoError(t, err)
	_, err = u2.Restarts(Exit{})
	require.ErrorContains(t, err, "Restart=sometimes")
}
