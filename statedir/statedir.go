// Package statedir holds the files that the plugin and every CLI process share in
// Plugins.KVM.StateDir: one lock per domain (and one per hypervisor-wide operation), the history
// each domain's guards count (forced actions, restarts), operator holds and quarantine, and the
// slots that bound concurrent actions on this hypervisor.
//
// The directory belongs to the agent's user. Files are opened without following symlinks and
// checked to be regular files owned by the directory's owner (or root), so another local user can
// neither redirect a write nor plant a state; a CLI run as root hands every file it creates to the
// directory's owner, so the agent can still use it afterwards.
//
// Times are stamps that survive wall-clock steps: ages within one boot are measured on
// CLOCK_BOOTTIME, so setting the clock back neither erases nor extends a rolling-hour history.
package statedir

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Dir is an opened state directory.
type Dir struct {
	Path string
	uid  int // the directory's owner: every file in it must be owned by this user or root
	gid  int
}

// Open checks (and, when missing, creates with mode 0700) the state directory. It refuses a
// directory that is a symlink, is not owned by the current user or root, or that group or others
// may write: locks and counters in it decide whether a guest may be restarted.
func Open(path string) (*Dir, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("state dir %q: must be an absolute path", path)
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(path, 0o700); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
		fi, err = os.Lstat(path)
	}
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if fi.Mode()&os.ModeSymlink != 0 || !fi.IsDir() {
		return nil, fmt.Errorf("state dir %s: not a directory (a symlink is refused)", path)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if me := os.Geteuid(); me != 0 && int(st.Uid) != me {
		return nil, fmt.Errorf("state dir %s: owned by uid %d, not by this user (uid %d): run as the agent's user", path, st.Uid, me)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("state dir %s: mode %04o lets others write: want 0700 (chmod 0700 %s)", path, fi.Mode().Perm(), path)
	}
	return &Dir{Path: path, uid: int(st.Uid), gid: int(st.Gid)}, nil
}

// Stem turns any domain name (spaces, shell metacharacters, "../", unicode) into a file-name stem
// that is safe and unique: the readable ASCII part for humans, a hash of the exact name for uniqueness.
func Stem(name string) string {
	var b strings.Builder
	for _, r := range name {
		if b.Len() >= 40 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	sum := sha256.Sum256([]byte(name))
	return "dom-" + b.String() + "-" + hex.EncodeToString(sum[:8])
}

// OpenFile opens name inside the directory without following a symlink, creating it (mode 0600,
// handed to the directory's owner) when flag says so, and checks it is a regular file owned by the
// directory's owner or root.
func (d *Dir) OpenFile(name string, flag int) (*os.File, error) {
	return openChecked(filepath.Join(d.Path, name), flag, d.uid, d.gid)
}

// openChecked is the one way files in the state directory and the audit log are opened.
func openChecked(path string, flag int, uid, gid int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s: is a symlink: refused", path)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if int(st.Uid) != uid && st.Uid != 0 {
		f.Close()
		return nil, fmt.Errorf("%s: owned by uid %d, expected %d (the state directory's owner) or root: refused", path, st.Uid, uid)
	}
	if os.Geteuid() == 0 && int(st.Uid) != uid {
		// created by root (a CLI run as root): hand it to the agent's user, who must use it next
		if err := f.Chown(uid, gid); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: chown to the state directory's owner: %w", path, err)
		}
	}
	return f, nil
}

// readJSON reads name into v; a missing file leaves v as it is.
func (d *Dir) readJSON(name string, v any) error {
	f, err := d.OpenFile(name, os.O_RDONLY)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return fmt.Errorf("state file %s: %w", name, err)
	}
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("state file %s: %w", filepath.Join(d.Path, name), err)
	}
	return nil
}

// writeJSON replaces name atomically (temporary file, then rename), so a crash never leaves a
// half-written counter and a reader sees the old or the new file.
func (d *Dir) writeJSON(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := fmt.Sprintf(".%s.%d.tmp", name, os.Getpid())
	f, err := d.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	_, werr := f.Write(b)
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(filepath.Join(d.Path, tmp), filepath.Join(d.Path, name))
	}
	if werr != nil {
		os.Remove(filepath.Join(d.Path, tmp))
		return fmt.Errorf("state file %s: %w", name, werr)
	}
	return nil
}

// AppendLine appends one line to a log file (the audit log) in a single write on an O_APPEND
// descriptor, so lines from the plugin and CLI processes never interleave. The file is opened
// without following symlinks; created, it gets mode 0640 and, under root, the owner of its directory.
func AppendLine(path string, line []byte) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("audit log: directory %s: %w", dir, err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return fmt.Errorf("audit log %s: is a symlink: refused", path)
		}
		return fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	lf, err := f.Stat()
	if err != nil || !lf.Mode().IsRegular() {
		return fmt.Errorf("audit log %s: not a regular file", path)
	}
	owner := lf.Sys().(*syscall.Stat_t).Uid
	if owner != st.Uid && owner != 0 && int(owner) != os.Geteuid() {
		return fmt.Errorf("audit log %s: owned by uid %d, neither its directory's owner nor root: refused", path, owner)
	}
	if os.Geteuid() == 0 && owner == 0 && st.Uid != 0 {
		// created by a CLI run as root: the agent's user must keep appending to it
		if err := f.Chown(int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("audit log %s: chown to its directory's owner: %w", path, err)
		}
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// OpenExisting opens the state directory for reading without creating it; a directory that does
// not exist yet yields (nil, nil): nothing was ever recorded.
func OpenExisting(path string) (*Dir, error) {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return Open(path)
}

// CheckAppendable says whether path could take an audit line now, without writing one: its
// directory exists, and the file opens for appending (it is created, empty, when missing) without
// following a symlink.
func CheckAppendable(path string) error {
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("directory %s does not exist", dir)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
	if err != nil {
		return err
	}
	return f.Close()
}

// CheckWritable says whether the state directory can be used by this process now: it opens (or
// creates) it with Open's checks and creates and removes a file in it.
func CheckWritable(path string) error {
	d, err := Open(path)
	if err != nil {
		return err
	}
	name := fmt.Sprintf(".check-%d", os.Getpid())
	f, err := d.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("state dir %s: %w", path, err)
	}
	f.Close()
	return os.Remove(filepath.Join(path, name))
}
