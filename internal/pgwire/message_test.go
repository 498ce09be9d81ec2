package pgwire

import (
	"bytes"
	"strings"
	"testing"
)

func TestCString(t *testing.T) {
	long := strings.Repeat("x", 100) // past a vector's width
	for _, tc := range []struct {
		in, s, rest string
		ok          bool
	}{
		{"", "", "", false},
		{"abc", "", "", false},
		{long, "", "", false},
		{"\x00", "", "", true},
		{"abc\x00", "abc", "", true},
		{"abc\x00def\x00", "abc", "def\x00", true},
		{long + "\x00" + long, long, long, true},
	} {
		s, rest, ok := CString([]byte(tc.in))
		if ok != tc.ok || !bytes.Equal(s, []byte(tc.s)) || !bytes.Equal(rest, []byte(tc.rest)) {
			t.Errorf("CString(%.20q) = %.20q, %.20q, %v; want %.20q, %.20q, %v", tc.in, s, rest, ok, tc.s, tc.rest, tc.ok)
		}
	}
}
