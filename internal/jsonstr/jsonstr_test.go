package jsonstr

import (
	"encoding/json"
	"testing"
)

// FuzzAppend: whatever the input, the output is valid JSON that decodes to what encoding/json makes
// of the same string (both replace invalid UTF-8 with U+FFFD).
func FuzzAppend(f *testing.F) {
	for _, s := range []string{"", "plain", `quote " and \ backslash`, "tab\tnl\ncr\r\x00\x1f", "\xff\xfe", "\u2028\u2029", "é<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := Append([]byte("x"), s)[1:]
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("Append(%q) = %s: not JSON: %v", s, got, err)
		}
		want, _ := json.Marshal(s)
		var wantBack string
		if err := json.Unmarshal(want, &wantBack); err != nil {
			t.Fatal(err)
		}
		if back != wantBack {
			t.Fatalf("Append(%q) decodes to %q, encoding/json's to %q", s, back, wantBack)
		}
	})
}

func BenchmarkAppend(b *testing.B) {
	s := make([]byte, 1<<20)
	for i := range s {
		s[i] = "abc\"de,f:{}"[i%11]
	}
	str := string(s)
	b.Run("jsonstr", func(b *testing.B) {
		b.SetBytes(int64(len(str)))
		buf := make([]byte, 0, 2*len(str))
		for b.Loop() {
			buf = Append(buf[:0], str)
		}
	})
	b.Run("encoding_json", func(b *testing.B) {
		b.SetBytes(int64(len(str)))
		for b.Loop() {
			if _, err := json.Marshal(str); err != nil {
				b.Fatal(err)
			}
		}
	})
}
