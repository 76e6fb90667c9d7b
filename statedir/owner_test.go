//go:build integration

package statedir

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// agentUser is an unprivileged user to own the state directory, as zabbix owns it on a hypervisor.
func agentUser(t *testing.T) (int, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it plays a CLI run as root next to an agent's user")
	}
	u, err := user.Lookup("nobody")
	require.NoError(t, err)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

// Run as root (a CLI run by hand with sudo), every file created in the state directory and the
// audit log is handed to the directory's owner, so the agent's user can still use it; a file
// planted by another user is refused.
func TestRootHandsFilesToTheAgentUser(t *testing.T) {
	uid, gid := agentUser(t)
	base := t.TempDir()
	require.NoError(t, os.Chmod(base, 0o755))
	dirPath := filepath.Join(base, "state")
	require.NoError(t, os.Mkdir(dirPath, 0o700))
	require.NoError(t, os.Chown(dirPath, uid, gid))
	d, err := Open(dirPath)
	require.NoError(t, err)
	l, err := d.LockDomain(context.Background(), "web-07", time.Second, Holder{Caller: "cli:root"})
	require.NoError(t, err)
	require.NoError(t, d.UpdateDomain("web-07", SystemClock{}.Now(), func(s *Domain) error {
		s.AddRestart(SystemClock{}.Now(), "reset", 3)
		return nil
	}))
	l.Unlock()
	entries, err := os.ReadDir(dirPath)
	require.NoError(t, err)
	require.NotEmpty(t, entries)
	for _, e := range entries {
		fi, err := os.Stat(filepath.Join(dirPath, e.Name()))
		require.NoError(t, err)
		st := fi.Sys().(*syscall.Stat_t)
		assert.Equal(t, uint32(uid), st.Uid, e.Name())
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), e.Name())
	}

	logDir := filepath.Join(base, "log")
	require.NoError(t, os.Mkdir(logDir, 0o750))
	require.NoError(t, os.Chown(logDir, uid, gid))
	audit := filepath.Join(logDir, "kvm-actions.log")
	require.NoError(t, AppendLine(audit, []byte(`{"verb":"reset"}`)))
	fi, err := os.Stat(audit)
	require.NoError(t, err)
	assert.Equal(t, uint32(uid), fi.Sys().(*syscall.Stat_t).Uid)

	// a state file that belongs to someone else (not the directory's owner, not root) is refused
	other := filepath.Join(dirPath, Stem("web-08")+".json")
	require.NoError(t, os.WriteFile(other, []byte(`{"hold":null}`), 0o600))
	require.NoError(t, os.Chown(other, uid+1, gid))
	_, err = d.ReadDomain("web-08")
	require.ErrorContains(t, err, "expected "+strconv.Itoa(uid)+" (the state directory's owner) or root: refused")
}
