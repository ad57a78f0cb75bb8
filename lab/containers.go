package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
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
			return fmt.Errorf("Pod %s container %s: open log: %w", p.key(), c.Name, err)
		}
		var cmd *exec.Cmd
		var readyR, readyW *os.File
		kind := KindCommand
		if len(c.Argv) == 0 {
			kind = KindResponder
			cmd = exec.Command(exe, responderArgs(p.key(), c.Ports)...)
			if readyR, readyW, err = os.Pipe(); err != nil {
				logFile.Close()
				return fmt.Errorf("Pod %s container %s: %w", p.key(), c.Name, err)
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
			return fmt.Errorf("Pod %s container %s: %w", p.key(), c.Name, err)
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
		if err := awaitReady(ctx, w.ready, w.log); err != nil {
			return fmt.Errorf("Pod %s container %s: %w", p.key(), w.container, err)
		}
	}
	return nil
}

// awaitReady waits until a responder writes "ready" to the pipe r.
func awaitReady(ctx context.Context, r *os.File, log string) error {
	deadline := time.Now().Add(responderStartTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	r.SetReadDeadline(deadline)
	b, err := io.ReadAll(r)
	if err != nil || strings.TrimSpace(string(b)) != "ready" {
		why := "exited before listening"
		if err != nil {
			why = err.Error()
		}
		return fmt.Errorf("responder did not start (%s); its log %s says: %s", why, log, logTail(log, 5))
	}
	return nil
}

// responderArgs are the arguments that make the lab's executable the
// responder called name, serving ports, announcing readiness on fd 3.
func responderArgs(name string, ports []int) []string {
	args := []string{"lab", HelperResponder, "--pod", name, "--ready-fd", "3"}
	for _, port := range ports {
		args = append(args, "--port", strconv.Itoa(port))
	}
	return args
}

// startResponder starts a responder that names itself name in the
// namespace ns, serving ports and logging to logPath; it calls started
// with the record of the process as soon as it runs (to record it), then
// waits until it listens. It is how the world host and the nodes answer
// probes.
func (l *Lab) startResponder(ctx context.Context, ns, name string, ports []int, logPath string, started func(Process) error) error {
	exe, _ := l.programs()
	dir := filepath.Dir(logPath)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("responder %s: %w", name, err)
	}
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("responder %s: open log: %w", name, err)
	}
	defer logFile.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("responder %s: %w", name, err)
	}
	defer readyR.Close()
	cmd := exec.Command(exe, responderArgs(name, ports)...)
	cmd.ExtraFiles = []*os.File{readyW}
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	cmd.Env = []string{"PATH=" + path, "HOME=/root"}
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	proc, err := startInNetns(ns, cmd, KindResponder, "", logPath)
	readyW.Close()
	if err != nil {
		return fmt.Errorf("responder %s: %w", name, err)
	}
	if err := started(proc); err != nil {
		return err
	}
	if err := awaitReady(ctx, readyR, logPath); err != nil {
		return fmt.Errorf("responder %s: %w", name, err)
	}
	return nil
}
