package haproxy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ShowInfo runs show info and returns its "Name: value" pairs.
func (c *Client) ShowInfo(ctx context.Context) (map[string]string, error) {
	return query(ctx, c, "show info", ParseInfo)
}

// ParseInfo parses a show info reply. Keys may contain spaces ("Build info"), so each line splits on
// its first ": ". A reply without Name and Version is not show info (an error message, a cut reply).
func ParseInfo(reply string) (map[string]string, error) {
	text, err := body("show info", reply)
	if err != nil {
		return nil, err
	}
	info := make(map[string]string, 80)
	for n, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			if k, ok = strings.CutSuffix(line, ":"); !ok || n == 0 {
				return nil, fmt.Errorf("show info: line %d: %s is not \"Name: value\"", n+1, replyText(line))
			}
		}
		if k == "" {
			return nil, fmt.Errorf("show info: line %d: empty name", n+1)
		}
		info[k] = v
	}
	if info["Name"] == "" || info["Version"] == "" {
		return nil, fmt.Errorf("show info: haproxy answered %s without Name and Version", replyText(reply))
	}
	return info, nil
}

// Admin-state bits of show servers state's srv_admin_state (haproxy's enum srv_admin).
const (
	AdminForcedMaint    = 0x01 // set server … state maint
	AdminInheritedMaint = 0x02 // tracks a server in maintenance
	AdminConfigMaint    = 0x04 // "disabled" in the configuration (kept after ready, as a marker)
	AdminForcedDrain    = 0x08 // set server … state drain
	AdminInheritedDrain = 0x10 // tracks a draining server
	AdminResolveMaint   = 0x20 // address resolution failed
	AdminHostnameSet    = 0x40 // FQDN set through the runtime API

	adminMaintMask = AdminForcedMaint | AdminInheritedMaint | AdminResolveMaint // SRV_ADMF_MAINT
	adminDrainMask = AdminForcedDrain | AdminInheritedDrain                     // SRV_ADMF_DRAIN
)

// ServerState is one row of show servers state (the server-state-file format, version 1).
type ServerState struct {
	BackendID       int64  // be_id
	Backend         string // be_name
	ServerID        int64  // srv_id
	Server          string // srv_name
	Addr            string // srv_addr
	Port            int64  // srv_port (-1 when absent)
	OpState         int64  // srv_op_state: 0 stopped, 1 starting, 2 running, 3 stopping
	AdminBits       int64  // srv_admin_state, see the Admin* bits
	UserWeight      int64  // srv_uweight
	InitialWeight   int64  // srv_iweight
	SinceLastChange int64  // srv_time_since_last_change, seconds

	cols *columns
	line string // the row as haproxy sent it, split again by Raw (see Stat)
}

// Raw returns any column by name.
func (s *ServerState) Raw(name string) (string, bool) {
	if s.cols == nil {
		return "", false
	}
	i, ok := s.cols.index[name]
	if !ok {
		return "", false
	}
	v := appendFields(nil, s.line)
	if len(v) != len(s.cols.names) {
		return "", false
	}
	return v[i], true
}

// asciiSpace is what strings.Fields splits ASCII text on.
const asciiSpace = " \t\n\v\f\r"

// appendFields appends the space-separated fields of row to dst: strings.Fields for ASCII text,
// without a new slice per row.
func appendFields(dst []string, row string) []string {
	for {
		row = strings.TrimLeft(row, asciiSpace)
		if row == "" {
			return dst
		}
		i := strings.IndexAny(row, asciiSpace)
		if i < 0 {
			return append(dst, row)
		}
		dst = append(dst, row[:i])
		row = row[i:]
	}
}

// AdminState names the admin bits as set server … state does: maint, drain or ready.
func (s *ServerState) AdminState() string { return adminState(s.AdminBits) }

func adminState(bits int64) string {
	switch {
	case bits&adminMaintMask != 0:
		return "maint"
	case bits&adminDrainMask != 0:
		return "drain"
	}
	return "ready"
}

// OpStateName names srv_op_state.
func (s *ServerState) OpStateName() string {
	switch s.OpState {
	case 0:
		return "stopped"
	case 1:
		return "starting"
	case 2:
		return "running"
	case 3:
		return "stopping"
	}
	return "unknown"
}

// ShowServersState runs show servers state, for one backend when backend is not "".
func (c *Client) ShowServersState(ctx context.Context, backend string) ([]ServerState, error) {
	cmd := "show servers state"
	if backend != "" {
		if err := checkName("backend", backend); err != nil {
			return nil, err
		}
		cmd += " " + backend
	}
	return query(ctx, c, cmd, ParseServersState)
}

// ParseServersState parses a show servers state reply: a version line, a "# be_id be_name …"
// header, space-separated rows, an empty line. Columns are found by name.
func ParseServersState(reply string) ([]ServerState, error) {
	text, err := body("show servers state", reply)
	if err != nil {
		return nil, err
	}
	version, rest, _ := strings.Cut(text, "\n")
	if _, err := strconv.Atoi(version); err != nil {
		return nil, fmt.Errorf("show servers state: haproxy answered %s instead of a format version", replyText(reply))
	}
	header, rest, _ := strings.Cut(rest, "\n")
	if !strings.HasPrefix(header, "# ") {
		return nil, fmt.Errorf("show servers state: line 2: %s is not a header", replyText(header))
	}
	names := strings.Fields(header[2:])
	cols := &columns{names: names, index: make(map[string]int, len(names))}
	for i, n := range names {
		cols.index[n] = i
	}
	at := func(n string) int {
		if i, ok := cols.index[n]; ok {
			return i
		}
		return -1
	}
	beID, be, srvID, srv, addr, port := at("be_id"), at("be_name"), at("srv_id"), at("srv_name"), at("srv_addr"), at("srv_port")
	op, admin, uw, iw, since := at("srv_op_state"), at("srv_admin_state"), at("srv_uweight"), at("srv_iweight"), at("srv_time_since_last_change")
	if be < 0 || srv < 0 || op < 0 || admin < 0 {
		return nil, errors.New("show servers state: header lacks be_name, srv_name, srv_op_state or srv_admin_state")
	}
	out := make([]ServerState, 0, strings.Count(rest, "\n"))
	var scratch []string
	line := 2
	for rest != "" {
		line++
		var row string
		row, rest, _ = strings.Cut(rest, "\n")
		v := appendFields(scratch[:0], row)
		scratch = v
		if len(v) != len(names) {
			return nil, fmt.Errorf("show servers state: line %d: %d fields, header has %d (truncated or malformed row)", line, len(v), len(names))
		}
		var bad error
		num := func(i int) int64 {
			if i < 0 {
				return -1
			}
			n, err := strconv.ParseInt(v[i], 10, 64)
			if err != nil && bad == nil {
				bad = fmt.Errorf("show servers state: line %d: column %s: %q is not an integer", line, names[i], v[i])
			}
			return n
		}
		s := ServerState{
			BackendID: num(beID), Backend: v[be], ServerID: num(srvID), Server: v[srv],
			Port: num(port), OpState: num(op), AdminBits: num(admin), UserWeight: num(uw), InitialWeight: num(iw),
			SinceLastChange: num(since), cols: cols, line: row,
		}
		if addr >= 0 {
			s.Addr = v[addr]
		}
		if bad != nil {
			return nil, bad
		}
		out = append(out, s)
	}
	return out, nil
}
