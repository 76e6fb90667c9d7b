package haproxy

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.json from the builders")

// captureDirs are where TestCaptureFixtures put each haproxy version's replies (capture.cmd in each
// says how): Debian 12's 2.6 at the top of testdata, trixie's 3.0 beside it. The capture tests
// below run over every one of them.
var captureDirs = map[string]string{"2.6": "testdata", "3.0": filepath.Join("testdata", "3.0")}

// captureVersions are captureDirs' keys, in order.
var captureVersions = []string{"2.6", "3.0"}

// fixture is a capture from haproxy 2.6 (what the tests of one version use).
func fixture(t testing.TB, name string) string {
	t.Helper()
	return fixtureOf(t, "2.6", name)
}

// fixtureOf is a capture from haproxy version.
func fixtureOf(t testing.TB, version, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(captureDirs[version], name))
	require.NoError(t, err)
	return string(b)
}

func fixtureStatsOf(t testing.TB, version string) []Stat {
	t.Helper()
	stats, err := ParseStat(fixtureOf(t, version, "show_stat.csv"))
	require.NoError(t, err)
	return stats
}

func fixtureStatesOf(t testing.TB, version string) []ServerState {
	t.Helper()
	st, err := ParseServersState(fixtureOf(t, version, "show_servers_state.txt"))
	require.NoError(t, err)
	return st
}

// forEachCapture runs f as a subtest per captured haproxy version.
func forEachCapture(t *testing.T, f func(t *testing.T, version string)) {
	for _, v := range captureVersions {
		t.Run("haproxy-"+v, func(t *testing.T) { f(t, v) })
	}
}

// golden compares got with golden/name beside version's captures (go test -run X -update rewrites it).
func golden(t *testing.T, version, name, got string) {
	t.Helper()
	require.True(t, json.Valid([]byte(got)), "builder output is not JSON: %s", got)
	var pretty strings.Builder
	var v any
	require.NoError(t, json.Unmarshal([]byte(got), &v))
	enc := json.NewEncoder(&pretty)
	enc.SetIndent("", "  ")
	require.NoError(t, enc.Encode(v))
	path := filepath.Join(captureDirs[version], "golden", name)
	if *update {
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(pretty.String()), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file: run go test ./haproxy -run %s -update", t.Name())
	assert.Equal(t, string(want), pretty.String())
}

// The capture setup (capture_test.go) put each server into a known state; these are those states.
func TestParseStatCapture(t *testing.T) {
	forEachCapture(t, func(t *testing.T, v string) {
		stats := fixtureStatsOf(t, v)
		require.Len(t, stats, 13)
		byName := map[string]*Stat{}
		for i := range stats {
			byName[stats[i].Proxy+"/"+stats[i].Name] = &stats[i]
		}
		tests := []struct {
			row, state, checkStatus string
			typ                     Type
			weight, checkCode       int64
		}{
			{"fe_http/FRONTEND", "OPEN", "", Frontend, -1, -1},
			{"web/web-01", "UP", "L7OK", Server, 1, 200},
			{"web/web-02", "DOWN", "L4CON", Server, 1, -1},
			{"web/web-03", "MAINT", "", Server, 1, -1},
			{"web/web-04", "DRAIN", "L7OK", Server, 1, 200},
			{"web/web-05", "NOLB", "L7OKC", Server, 1, 404},
			{"web/web-06", "no check", "", Server, 1, -1},
			{"web/web-07", "MAINT", "", Server, 1, -1},
			{"web/web-08", "UP", "L7OK", Server, 0, 200},
			{"web/BACKEND", "UP", "", Backend, 2, -1},
			{"api/api-01", "UP", "L7OK", Server, 1, 200},
			{"api/api-02", "DOWN", "L7STS", Server, 1, 500},
			{"api/BACKEND", "UP", "", Backend, 1, -1},
		}
		for _, tt := range tests {
			t.Run(tt.row, func(t *testing.T) {
				s := byName[tt.row]
				require.NotNil(t, s, "row missing")
				assert.Equal(t, tt.state, s.State())
				assert.Equal(t, tt.checkStatus, s.CheckStatus)
				assert.Equal(t, tt.typ, s.Type)
				assert.Equal(t, tt.weight, s.Weight)
				assert.Equal(t, tt.checkCode, s.CheckCode)
				raw, ok := s.Raw("status")
				assert.True(t, ok)
				assert.Equal(t, s.Status, raw)
				if s.Type == Server {
					assert.True(t, strings.HasPrefix(s.Addr, "127.0.0.1:"), s.Addr)
				}
			})
		}
		// the six requests sent through fe_http went to web-01 and web-06 (the only ready UP servers with weight)
		assert.Equal(t, int64(6), byName["fe_http/FRONTEND"].SessTotal)
		assert.Equal(t, int64(6), byName["web/BACKEND"].Hrsp2xx)
		assert.Equal(t, byName["web/web-01"].SessTotal+byName["web/web-06"].SessTotal, int64(6))
		assert.Equal(t, "Connection refused", byName["web/web-02"].LastCheck)
		assert.Equal(t, "Layer7 wrong status", byName["api/api-02"].CheckDesc)
		_, ok := byName["web/web-01"].Raw("no_such_column")
		assert.False(t, ok)
		assert.Equal(t, "http", byName["web/web-01"].RawMap()["mode"])
	})
}

// Parsing goes by header name: reversing every column (as a later haproxy might reorder, add or drop
// them) must give the same typed rows.
func TestParseStatByHeaderName(t *testing.T) {
	forEachCapture(t, func(t *testing.T, v string) {
		orig := fixtureStatsOf(t, v)
		lines := strings.Split(strings.TrimSuffix(fixtureOf(t, v, "show_stat.csv"), "\n\n"), "\n")
		var b strings.Builder
		for i, l := range lines {
			if i == 0 {
				l = strings.TrimPrefix(l, "# ")
			}
			f := strings.Split(l, ",")
			f = f[:len(f)-1] // the trailing comma
			for a, z := 0, len(f)-1; a < z; a, z = a+1, z-1 {
				f[a], f[z] = f[z], f[a]
			}
			// drop a column this parser does not need and add one it does not know
			keep := make([]string, 0, len(f)+1)
			for j, v := range f {
				if j == 3 {
					continue
				}
				keep = append(keep, v)
			}
			if i == 0 {
				keep = append(keep, "future_column")
				b.WriteString("# ")
			} else {
				keep = append(keep, "42")
			}
			b.WriteString(strings.Join(keep, ",") + "\n")
		}
		b.WriteString("\n")
		got, err := ParseStat(b.String())
		require.NoError(t, err)
		require.Len(t, got, len(orig))
		for i := range orig {
			a, z := orig[i], got[i]
			a.cols, a.line, z.cols, z.line = nil, "", nil, ""
			assert.Equal(t, a, z)
			v, ok := got[i].Raw("future_column")
			assert.True(t, ok)
			assert.Equal(t, "42", v)
		}
	})
}

func TestParseServersStateCapture(t *testing.T) {
	forEachCapture(t, func(t *testing.T, v string) {
		states := fixtureStatesOf(t, v)
		require.Len(t, states, 10)
		want := map[string]struct {
			admin, op string
			bits      int64
		}{
			"web-01": {"ready", "running", 0},
			"web-02": {"ready", "stopped", 0},
			"web-03": {"maint", "stopped", AdminForcedMaint},
			"web-04": {"drain", "running", AdminForcedDrain},
			"web-05": {"ready", "stopping", 0}, // NOLB is op state "stopping"
			"web-06": {"ready", "running", 0},
			"web-07": {"maint", "stopped", AdminForcedMaint | AdminConfigMaint},
			"web-08": {"ready", "running", 0},
			"api-01": {"ready", "running", 0},
			"api-02": {"ready", "stopped", 0},
		}
		for _, s := range states {
			w, ok := want[s.Server]
			require.True(t, ok, s.Server)
			assert.Equal(t, w.admin, s.AdminState(), s.Server)
			assert.Equal(t, w.op, s.OpStateName(), s.Server)
			assert.Equal(t, w.bits, s.AdminBits, s.Server)
			assert.Equal(t, "127.0.0.1", s.Addr)
			assert.Greater(t, s.Port, int64(1024))
			fqdn, ok := s.Raw("srv_fqdn")
			assert.True(t, ok)
			assert.Equal(t, "-", fqdn)
		}
		assert.Equal(t, int64(0), states[7].UserWeight) // web-08 weight 0
	})
}

func TestParseInfoCapture(t *testing.T) {
	forEachCapture(t, func(t *testing.T, v string) {
		info, err := ParseInfo(fixtureOf(t, v, "show_info.txt"))
		require.NoError(t, err)
		assert.Equal(t, "HAProxy", info["Name"])
		assert.True(t, strings.HasPrefix(info["Version"], v+"."), info["Version"])
		assert.Contains(t, info, "Build info") // a key with a space
		assert.Contains(t, info, "Uptime_sec")
		assert.NotEmpty(t, info["Pid"])
	})
}

// haproxy's error replies, as captured, must be errors that quote haproxy, never empty tables.
func TestParseErrorReplies(t *testing.T) {
	forEachCapture(t, func(t *testing.T, v string) {
		tests := []struct {
			file  string
			parse func(string) error
			want  string
		}{
			{"err_unknown_command.txt", func(s string) error { _, err := ParseStat(s); return err }, "Unknown command"},
			{"err_unknown_command.txt", func(s string) error { _, err := ParseInfo(s); return err }, "Unknown command"},
			{"err_no_backend.txt", func(s string) error { _, err := ParseServersState(s); return err }, "Can't find backend."},
			{"err_no_server.txt", func(s string) error { _, err := ParseStat(s); return err }, "No such server."},
			{"set_ok.txt", func(s string) error { _, err := ParseStat(s); return err }, "instead of a CSV header"},
			{"show_info.txt", func(s string) error { _, err := ParseStat(s); return err }, "Name: HAProxy"},
			{"show_stat.csv", func(s string) error { _, err := ParseInfo(s); return err }, "line 1"},
			{"show_stat.csv", func(s string) error { _, err := ParseServersState(s); return err }, "format version"},
		}
		for _, tt := range tests {
			t.Run(tt.file, func(t *testing.T) {
				err := tt.parse(fixtureOf(t, v, tt.file))
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.want)
			})
		}
	})
}

// A reply cut anywhere (haproxy killed mid-dump) is an error, never a shorter table.
func TestParseTruncated(t *testing.T) {
	forEachCapture(t, func(t *testing.T, v string) {
		for _, f := range []struct {
			file  string
			parse func(string) error
		}{
			{"show_stat.csv", func(s string) error { _, err := ParseStat(s); return err }},
			{"show_servers_state.txt", func(s string) error { _, err := ParseServersState(s); return err }},
			{"show_info.txt", func(s string) error { _, err := ParseInfo(s); return err }},
		} {
			full := fixtureOf(t, v, f.file)
			require.NoError(t, f.parse(full))
			for n := 0; n < len(full); n++ {
				if err := f.parse(full[:n]); err == nil {
					t.Fatalf("%s cut at %d/%d bytes parsed without error", f.file, n, len(full))
				}
			}
		}
	})
}

func TestParseStatMalformed(t *testing.T) {
	hdr := "# pxname,svname,status,weight,\n"
	tests := []struct{ name, reply, want string }{
		{"empty", "", "empty reply"},
		{"no blank line", hdr, "truncated"},
		{"short row", hdr + "web,s1,UP\n\n", "3 fields, header has 5"},
		{"long row", hdr + "web,s1,UP,1,,x\n\n", "6 fields"},
		{"bad int", hdr + "web,s1,UP,one,\n\n", `column weight: "one"`},
		{"no svname", "# pxname,status,\nweb,UP,\n\n", "no pxname/svname"},
		{"dup column", "# pxname,svname,svname,\n\n", "appears twice"},
		{"empty pxname", hdr + ",s1,UP,1,\n\n", "empty pxname"},
		{"blank inside", hdr + "web,s1,UP,1,\n\nweb,s2,UP,1,\n\n", "empty line inside"},
		{"unterminated quote", hdr + "web,\"s1,UP,1,\n\n", "unterminated quote"},
		{"stray quote", hdr + "web,s\"1,UP,1,\n\n", "stray quote"},
		{"text after quote", hdr + "web,\"s1\"x,UP,1,\n\n", "after closing quote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseStat(tt.reply)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestParseStatQuoted(t *testing.T) {
	stats, err := ParseStat("# pxname,svname,check_desc,status,\nweb,s1,\"a, \"\"quoted\"\" text\",UP,\n\n")
	require.NoError(t, err)
	require.Len(t, stats, 1)
	assert.Equal(t, `a, "quoted" text`, stats[0].CheckDesc)
	assert.Equal(t, "UP", stats[0].Status)
}

func TestNormalizeStatus(t *testing.T) {
	for in, want := range map[string]string{
		"UP": "UP", "UP 1/2": "UP", "DOWN 1/2": "DOWN", "NOLB 1/2": "NOLB", "MAINT": "MAINT",
		"MAINT (via web/web-01)": "MAINT", "MAINT (resolution)": "MAINT", "DRAIN (agent)": "DRAIN",
		"no check": "no check", "OPEN": "OPEN", "": "",
	} {
		assert.Equal(t, want, NormalizeStatus(in), in)
	}
}

func TestEncodersGolden(t *testing.T) {
	forEachCapture(t, func(t *testing.T, v string) {
		snap := NewSnapshot(fixtureStatsOf(t, v), fixtureStatesOf(t, v), time.Now())
		golden(t, v, "get.json", snap.JSON())
		for _, s := range []string{"web-01", "web-02", "web-03", "web-04", "web-05", "web-06"} {
			st, err := snap.Server("web", s)
			require.NoError(t, err)
			js, err := json.Marshal(st)
			require.NoError(t, err)
			golden(t, v, "server_status_"+s+".json", string(js))
		}
	})
}

func TestGetMatchesColumns(t *testing.T) {
	forEachCapture(t, func(t *testing.T, v string) {
		stats := fixtureStatsOf(t, v)
		var rows []map[string]any
		require.NoError(t, json.Unmarshal(EncodeStats(stats), &rows))
		require.Len(t, rows, len(stats))
		for i, r := range rows {
			for k, v := range stats[i].RawMap() {
				if k == "-" {
					continue
				}
				switch got := r[k].(type) {
				case string:
					assert.Equal(t, v, got, "%s/%s %s", stats[i].Proxy, stats[i].Name, k)
				case float64:
					assert.Equal(t, v, strings.TrimSuffix(strings.TrimSuffix(jsonNum(got), ".0"), ".00"), k)
				default:
					t.Fatalf("%s: column %s: %T", stats[i].Name, k, r[k])
				}
			}
		}
		assert.Equal(t, "web-01", rows[1]["svname"])
		assert.Equal(t, float64(2), rows[1]["type"])
		assert.Equal(t, "UP", rows[1]["status"])
		assert.NotContains(t, rows[0], "weight") // empty for a frontend
	})
}

func jsonNum(f float64) string { b, _ := json.Marshal(f); return string(b) }

func TestServerStatus(t *testing.T) {
	forEachCapture(t, func(t *testing.T, v string) {
		stats, states := fixtureStatsOf(t, v), fixtureStatesOf(t, v)
		snap, noStates := NewSnapshot(stats, states, time.Now()), NewSnapshot(stats, nil, time.Now())
		tests := []struct {
			server, status, admin, op, pool string
			hasDuration                     bool
		}{
			{"web-01", "UP", "ready", "running", "UP", true},
			{"web-02", "DOWN", "ready", "stopped", "DOWN", true},
			{"web-03", "MAINT", "maint", "stopped", "MAINT", false},
			{"web-04", "DRAIN", "drain", "running", "DRAIN", true},
			{"web-05", "NOLB", "ready", "stopping", "NOLB", true},
			{"web-06", "no check", "ready", "running", "no check", false},
			{"web-07", "MAINT", "maint", "stopped", "MAINT", false},
		}
		for _, tt := range tests {
			t.Run(tt.server, func(t *testing.T) {
				st, err := snap.Server("web", tt.server)
				require.NoError(t, err)
				assert.Equal(t, tt.status, st.Status)
				assert.Equal(t, tt.admin, st.AdminState)
				assert.Equal(t, tt.op, st.OpState)
				assert.Equal(t, tt.pool, st.Pool)
				assert.Equal(t, tt.hasDuration, st.CheckDurationMS != nil)
				require.NotNil(t, st.Weight)
				// without show servers state the admin state comes from the status word
				st2, err := noStates.Server("web", tt.server)
				require.NoError(t, err)
				assert.Equal(t, tt.admin, st2.AdminState)
				assert.Equal(t, "", st2.OpState)
			})
		}
		_, err := snap.Server("nope", "web-01")
		require.ErrorContains(t, err, `no backend "nope"`)
		_, err = snap.Server("web", "nope")
		require.ErrorContains(t, err, `backend "web" has no server "nope"`)
		_, err = snap.Server("fe_http", "FRONTEND")
		require.ErrorContains(t, err, `no backend "fe_http"`)
		require.Len(t, snap.Servers(), 10)
	})
}
