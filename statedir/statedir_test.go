package statedir

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStemIsSafeAndUnique(t *testing.T) {
	names := []string{"web-07", "web 07", "web_07", "../../etc/passwd", "a;rm -rf /", "$(reboot)", "ωeb-07", "web-07\n", ".", "",
		strings.Repeat("x", 300)}
	seen := map[string]string{}
	for _, n := range names {
		s := Stem(n)
		assert.Regexp(t, `^dom-[A-Za-z0-9_-]*-[0-9a-f]{16}$`, s, "%q", n)
		assert.LessOrEqual(t, len(s), 80)
		if prev, dup := seen[s]; dup {
			t.Errorf("%q and %q share the stem %s", prev, n, s)
		}
		seen[s] = n
	}
	assert.Equal(t, Stem("web-07"), Stem("web-07"), "stable")
}

// A lock, state or audit file that is a symlink is refused, so nobody who can write the directory's
// parent (or plant a link) can make the plugin write elsewhere.
func TestSymlinksAreRefused(t *testing.T) {
	base := t.TempDir()
	d, err := Open(filepath.Join(base, "state"))
	require.NoError(t, err)
	fi, err := os.Stat(d.Path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "created for the agent's user only")

	victim := filepath.Join(base, "victim")
	require.NoError(t, os.WriteFile(victim, []byte("keep"), 0o600))
	require.NoError(t, os.Symlink(victim, filepath.Join(d.Path, Stem("web-07")+".lock")))
	require.NoError(t, os.Symlink(victim, filepath.Join(d.Path, Stem("web-07")+".json")))
	_, err = d.LockDomain(context.Background(), "web-07", time.Second, Holder{})
	require.ErrorContains(t, err, "is a symlink: refused")
	_, err = d.ReadDomain("web-07")
	require.ErrorContains(t, err, "is a symlink: refused")

	audit := filepath.Join(base, "audit.log")
	require.NoError(t, os.Symlink(victim, audit))
	require.ErrorContains(t, AppendLine(audit, []byte(`{"x":1}`)), "is a symlink: refused")
	b, err := os.ReadFile(victim)
	require.NoError(t, err)
	assert.Equal(t, "keep", string(b), "the link's target was never written")

	// a directory others may write is refused, and so is one that is itself a link
	loose := filepath.Join(base, "loose")
	require.NoError(t, os.Mkdir(loose, 0o777))
	require.NoError(t, os.Chmod(loose, 0o777))
	_, err = Open(loose)
	require.ErrorContains(t, err, "lets others write")
	require.NoError(t, os.Symlink(d.Path, filepath.Join(base, "link")))
	_, err = Open(filepath.Join(base, "link"))
	require.ErrorContains(t, err, "a symlink is refused")
}

// Ages within one boot run on the boot clock: stepping the wall clock neither erases nor extends
// the history; across a reboot the wall clock is all there is.
func TestSinceSurvivesWallClockSteps(t *testing.T) {
	t0 := Stamp{Wall: time.Unix(1_700_000_000, 0), Boot: int64(10 * time.Minute), BootID: "a"}
	later := Stamp{Wall: t0.Wall.Add(-2 * time.Hour), Boot: t0.Boot + int64(5*time.Minute), BootID: "a"}
	assert.Equal(t, 5*time.Minute, Since(t0, later), "the wall clock went back 2 h; 5 min passed")
	otherBoot := Stamp{Wall: t0.Wall.Add(30 * time.Minute), Boot: int64(time.Minute), BootID: "b"}
	assert.Equal(t, 30*time.Minute, Since(t0, otherBoot))
	past := Stamp{Wall: t0.Wall.Add(-time.Hour), BootID: "c"}
	assert.Equal(t, time.Duration(0), Since(t0, past), "a stamp in the future is recent, not ancient")
	assert.Len(t, Within([]Stamp{t0}, past, time.Hour), 1)
	now := SystemClock{}.Now()
	assert.NotEmpty(t, now.BootID, "this machine has CLOCK_BOOTTIME and a boot id")
	assert.Positive(t, now.Boot)
}
