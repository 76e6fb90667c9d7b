package zbx

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// The reaper removes a dir whose owner is dead, killing what still works in it, and leaves a live
// owner's dir and a dir without an owner file alone.
func TestReap(t *testing.T) {
	root := t.TempDir()
	mk := func(name string) string {
		d := filepath.Join(root, dirPrefix+name)
		require.NoError(t, os.Mkdir(d, 0o755))
		return d
	}
	live, unowned, dead := mk("live"), mk("unowned"), mk("dead")
	require.NoError(t, writeOwner(live))

	// A dead owner: a process that ran and was waited for; its pid and start time name nobody now.
	gone := exec.Command("cat")
	stdin, err := gone.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, gone.Start())
	st := harness.StartTime(gone.Process.Pid)
	require.NotEmpty(t, st)
	stdin.Close()
	require.NoError(t, gone.Wait())
	require.NoError(t, os.WriteFile(filepath.Join(dead, ownerFile), []byte(fmt.Sprintf("%d %s\n", gone.Process.Pid, st)), 0o644))

	// What the dead run left working in its dir, and a process of the live one.
	left := exec.Command("cat")
	left.Dir = dead
	_, err = left.StdinPipe() // held open: cat runs until killed
	require.NoError(t, err)
	require.NoError(t, left.Start())
	waited := make(chan error, 1)
	go func() { waited <- left.Wait() }()
	keep := exec.Command("cat")
	keep.Dir = live
	keepIn, err := keep.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, keep.Start())
	t.Cleanup(func() { keepIn.Close(); keep.Wait() })
	require.Len(t, Procs(dead), 1)
	require.Len(t, Procs(live), 1)

	assert.Equal(t, []string{dead}, reapIn(t, root))
	assert.NoDirExists(t, dead)
	assert.Error(t, <-waited, "the leftover process must have been killed")
	assert.DirExists(t, live)
	assert.DirExists(t, unowned)
	assert.Len(t, Procs(live), 1, "a live owner's process must be left alone")
}

func TestOverride(t *testing.T) {
	got := override("A=1\nCacheSize=16M\nB=2\n", map[string]string{"CacheSize": "256M", "StartPollers": "3"})
	if want := "A=1\nCacheSize=256M\nB=2\nStartPollers=3\n"; got != want {
		t.Errorf("override: %q, want %q", got, want)
	}
	if got := override("A=1\n", nil); got != "A=1\n" {
		t.Errorf("override without extra: %q", got)
	}
}

// TestServerConf: the stack's server settings, a test's override in place of the default and a
// key of its own appended; every key once.
func TestServerConf(t *testing.T) {
	conf := serverConf(&Stack{ServerPort: 15000}, "/run/x", true, map[string]string{"Timeout": "10", "StartProxyPollers": "0"})
	seen := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(conf), "\n") {
		k, _, _ := strings.Cut(l, "=")
		seen[k]++
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s set %d times", k, n)
		}
	}
	for _, want := range []string{"\nTimeout=10\n", "\nListenPort=15000\n", "\nEnableGlobalScripts=1\n", "\nStartProxyPollers=0\n"} {
		if !strings.Contains("\n"+conf, want) {
			t.Errorf("server conf lacks %q:\n%s", strings.TrimSpace(want), conf)
		}
	}
}
