package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// progStats sums the kernel's run-time statistics (BPF_ENABLE_STATS) of
// the programs behind the links pinned in a lab node's links directory:
// what the datapath costs on real traffic, beside BPF_PROG_TEST_RUN's
// figures for single packets.
type progStats struct {
	stats io.Closer
	progs []*ebpf.Program
}

func newProgStats(linksDir string) (*progStats, error) {
	st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF run-time statistics: %w", err)
	}
	ps := &progStats{stats: st}
	entries, err := os.ReadDir(linksDir)
	if err != nil {
		ps.close()
		return nil, err
	}
	seen := map[ebpf.ProgramID]bool{}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(linksDir, e.Name()), nil)
		if err != nil {
			continue
		}
		info, err := l.Info()
		l.Close()
		if err != nil || seen[info.Program] {
			continue
		}
		seen[info.Program] = true
		p, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			continue
		}
		ps.progs = append(ps.progs, p)
	}
	if len(ps.progs) == 0 {
		ps.close()
		return nil, fmt.Errorf("no program links pinned in %s", linksDir)
	}
	return ps, nil
}

// read returns the programs' total run time and run count so far.
func (ps *progStats) read() (time.Duration, uint64) {
	var rt time.Duration
	var n uint64
	for _, p := range ps.progs {
		if s, err := p.Stats(); err == nil {
			rt += s.Runtime
			n += s.RunCount
		}
	}
	return rt, n
}

// statRun is one run measured with the statistics on.
type statRun struct {
	value   float64       // what the run returned
	runtime time.Duration // the programs' run time during it
	runs    uint64        // program runs during it
	wall    time.Duration
}

// measure runs fn once and records what the programs did meanwhile.
func (ps *progStats) measure(fn func() (float64, error)) (statRun, error) {
	rt0, n0 := ps.read()
	t0 := time.Now()
	v, err := fn()
	wall := time.Since(t0)
	rt1, n1 := ps.read()
	return statRun{value: v, runtime: rt1 - rt0, runs: n1 - n0, wall: wall}, err
}

// perRun is the programs' mean run time in nanoseconds.
func (s statRun) perRun() float64 { return float64(s.runtime.Nanoseconds()) / float64(s.runs) }

func (ps *progStats) close() {
	for _, p := range ps.progs {
		p.Close()
	}
	ps.stats.Close()
}
