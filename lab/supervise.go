package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// SuperviseConfig configures Supervise. Zero durations take the defaults.
type SuperviseConfig struct {
	// Argv is the program to run and its arguments.
	Argv []string
	// PIDFile receives the PID of the running child; it is removed when
	// Supervise returns.
	PIDFile string
	// Log receives the child's stdout and stderr, and the supervisor's own
	// messages; it is appended to.
	Log string
	// MinBackoff is the first delay before a restart (default 100ms); it
	// doubles up to MaxBackoff (default 2s) and is reset once a child has
	// run for ResetAfter (default 10s).
	MinBackoff, MaxBackoff, ResetAfter time.Duration
	// StopGrace is how long a child may take to exit after SIGTERM when
	// ctx ends, before it is killed (default 2s).
	StopGrace time.Duration
}

func (c *SuperviseConfig) defaults() {
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 2 * time.Second
	}
	if c.ResetAfter <= 0 {
		c.ResetAfter = 10 * time.Second
	}
	if c.StopGrace <= 0 {
		c.StopGrace = 2 * time.Second
	}
}

// Supervise runs cfg.Argv and restarts it whenever it exits, until ctx
// ends; then it stops the child (SIGTERM, then SIGKILL after StopGrace).
// The child runs in the supervisor's process group and network namespace.
func Supervise(ctx context.Context, cfg SuperviseConfig) error {
	cfg.defaults()
	if len(cfg.Argv) == 0 {
		return errors.New("supervise: no command")
	}
	logFile, err := os.OpenFile(cfg.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("supervise: open log: %w", err)
	}
	defer logFile.Close()
	log := slog.New(slog.NewTextHandler(logFile, nil)).With("component", "supervisor")
	defer os.Remove(cfg.PIDFile)

	backoff := cfg.MinBackoff
	for {
		started := time.Now()
		cmd := exec.Command(cfg.Argv[0], cfg.Argv[1:]...)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		var exited chan error
		if err := cmd.Start(); err != nil {
			log.Error("start failed", "argv", cfg.Argv, "err", err)
		} else {
			log.Info("started", "pid", cmd.Process.Pid, "argv", cfg.Argv)
			if err := writePIDFile(cfg.PIDFile, cmd.Process.Pid); err != nil {
				log.Error("write pid file", "err", err)
			}
			exited = make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case err := <-exited:
				log.Warn("exited", "pid", cmd.Process.Pid, "status", exitStatus(err), "uptime", time.Since(started).Round(time.Millisecond))
			case <-ctx.Done():
				stopChild(cmd, exited, cfg.StopGrace, log)
				return nil
			}
		}
		if time.Since(started) >= cfg.ResetAfter {
			backoff = cfg.MinBackoff
		}
		log.Info("restarting", "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		backoff = min(2*backoff, cfg.MaxBackoff)
	}
}

func stopChild(cmd *exec.Cmd, exited <-chan error, grace time.Duration, log *slog.Logger) {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		log.Info("stopped", "pid", cmd.Process.Pid, "status", exitStatus(err))
	case <-time.After(grace):
		cmd.Process.Kill()
		<-exited
		log.Warn("killed after grace period", "pid", cmd.Process.Pid, "grace", grace)
	}
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// writePIDFile replaces path atomically with pid.
func writePIDFile(path string, pid int) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
