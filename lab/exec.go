package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/membrane-mesh/membrane/internal/netns"
)

// Stdio are the standard streams of a command run by Exec; nil means
// /dev/null.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Exec runs argv inside the network namespace of target (a pod
// "NAMESPACE/NAME", "world" or "node/NAME") with the caller's environment,
// and returns its exit code (128+N if killed by signal N). Ending ctx kills
// the command.
func (l *Lab) Exec(ctx context.Context, target string, argv []string, stdio Stdio) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("exec: no command")
	}
	if strings.HasPrefix(target, worldAddrPrefix) {
		return 0, fmt.Errorf("exec in %s: a command runs in the world host as a whole: use %q", target, WorldName)
	}
	e, err := l.resolve(target)
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	cmd.Env = append(os.Environ(), "HOSTNAME="+e.host)
	if err := netns.Do(e.netns, cmd.Start); err != nil {
		return 0, fmt.Errorf("exec in %s: %w", e.desc, err)
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
		return 0, fmt.Errorf("exec in %s: %w", e.desc, err)
	}
}
