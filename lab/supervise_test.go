package lab

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSuperviseRestartsWithBackoff(t *testing.T) {
	dir := t.TempDir()
	cfg := SuperviseConfig{
		Argv:       []string{"sh", "-c", "echo run $$; exit 1"},
		PIDFile:    filepath.Join(dir, "child.pid"),
		Log:        filepath.Join(dir, "child.log"),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Supervise(ctx, cfg) }()
	var log string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(cfg.Log)
		if log = string(b); strings.Count(log, "restarting") >= 5 {
			break
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"in=10ms", "in=20ms", "in=40ms"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks backoff %s:\n%s", want, log)
		}
	}
	if strings.Contains(log, "in=80ms") {
		t.Errorf("backoff exceeded its maximum:\n%s", log)
	}
	if _, err := os.Stat(cfg.PIDFile); !os.IsNotExist(err) {
		t.Errorf("pid file left behind: %v", err)
	}
}

func TestSuperviseStopsChild(t *testing.T) {
	dir := t.TempDir()
	cfg := SuperviseConfig{
		Argv:    []string{"sleep", "600"},
		PIDFile: filepath.Join(dir, "child.pid"),
		Log:     filepath.Join(dir, "child.log"),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Supervise(ctx, cfg) }()
	var pid int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && pid == 0; time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(cfg.PIDFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if pid == 0 {
		t.Fatal("no pid file")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(pid, 0); err == nil {
		t.Errorf("child %d still alive after the supervisor stopped", pid)
	}
}
