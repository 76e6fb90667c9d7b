package haproxy

import (
	"net"
	"strconv"
	"unicode/utf8"
)

// AddrIP returns the IP of a show stat addr ("10.0.0.11:80", "[fd00::1]:80"), or "" when there is none.
func AddrIP(addr string) string {
	if addr == "" {
		return ""
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if net.ParseIP(host) == nil {
		return ""
	}
	return host
}

// ServerStatus is the value of haproxy.server.status[<backend>,<server>]. Pointers are null when
// haproxy has no value (a server without checks has no check duration).
type ServerStatus struct {
	Backend         string `json:"backend"`
	Server          string `json:"server"`
	Status          string `json:"status"`        // UP, DOWN, MAINT, DRAIN, NOLB, no check
	StatusDetail    string `json:"status_detail"` // haproxy's own text: "DOWN 1/2", "MAINT (via b/s)"
	CheckStatus     string `json:"check_status"`  // L7OK, L4CON, L7STS, … ("" without checks)
	CheckCode       *int64 `json:"check_code"`
	CheckDurationMS *int64 `json:"check_duration_ms"`
	CheckDesc       string `json:"check_desc"`
	LastCheck       string `json:"last_check"`
	LastChangeS     *int64 `json:"last_change_s"`
	CheckFailures   *int64 `json:"check_failures"`
	CheckDowns      *int64 `json:"check_downs"`
	DowntimeS       *int64 `json:"downtime_s"`
	AdminState      string `json:"admin_state"` // ready, drain, maint
	Pool            string `json:"pool"`        // MAINT or DRAIN when an operator holds it out, else Status
	OpState         string `json:"op_state"`    // running, stopped, starting, stopping ("" without show servers state)
	Weight          *int64 `json:"weight"`
	Addr            string `json:"addr"`
	SessCur         *int64 `json:"sessions_current"`
	SessTotal       *int64 `json:"sessions_total"`
}

func newServerStatus(row *Stat, state *ServerState) ServerStatus {
	st := ServerStatus{
		Backend: row.Proxy, Server: row.Name, Status: row.State(), StatusDetail: row.Status,
		CheckStatus: row.CheckStatus, CheckCode: opt(row.CheckCode), CheckDurationMS: opt(row.CheckDuration),
		CheckDesc: row.CheckDesc, LastCheck: row.LastCheck, LastChangeS: opt(row.LastChange),
		CheckFailures: opt(row.CheckFailures), CheckDowns: opt(row.CheckDowns), DowntimeS: opt(row.Downtime),
		Weight: opt(row.Weight), Addr: row.Addr, SessCur: opt(row.SessCur), SessTotal: opt(row.SessTotal),
	}
	switch st.Status {
	case "MAINT":
		st.AdminState = "maint"
	case "DRAIN":
		st.AdminState = "drain"
	default:
		st.AdminState = "ready"
	}
	if state != nil {
		st.AdminState = state.AdminState()
		st.OpState = state.OpStateName()
	}
	st.Pool = st.poolState()
	return st
}

// poolState is what the server's membership in the pool comes down to, with an operator's hold
// first: MAINT or DRAIN when the admin state says so (whatever the check says: a drained server
// whose check fails is printed DOWN by haproxy), else the check's verdict (UP, DOWN, NOLB, no check).
func (st ServerStatus) poolState() string {
	switch st.AdminState {
	case "maint":
		return "MAINT"
	case "drain":
		return "DRAIN"
	}
	return st.Status
}

func opt(n int64) *int64 {
	if n < 0 {
		return nil
	}
	return &n
}

// stringColumns stay JSON strings in Get even when they look like numbers (a server named "1").
var stringColumns = map[string]bool{
	"pxname": true, "svname": true, "status": true, "check_status": true, "last_chk": true, "last_agt": true,
	"agent_status": true, "check_desc": true, "agent_desc": true, "addr": true, "cookie": true, "mode": true,
	"algo": true, "tracked": true,
}

// EncodeStats writes every show stat row as one JSON object keyed by haproxy's column names, in
// show stat order. Integer columns are JSON numbers, the rest strings; empty columns are left out
// (haproxy leaves a column empty when it does not apply to the row type). It writes JSON by hand:
// with thousands of servers, going through maps and encoding/json costs several times more than
// the socket exchange. Rows not made by ParseStat (no columns) are written with their typed fields.
func EncodeStats(stats []Stat) []byte {
	size := 2
	for i := range stats {
		for j, v := range stats[i].values {
			if v != "" {
				size += len(v) + len(stats[i].Columns()[j]) + 6
			}
		}
	}
	b := make([]byte, 0, size)
	b = append(b, '[')
	var keys [][]byte // per column: `"name":`, nil for a column left out
	var asString []bool
	var kcols *columns
	for i := range stats {
		s := &stats[i]
		if s.cols == nil {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"pxname":`...)
			b = appendJSONString(b, s.Proxy)
			b = append(b, `,"svname":`...)
			b = appendJSONString(b, s.Name)
			b = append(b, `,"type":`...)
			b = strconv.AppendInt(b, int64(s.Type), 10)
			b = append(b, `,"status":`...)
			b = appendJSONString(b, s.Status)
			b = append(b, '}')
			continue
		}
		if s.cols != kcols {
			kcols = s.cols
			keys, asString = make([][]byte, len(kcols.names)), make([]bool, len(kcols.names))
			for j, n := range kcols.names {
				if n != "" && n != "-" { // "-" is a placeholder column of 2.6
					keys[j] = append(appendJSONString(nil, n), ':')
				}
				asString[j] = stringColumns[n]
			}
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		first := true
		for j, v := range s.values {
			if v == "" || keys[j] == nil {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, keys[j]...)
			if !asString[j] && isJSONInt(v) {
				b = append(b, v...)
			} else {
				b = appendJSONString(b, v)
			}
		}
		b = append(b, '}')
	}
	return append(b, ']')
}

// isJSONInt accepts -?(0|[1-9][0-9]*) up to 18 digits, which JSON and Zabbix read as exact integers.
func isJSONInt(s string) bool {
	if s != "" && s[0] == '-' {
		s = s[1:]
	}
	if s == "" || len(s) > 18 || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s as a JSON string; invalid UTF-8 becomes U+FFFD as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
