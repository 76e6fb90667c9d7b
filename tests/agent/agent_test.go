//go:build integration

// Package agent runs the plugin under real zabbix_agent2 binaries (harness.AgentVersions: 6.0.14,
// 7.0.x from bookworm-backports, 7.0.22 from trixie) on the libvirt test driver: registration, -t,
// -p, -R metrics, passive checks over TCP, errors, bad options and a panicking handler.
package agent

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

var versions = harness.AgentVersions

func testDriver() map[string]string {
	return map[string]string{"URI": "test:///default", "CacheSeconds": "1"}
}

func TestAgentTestKey(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			a := harness.WriteAgentConf(t, v, harness.AgentOptions{Options: testDriver()})
			out, err := a.Run(t, 60*time.Second, "-t", "kvm.hypervisor.ping")
			require.NoError(t, err, out)
			require.Regexp(t, `kvm\.hypervisor\.ping\s+\[s\|1\]`, out)
			out, err = a.Run(t, 60*time.Second, "-t", "kvm.domain.state[test]")
			require.NoError(t, err, out)
			require.Regexp(t, `kvm\.domain\.state\[test\]\s+\[s\|running\]`, out)
			// -p runs only the registration run; loadable-plugin keys are not printed by either version
			out, err = a.Run(t, 60*time.Second, "-p")
			require.NoError(t, err, out)
			require.Contains(t, out, "agent.ping")
		})
	}
}

func TestAgentPassiveChecks(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			a := harness.WriteAgentConf(t, v, harness.AgentOptions{Options: testDriver()})
			a.Start(t)
			if m := regexp.MustCompile(`.*using plugin 'KVM'.*`).FindString(a.Log()); m != "" {
				t.Logf("agent %s: %s", v, strings.TrimSpace(m))
			}

			q := func(key string) string {
				t.Helper()
				val, err := a.Query(key, 10*time.Second)
				require.NoError(t, err, key)
				return val
			}
			require.Equal(t, "1", q("kvm.hypervisor.ping"))
			require.Equal(t, "running", q("kvm.domain.state[test]"))

			var hv map[string]any
			require.NoError(t, json.Unmarshal([]byte(q("kvm.hypervisor.get")), &hv))
			require.Equal(t, "TEST", hv["hypervisor_type"])
			require.Equal(t, float64(1), hv["domains"].(map[string]any)["running"])

			var lld []map[string]string
			require.NoError(t, json.Unmarshal([]byte(q("kvm.domain.discovery")), &lld))
			require.Len(t, lld, 1)
			require.Equal(t, "test", lld[0]["{#KVM.DOMAIN.NAME}"])
			require.Equal(t, "running", lld[0]["{#KVM.DOMAIN.STATE}"])
			require.Regexp(t, `^[0-9a-f-]{36}$`, lld[0]["{#KVM.DOMAIN.UUID}"])

			// the running agent lists the plugin and its keys
			out, err := a.Run(t, 20*time.Second, "-R", "metrics")
			require.NoError(t, err, out)
			require.Contains(t, out, "[KVM]")
			for _, k := range []string{"kvm.hypervisor.ping", "kvm.hypervisor.get", "kvm.domain.discovery", "kvm.domain.state"} {
				require.Contains(t, out, k+": ")
			}

			// errors come back as unsupported items carrying the plugin's message
			bad := []struct{ key, want string }{
				{"kvm.domain.state[nope]", `no such domain: "nope"`},
				{"kvm.domain.state[a,b]", "too many parameters: got 2"},
				{"kvm.domain.state", "missing parameter Domain"},
				{"kvm.domain.state[]", "missing parameter Domain"},
				{"kvm.domain.tcp[test,99999]", `invalid parameter Port "99999": must be between 1 and 65535`},
			}
			for _, b := range bad {
				_, err := a.Query(b.key, 10*time.Second)
				var ns *harness.ErrNotSupported
				require.ErrorAs(t, err, &ns, b.key)
				// 7.0 capitalises the first letter and adds a period; the message is otherwise ours
				require.Contains(t, strings.ToLower(ns.Reason), strings.ToLower(b.want), b.key)
			}
		})
	}
}

// An invalid Plugins.KVM.* option makes the agent refuse to start, naming the option, on both
// versions, and 7.0 does not hang (the plugin replies to Validate with the error).
func TestAgentRejectsInvalidOption(t *testing.T) {
	cases := []struct {
		opt, val, want string
	}{
		{"Timeout", "abc", "Plugins.KVM.Timeout"},
		{"Actions.AllowDomains", "web-(", "Plugins.KVM.Actions.AllowDomains"},
		{"NoSuchOption", "1", "unknown option Plugins.KVM.NoSuchOption"},
	}
	for _, v := range versions {
		for _, c := range cases {
			t.Run(v+"/"+c.opt, func(t *testing.T) {
				t.Parallel()
				opts := testDriver()
				opts[c.opt] = c.val
				a := harness.WriteAgentConf(t, v, harness.AgentOptions{Options: opts})
				start := time.Now()
				out, err := a.Run(t, 30*time.Second, "-t", "kvm.hypervisor.ping")
				require.Error(t, err, out)
				require.NotContains(t, err.Error(), "hung", out)
				require.Contains(t, out, c.want)
				// the agent gives the plugin the option's line only; the plugin finds the file
				require.Contains(t, out, a.Conf+", line ", "the error names the file")
				t.Logf("agent %s refused %s=%s in %s: %s", v, c.opt, c.val, time.Since(start).Round(time.Millisecond), firstLine(out, c.want))
			})
		}
	}
}

func firstLine(out, sub string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// A handler that panics is answered as an error; the agent and the plugin keep serving.
func TestAgentSurvivesHandlerPanic(t *testing.T) {
	bin := harness.BuildPlugin(t, "testkeys")
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			a := harness.WriteAgentConf(t, v, harness.AgentOptions{Plugin: bin, Options: testDriver()})
			a.Start(t)
			for i := 0; i < 3; i++ {
				_, err := a.Query("kvm.test.panic", 10*time.Second)
				var ns *harness.ErrNotSupported
				require.ErrorAs(t, err, &ns)
				require.Contains(t, strings.ToLower(ns.Reason), "internal error in kvm.test.panic")
				val, err := a.Query("kvm.domain.state[test]", 10*time.Second)
				require.NoError(t, err, fmt.Sprintf("after panic %d", i+1))
				require.Equal(t, "running", val)
			}
			select {
			case <-a.Exited():
				t.Fatalf("agent exited after a handler panic:\n%s", a.Log())
			default:
			}
		})
	}
}

// Each entry of the matrix is the agent it claims to be: `zabbix_agent2 -V` names the version.
func TestAgentVersionsAreWhatTheyClaim(t *testing.T) {
	want := map[string]*regexp.Regexp{
		"6.0":    regexp.MustCompile(`\(Zabbix\) 6\.0\.14\b`),
		"7.0":    regexp.MustCompile(`\(Zabbix\) 7\.0\.\d+\b`),
		"7.0.22": regexp.MustCompile(`\(Zabbix\) 7\.0\.22\b`),
	}
	require.Len(t, want, len(versions), "a version without an expected -V line")
	for _, v := range versions {
		out, err := harness.AgentCommand(t, v, "-V").CombinedOutput()
		require.NoError(t, err, string(out))
		require.Regexp(t, want[v], string(out), v)
		t.Logf("%s: %s", v, firstLine(string(out), "Zabbix"))
	}
}
