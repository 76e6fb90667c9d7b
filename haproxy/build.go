package haproxy

import (
	"encoding/json"
	"fmt"
	"net"
	"unicode/utf8"
)

// The builders below produce the values of the plugin's haproxy.* keys. Each returns the key's value
// as a JSON string, ready to hand to the agent: the plugin protocol carries strings only.

// Discovery is haproxy.discovery: one LLD row per frontend and backend (a listen section gives one
// of each), in show stat order.
//
//	[{"{#HAPROXY.NAME}":"fe_http","{#HAPROXY.TYPE}":"FRONTEND"},{"{#HAPROXY.NAME}":"web","{#HAPROXY.TYPE}":"BACKEND"}]
func Discovery(stats []Stat) (string, error) {
	rows := make([]map[string]string, 0, 8)
	for i := range stats {
		s := &stats[i]
		if s.Type != Frontend && s.Type != Backend {
			continue
		}
		rows = append(rows, map[string]string{"{#HAPROXY.NAME}": s.Proxy, "{#HAPROXY.TYPE}": s.Type.String()})
	}
	return marshal("haproxy.discovery", rows)
}

// DomainOf maps a server to the libvirt domain (guest) behind it, from the server's name (servers
// named after their domain) and IP address ("" when the address has none).
type DomainOf func(server, ip string) (domain string, ok bool)

// ServerDiscovery is haproxy.server.discovery: one LLD row per server. {#KVM.DOMAIN.NAME} is present
// only when domainOf (may be nil) maps the server to a guest of this hypervisor.
//
//	[{"{#HAPROXY.BACKEND}":"web","{#HAPROXY.SERVER}":"web-01","{#HAPROXY.ADDR}":"10.0.0.11:80","{#KVM.DOMAIN.NAME}":"web-01"}]
func ServerDiscovery(stats []Stat, domainOf DomainOf) (string, error) {
	rows := make([]map[string]string, 0, len(stats))
	for i := range stats {
		s := &stats[i]
		if s.Type != Server {
			continue
		}
		row := map[string]string{"{#HAPROXY.BACKEND}": s.Proxy, "{#HAPROXY.SERVER}": s.Name, "{#HAPROXY.ADDR}": s.Addr}
		if domainOf != nil {
			if d, ok := domainOf(s.Name, AddrIP(s.Addr)); ok && d != "" {
				row["{#KVM.DOMAIN.NAME}"] = d
			}
		}
		rows = append(rows, row)
	}
	return marshal("haproxy.server.discovery", rows)
}

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

// Info is haproxy.info: show info as one JSON object (keys sorted).
func Info(info map[string]string) (string, error) { return marshal("haproxy.info", info) }

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
	OpState         string `json:"op_state"`    // running, stopped, starting, stopping ("" without show servers state)
	Weight          *int64 `json:"weight"`
	Addr            string `json:"addr"`
	SessCur         *int64 `json:"sessions_current"`
	SessTotal       *int64 `json:"sessions_total"`
}

// LookupServerStatus finds backend/server in stats and, when states holds it, takes the admin and
// operational state from show servers state. Without states the admin state is read off the status
// (MAINT → maint, DRAIN → drain), which misses a drained server that is also DOWN.
func LookupServerStatus(stats []Stat, states []ServerState, backend, server string) (ServerStatus, error) {
	var row *Stat
	backendSeen := false
	for i := range stats {
		if stats[i].Proxy != backend || stats[i].Type == Frontend {
			continue
		}
		backendSeen = true
		if stats[i].Type == Server && stats[i].Name == server {
			row = &stats[i]
			break
		}
	}
	if row == nil {
		if !backendSeen {
			return ServerStatus{}, fmt.Errorf("haproxy.server.status[%s,%s]: no backend %q in show stat", backend, server, backend)
		}
		return ServerStatus{}, fmt.Errorf("haproxy.server.status[%s,%s]: backend %q has no server %q", backend, server, backend, server)
	}
	st := ServerStatus{
		Backend: backend, Server: server, Status: row.State(), StatusDetail: row.Status,
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
	for i := range states {
		if states[i].Backend == backend && states[i].Server == server {
			st.AdminState = states[i].AdminState()
			st.OpState = states[i].OpStateName()
			break
		}
	}
	return st, nil
}

// ServerStatusJSON is LookupServerStatus as the key's JSON value.
func ServerStatusJSON(stats []Stat, states []ServerState, backend, server string) (string, error) {
	st, err := LookupServerStatus(stats, states, backend, server)
	if err != nil {
		return "", err
	}
	return marshal(fmt.Sprintf("haproxy.server.status[%s,%s]", backend, server), st)
}

func opt(n int64) *int64 {
	if n < 0 {
		return nil
	}
	return &n
}

func marshal(key string, v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("%s: encode JSON: %w", key, err)
	}
	return string(b), nil
}

// stringColumns stay JSON strings in Get even when they look like numbers (a server named "1").
var stringColumns = map[string]bool{
	"pxname": true, "svname": true, "status": true, "check_status": true, "last_chk": true, "last_agt": true,
	"agent_status": true, "check_desc": true, "agent_desc": true, "addr": true, "cookie": true, "mode": true,
	"algo": true, "tracked": true,
}

// Get is haproxy.get, the master item: every show stat row as one JSON object keyed by haproxy's
// column names, in show stat order. Integer columns are JSON numbers, the rest strings; empty
// columns are left out (haproxy leaves a column empty when it does not apply to the row type).
// It writes JSON by hand: with thousands of servers, going through maps and encoding/json costs
// several times more than the socket exchange.
func Get(stats []Stat) (string, error) {
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
			return "", fmt.Errorf("haproxy.get: row %d (%s/%s) was not parsed from show stat", i, s.Proxy, s.Name)
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
	b = append(b, ']')
	return string(b), nil
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
