package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"github.com/membrane-mesh/membrane/internal/netns"
)

// Stdio are the standard streams of a command run by Exec; nil means
// /dev/null.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Exec runs argv inside pod's network namespace with the caller's
// environment, and returns its exit code (128+N if killed by signal N).
// Ending ctx kills the command.
func (l *Lab) Exec(ctx context.Context, pod string, argv []string, stdio Stdio) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("exec: no command")
	}
	p, err := l.Pod(pod)
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	cmd.Env = append(os.Environ(), "HOSTNAME="+p.Name)
	if err := netns.Do(p.Netns, cmd.Start); err != nil {
		return 0, fmt.Errorf("exec in pod %s: %w", p, err)
	}
	err = cmd.Wait()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exitErr):
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return exitErr.ExitCode(), nil
	default:
		return 0, fmt.Errorf("exec in pod %s: %w", p, err)
	}
}
