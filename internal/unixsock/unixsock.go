// Package unixsock listens on unix sockets that only their owner (root)
// can connect to: the agent's API and its xDS server.
package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"
)

// maxSocketPath is the longest path a unix socket address can hold on
// Linux (sun_path is 108 bytes, NUL included).
const maxSocketPath = 107

// Listen listens on a unix socket at path with mode 0600. A socket
// file nobody listens on is removed first; one somebody listens on, or a
// file that is not a socket, is an error. The socket is created in a
// private directory next to path, restricted there, and renamed into
// place, so nobody can connect in between; if that directory's path would
// be too long for a socket, it is created at path and restricted at once.
// close stops listening and removes the socket file if it is still ours.
func Listen(path string) (lis net.Listener, close func(), err error) {
	if err := removeStale(path); err != nil {
		return nil, nil, err
	}
	if lis, err = listenPrivate(path); err != nil {
		return nil, nil, err
	}
	info, err := os.Lstat(path)
	if err != nil {
		lis.Close()
		return nil, nil, fmt.Errorf("stat new socket: %w", err)
	}
	return lis, func() {
		lis.Close()
		if cur, err := os.Lstat(path); err == nil && os.SameFile(info, cur) {
			os.Remove(path)
		}
	}, nil
}

func listenPrivate(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	// ".sock-" + 10 random digits + "/s"
	if len(filepath.Join(dir, ".sock-0123456789", "s")) > maxSocketPath {
		return listenAndRestrict(path)
	}
	tmpDir, err := os.MkdirTemp(dir, ".sock-")
	if err != nil {
		return nil, fmt.Errorf("private directory for the socket: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	lis, err := listenAndRestrict(tmp)
	if err != nil {
		return nil, err
	}
	// The listener would unlink tmp, which will not exist: listenUnix's
	// close removes path instead.
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Rename(tmp, path); err != nil {
		lis.Close()
		return nil, fmt.Errorf("move socket into place: %w", err)
	}
	return lis, nil
}

func listenAndRestrict(path string) (net.Listener, error) {
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("restrict socket: %w", err)
	}
	return lis, nil
}

// removeStale removes a socket file at path that nobody listens on.
func removeStale(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not removing it", path)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use: another server listens on it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}
