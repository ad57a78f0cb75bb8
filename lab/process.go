package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/internal/netns"
)

// procStat returns the start time (field 22, in clock ticks since boot)
// and the state (field 3) of process pid.
func procStat(pid int) (start uint64, state byte, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces and
	// parentheses itself: parse after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: short", pid)
	}
	start, err = strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: start time: %w", pid, err)
	}
	return start, fields[0][0], nil
}

// running reports whether p is still the process the lab started: alive,
// not a zombie, and with the recorded start time.
func (p Process) running() bool {
	if p.PID <= 0 {
		return false
	}
	start, state, err := procStat(p.PID)
	return err == nil && start == p.StartTime && state != 'Z' && state != 'X'
}

// signal sends sig to p's process group (or to p alone, if it leads
// none), but only if p is still the process the lab started.
func (p Process) signal(sig unix.Signal) error {
	if !p.running() {
		return nil
	}
	target := p.PID
	if p.PGID == p.PID {
		target = -p.PGID
	}
	if err := unix.Kill(target, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill %d (%s): %w", p.PID, p.Kind, err)
	}
	return nil
}

// startInNetns starts cmd with its process in the network namespace ns
// (forked from a thread inside it) and returns the record of it. The
// process is reaped in the background; the caller must not Wait for it.
func startInNetns(ns string, cmd *exec.Cmd, kind, container, log string) (Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := netns.Do(ns, cmd.Start); err != nil {
		return Process{}, fmt.Errorf("start %s in netns %s: %w", strings.Join(cmd.Args, " "), ns, err)
	}
	pid := cmd.Process.Pid
	// Until it is reaped, even an exited child keeps its /proc entry, so
	// the start time is there to read.
	start, _, err := procStat(pid)
	go cmd.Wait() //nolint:errcheck // reaping only
	if err != nil {
		return Process{}, fmt.Errorf("read start time of %d: %w", pid, err)
	}
	return Process{PID: pid, StartTime: start, PGID: pid, Kind: kind, Container: container, Argv: cmd.Args, Log: log}, nil
}

// netnsInode reads the network namespace of process pid: the inode in
// its /proc/PID/ns/net link ("net:[INODE]").
func netnsInode(pid int) (uint64, bool) {
	l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil || !strings.HasPrefix(l, "net:[") || !strings.HasSuffix(l, "]") {
		return 0, false
	}
	ino, err := strconv.ParseUint(l[5:len(l)-1], 10, 64)
	return ino, err == nil
}

// processesIn lists the live processes whose network namespace is one of
// inodes. The calling process is never listed.
func processesIn(inodes map[uint64]bool) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if ino, ok := netnsInode(pid); ok && inodes[ino] {
			if _, state, err := procStat(pid); err == nil && state != 'Z' && state != 'X' {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// killProcessesIn kills (SIGKILL) every process in the network namespaces
// inodes until none is left or ctx ends. Only the lab puts processes in
// its namespaces, so every one of them is the lab's.
func killProcessesIn(ctx context.Context, inodes map[uint64]bool) error {
	if len(inodes) == 0 {
		return nil
	}
	for {
		pids := processesIn(inodes)
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			unix.Kill(pid, unix.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("processes %v still running in the lab's namespaces: %w", pids, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitGone waits until none of procs is running, or ctx ends.
func waitGone(ctx context.Context, procs []Process) bool {
	for {
		alive := false
		for _, p := range procs {
			alive = alive || p.running()
		}
		if !alive {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
}
