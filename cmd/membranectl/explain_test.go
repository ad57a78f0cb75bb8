package main

import (
	"strings"
	"testing"
)

func TestExplainFamilyAndPort(t *testing.T) {
	for _, c := range []struct {
		family   int
		given    bool
		protocol string
		refs     []string
		port     string
		want     int // family; 0: an error containing err
		wantPort int
		err      string
	}{
		{4, false, "tcp", []string{"x/a", "x/b"}, "80", 4, 80, ""},
		{6, true, "tcp", []string{"x/a", "x/b"}, "80", 6, 80, ""},
		{4, false, "tcp", []string{"x/a", "fd00::1"}, "80", 6, 80, ""},
		{4, false, "tcp", []string{"world:2001:db8::1", "x/b"}, "80", 6, 80, ""},
		{4, false, "icmp", []string{"x/a", "x/b"}, "EchoRequest", 4, 8, ""},
		{4, false, "icmpv6", []string{"x/a", "fd00::2"}, "EchoRequest", 6, 128, ""},
		{4, false, "icmp", []string{"x/a", "x/b"}, "255", 4, 255, ""},
		{4, false, "tcp", []string{"x/a", "x/b"}, "65536", 4, 0, "0-65535"},
		{4, false, "icmp", []string{"x/a", "x/b"}, "300", 4, 0, "0-255"},
		{4, false, "icmp", []string{"x/a", "x/b"}, "Nonsense", 4, 0, "EchoRequest"},
		{5, true, "tcp", []string{"x/a", "x/b"}, "80", 0, 0, "--family 5"},
		{4, true, "tcp", []string{"x/a", "fd00::1"}, "80", 0, 0, "fd00::1 is an IPv6 address"},
		{4, false, "tcp", []string{"10.0.0.1", "fd00::1"}, "80", 0, 0, "is an IPv6 address"},
		{6, true, "icmp", []string{"x/a", "x/b"}, "8", 0, 0, "icmpv6"},
		{4, false, "icmpv6", []string{"10.0.0.1", "10.0.0.2"}, "128", 0, 0, "--protocol icmp"},
	} {
		name := strings.Join(c.refs, " -> ") + " " + c.protocol + " " + c.port
		fam, err := explainFamily(c.family, c.given, c.protocol, c.refs...)
		if err == nil {
			var port int
			port, err = explainPort(c.port, c.protocol, fam)
			if err == nil && (fam != c.want || port != c.wantPort) {
				t.Errorf("%s: family %d port %d, want %d %d", name, fam, port, c.want, c.wantPort)
			}
		}
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: error %v, want one containing %q", name, err, c.err)
		}
	}
}
