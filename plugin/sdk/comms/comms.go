// Package comms frames messages between zabbix_agent2 and a loadable plugin: a uint32 LE payload
// type (always 1 = JSON), a uint32 LE length, then the JSON body. Observed on agents 6.0.14 and 7.0.9.
package comms

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"zabbix-agent2-plugin-kvm/internal/jsonstr"
)

// JSONType is the only payload type the agents send.
const JSONType uint32 = 1

// Message types (the "type" field of every JSON body).
const (
	LogRequestType        uint32 = 1
	RegisterRequestType   uint32 = 2
	RegisterResponseType  uint32 = 3
	StartRequestType      uint32 = 4
	TerminateRequestType  uint32 = 5
	ExportRequestType     uint32 = 6
	ExportResponseType    uint32 = 7
	ConfigureRequestType  uint32 = 8
	ValidateRequestType   uint32 = 9
	ValidateResponseType  uint32 = 10
	PeriodRequestType     uint32 = 11
	PeriodResponseType    uint32 = 12
	MaxPayload                   = 64 << 20 // larger frames are refused, not allocated
	headerSize                   = 8
	interfaceExporter            = 1
	interfaceConfigurator        = 2
	interfaceRunner              = 4
)

// Interface bits reported in RegisterResponse.
const (
	Exporter     = interfaceExporter
	Configurator = interfaceConfigurator
	Runner       = interfaceRunner
)

// Common is the part every message has.
type Common struct {
	ID   uint32 `json:"id"`
	Type uint32 `json:"type"`
}

// LogRequest is sent by the plugin at any time; id is 0.
type LogRequest struct {
	Common
	Severity uint32 `json:"severity"`
	Message  string `json:"message"`
}

// Log severities as the agent maps them.
const (
	Info     uint32 = 0
	Critical uint32 = 1
	Error    uint32 = 2
	Warning  uint32 = 3
	Debug    uint32 = 4
	Trace    uint32 = 5
)

// RegisterRequest carries the agent's plugin protocol version ("6.0.13" on 6.0, "6.4.0" on 7.0).
type RegisterRequest struct {
	Common
	Version string `json:"version"`
}

// RegisterResponse names the plugin (it must equal Plugins.<Name> exactly) and lists key, description pairs.
type RegisterResponse struct {
	Common
	Name       string   `json:"name,omitempty"`
	Metrics    []string `json:"metrics,omitempty"`
	Interfaces uint32   `json:"interfaces,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// Node is the agent's configuration tree for Plugins.<Name>.*; leaf values are base64.
type Node struct {
	Name  string `json:"Name,omitempty"`
	Value string `json:"Value,omitempty"`
	Line  int    `json:"Line,omitempty"`
	Nodes []Node `json:"Nodes,omitempty"`
}

// GlobalOptions are the agent options passed to Configure.
type GlobalOptions struct {
	Timeout  int    `json:"Timeout"`
	SourceIP string `json:"SourceIP"`
}

// ValidateRequest asks whether the private options are acceptable (registration run).
type ValidateRequest struct {
	Common
	PrivateOptions *Node `json:"private_options,omitempty"`
}

// ValidateResponse answers a ValidateRequest; a non-empty Error makes the agent refuse to start.
type ValidateResponse struct {
	Common
	Error string `json:"error,omitempty"`
}

// ConfigureRequest gives the real run its options; it has no response.
type ConfigureRequest struct {
	Common
	GlobalOptions  *GlobalOptions `json:"global_options,omitempty"`
	PrivateOptions *Node          `json:"private_options,omitempty"`
}

// ExportRequest asks for one key's value. Timeout (seconds) is sent by 7.0 only.
type ExportRequest struct {
	Common
	Key     string   `json:"key"`
	Params  []string `json:"parameters,omitempty"`
	Timeout int      `json:"timeout,omitempty"`
}

// ExportResponse carries a value or an error for the request with the same id.
type ExportResponse struct {
	Common
	Value *string `json:"value,omitempty"`
	Error string  `json:"error,omitempty"`
}

// ErrTooLarge is returned for a frame whose declared length exceeds MaxPayload.
var ErrTooLarge = errors.New("frame larger than the 64 MiB limit")

// Read reads one frame and returns its common header and raw JSON body.
func Read(r io.Reader) (Common, []byte, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Common{}, nil, err
	}
	ptype := binary.LittleEndian.Uint32(hdr[0:4])
	size := binary.LittleEndian.Uint32(hdr[4:8])
	if size > MaxPayload {
		return Common{}, nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Common{}, nil, fmt.Errorf("truncated frame body (%d bytes declared): %w", size, err)
	}
	if ptype != JSONType {
		return Common{}, body, fmt.Errorf("unsupported payload type %d", ptype)
	}
	var c Common
	if err := json.Unmarshal(body, &c); err != nil {
		return Common{}, body, fmt.Errorf("malformed message: %w", err)
	}
	return c, body, nil
}

// Encode returns the framed bytes of v.
func Encode(v any) ([]byte, error) {
	if r, ok := v.(ExportResponse); ok {
		return encodeExport(&r), nil
	}
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, headerSize+len(body))
	binary.LittleEndian.PutUint32(buf[0:4], JSONType)
	binary.LittleEndian.PutUint32(buf[4:8], uint32(len(body)))
	copy(buf[headerSize:], body)
	return buf, nil
}

// encodeExport frames a key's answer without encoding/json: the value may be megabytes (haproxy.get
// of 10,000 servers is 10 MB), which json.Marshal would quote into a buffer of its own that Encode
// then copies into the frame; here it is quoted once, straight into the frame.
func encodeExport(r *ExportResponse) []byte {
	n := headerSize + 64 + 2*len(r.Error)
	if r.Value != nil {
		n += len(*r.Value) + len(*r.Value)/5 // haproxy.get's JSON has a quote to escape every 6 bytes
	}
	b := make([]byte, headerSize, n)
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, uint64(r.ID), 10)
	b = append(b, `,"type":`...)
	b = strconv.AppendUint(b, uint64(r.Type), 10)
	if r.Value != nil {
		b = append(b, `,"value":`...)
		b = jsonstr.Append(b, *r.Value)
	}
	if r.Error != "" {
		b = append(b, `,"error":`...)
		b = jsonstr.Append(b, r.Error)
	}
	b = append(b, '}')
	binary.LittleEndian.PutUint32(b[0:4], JSONType)
	binary.LittleEndian.PutUint32(b[4:8], uint32(len(b)-headerSize))
	return b
}

// Write frames v and writes it in one call, so concurrent writers holding a lock never interleave.
func Write(w io.Writer, v any) error {
	buf, err := Encode(v)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}
