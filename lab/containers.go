package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// responderStartTimeout bounds how long a responder may take to listen.
const responderStartTimeout = 10 * time.Second

// defaultPath is the PATH of a container that sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// containerEnv is the environment of a container's process: a minimal
// base (PATH, HOME, HOSTNAME) overridden by the container's env.
func containerEnv(p *podPlan, c containerPlan) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	return append([]string{"PATH=" + path, "HOME=/root", "HOSTNAME=" + p.Name}, c.Env...)
}

// startContainers starts one process per container of p inside its
// namespace: the container's command, or the built-in responder. It
// returns once every responder listens.
func (l *Lab) startContainers(ctx context.Context, p *podPlan) error {
	exe, _ := l.programs()
	nsName := l.y.podNetns(p.Namespace, p.Name)
	type pending struct {
		container string
		log       string
		ready     *os.File
	}
	var waits []pending
	defer func() {
		for _, w := range waits {
			w.ready.Close()
		}
	}()
	for _, c := range p.Containers {
		logPath := l.y.containerLog(p.Namespace, p.Name, c.Name)
		logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("pod %s container %s: open log: %w", p.key(), c.Name, err)
		}
		var cmd *exec.Cmd
		var readyR, readyW *os.File
		kind := KindCommand
		if len(c.Argv) == 0 {
			kind = KindResponder
			args := []string{"lab", "responder", "--pod", p.key(), "--ready-fd", "3"}
			for _, port := range c.Ports {
				args = append(args, "--port", strconv.Itoa(port))
			}
			cmd = exec.Command(exe, args...)
			if readyR, readyW, err = os.Pipe(); err != nil {
				logFile.Close()
				return fmt.Errorf("pod %s container %s: %w", p.key(), c.Name, err)
			}
			cmd.ExtraFiles = []*os.File{readyW}
		} else {
			cmd = exec.Command(c.Argv[0], c.Argv[1:]...)
		}
		cmd.Env = containerEnv(p, c)
		cmd.Dir = c.Dir
		if cmd.Dir == "" {
			cmd.Dir = l.y.podDir(p.Namespace, p.Name)
		}
		cmd.Stdout, cmd.Stderr = logFile, logFile
		proc, err := startInNetns(nsName, cmd, kind, c.Name, logPath)
		logFile.Close()
		if readyW != nil {
			readyW.Close()
		}
		if err != nil {
			if readyR != nil {
				readyR.Close()
			}
			return fmt.Errorf("pod %s container %s: %w", p.key(), c.Name, err)
		}
		if err := l.update(func(st *State) {
			if ps := st.pod(p.Namespace, p.Name); ps != nil {
				ps.Processes = append(ps.Processes, proc)
			}
		}); err != nil {
			return err
		}
		if readyR != nil {
			waits = append(waits, pending{container: c.Name, log: logPath, ready: readyR})
		}
	}
	for _, w := range waits {
		deadline := time.Now().Add(responderStartTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		w.ready.SetReadDeadline(deadline)
		b, err := io.ReadAll(w.ready)
		if err != nil || strings.TrimSpace(string(b)) != "ready" {
			why := "exited before listening"
			if err != nil {
				why = err.Error()
			}
			return fmt.Errorf("pod %s container %s: responder did not start (%s); its log %s says: %s",
				p.key(), w.container, why, w.log, logTail(w.log, 5))
		}
	}
	return nil
}
