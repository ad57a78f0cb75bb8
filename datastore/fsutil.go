package datastore

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// tempMarker is part of the name of every temporary file the store
// writes; temporary files also start with "." so that readers skip them.
const tempMarker = ".tmp-"

// maxFileName bounds an object file's name (fileName) so that its
// temporary file's name (writeTemp: "." NAME tempMarker and up to 10
// digits) fits in the 255 bytes a file name may have.
const maxFileName = 255 - 1 - len(tempMarker) - 10

func isTempName(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, tempMarker)
}

// writeFileAtomic replaces dir/name with data: it writes a temporary file
// in dir, syncs it and renames it over the target. The caller syncs dir.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, "."+name+tempMarker+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	return nil
}

// writeTemp writes data to a new temporary file in dir, without syncing,
// and returns its path. The caller syncs (syncFS) before renaming it into
// place, so many files cost one sync instead of one each.
func writeTemp(dir, name string, data []byte) (string, error) {
	f, err := os.CreateTemp(dir, "."+name+tempMarker+"*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	return tmp, nil
}

// syncFS flushes the file system holding dir: one call makes every file
// written so far durable.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync file system of %s: %w", dir, err)
	}
	return nil
}

// syncDir makes renames and removals in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// removeTempFiles removes temporary files left in dir by a writer that
// died. Call it only while holding the exclusive lock: then no writer is
// using any.
func removeTempFiles(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if isTempName(e.Name()) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// Lock modes for lockFile.
const (
	lockShared    = syscall.LOCK_SH
	lockExclusive = syscall.LOCK_EX
	lockNoWait    = syscall.LOCK_NB // with lockShared: fail with errLocked instead of waiting
)

// errLocked is returned by lockFile with lockNoWait while a writer holds
// the lock.
var errLocked = errors.New("datastore is locked by a writer")

// lockFile takes an flock on path (creating it), lockExclusive for writers
// and lockShared for readers, and returns the function that releases it.
// flock belongs to the open file, so every call conflicts with every other
// one, in this process or another.
func lockFile(path string, how int) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		var rerr error
		if f, rerr = os.Open(path); rerr != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if errors.Is(err, syscall.EWOULDBLOCK) {
		f.Close()
		return nil, errLocked
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing the file releases the lock
}

// newUID returns a random RFC 4122 version 4 UUID.
func newUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// fileID tells whether a file changed since it was last read: a rename
// gives a new inode, an edit in place a new size or time.
type fileID struct {
	ino          uint64
	size         int64
	mtime, ctime syscall.Timespec
}

func statID(fi os.FileInfo) fileID {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{size: fi.Size(), mtime: syscall.NsecToTimespec(fi.ModTime().UnixNano())}
	}
	return fileID{ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
}
