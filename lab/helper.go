package lab

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// Helpers are the programs the lab starts by re-executing its own binary
// as "EXECUTABLE lab HELPER FLAGS…".
const (
	HelperResponder = "responder"
	HelperSupervise = "supervise"
)

// MaybeRunHelper runs a helper if args (os.Args[1:]) ask for one:
// "lab responder …" or "lab supervise …". It reports whether it did, and
// the exit code. A test binary that starts labs calls it first thing in
// TestMain, because the lab re-executes the running binary for its
// helpers.
func MaybeRunHelper(args []string) (code int, ran bool) {
	if len(args) < 2 || args[0] != "lab" || (args[1] != HelperResponder && args[1] != HelperSupervise) {
		return 0, false
	}
	return RunHelper(args[1:]), true
}

// RunHelper runs the helper args[0] with the flags args[1:] until SIGTERM
// or SIGINT, and returns its exit code:
//
//	responder --pod NAME [--port N]… [--ready-fd FD]   (NAME: NAMESPACE/POD, world or node/NODE)
//	supervise --pidfile FILE --log FILE -- ARGV…
func RunHelper(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "lab helper: missing name (responder or supervise)")
		return 2
	}
	var err error
	switch args[0] {
	case HelperResponder:
		err = runResponder(ctx, args[1:])
	case HelperSupervise:
		err = runSupervise(ctx, args[1:])
	default:
		err = fmt.Errorf("unknown lab helper %q", args[0])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "lab %s: %v\n", args[0], err)
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	return 0
}

type intList []int

func (l *intList) String() string { return fmt.Sprint(*l) }
func (l *intList) Set(s string) error {
	for _, part := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil || v < 1 || v > 65535 {
			return fmt.Errorf("invalid port %q", part)
		}
		*l = append(*l, v)
	}
	return nil
}

func runResponder(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lab responder", flag.ContinueOnError)
	var cfg ResponderConfig
	var ports intList
	fs.StringVar(&cfg.Pod, "pod", "", "identity in replies: NAMESPACE/NAME, world or node/NODE")
	fs.Var(&ports, "port", "port to serve over TCP and UDP (repeatable)")
	readyFD := fs.Int("ready-fd", -1, "file descriptor to write \"ready\" to once listening")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.Pod == "" {
		return errors.New("--pod is required")
	}
	cfg.Ports = ports
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "responder", "pod", cfg.Pod)
	var ready func()
	if *readyFD >= 0 {
		ready = func() {
			f := os.NewFile(uintptr(*readyFD), "ready")
			io.WriteString(f, "ready\n")
			f.Close()
		}
	}
	cfg.Log.Info("serving", "ports", cfg.Ports)
	return Respond(ctx, cfg, ready)
}

func runSupervise(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lab supervise", flag.ContinueOnError)
	var cfg SuperviseConfig
	fs.StringVar(&cfg.PIDFile, "pidfile", "", "file to write the child's PID to")
	fs.StringVar(&cfg.Log, "log", "", "file to append the child's output to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.PIDFile == "" || cfg.Log == "" {
		return errors.New("--pidfile and --log are required")
	}
	cfg.Argv = fs.Args()
	return Supervise(ctx, cfg)
}
