package hypervisor

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
	"zabbix-agent2-plugin-kvm/plugin"
	"zabbix-agent2-plugin-kvm/sender/sendertest"
)

// Every action's end reaches its guest host's kvm.domain.ladder.push, held and refused ones
// included, with the verdict and a summary; dry runs do not.
func TestLadderPushOnTestDriver(t *testing.T) {
	trap := sendertest.Start(t, sendertest.Options{})
	dir := t.TempDir()
	uri := kvmtest.NodeURI(t, []kvmtest.Domain{{Name: "web-1"}, {Name: "web-2", Paused: true}})
	_, h := configured(t, uri, "Actions.Enable", "1", "Actions.AllowDomains", "web-.*",
		"StateDir", dir+"/state", "AuditLog", dir+"/audit.log", "Push.Server", trap.Addr, "Push.Host", "hv-01")
	a, err := h.Actor("cli:test", false)
	require.NoError(t, err)
	next := func() (string, plugin.LadderValue) {
		t.Helper()
		select {
		case items := <-trap.Requests():
			require.Len(t, items, 1)
			require.Equal(t, "kvm.domain.ladder.push", items[0].Key)
			var v plugin.LadderValue
			require.NoError(t, json.Unmarshal([]byte(items[0].Value), &v), items[0].Value)
			return items[0].Host, v
		case <-time.After(5 * time.Second):
			t.Fatal("no ladder value reached the trapper")
		}
		return "", plugin.LadderValue{}
	}
	ctx := context.Background()

	_, err = a.Do(ctx, actions.VerbSuspend, "web-1")
	require.NoError(t, err)
	host, v := next()
	require.Len(t, host, 36, "the guest host is named after the domain's UUID")
	require.Equal(t, "web-1", v.Domain)
	require.Equal(t, [3]string{"suspend", "done", "cli:test"}, [3]string{v.Verb, v.Outcome, v.Caller})
	require.NotEmpty(t, v.AuditID)
	require.Regexp(t, `^\d\d:\d\d:\d\d suspend done; .*; \d+\.\d s$`, v.Summary)

	// the repair step diagnoses a guest paused by an operator and holds: the verdict says why
	_, err = a.Repair(ctx, "web-2")
	require.ErrorIs(t, err, actions.ErrHeld)
	_, v = next()
	require.Equal(t, [3]string{"repair", "held", "operator"}, [3]string{v.Verb, v.Outcome, v.Verdict})
	require.Regexp(t, `^\d\d:\d\d:\d\d repair held: operator \(paused \(paused/[a-z]+\): by an operator or a job of libvirt's\); \d+\.\d s$`, v.Summary, "the detail repeats the why: said once")

	// a domain outside the policy (here: none at all) has no guest host to tell
	_, err = a.Do(ctx, actions.VerbReset, "other")
	require.ErrorIs(t, err, actions.ErrRefused)
	select {
	case items := <-trap.Requests():
		t.Fatalf("a domain outside the policy has no guest host to tell, yet %v was pushed", items)
	case <-time.After(300 * time.Millisecond):
	}

	dry, err := h.Actor("cli:test", true)
	require.NoError(t, err)
	_, err = dry.Do(ctx, actions.VerbResume, "web-1")
	require.NoError(t, err)
	select {
	case items := <-trap.Requests():
		t.Fatalf("a dry run pushed %v", items)
	case <-time.After(300 * time.Millisecond):
	}
}

// The API token is taken only from a regular file others may not read.
func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	f := dir + "/token"
	require.NoError(t, os.WriteFile(f, []byte(" abc123\n"), 0o640))
	tok, err := readToken(f)
	require.NoError(t, err)
	require.Equal(t, "abc123", tok)
	require.NoError(t, os.Chmod(f, 0o644))
	_, err = readToken(f)
	require.ErrorContains(t, err, "others may not read")
	require.NoError(t, os.Symlink(f, dir+"/link"))
	_, err = readToken(dir + "/link")
	require.Error(t, err, "a symlink is not followed")
	require.NoError(t, os.WriteFile(dir+"/empty", nil, 0o600))
	_, err = readToken(dir + "/empty")
	require.ErrorContains(t, err, "empty")
}
