//go:build integration

package hypervisor

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
	"zabbix-agent2-plugin-kvm/plugin"
	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"
	"zabbix-agent2-plugin-kvm/sender"
	"zabbix-agent2-plugin-kvm/sender/sendertest"
	"zabbix-agent2-plugin-kvm/tests/harness"
)

// The haproxy keys and the push, wired through the plugin, against a real haproxy that
// health-checks HTTP backends on loopback, with libvirt test-driver domains as the guests.
func TestHAProxyKeysAndPush(t *testing.T) {
	named := harness.NewHTTPBackend(t) // server named after its domain
	byIP := harness.NewHTTPBackend(t)  // server found by the domain's address
	h := harness.StartHAProxy(t, func(sock string) string {
		return fmt.Sprintf(`global
  stats socket %s mode 600 level admin
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
  default-server inter 200ms fall 2 rise 1
frontend fe
  bind 127.0.0.1:%d
  default_backend web
backend web
  option httpchk GET /
  server vm-named %s check
  server srv-2 %s check
`, sock, harness.Port(t), named.Addr(), byIP.Addr())
	})
	uri := kvmtest.NodeURI(t, []kvmtest.Domain{{Name: "vm-named", IP: "127.0.0.9"}, {Name: "ip-guest", IP: "127.0.0.1"}})
	trap := sendertest.Start(t, sendertest.Options{})
	frames := trap.Requests()
	dir := t.TempDir()
	c, err := plugin.ParseOptions(map[string]conf.Value{
		"URI": {Value: uri}, "Timeout": {Value: "3"}, "HAProxy.Socket": {Value: h.Sock},
		"Actions.Enable": {Value: "1"}, "Actions.AllowDomains": {Value: ".*"},
		"StateDir": {Value: dir + "/state"}, "AuditLog": {Value: dir + "/audit.log"},
		"Push.Server": {Value: trap.Addr}, "Push.Host": {Value: "hv-01"},
	}, 3)
	require.NoError(t, err)
	p := plugin.New(Open)
	require.NoError(t, p.Apply(c, plugin.AgentCaller))
	p.Start()
	t.Cleanup(p.Stop)

	harness.WaitFor(t, 10*time.Second, 50*time.Millisecond, "both servers UP", func() (bool, error) {
		v, err := get(t, p, "haproxy.get")
		return err == nil && strings.Count(v, `"status":"UP"`) == 3, err // two servers and the backend
	})
	v, err := get(t, p, "haproxy.discovery")
	require.NoError(t, err)
	require.Contains(t, v, `{"{#HAPROXY.NAME}":"fe","{#HAPROXY.TYPE}":"FRONTEND"}`)
	require.Contains(t, v, `{"{#HAPROXY.NAME}":"web","{#HAPROXY.TYPE}":"BACKEND"}`)

	var servers []map[string]string
	v, err = get(t, p, "haproxy.server.discovery")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(v), &servers))
	require.Len(t, servers, 2)
	require.Equal(t, "vm-named", servers[0]["{#KVM.DOMAIN.NAME}"], "mapped by name")
	require.Equal(t, "ip-guest", servers[1]["{#KVM.DOMAIN.NAME}"], "mapped by address")

	v, err = get(t, p, "kvm.domain.discovery")
	require.NoError(t, err)
	require.Contains(t, v, `"{#KVM.DOMAIN.HAPROXY.BACKEND}":"web","{#KVM.DOMAIN.HAPROXY.SERVER}":"vm-named"`)
	require.Contains(t, v, `"{#KVM.DOMAIN.HAPROXY.BACKEND}":"web","{#KVM.DOMAIN.HAPROXY.SERVER}":"srv-2"`)

	info, err := get(t, p, "haproxy.info")
	require.NoError(t, err)
	require.Contains(t, info, fmt.Sprintf(`"Pid":"%d"`, h.PID()))

	// keys read one shared snapshot per CacheSeconds: wait for the one that shows a change
	awaitStatus := func(server, field, want string) {
		harness.WaitFor(t, 10*time.Second, 100*time.Millisecond, server+" "+field+" "+want, func() (bool, error) {
			v, err := get(t, p, "haproxy.server.status", "web", server)
			var m map[string]any
			if err == nil {
				err = json.Unmarshal([]byte(v), &m)
			}
			return err == nil && m[field] == want, fmt.Errorf("%s %v", v, err)
		})
	}
	status := func(server string) map[string]any {
		v, err := get(t, p, "haproxy.server.status", "web", server)
		require.NoError(t, err)
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(v), &m))
		return m
	}
	require.Equal(t, "UP", status("vm-named")["status"])
	_, err = get(t, p, "haproxy.server.status", "web", "nope")
	require.ErrorContains(t, err, "haproxy.server.status[web,nope]")

	// a backend dies: haproxy marks it DOWN and the push reaches the trapper within about a second
	named.Stop()
	got := awaitPush(t, frames, "vm-named", "DOWN")
	require.ElementsMatch(t, []string{"hv-01/haproxy.server.status.push[web,vm-named]", "00000000-0000-4000-8000-000000000000/kvm.domain.pool.push"}, got)
	awaitStatus("vm-named", "status", "DOWN")
	named.Start()
	awaitPush(t, frames, "vm-named", "UP")

	// pool changes through the action key, audited
	v, err = get(t, p, "haproxy.server.set", "web", "srv-2", "drain")
	require.NoError(t, err)
	require.Equal(t, "1", v)
	awaitStatus("srv-2", "admin_state", "drain")
	_, err = get(t, p, "haproxy.server.set", "web", "srv-2", "ready")
	require.NoError(t, err)
	awaitStatus("srv-2", "admin_state", "ready")
	_, err = get(t, p, "haproxy.server.set", "web", "srv-2", "off")
	require.ErrorContains(t, err, `invalid parameter State "off": must be one of ready, drain, maint`)
	// audited as pool changes of the guest behind srv-2 (found by its address), under its policy
	var pools []string
	for _, l := range harness.AuditLines(t, filepath.Join(dir, "audit.log")) {
		if l["verb"] == "pool" {
			pools = append(pools, fmt.Sprintf("%s %s %s %s", l["domain"], l["command"], l["outcome"], l["caller"]))
		}
	}
	require.Equal(t, []string{"ip-guest web/srv-2 drain done zabbix-agent", "ip-guest web/srv-2 ready done zabbix-agent"}, pools)

	// An operator drains vm-named, then its check fails: haproxy says DOWN, the pool state says
	// DRAIN, and DRAIN is what the guest host gets pushed (the ladder's trigger ignores it).
	_, err = get(t, p, "haproxy.server.set", "web", "vm-named", "drain")
	require.NoError(t, err)
	awaitPush(t, frames, "vm-named", "DRAIN")
	named.Stop()
	awaitStatus("vm-named", "status", "DOWN")
	m := status("vm-named")
	require.Equal(t, "DRAIN", m["pool"], "a drained server whose check fails: %v", m)
	require.Equal(t, "drain", m["admin_state"])

	// One policy for pool changes: a plugin whose AllowDomains leaves out ip-guest refuses to
	// touch srv-2 (its guest), and haproxy keeps srv-2 ready.
	c2, err := plugin.ParseOptions(map[string]conf.Value{
		"URI": {Value: uri}, "Timeout": {Value: "3"}, "HAProxy.Socket": {Value: h.Sock},
		"Actions.Enable": {Value: "1"}, "Actions.AllowDomains": {Value: "vm-named"},
		"StateDir": {Value: dir + "/state"}, "AuditLog": {Value: dir + "/audit.log"},
	}, 3)
	require.NoError(t, err)
	p2 := plugin.New(Open)
	require.NoError(t, p2.Apply(c2, plugin.AgentCaller))
	t.Cleanup(p2.Stop)
	_, err = get(t, p2, "haproxy.server.set", "web", "srv-2", "maint")
	require.ErrorContains(t, err, `domain "ip-guest" does not match AllowDomains "vm-named"`)
	require.Equal(t, "ready", status("srv-2")["admin_state"], "a refused pool change reached haproxy")
}

func TestHAProxyGone(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "admin.sock")
	p, _ := configured(t, "test:///default", "HAProxy.Socket", missing)
	_, err := get(t, p, "haproxy.discovery")
	require.ErrorContains(t, err, missing)
	// domain discovery goes on without haproxy
	v, err := get(t, p, "kvm.domain.discovery")
	require.NoError(t, err)
	require.Contains(t, v, `"{#KVM.DOMAIN.NAME}":"test"`)
}

// awaitPush waits for the push of server's new status and returns "host/key" of its items.
func awaitPush(t *testing.T, frames <-chan []sender.Item, server, status string) []string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case items := <-frames:
			if len(items) > 0 && strings.Contains(items[0].Key, ","+server+"]") && items[0].Value == status {
				var out []string
				for _, it := range items {
					require.Equal(t, status, it.Value)
					out = append(out, it.Host+"/"+it.Key)
				}
				return out
			}
		case <-deadline:
			t.Fatalf("no push of %s %s within 10 s", server, status)
		}
	}
}
