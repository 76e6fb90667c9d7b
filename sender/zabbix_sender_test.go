//go:build integration

package sender

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

func TestSameFrameAsZabbixSender(t *testing.T) {
	zs := harness.RequireTool(t, "zabbix_sender", "scripts/deps.sh zabbix")
	addr, got := trapper(t, success)
	host, port, _ := net.SplitHostPort(addr)
	c, err := New(addr, 2*time.Second)
	require.NoError(t, err)

	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, zs, append([]string{"-z", host, "-p", port}, args...)...)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		return string(out)
	}

	t.Run("one value", func(t *testing.T) {
		out := run("-s", "hv01", "-k", "haproxy.server.status.push[web,web-01]", "-o", "DOWN")
		assert.Contains(t, out, "processed: 1; failed: 0") // it parsed our trapper's reply too
		theirs := recv(t, got)
		_, err := c.Send(context.Background(), Item{Host: "hv01", Key: "haproxy.server.status.push[web,web-01]", Value: "DOWN"})
		require.NoError(t, err)
		ours := recv(t, got)
		assert.Equal(t, theirs.raw[:5], ours.raw[:5], "header magic and flags")
		assert.Equal(t, uint64(len(theirs.raw)-13), binary.LittleEndian.Uint64(theirs.raw[5:13]))
		assert.Equal(t, shape(theirs.req), shape(ours.req))
		assert.InDelta(t, theirs.req["clock"], ours.req["clock"], 60)
	})

	stamped := []struct {
		name, args, file string
		items            []Item
	}{
		{"timestamped values", "-T", "hv01 haproxy.server.status.push[web,web-01] 1700000000 DOWN\nweb-01 kvm.domain.pool.push 1700000001 \"no check\"\n",
			[]Item{{Host: "hv01", Key: "haproxy.server.status.push[web,web-01]", Value: "DOWN", Clock: 1700000000},
				{Host: "web-01", Key: "kvm.domain.pool.push", Value: "no check", Clock: 1700000001}}},
		{"timestamped values with ns", "-T -N", "hv01 haproxy.server.status.push[web,web-01] 1700000000 250 DOWN\nweb-01 kvm.domain.pool.push 1700000001 999999999 UP\n",
			[]Item{{Host: "hv01", Key: "haproxy.server.status.push[web,web-01]", Value: "DOWN", Clock: 1700000000, NS: 250},
				{Host: "web-01", Key: "kvm.domain.pool.push", Value: "UP", Clock: 1700000001, NS: 999999999}}},
	}
	for _, tt := range stamped {
		t.Run(tt.name, func(t *testing.T) {
			in := filepath.Join(t.TempDir(), "values")
			require.NoError(t, os.WriteFile(in, []byte(tt.file), 0o600))
			args := append([]string{}, strings.Fields(tt.args)...)
			run(append(args, "-i", in)...)
			theirs := recv(t, got)
			_, err := c.Send(context.Background(), tt.items...)
			require.NoError(t, err)
			ours := recv(t, got)
			assert.Equal(t, theirs.raw[:5], ours.raw[:5])
			assert.Equal(t, shape(theirs.req), shape(ours.req))
			td, od := theirs.req["data"].([]any), ours.req["data"].([]any)
			require.Len(t, od, len(td))
			for i := range td {
				for _, k := range []string{"clock", "ns"} {
					assert.Equal(t, td[i].(map[string]any)[k], od[i].(map[string]any)[k], "item %d %s", i, k)
				}
			}
		})
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add(Frame([]byte(`{"response":"success","info":"processed: 1; failed: 0"}`)))
	f.Add([]byte("ZBXD\x03\x05\x00\x00\x00\xff\xff\xff\x7f12345"))
	f.Add([]byte("ZBXD\x05\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ReadFrame(bytes.NewReader(b), 1<<16)
		if err == nil && len(p) > 1<<16 {
			t.Fatalf("payload of %d bytes past the limit", len(p))
		}
		if err == nil {
			_, _ = ParseResponse(p)
		}
	})
}

// shape reduces a request to what must match between two senders: top-level keys with JSON types,
// and per item its keys with types and host/key/value.
func shape(req map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range req {
		out[k] = fmt.Sprintf("%T", v)
	}
	out["request"] = req["request"]
	var items []map[string]any
	for _, d := range req["data"].([]any) {
		m := map[string]any{}
		for k, v := range d.(map[string]any) {
			m[k] = fmt.Sprintf("%T", v)
		}
		for _, k := range []string{"host", "key", "value"} {
			m[k] = d.(map[string]any)[k]
		}
		items = append(items, m)
	}
	out["data"] = items
	return out
}
