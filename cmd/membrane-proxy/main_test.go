package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/l7/accesslog"
	"github.com/membrane-mesh/membrane/l7/proxy"
	"github.com/membrane-mesh/membrane/l7/xdsclient"
)

func TestNewLogger(t *testing.T) {
	for _, tc := range []struct {
		level, format string
		ok            bool
	}{
		{"debug", "text", true}, {"INFO", "json", true}, {"warn", "text", true}, {"error", "json", true},
		{"loud", "text", false}, {"info", "yaml", false},
	} {
		if _, err := newLogger(tc.level, tc.format); (err == nil) != tc.ok {
			t.Errorf("newLogger(%q, %q): %v", tc.level, tc.format, err)
		}
	}
}

// TestAdmin serves the admin endpoints of a proxy that has no
// configuration yet.
func TestAdmin(t *testing.T) {
	dir, err := os.MkdirTemp("", "mpadm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	p, err := proxy.New(proxy.Options{Identities: proxy.NewIPCache(dir)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	xc, err := xdsclient.New(xdsclient.Options{Socket: filepath.Join(dir, "none.sock"), Node: "n", Handler: p})
	if err != nil {
		t.Fatal(err)
	}
	log, _ := newLogger("error", "text")
	sock := filepath.Join(dir, "admin.sock")
	stop, err := serveAdmin(sock, log, p, xc, accesslog.New(accesslog.Options{Node: "n"}))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	resp, err := c.Get("http://admin/ready")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), "not ready") {
		t.Errorf("/ready: %d %q", resp.StatusCode, b)
	}
	resp, err = c.Get("http://admin/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st stats
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st.Proxy.Ready || st.XDS.Mode != xdsclient.Delta || st.Runtime.Goroutines == 0 {
		t.Errorf("/stats: %v %+v", err, st)
	}
	resp, err = c.Get("http://admin/debug/pprof/")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("/debug/pprof/: %v", err)
	} else {
		resp.Body.Close()
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket mode: %v %v", fi.Mode(), err)
	}
}
