package haproxy

import (
	"net"
	"strconv"
	"zabbix-agent2-plugin-kvm/internal/jsonstr"
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
	e := statEncoder{}
	e.grow(stats, nil)
	for i := range stats {
		e.row(&stats[i])
	}
	return e.end()
}

// statEncoder writes rows of show stat as a JSON array; the column keys are built once per header.
type statEncoder struct {
	b        []byte
	rows     int
	cols     *columns
	keys     [][]byte // per column: `"name":`, nil for a column left out
	asString []bool
	scratch  []string
}

// grow sizes the buffer for the rows (all of stats, or those at idx): the JSON of a row is 2.7 to
// 3.3 times its CSV (the 2.6 capture; 10,000 generated servers), and one allocation of about the
// right size is what keeps a 10,000-server haproxy.get from copying megabytes as it grows.
func (e *statEncoder) grow(stats []Stat, idx []int) {
	n := 2
	add := func(s *Stat) { n += len(s.line)*7/2 + 16 }
	if idx == nil {
		for i := range stats {
			add(&stats[i])
		}
	} else {
		for _, i := range idx {
			add(&stats[i])
		}
	}
	e.b = make([]byte, 0, n)
	e.b = append(e.b, '[')
}

func (e *statEncoder) row(s *Stat) {
	if e.rows > 0 {
		e.b = append(e.b, ',')
	}
	e.rows++
	v := s.values(e.scratch)
	if v == nil {
		e.b = append(e.b, `{"pxname":`...)
		e.b = jsonstr.Append(e.b, s.Proxy)
		e.b = append(e.b, `,"svname":`...)
		e.b = jsonstr.Append(e.b, s.Name)
		e.b = append(e.b, `,"type":`...)
		e.b = strconv.AppendInt(e.b, int64(s.Type), 10)
		e.b = append(e.b, `,"status":`...)
		e.b = jsonstr.Append(e.b, s.Status)
		e.b = append(e.b, '}')
		return
	}
	e.scratch = v
	if s.cols != e.cols {
		e.cols = s.cols
		e.keys, e.asString = make([][]byte, len(e.cols.names)), make([]bool, len(e.cols.names))
		for j, n := range e.cols.names {
			if n != "" && n != "-" { // "-" is a placeholder column of 2.6
				e.keys[j] = append(jsonstr.Append(nil, n), ':')
			}
			e.asString[j] = stringColumns[n]
		}
	}
	e.b = append(e.b, '{')
	first := true
	for j, x := range v {
		if x == "" || e.keys[j] == nil {
			continue
		}
		if !first {
			e.b = append(e.b, ',')
		}
		first = false
		e.b = append(e.b, e.keys[j]...)
		if !e.asString[j] && isJSONInt(x) {
			e.b = append(e.b, x...)
		} else {
			e.b = jsonstr.Append(e.b, x)
		}
	}
	e.b = append(e.b, '}')
}

func (e *statEncoder) end() []byte { return append(e.b, ']') }

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
