package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// RunDir holds the bind mounts that pin named network namespaces.
const RunDir = "/run/netns"

// maxName bounds a namespace name; it must be a single file name.
const maxName = 200

// Path returns the file that pins the namespace name.
func Path(name string) string { return filepath.Join(RunDir, name) }

func checkName(name string) error {
	if name == "" || len(name) > maxName || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("invalid network namespace name %q", name)
	}
	return nil
}

// Create creates a new, empty network namespace pinned at Path(name). It
// fails if a namespace of that name exists. The new namespace has only a
// loopback interface, which is down.
func Create(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := prepareRunDir(); err != nil {
		return err
	}
	path := Path(name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create netns %s: already exists", name)
		}
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	f.Close()

	err = onFreshThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	return nil
}

// Delete unpins the namespace name. The kernel frees the namespace, and
// destroys its interfaces, once no process and no open file refers to it.
// Deleting a namespace that does not exist is not an error.
func Delete(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	path := Path(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete netns %s: unmount: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// Exists reports whether a namespace named name is pinned.
func Exists(name string) bool {
	_, err := Inode(name)
	return err == nil
}

// Inode returns the inode number that identifies the namespace name; it is
// the number in a process's /proc/PID/ns/net link ("net:[INODE]").
func Inode(name string) (uint64, error) {
	if err := checkName(name); err != nil {
		return 0, err
	}
	var st unix.Stat_t
	if err := unix.Stat(Path(name), &st); err != nil {
		return 0, fmt.Errorf("stat netns %s: %w", name, err)
	}
	if st.Dev == 0 || !isNsfs(Path(name)) {
		return 0, fmt.Errorf("netns %s: %s is not a namespace mount", name, Path(name))
	}
	return st.Ino, nil
}

func isNsfs(path string) bool {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return false
	}
	return sfs.Type == unix.NSFS_MAGIC
}

// List returns the names of the pinned namespaces that start with prefix,
// sorted. Files in RunDir that are not namespace mounts (leftovers of a
// crash between creating the file and mounting on it) are listed too, so
// that Delete can remove them.
func List(prefix string) ([]string, error) {
	ents, err := os.ReadDir(RunDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) && !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// Do runs fn on an OS thread that has entered the namespace name. Sockets
// that fn creates belong to the namespace, and so do processes it starts
// (a child inherits the namespace of the thread that forks it). fn must not
// start goroutines that expect to be in the namespace.
func Do(name string, fn func() error) error {
	f, err := os.Open(Path(name))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer f.Close()
	return DoFd(int(f.Fd()), fn)
}

// DoFd is Do for a namespace given as an open file descriptor.
func DoFd(fd int, fn func() error) error {
	return onFreshThread(func() error {
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("setns: %w", err)
		}
		return fn()
	})
}

// onFreshThread runs fn on its own locked OS thread and then puts the
// thread back into the network namespace it started in. If that fails the
// thread is never unlocked, so the Go runtime discards it when the
// goroutine ends instead of reusing a thread in the wrong namespace.
func onFreshThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return // thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// prepareRunDir makes RunDir a shared mount point, as iproute2 does, so
// that namespace mounts (and their removal) propagate to mount namespaces
// that were copied from this one.
func prepareRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	dir, err := os.Open(RunDir)
	if err != nil {
		return fmt.Errorf("open %s: %w", RunDir, err)
	}
	defer dir.Close()
	// Serialise with other processes doing the same (concurrent labs).
	if err := flock(dir); err != nil {
		return fmt.Errorf("lock %s: %w", RunDir, err)
	}
	err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err = unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
			err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		}
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", RunDir, err)
	}
	return nil
}

func flock(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}
