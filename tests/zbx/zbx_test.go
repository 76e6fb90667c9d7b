//go:build integration

package zbx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/smtp"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/internal/zabbixapi"
	"zabbix-agent2-plugin-kvm/tests/harness"
)

// TestStart brings up each version, checks the stack's promises (API version, stock host off, the
// trapper takes values, runtime control works, API errors carry the server's words, the frontend
// runs on its private configuration) and that nothing of it is left, inside or outside its temp
// dir, once its test ended.
func TestStart(t *testing.T) {
	// Held across both stacks, so that no other stack (an older version of this package rewrote
	// /etc/zabbix/zabbix.conf.php) changes the file between the two reads.
	LockMachine(t)
	before, beforeErr := os.ReadFile(SystemFrontConf)
	for _, v := range []string{"7.0", "6.0"} {
		var dir string
		t.Run(v, func(t *testing.T) {
			s := Start(t, Options{Version: v})
			dir = s.Dir
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			assert.Regexp(t, `^`+v+`\.\d+$`, s.APIVersion)

			var hosts []struct {
				Status string `json:"status"`
			}
			require.NoError(t, s.API.Call(ctx, "host.get", map[string]any{"hostids": "10084", "output": []string{"status"}}, &hosts))
			require.Len(t, hosts, 1)
			assert.Equal(t, "1", hosts[0].Status, "stock Zabbix server host should be disabled")

			err := s.API.Call(ctx, "hostgroup.create", map[string]any{"name": "x", "no_such_param": 1}, nil)
			var apiErr *zabbixapi.APIError
			require.True(t, errors.As(err, &apiErr), "want an API error, got %v", err)
			assert.Contains(t, apiErr.Data, "no_such_param")

			var grp struct {
				GroupIDs []string `json:"groupids"`
			}
			require.NoError(t, s.API.Call(ctx, "hostgroup.create", map[string]any{"name": "zbx test"}, &grp))
			var host struct {
				HostIDs []string `json:"hostids"`
			}
			require.NoError(t, s.API.Call(ctx, "host.create", map[string]any{"host": "zbx-test", "groups": []map[string]any{{"groupid": grp.GroupIDs[0]}}}, &host))
			require.NoError(t, s.API.Call(ctx, "item.create", map[string]any{"hostid": host.HostIDs[0], "name": "trap", "key_": "zbx.trap",
				"type": 2, "value_type": 3}, nil))
			require.NoError(t, s.Runtime(ctx, "config_cache_reload"))
			harness.WaitFor(t, 30*time.Second, 500*time.Millisecond, "trapper value stored", func() (bool, error) {
				if err := s.Send(ctx, "zbx-test", "zbx.trap", "42"); err != nil {
					return false, err
				}
				var items []struct {
					LastValue string `json:"lastvalue"`
				}
				if err := s.API.Call(ctx, "item.get", map[string]any{"hostids": host.HostIDs[0], "output": []string{"lastvalue"}}, &items); err != nil {
					return false, err
				}
				return len(items) == 1 && items[0].LastValue == "42", fmt.Errorf("items %+v", items)
			})
			assert.Error(t, s.Send(ctx, "zbx-test", "no.such.item", "1"), "unknown item must be refused")

			// The frontend read the private configuration: its server name is in the login page.
			conf, err := os.ReadFile(s.FrontConf)
			require.NoError(t, err)
			assert.Contains(t, string(conf), fmt.Sprintf("$DB['PORT'] = '%d'", s.PGPort))
			assert.True(t, strings.HasPrefix(s.FrontConf, s.Dir+"/"), "private conf %s outside %s", s.FrontConf, s.Dir)
			page := get(ctx, t, s.URL+"index.php")
			assert.Contains(t, page, "<title>"+s.FrontName+": ", "the frontend did not read %s", s.FrontConf)
			procs := Procs(s.Dir)
			assert.GreaterOrEqual(t, len(procs), 10, "the stack's processes must be found by their dir: %v", procs)
		})
		require.NotEmpty(t, dir)
		assert.NoDirExists(t, dir, "temp dir left")
		assert.Empty(t, Procs(dir), "processes left")
		after, afterErr := os.ReadFile(SystemFrontConf)
		assert.Equal(t, beforeErr == nil, afterErr == nil, "%s existence changed by the stack", SystemFrontConf)
		assert.Equal(t, before, after, "%s changed by the stack", SystemFrontConf)
	}
}

func get(ctx context.Context, t testing.TB, url string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", url, b)
	return string(b)
}

// The sink's SMTP dialogue, driven by Go's SMTP client; the Zabbix server's delivery is tested in
// internal/provision.
func TestSMTPSink(t *testing.T) {
	s := StartSMTP(t, harness.FreePort(t, portLo, portHi))
	body := "Subject: =?UTF-8?B?UHJvYmxlbTogw6k=?=\r\nFrom: a@kvm.test\r\n\r\nline 1\r\n.dotted\r\n"
	require.NoError(t, smtp.SendMail(s.Addr, nil, "a@kvm.test", []string{"b@kvm.test", "c@kvm.test"}, []byte(body)))
	msgs := s.Messages()
	require.Len(t, msgs, 1)
	m := msgs[0]
	assert.Equal(t, "a@kvm.test", m.From)
	assert.Equal(t, []string{"b@kvm.test", "c@kvm.test"}, m.To)
	assert.Equal(t, "Problem: é", m.Subject)
	assert.Contains(t, m.Data, "\n.dotted\n", "dot-stuffing undone")
	assert.Len(t, s.Find("Problem", "line 1"), 1)
	assert.Empty(t, s.Find("Problem", "absent"))
	assert.True(t, bytes.Contains([]byte(m.Data), []byte("line 1")))
}
