package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// ProxyBinaryName is the node proxy's executable name.
const ProxyBinaryName = "membrane-proxy"

// findProxyBinary returns the proxy executable: explicit if set, else
// membrane-proxy next to the running executable or the agent, else in
// $PATH.
func findProxyBinary(explicit, agent string) (string, error) {
	var dirs []string
	if self, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(self))
	}
	if agent != "" {
		dirs = append(dirs, filepath.Dir(agent))
	}
	p, err := findBinary(ProxyBinaryName, explicit, dirs)
	if errors.Is(err, errBinaryNotFound) {
		return "", fmt.Errorf("%s not found next to this program, next to the agent, or in $PATH: build it (go build ./cmd/membrane-proxy), pass --proxy-binary, or run without L7 proxies (--no-proxy; connections that L7 policy redirects then fail closed)", ProxyBinaryName)
	}
	return p, err
}

// startProxy starts node n's proxy, under a supervisor, inside the node's
// namespace. It is an xDS client of the node's agent.
func (l *Lab) startProxy(n *nodePlan) error {
	l.mu.Lock()
	bin, extra := l.st.ProxyBinary, append([]string(nil), l.st.ProxyArgs...)
	l.mu.Unlock()
	command := append([]string{bin,
		"--node", n.Name,
		"--xds", l.y.xdsSocket(n.Name),
		"--bpffs", l.y.nodeBpffs(n.Name),
		"--admin-socket", l.y.proxyAdminSocket(n.Name),
	}, extra...)
	proc, err := l.startSupervised(n, l.y.proxyPIDFile(n.Name), l.y.proxyLog(n.Name), command)
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
