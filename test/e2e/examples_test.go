package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/membrane-mesh/membrane/datastore"
)

// Every example comes up, and the traffic its EXPECT file describes is what
// happens (and what explain says).
func TestExamples(t *testing.T) {
	dirs, _ := filepath.Glob("../../examples/*")
	for _, dir := range dirs {
		expect, err := os.ReadFile(filepath.Join(dir, "EXPECT"))
		if err != nil {
			continue
		}
		t.Run(filepath.Base(dir), func(t *testing.T) {
			objs, err := datastore.DecodePath(dir)
			if err != nil {
				t.Fatal(err)
			}
			l := startLab(t, objs)
			var lines []string
			for _, line := range strings.Split(string(expect), "\n") {
				if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
					lines = append(lines, line)
				}
			}
			checkExpectations(t, l, filepath.Base(dir), strings.Join(lines, "\n"))
		})
	}
}
