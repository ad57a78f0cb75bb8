// Command membranectl is Membrane's command-line tool: the lab, applying
// objects, and inspecting agents.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// commands builds the top-level subcommands. Each file of this package
// adds its own from init(), so that commands stay independent.
var commands []func() *cobra.Command

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "membranectl",
		Short:         "Control Membrane: run a lab, apply policy, inspect agents",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().BoolP("verbose", "v", false, "log progress to stderr")
	for _, c := range commands {
		root.AddCommand(c())
	}
	return root
}

// exitError ends membranectl with a given exit code; err, if not nil, is
// printed first.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// logger is the progress logger of a command: Info with --verbose, else
// only warnings.
func logger(cmd *cobra.Command) *slog.Logger {
	level := slog.LevelWarn
	if v, _ := cmd.Flags().GetBool("verbose"); v {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	code := 0
	if err != nil {
		code = 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
			err = ee.err
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "Error:", err)
		}
	}
	os.Exit(code)
}

// checkOutput refuses an --output the command does not have, rather than
// printing its default format.
func checkOutput(output string, formats ...string) error {
	if slices.Contains(formats, output) {
		return nil
	}
	return fmt.Errorf("--output %q: want %s", output, strings.Join(formats, " or "))
}

// checkedWriter remembers the first error of the writes through it, so
// that a command printing text line by line can report output it could
// not write (a full disk, a closed pipe) instead of exiting 0.
type checkedWriter struct {
	w   io.Writer
	err error
}

func (c *checkedWriter) Write(b []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(b)
	if err != nil {
		c.err = fmt.Errorf("write output: %w", err)
	}
	return n, err
}
