// Command bench measures Membrane against its performance targets and
// writes a results file (`make bench`). Configurations that are compared
// run interleaved in one process, and every figure is a median over rounds:
// this machine is noisy, so only side-by-side numbers mean anything.
//
// Sections: per-packet cost (BPF_PROG_TEST_RUN), pod-to-pod throughput
// (iperf3) and new-connection rate with and without the datapath, time
// from applying 1,000 policies to enforcement, agent memory with 1,000
// endpoints and 1,000 policies, and HTTP through the L7 proxy versus
// direct (wrk, and a fixed-rate client for latency and proxy CPU).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

func main() {
	out := flag.String("out", "bench/results.txt", "results file")
	rounds := flag.Int("rounds", 7, "interleaved rounds per comparison")
	only := flag.String("only", "", "comma-separated sections to run: perpacket,identities,throughput,connrate,converge,memory,l7 (default all)")
	proxyArgs := flag.String("proxy-args", "", "extra flags for membrane-proxy, space-separated (for tuning experiments; results say so)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (BPF programs, network namespaces)")
		os.Exit(1)
	}
	want := func(s string) bool { return *only == "" || strings.Contains(","+*only+",", ","+s+",") }

	r := &report{started: time.Now()}
	bins, cleanup, err := buildBinaries()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	defer cleanup()
	bins.proxyArgs = strings.Fields(*proxyArgs)
	if len(bins.proxyArgs) > 0 {
		r.section("Non-default settings", "membrane-proxy ran with: "+*proxyArgs+"\n")
	}

	// Each section starts on a kernel done with the last one's teardown.
	settleAfter := func() {
		if d := settle(); d > time.Second {
			fmt.Fprintf(os.Stderr, "bench: waited %s for the kernel to finish tearing down the section's namespaces\n", d.Round(100*time.Millisecond))
		}
	}
	if want("perpacket") {
		step("per-packet cost")
		benchPerPacket(r, *rounds)
		settleAfter()
	}
	if want("identities") {
		step("identity scale")
		benchIdentityScale(r, *rounds)
		settleAfter()
	}
	if want("throughput") || want("connrate") {
		step("throughput and connection rate")
		benchTraffic(r, bins, *rounds, want("throughput"), want("connrate"))
		settleAfter()
	}
	if want("converge") {
		step("1,000 policies to enforcement")
		benchConverge(r, bins, *rounds)
		settleAfter()
	}
	if want("memory") {
		step("agent memory")
		benchMemory(r, bins) // waits for its own teardown, which it reports
	}
	if want("l7") {
		step("HTTP through the L7 proxy")
		benchL7(r, bins, *rounds)
	}

	var buf bytes.Buffer
	r.write(&buf, environment())
	os.Stdout.Write(buf.Bytes())
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, buf.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "bench: results written to %s\n", *out)
}

func step(s string) { fmt.Fprintf(os.Stderr, "bench: %s …\n", s) }

type binaries struct {
	agent, ctl, proxy string
	// proxyArgs are extra flags for every membrane-proxy (-proxy-args).
	proxyArgs []string
}

// buildBinaries builds the agent and membranectl into a temporary
// directory.
func buildBinaries() (binaries, func(), error) {
	dir, err := os.MkdirTemp("", "membrane-bench-")
	if err != nil {
		return binaries{}, nil, err
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/membrane-agent", "./cmd/membranectl", "./cmd/membrane-proxy")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		return binaries{}, nil, fmt.Errorf("build binaries (run from the repository root): %w", err)
	}
	return binaries{agent: filepath.Join(dir, "membrane-agent"), ctl: filepath.Join(dir, "membranectl"), proxy: filepath.Join(dir, "membrane-proxy")},
		func() { os.RemoveAll(dir) }, nil
}

func environment() string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return fmt.Sprintf("machine: %d CPUs (%s), Linux %s, %s", runtime.NumCPU(), model, strings.TrimSpace(string(kernel)), runtime.Version())
}
