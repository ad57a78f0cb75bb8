package main

import "testing"

func TestFormatVerdictCounts(t *testing.T) {
	for _, c := range []struct {
		by   map[string]uint64
		want string
	}{
		{nil, "none"},
		{map[string]uint64{"FORWARDED": 14, "DROPPED": 8}, "14 forwarded, 8 dropped"},
		{map[string]uint64{"DROPPED": 3, "FORWARDED": 3, "REDIRECTED": 9}, "9 redirected, 3 dropped, 3 forwarded"},
	} {
		if got := formatVerdictCounts(c.by); got != c.want {
			t.Errorf("formatVerdictCounts(%v) = %q, want %q", c.by, got, c.want)
		}
	}
}
