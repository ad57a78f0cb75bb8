// Package exepages hands the executable's start-up pages back: Membrane's
// binaries link Envoy's generated API, whose initialisation touches far
// more code and read-only data than they run afterwards.
package exepages

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Release drops the executable's read-only file pages from the
// resident set. Starting up (package initialisation: thousands of protobuf
// descriptors and their validation rules; an agent's first full sync)
// touches most of a large text segment once, and the kernel maps
// neighbouring pages too (fault-around), so most of the binary stays
// resident though little of it runs afterwards (the proxy: about 18 MB of
// a 27 MB RSS). MADV_DONTNEED unmaps them;
// they stay in the page cache, and those the program does use come back with
// minor faults (about 7 MB). Only mappings of the executable that are not
// writable and hold no private (copied-on-write) page are advised: their
// content is exactly the file's, so nothing is lost.
func Release() (int64, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	type mapping struct {
		start, end uint64
		ok         bool
	}
	var cands []mapping
	var cur *mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			cur = nil
			lo, hi, _ := strings.Cut(fields[0], "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil && end > start && len(fields) >= 6 && fields[5] == exe && !strings.Contains(fields[1], "w") {
				cands = append(cands, mapping{start: start, end: end, ok: true})
				cur = &cands[len(cands)-1]
			}
			continue
		}
		if cur != nil && len(fields) >= 2 && fields[0] == "Anonymous:" && fields[1] != "0" {
			cur.ok = false // copied-on-write pages: not the file's content
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	var total int64
	for _, m := range cands {
		if !m.ok {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(m.start), uintptr(m.end-m.start), unix.MADV_DONTNEED); errno != 0 {
			return total, fmt.Errorf("madvise %x-%x: %w", m.start, m.end, errno)
		}
		total += int64(m.end - m.start)
	}
	return total, nil
}

// ReleaseWhenReady calls Release once, a little after ready first reports
// true (a proxy with its configuration and listeners, an agent with every
// endpoint attached), and logs the outcome. Start-up's garbage goes back
// to the OS first: that is a full collection, whose code would otherwise
// fault back in just after the release.
func ReleaseWhenReady(ctx context.Context, log *slog.Logger, ready func() bool) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for !ready() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(2 * time.Second):
	}
	debug.FreeOSMemory()
	n, err := Release()
	if err != nil {
		log.Warn("releasing startup pages", "err", err)
		return
	}
	log.Debug("released startup pages", "bytes", n)
}
