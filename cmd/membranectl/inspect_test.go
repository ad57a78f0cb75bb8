package main

import (
	"bufio"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/api"
)

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

// A map whose count was kept up to date since it was last counted
// (conntrack's) says so, in its row and below the table.
func TestPrintStatusTalliedMap(t *testing.T) {
	s := &api.Status{Node: "node1", Healthy: true, Maps: []api.MapStats{
		{Name: "endpoints", Entries: 2, MaxEntries: 4096, Indexed: true},
		{Name: "ct", Entries: 7, MaxEntries: 262144, CountedAt: time.Now().Add(-12 * time.Second)},
	}}
	var b strings.Builder
	printStatus(&b, s)
	out := b.String()
	for _, want := range []string{
		"  endpoints  2  ",
		"  ct         ≤7  ",
		"  ≤ ct: counted 12s ago, plus the connections recorded since",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

type fullDisk struct{}

func (fullDisk) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// Text output that cannot be written is the command's error, and an
// --output the command does not have is refused, not printed as text.
func TestOutputErrors(t *testing.T) {
	out := &checkedWriter{w: fullDisk{}}
	printStatus(out, &api.Status{Node: "node1", Healthy: true})
	if out.err == nil || !strings.Contains(out.err.Error(), "no space left") {
		t.Fatalf("status to a full disk: %v, want the write error", out.err)
	}
	bw := bufio.NewWriter(fullDisk{})
	bw.WriteString("a flow\n")
	if err := flushOutput(bw); err == nil {
		t.Fatal("flushing flows to a full disk succeeded")
	}
	if err := checkOutput("yaml", "text", "json"); err == nil || !strings.Contains(err.Error(), `"yaml": want text or json`) {
		t.Fatalf("checkOutput(yaml): %v", err)
	}
	if err := checkOutput("json", "text", "json"); err != nil {
		t.Fatal(err)
	}
}
