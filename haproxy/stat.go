package haproxy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Type is show stat's "type" column.
type Type int

// Row types as haproxy numbers them.
const (
	Frontend Type = 0
	Backend  Type = 1
	Server   Type = 2
	Listener Type = 3
)

func (t Type) String() string {
	switch t {
	case Frontend:
		return "FRONTEND"
	case Backend:
		return "BACKEND"
	case Server:
		return "SERVER"
	case Listener:
		return "LISTENER"
	}
	return "type(" + strconv.Itoa(int(t)) + ")"
}

// Stat is one row of show stat. Typed fields cover what the plugin uses; every column, including
// those haproxy adds in later versions, stays reachable through Raw and Columns. Integer fields are
// -1 when haproxy leaves the column empty (not applicable to this row type) or does not have it.
type Stat struct {
	Proxy         string // pxname
	Name          string // svname: FRONTEND, BACKEND or the server's name
	Type          Type   // type
	Status        string // status as haproxy prints it: "UP", "UP 1/2", "MAINT (via b/s)", "no check", …
	Weight        int64  // weight (effective)
	CheckStatus   string // check_status: L7OK, L4CON, L7STS, … ("" when not checked)
	CheckCode     int64  // check_code: HTTP status of the last check
	CheckDuration int64  // check_duration, milliseconds
	CheckDesc     string // check_desc, e.g. "Layer7 check passed"
	LastCheck     string // last_chk: check detail, e.g. "Connection refused"
	LastChange    int64  // lastchg: seconds since the last UP/DOWN transition
	CheckFailures int64  // chkfail
	CheckDowns    int64  // chkdown: UP→DOWN transitions
	Downtime      int64  // downtime, seconds
	Addr          string // addr: ip:port of a server
	QueueCur      int64  // qcur
	SessCur       int64  // scur
	SessMax       int64  // smax
	SessLimit     int64  // slim
	SessTotal     int64  // stot
	BytesIn       int64  // bin
	BytesOut      int64  // bout
	ErrReq        int64  // ereq
	ErrConn       int64  // econ
	ErrResp       int64  // eresp
	Hrsp1xx       int64  // hrsp_1xx
	Hrsp2xx       int64  // hrsp_2xx
	Hrsp3xx       int64  // hrsp_3xx
	Hrsp4xx       int64  // hrsp_4xx
	Hrsp5xx       int64  // hrsp_5xx
	HrspOther     int64  // hrsp_other

	// The row is kept as haproxy sent it (a substring of the reply, so no copy) and split again
	// when a column is asked for by name: with 10,000 servers a []string of every row's ~100
	// columns costs 16 MB per snapshot, for columns that only haproxy.get's encoder reads.
	cols *columns
	line string
}

// columns is a show stat header, shared by all rows of one reply so rows carry no per-row map.
type columns struct {
	names []string
	index map[string]int
}

// Columns lists the reply's column names in haproxy's order.
func (s *Stat) Columns() []string {
	if s.cols == nil {
		return nil
	}
	return s.cols.names
}

// Raw returns any column by its header name, with ok=false when this haproxy has no such column.
func (s *Stat) Raw(name string) (value string, ok bool) {
	if s.cols == nil {
		return "", false
	}
	i, ok := s.cols.index[name]
	if !ok {
		return "", false
	}
	v := s.values(nil)
	if v == nil {
		return "", false
	}
	return v[i], true
}

// values splits the row into dst, one value per column (ParseStat checked it does; nil for a row
// not made by ParseStat).
func (s *Stat) values(dst []string) []string {
	if s.cols == nil {
		return nil
	}
	v, err := splitCSV(s.line, dst[:0])
	if err != nil || len(v) != len(s.cols.names) {
		return nil
	}
	return v
}

// RawMap copies every non-empty column into a map (for callers that want "everything else").
func (s *Stat) RawMap() map[string]string {
	v := s.values(nil)
	m := make(map[string]string, len(v))
	for i, n := range s.Columns() {
		if n != "" && v[i] != "" {
			m[n] = v[i]
		}
	}
	return m
}

// State is Status reduced to the word the plugin reports: UP, DOWN, MAINT, DRAIN, NOLB, OPEN, FULL,
// STOP, "no check", … ("UP 1/2" is still UP: the transition has not happened yet).
func (s *Stat) State() string { return NormalizeStatus(s.Status) }

// NormalizeStatus strips haproxy's decorations from a status column: the "n/m" of a server going up
// or down and the "(via …)" / "(resolution)" reason of a maintenance.
func NormalizeStatus(status string) string {
	status = strings.TrimSpace(status)
	if strings.HasPrefix(status, "no check") {
		return "no check"
	}
	if i := strings.IndexAny(status, " ("); i >= 0 {
		status = status[:i]
	}
	return status
}

// ShowStat runs show stat and parses it.
func (c *Client) ShowStat(ctx context.Context) ([]Stat, error) {
	return query(ctx, c, "show stat", ParseStat)
}

// query runs one runtime-API command and parses its reply; a parse error names the socket and the command.
func query[T any](ctx context.Context, c *Client, cmd string, parse func(string) (T, error)) (T, error) {
	var zero T
	reply, err := c.Command(ctx, cmd)
	if err != nil {
		return zero, err
	}
	v, err := parse(reply)
	if err != nil {
		return zero, fmt.Errorf("haproxy socket %s: %s: %w", c.Addr, cmd, err)
	}
	return v, nil
}

// statIdx holds the position of each typed column in one header (-1 when absent).
type statIdx struct {
	pxname, svname, typ, status, weight, checkStatus, checkCode, checkDuration, checkDesc, lastChk,
	lastchg, chkfail, chkdown, downtime, addr, qcur, scur, smax, slim, stot, bin, bout, ereq, econ,
	eresp, h1, h2, h3, h4, h5, hOther int
}

// ParseStat parses a complete show stat reply (header line "# pxname,svname,…", rows, empty line).
// Columns are found by name, so haproxy versions that add or move columns parse alike. Any
// malformed or truncated reply is an error naming the line.
func ParseStat(reply string) ([]Stat, error) {
	text, err := body("show stat", reply)
	if err != nil {
		return nil, err
	}
	header, rest, _ := strings.Cut(text, "\n")
	if !strings.HasPrefix(header, "# ") {
		return nil, fmt.Errorf("show stat: haproxy answered %s instead of a CSV header", replyText(reply))
	}
	names, err := splitCSV(header[2:], nil)
	if err != nil {
		return nil, fmt.Errorf("show stat: header: %w", err)
	}
	// Every line ends with a comma, which makes an unnamed last column: keep it so counts match.
	cols := &columns{names: names, index: make(map[string]int, len(names))}
	for i, n := range names {
		if n == "" {
			continue
		}
		if _, dup := cols.index[n]; dup {
			if n == "-" { // 2.6 has a "-" placeholder column; its duplicates carry nothing
				continue
			}
			return nil, fmt.Errorf("show stat: header: column %q appears twice", n)
		}
		cols.index[n] = i
	}
	at := func(n string) int {
		if i, ok := cols.index[n]; ok {
			return i
		}
		return -1
	}
	ix := statIdx{
		pxname: at("pxname"), svname: at("svname"), typ: at("type"), status: at("status"), weight: at("weight"),
		checkStatus: at("check_status"), checkCode: at("check_code"), checkDuration: at("check_duration"),
		checkDesc: at("check_desc"), lastChk: at("last_chk"), lastchg: at("lastchg"), chkfail: at("chkfail"),
		chkdown: at("chkdown"), downtime: at("downtime"), addr: at("addr"), qcur: at("qcur"), scur: at("scur"),
		smax: at("smax"), slim: at("slim"), stot: at("stot"), bin: at("bin"), bout: at("bout"), ereq: at("ereq"),
		econ: at("econ"), eresp: at("eresp"), h1: at("hrsp_1xx"), h2: at("hrsp_2xx"), h3: at("hrsp_3xx"),
		h4: at("hrsp_4xx"), h5: at("hrsp_5xx"), hOther: at("hrsp_other"),
	}
	if ix.pxname < 0 || ix.svname < 0 {
		return nil, errors.New("show stat: header has no pxname/svname column")
	}

	stats := make([]Stat, 0, strings.Count(rest, "\n"))
	scratch := make([]string, 0, len(names))
	line := 1
	for rest != "" {
		line++
		var row string
		row, rest, _ = strings.Cut(rest, "\n")
		if row == "" {
			return nil, fmt.Errorf("show stat: line %d: empty line inside the table", line)
		}
		values, err := splitCSV(row, scratch[:0])
		if err != nil {
			return nil, fmt.Errorf("show stat: line %d: %w", line, err)
		}
		if len(values) != len(names) {
			return nil, fmt.Errorf("show stat: line %d: %d fields, header has %d (truncated or malformed row)", line, len(values), len(names))
		}
		s, err := newStat(cols, &ix, row, values)
		if err != nil {
			return nil, fmt.Errorf("show stat: line %d (%s/%s): %w", line, values[ix.pxname], values[ix.svname], err)
		}
		stats = append(stats, s)
	}
	return stats, nil
}

func newStat(cols *columns, ix *statIdx, line string, v []string) (Stat, error) {
	s := Stat{cols: cols, line: line, Proxy: v[ix.pxname], Name: v[ix.svname]}
	if s.Proxy == "" || s.Name == "" {
		return s, errors.New("empty pxname or svname")
	}
	str := func(i int) string {
		if i < 0 {
			return ""
		}
		return v[i]
	}
	var bad string
	num := func(i int) int64 {
		if i < 0 || v[i] == "" {
			return -1
		}
		n, err := strconv.ParseInt(v[i], 10, 64)
		if err != nil {
			if bad == "" {
				bad = fmt.Sprintf("column %s: %q is not an integer", cols.names[i], v[i])
			}
			return -1
		}
		return n
	}
	switch t := num(ix.typ); {
	case t >= 0:
		s.Type = Type(t)
	case s.Name == "FRONTEND":
		s.Type = Frontend
	case s.Name == "BACKEND":
		s.Type = Backend
	default:
		s.Type = Server
	}
	s.Status, s.CheckStatus, s.CheckDesc, s.LastCheck, s.Addr = str(ix.status), str(ix.checkStatus), str(ix.checkDesc), str(ix.lastChk), str(ix.addr)
	s.Weight, s.CheckCode, s.CheckDuration = num(ix.weight), num(ix.checkCode), num(ix.checkDuration)
	s.LastChange, s.CheckFailures, s.CheckDowns, s.Downtime = num(ix.lastchg), num(ix.chkfail), num(ix.chkdown), num(ix.downtime)
	s.QueueCur, s.SessCur, s.SessMax, s.SessLimit, s.SessTotal = num(ix.qcur), num(ix.scur), num(ix.smax), num(ix.slim), num(ix.stot)
	s.BytesIn, s.BytesOut, s.ErrReq, s.ErrConn, s.ErrResp = num(ix.bin), num(ix.bout), num(ix.ereq), num(ix.econ), num(ix.eresp)
	s.Hrsp1xx, s.Hrsp2xx, s.Hrsp3xx, s.Hrsp4xx, s.Hrsp5xx, s.HrspOther = num(ix.h1), num(ix.h2), num(ix.h3), num(ix.h4), num(ix.h5), num(ix.hOther)
	if bad != "" {
		return s, errors.New(bad)
	}
	return s, nil
}

// splitCSV splits one CSV line into dst. haproxy quotes a field only when it holds a comma, quote or
// line break (csv_enc), so the common case is a plain split that allocates nothing beyond dst.
func splitCSV(line string, dst []string) ([]string, error) {
	if strings.IndexByte(line, '"') < 0 {
		for {
			i := strings.IndexByte(line, ',')
			if i < 0 {
				return append(dst, line), nil
			}
			dst = append(dst, line[:i])
			line = line[i+1:]
		}
	}
	for {
		if line == "" || line[0] != '"' {
			i := strings.IndexByte(line, ',')
			if i < 0 {
				if strings.IndexByte(line, '"') >= 0 {
					return nil, fmt.Errorf("stray quote in field %d", len(dst)+1)
				}
				return append(dst, line), nil
			}
			if strings.IndexByte(line[:i], '"') >= 0 {
				return nil, fmt.Errorf("stray quote in field %d", len(dst)+1)
			}
			dst = append(dst, line[:i])
			line = line[i+1:]
			continue
		}
		var b strings.Builder
		i := 1
		for {
			j := strings.IndexByte(line[i:], '"')
			if j < 0 {
				return nil, fmt.Errorf("unterminated quote in field %d", len(dst)+1)
			}
			b.WriteString(line[i : i+j])
			i += j + 1
			if i < len(line) && line[i] == '"' { // "" is an escaped quote
				b.WriteByte('"')
				i++
				continue
			}
			break
		}
		dst = append(dst, b.String())
		switch {
		case i == len(line):
			return dst, nil
		case line[i] == ',':
			line = line[i+1:]
		default:
			return nil, fmt.Errorf("text after closing quote in field %d", len(dst))
		}
	}
}
