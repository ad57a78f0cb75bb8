package identity

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Journal is an allocator backed by an append-only file that several
// processes share (the agents of one lab, which share a datastore
// directory). Each line is "<id> <canonical labels>". Appends happen under
// an exclusive flock after reading what others appended, so two processes
// never give one label set two identities or one identity two label sets.
type Journal struct {
	path string

	mu     sync.Mutex
	t      table
	offset int64 // bytes of the file already read
}

// OpenJournal opens (creating if needed) the journal at path.
func OpenJournal(path string) (*Journal, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("open identity journal: %w", err)
	}
	j := &Journal{path: path, t: newTable()}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open identity journal: %w", err)
	}
	defer f.Close()
	if err := j.catchUp(f); err != nil {
		return nil, err
	}
	return j, nil
}

// catchUp reads lines appended since the last read. A trailing partial
// line (a writer that crashed mid-append) is skipped.
func (j *Journal) catchUp(f *os.File) error {
	if _, err := f.Seek(j.offset, io.SeekStart); err != nil {
		return fmt.Errorf("read identity journal: %w", err)
	}
	r := bufio.NewReaderSize(f, 1<<16)
	for {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			return nil // a partial line stays unread
		}
		if err != nil {
			return fmt.Errorf("read identity journal: %w", err)
		}
		id, l, perr := parseJournalLine(line)
		if perr != nil {
			// The offset stays before the line: every later read fails
			// here too, rather than skipping it and perhaps handing its
			// identity out again.
			return fmt.Errorf("identity journal %s at byte %d: %w", j.path, j.offset, perr)
		}
		j.offset += int64(len(line))
		if id == 0 {
			continue
		}
		j.t.add(id, l)
	}
}

func parseJournalLine(line []byte) (ID, Labels, error) {
	line = bytes.TrimRight(line, "\n")
	if len(line) == 0 {
		return 0, Labels{}, nil
	}
	idStr, rest, ok := strings.Cut(string(line), " ")
	if !ok {
		return 0, Labels{}, fmt.Errorf("malformed line %q", line)
	}
	n, err := strconv.ParseUint(idStr, 10, 32)
	if err != nil || n < uint64(MinCluster) || n > uint64(MaxCluster) {
		return 0, Labels{}, fmt.Errorf("malformed identity in line %q (cluster identities are %d to %d)", line, MinCluster, MaxCluster)
	}
	return ID(n), ParseLabels(rest), nil
}

// Allocate implements Allocator.
func (j *Journal) Allocate(sets []Labels) ([]ID, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]ID, len(sets))
	var missing []int
	for i, l := range sets {
		if id, ok := j.t.byLabels[l.String()]; ok {
			out[i] = id
		} else {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}

	f, err := os.OpenFile(j.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("allocate identities: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("allocate identities: lock %s: %w", j.path, err)
	}
	defer unix.Flock(int(f.Fd()), unix.LOCK_UN)

	if err := j.catchUp(f); err != nil {
		return nil, err
	}
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("allocate identities: %w", err)
	}
	if end > j.offset {
		// A partial line left by a writer that crashed mid-append (every
		// writer holds the lock while writing, so nobody is writing it
		// now): cut it off.
		if err := f.Truncate(j.offset); err != nil {
			return nil, fmt.Errorf("allocate identities: truncate torn line in %s: %w", j.path, err)
		}
		if _, err := f.Seek(j.offset, io.SeekStart); err != nil {
			return nil, fmt.Errorf("allocate identities: %w", err)
		}
	}
	var buf bytes.Buffer
	added := map[string]ID{}
	for _, i := range missing {
		l := sets[i]
		if id, ok := j.t.byLabels[l.String()]; ok {
			out[i] = id
			continue
		}
		if id, ok := added[l.String()]; ok {
			out[i] = id
			continue
		}
		if j.t.next > MaxCluster {
			return nil, fmt.Errorf("allocate identity for %s: all cluster identities are in use", l)
		}
		id := j.t.next
		j.t.next++
		added[l.String()] = id
		out[i] = id
		fmt.Fprintf(&buf, "%d %s\n", id, l.String())
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		return nil, fmt.Errorf("allocate identities: append to %s: %w", j.path, err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("allocate identities: sync %s: %w", j.path, err)
	}
	// Re-read what we wrote so the offset and table stay consistent.
	if err := j.catchUp(f); err != nil {
		return nil, err
	}
	return out, nil
}

// Lookup implements Allocator.
func (j *Journal) Lookup(id ID) (Labels, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.t.lookup(id)
}

// Len implements Allocator.
func (j *Journal) Len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.t.n
}
