package exepages

import (
	"strings"
	"testing"
)

// TestRelease advises this test binary's read-only pages away and keeps
// running: they come back from the page cache.
func TestRelease(t *testing.T) {
	n, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("no mapping of the executable advised")
	}
	// Code and read-only data are still there.
	if s := strings.Repeat("ok", 2); s != "okok" {
		t.Fatal(s)
	}
}
