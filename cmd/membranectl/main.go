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
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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
	usageErrorsExit2(root)
	return root
}

// usageErrorsExit2 makes a bad flag or a wrong number of arguments exit
// with 2, as other input errors do, for every command under c: exit 1
// means an answer (lab probe: denied), which a script must not read
// from a typo.
func usageErrorsExit2(c *cobra.Command) {
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &exitError{code: 2, err: err} })
	if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return &exitError{code: 2, err: err}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		usageErrorsExit2(sub)
	}
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

// timeoutFlag defines --timeout on fs: a duration that must be positive.
// (A zero or negative timeout used to be taken for the default.)
func timeoutFlag(fs *pflag.FlagSet, p *time.Duration, def time.Duration, usage string) {
	*p = def
	fs.Var(positiveDuration{p}, "timeout", usage)
}

type positiveDuration struct{ d *time.Duration }

func (p positiveDuration) String() string {
	if p.d == nil {
		return ""
	}
	return p.d.String()
}

func (p positiveDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as 2s or 500ms")
	}
	if d <= 0 {
		return fmt.Errorf("want a positive duration such as 2s or 500ms")
	}
	*p.d = d
	return nil
}

func (positiveDuration) Type() string { return "duration" }
