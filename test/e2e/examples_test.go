package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/lab"
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
				line = strings.TrimSpace(line)
				switch {
				case line == "" || strings.HasPrefix(line, "#"):
				case strings.Contains(line, " http/") || strings.Contains(line, " grpc/"):
					checkL7Expectation(t, l, line)
				default:
					lines = append(lines, line)
				}
			}
			if len(lines) > 0 {
				checkExpectations(t, l, filepath.Base(dir), strings.Join(lines, "\n"))
			}
		})
	}
}

// checkL7Expectation checks one line
//
//	FROM -> TO http/PORT METHOD PATH [Header=value]...: STATUS
//	FROM -> TO grpc/PORT /grpc.health.v1.Health/(Check|Watch): CODE
func checkL7Expectation(t *testing.T, l *lab.Lab, line string) {
	t.Helper()
	head, want, ok := strings.Cut(line, ": ")
	f := strings.Fields(head)
	if !ok || len(f) < 4 || f[1] != "->" {
		t.Fatalf("bad expectation %q", line)
	}
	proto, portStr, _ := strings.Cut(f[3], "/")
	port, err := strconv.Atoi(portStr)
	if err != nil {
		t.Fatalf("bad expectation %q: %v", line, err)
	}
	ctx := context.Background()
	switch proto {
	case "http":
		if len(f) < 6 {
			t.Fatalf("bad expectation %q: want METHOD PATH", line)
		}
		spec := lab.HTTPSpec{From: f[0], To: f[2], Port: port, Method: f[4], Path: f[5], Header: http.Header{}}
		for _, h := range f[6:] {
			k, v, _ := strings.Cut(h, "=")
			spec.Header.Add(k, v)
		}
		res, err := l.HTTP(ctx, spec)
		if err != nil {
			t.Errorf("%s: %v", line, err)
			return
		}
		if got := strconv.Itoa(res.Status); got != strings.TrimSpace(want) {
			t.Errorf("%s: got %s %q", line, got, res.Body)
		}
	case "grpc":
		if len(f) != 5 {
			t.Fatalf("bad expectation %q: want the method", line)
		}
		spec := lab.GRPCSpec{From: f[0], To: f[2], Port: port}
		switch f[4] {
		case "/grpc.health.v1.Health/Check":
		case "/grpc.health.v1.Health/Watch":
			spec.Watch = true
		default:
			t.Fatalf("bad expectation %q: the lab's responders serve grpc.health.v1.Health/Check and /Watch", line)
		}
		res, err := l.GRPC(ctx, spec)
		if err != nil {
			t.Errorf("%s: %v", line, err)
			return
		}
		if res.Code != strings.TrimSpace(want) {
			t.Errorf("%s: got %s", line, res)
		}
	default:
		t.Fatalf("bad expectation %q", line)
	}
}
