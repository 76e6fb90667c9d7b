// Package jsonstr quotes strings as JSON without reflection, for the two places where values of
// megabytes are written: haproxy.get's rows and the agent protocol's response frame.
package jsonstr

import "unicode/utf8"

const hexDigits = "0123456789abcdef"

// plain marks the bytes copied as they are: ASCII from space up, except " and \. A table lookup per
// byte is what keeps quoting megabytes as fast as encoding/json's.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// Append quotes s as a JSON string. Invalid UTF-8 becomes U+FFFD and U+2028/U+2029 are escaped,
// as encoding/json does; unlike encoding/json it leaves <, > and & alone (valid JSON either way,
// and nothing here is embedded in HTML).
func Append(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if plain[c] {
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
