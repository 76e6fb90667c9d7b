//go:build integration

package zbx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/smtp"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/internal/zabbixapi"
	"zabbix-agent2-plugin-kvm/tests/harness"
)

// TestStart brings up each version, checks the stack's promises (API version, stock host off, the
// trapper takes values, runtime control works, API errors carry the server's words) and that the
// frontend config file is put back afterwards.
func TestStart(t *testing.T) {
	before, beforeErr := os.ReadFile(FrontConf)
	for _, v := range []string{"7.0", "6.0"} {
		t.Run(v, func(t *testing.T) {
			s := Start(t, Options{Version: v})
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
		})
		after, afterErr := os.ReadFile(FrontConf)
		assert.Equal(t, beforeErr == nil, afterErr == nil, "%s existence changed by the stack", FrontConf)
		assert.Equal(t, before, after, "%s not restored", FrontConf)
	}
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
