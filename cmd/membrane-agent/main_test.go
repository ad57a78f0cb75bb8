package main

import "testing"

func TestParseMapSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint32
		ok   bool
	}{
		{"65536", 65536, true},
		{"1", 1, true},
		{"4294967295", 4294967295, true},
		{"0", 0, false},
		{"64k", 0, false},
		{"1e6", 0, false},
		{"-1", 0, false},
		{"4294967296", 0, false},
		{" 42", 0, false},
		{"", 0, false},
	} {
		got, err := parseMapSize(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseMapSize(%q) = %d, %v; want %d, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}
