package ifname

import (
	"strings"
	"testing"
)

func TestHost(t *testing.T) {
	a := Host("x", "a")
	if len(a) != 14 || !strings.HasPrefix(a, HostPrefix) {
		t.Fatalf("Host(x, a) = %q: want 14 characters starting with %q", a, HostPrefix)
	}
	if a != Host("x", "a") {
		t.Fatal("Host is not deterministic")
	}
	// "x/ab" vs "xa/b" must not collide because the separator is hashed.
	if Host("x", "ab") == Host("xa", "b") {
		t.Fatal("namespace/name boundary is ambiguous")
	}
}
