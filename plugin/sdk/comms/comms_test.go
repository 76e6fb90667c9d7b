package comms

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The header bytes of a 36-byte JSON frame as captured from agent 7.0.9 (facts/agent2-protocol.md).
func TestHeaderMatchesCapture(t *testing.T) {
	body := `{"id":1,"type":2,"version":"6.4.0"}`
	require.Len(t, body, 35)
	b, err := Encode(RegisterRequest{Common: Common{ID: 1, Type: RegisterRequestType}, Version: "6.4.0"})
	require.NoError(t, err)
	require.Equal(t, "0100000023000000", hex.EncodeToString(b[:8]))
	require.Equal(t, body, string(b[8:]))
}

func TestRoundTripEveryType(t *testing.T) {
	val := "v"
	msgs := []any{
		LogRequest{Common: Common{Type: LogRequestType}, Severity: Warning, Message: "m"},
		RegisterRequest{Common: Common{ID: 1, Type: RegisterRequestType}, Version: "6.0.13"},
		RegisterResponse{Common: Common{ID: 1, Type: RegisterResponseType}, Name: "KVM", Metrics: []string{"k", "d"}, Interfaces: 7},
		Common{ID: 2, Type: StartRequestType},
		Common{ID: 3, Type: TerminateRequestType},
		ExportRequest{Common: Common{ID: 4, Type: ExportRequestType}, Key: "k", Params: []string{"a", ""}, Timeout: 7},
		ExportResponse{Common: Common{ID: 4, Type: ExportResponseType}, Value: &val},
		ConfigureRequest{Common: Common{ID: 5, Type: ConfigureRequestType}, GlobalOptions: &GlobalOptions{Timeout: 3}},
		ValidateRequest{Common: Common{ID: 6, Type: ValidateRequestType}, PrivateOptions: &Node{Name: "KVM"}},
		ValidateResponse{Common: Common{ID: 6, Type: ValidateResponseType}, Error: "bad"},
	}
	var buf bytes.Buffer
	for _, m := range msgs {
		require.NoError(t, Write(&buf, m))
	}
	want := []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for i, typ := range want {
		c, body, err := Read(&buf)
		require.NoError(t, err, "message %d", i)
		require.Equal(t, typ, c.Type)
		require.NotEmpty(t, body)
	}
	_, _, err := Read(&buf)
	require.ErrorIs(t, err, io.EOF)
}

func frame(ptype, size uint32, body string) []byte {
	b := make([]byte, 8, 8+len(body))
	binary.LittleEndian.PutUint32(b[0:], ptype)
	binary.LittleEndian.PutUint32(b[4:], size)
	return append(b, body...)
}

func TestReadMalformed(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		wantErr string
		body    bool // the frame was consumed whole: the stream is still in step
	}{
		{"-short header", []byte{1, 0, 0}, "unexpected EOF", false},
		{"-truncated body", frame(1, 10, `{"id"`), "truncated frame body", false},
		{"-too large", frame(1, MaxPayload+1, ""), "64 MiB", false},
		{"-not json", frame(1, 5, "hello"), "malformed message", true},
		{"-payload type 2", frame(2, 2, "{}"), "unsupported payload type 2", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, body, err := Read(bytes.NewReader(tt.in))
			require.ErrorContains(t, err, tt.wantErr)
			require.Equal(t, tt.body, body != nil)
		})
	}
	_, _, err := Read(bytes.NewReader(frame(1, MaxPayload+1, "")))
	require.True(t, errors.Is(err, ErrTooLarge))
}

func FuzzRead(f *testing.F) {
	f.Add(frame(1, 2, "{}"))
	f.Add(frame(1, 35, `{"id":1,"type":2,"version":"6.4.0"}`))
	f.Add(frame(1, 0xffffffff, ""))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for i := 0; i < 16; i++ {
			c, body, err := Read(r)
			if err != nil {
				return
			}
			if body == nil {
				t.Fatalf("no body with nil error (%+v)", c)
			}
		}
	})
}

// An ExportResponse is framed by hand; whatever the value and error, the frame decodes to what
// encoding/json's frame decodes to.
func FuzzEncodeExport(f *testing.F) {
	f.Add(uint32(7), `[{"pxname":"web","status":"UP"}]`, "", true)
	f.Add(uint32(0), "", "kvm.domain.state[x]: no such domain: \"x\"\n", false)
	f.Add(uint32(1<<31), "bad\xffutf8 \u2028 <&>", "", true)
	f.Fuzz(func(t *testing.T, id uint32, value, errText string, hasValue bool) {
		r := ExportResponse{Common: Common{ID: id, Type: ExportResponseType}, Error: errText}
		if hasValue {
			r.Value = &value
		}
		fast, err := Encode(r)
		require.NoError(t, err)
		body, err := json.Marshal(r)
		require.NoError(t, err)
		c, got, err := Read(bytes.NewReader(fast))
		require.NoError(t, err)
		require.Equal(t, r.Common, c)
		var a, b ExportResponse
		require.NoError(t, json.Unmarshal(got, &a))
		require.NoError(t, json.Unmarshal(body, &b))
		require.Equal(t, b, a)
	})
}

// BenchmarkEncodeExport frames a 10 MB value (haproxy.get of 10,000 servers) by hand and through
// encoding/json, the obvious alternative.
func BenchmarkEncodeExport(b *testing.B) {
	row := `{"pxname":"pool-001","svname":"guest-00042","type":2,"status":"UP","weight":1,"check_status":"L7OK"},`
	value := "[" + strings.Repeat(row, 10<<20/len(row)) + "]"
	r := ExportResponse{Common: Common{ID: 9, Type: ExportResponseType}, Value: &value}
	b.Run("by_hand", func(b *testing.B) {
		b.SetBytes(int64(len(value)))
		b.ReportAllocs()
		for b.Loop() {
			if f, err := Encode(r); err != nil || len(f) < len(value) {
				b.Fatal(len(f), err)
			}
		}
	})
	b.Run("encoding_json", func(b *testing.B) {
		b.SetBytes(int64(len(value)))
		b.ReportAllocs()
		for b.Loop() {
			body, err := json.Marshal(r)
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, headerSize+len(body)) // Encode's frame copy
			copy(buf[headerSize:], body)
		}
	})
}
