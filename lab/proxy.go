package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// ProxyBinaryName is the node proxy's executable name.
const ProxyBinaryName = "membrane-proxy"

// findProxyBinary returns the proxy executable: explicit if set, else
// membrane-proxy next to the running executable or the agent, else in
// $PATH.
func findProxyBinary(explicit, agent string) (string, error) {
	if explicit != "" {
		p, err := exec.LookPath(explicit)
		if err != nil {
			return "", fmt.Errorf("proxy binary %s: %w", explicit, err)
		}
		return filepath.Abs(p)
	}
	var dirs []string
	if self, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(self))
	}
	if agent != "" {
		dirs = append(dirs, filepath.Dir(agent))
	}
	for _, d := range dirs {
		p := filepath.Join(d, ProxyBinaryName)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(ProxyBinaryName); err == nil {
		return filepath.Abs(p)
	}
	return "", fmt.Errorf("%s not found next to this program, next to the agent, or in $PATH: build it (go build ./cmd/membrane-proxy), pass --proxy-binary, or run without L7 proxies (--no-proxy; connections that L7 policy redirects then fail closed)", ProxyBinaryName)
}

// startProxy starts node n's proxy, under a supervisor, inside the node's
// namespace. It is an xDS client of the node's agent.
func (l *Lab) startProxy(n *nodePlan) error {
	exe, _ := l.programs()
	l.mu.Lock()
	bin, extra := l.st.ProxyBinary, append([]string(nil), l.st.ProxyArgs...)
	l.mu.Unlock()
	logPath := l.y.proxyLog(n.Name)
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("node %s: open proxy log: %w", n.Name, err)
	}
	defer logFile.Close()
	args := []string{"lab", HelperSupervise,
		"--pidfile", l.y.proxyPIDFile(n.Name), "--log", logPath, "--",
		bin,
		"--node", n.Name,
		"--xds", l.y.xdsSocket(n.Name),
		"--bpffs", l.y.nodeBpffs(n.Name),
		"--admin-socket", l.y.proxyAdminSocket(n.Name),
	}
	args = append(args, extra...)
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = l.y.nodeDir(n.Name)
	proc, err := startInNetns(l.y.nodeNetns(n.Name), cmd, KindSupervisor, "", logPath)
	if err != nil {
		return fmt.Errorf("node %s: start proxy: %w", n.Name, err)
	}
	return l.update(func(st *State) {
		if ns := st.node(n.Name); ns != nil {
			ns.ProxySupervisor = &proc
			ns.ProxyAdmin = l.y.proxyAdminSocket(n.Name)
		}
	})
}

// ProxyReady reports whether node's proxy has its configuration and
// listens (its admin /ready answers 200).
func (l *Lab) ProxyReady(ctx context.Context, node string) error {
	l.mu.Lock()
	ns := l.st.node(node)
	var sock string
	if ns != nil {
		sock = ns.ProxyAdmin
	}
	l.mu.Unlock()
	if sock == "" {
		return fmt.Errorf("node %s runs no proxy", node)
	}
	c := http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://proxy/ready", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("proxy not ready: %s", resp.Status)
	}
	return nil
}

// waitProxies waits until every node's proxy is ready.
func (l *Lab) waitProxies(ctx context.Context) error {
	if !l.hasProxies() {
		return nil
	}
	nodes := l.Nodes()
	return parallel(ctx, len(nodes), len(nodes), func(ctx context.Context, i int) error {
		n := nodes[i].Name
		wctx, cancel := context.WithTimeout(ctx, l.timeout)
		defer cancel()
		last := errors.New("no answer yet")
		for {
			err := l.ProxyReady(wctx, n)
			if err == nil {
				return nil
			}
			if wctx.Err() == nil {
				last = err
			}
			select {
			case <-wctx.Done():
				return fmt.Errorf("node %s: proxy not ready after %s (%v)%s", n, l.timeout, last, l.proxyLogHint(n))
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
}

func (l *Lab) hasProxies() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.st.NoAgent && !l.st.NoProxy
}

// proxyLogHint is the tail of node's proxy log, for error messages.
func (l *Lab) proxyLogHint(node string) string {
	path := l.y.proxyLog(node)
	tail := logTail(path, 5)
	if tail == "" {
		return ""
	}
	return fmt.Sprintf("; proxy log %s ends with:\n%s", path, tail)
}
