package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"time"

	"github.com/membrane-mesh/membrane/internal/version"
	"github.com/membrane-mesh/membrane/l7/accesslog"
	"github.com/membrane-mesh/membrane/l7/proxy"
	"github.com/membrane-mesh/membrane/l7/xdsclient"
)

// stats is what GET /stats answers.
type stats struct {
	Version   string           `json:"version"`
	Proxy     proxy.Stats      `json:"proxy"`
	XDS       xdsclient.Status `json:"xds"`
	AccessLog accesslog.Stats  `json:"access_log"`
	Runtime   struct {
		Goroutines   int    `json:"goroutines"`
		HeapAlloc    uint64 `json:"heap_alloc_bytes"`
		HeapInuse    uint64 `json:"heap_inuse_bytes"`
		HeapRetained uint64 `json:"heap_retained_bytes"`
		StackInuse   uint64 `json:"stack_inuse_bytes"`
		Sys          uint64 `json:"sys_bytes"`
		NumGC        uint32 `json:"num_gc"`
	} `json:"runtime"`
}

// serveAdmin serves the admin endpoints on a unix socket (mode 0600).
func serveAdmin(path string, log *slog.Logger, p *proxy.Proxy, xc *xdsclient.Client, als *accesslog.Client) (stop func(), err error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if p.Ready() {
			fmt.Fprintln(w, "ready")
			return
		}
		st := xc.Status()
		msg := "not ready"
		if st.Waiting != "" {
			msg += ": " + st.Waiting
		}
		if !st.Connected && st.LastError != "" {
			msg += " (xDS: " + st.LastError + ")"
		}
		http.Error(w, msg, http.StatusServiceUnavailable)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		var s stats
		s.Version = version.Version
		s.Proxy = p.Stats()
		s.XDS = xc.Status()
		s.AccessLog = als.Stats()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s.Runtime.Goroutines = runtime.NumGoroutine()
		s.Runtime.HeapAlloc, s.Runtime.Sys, s.Runtime.NumGC = ms.HeapAlloc, ms.Sys, ms.NumGC
		s.Runtime.HeapInuse, s.Runtime.StackInuse = ms.HeapInuse, ms.StackInuse
		s.Runtime.HeapRetained = ms.HeapIdle - ms.HeapReleased
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(&s)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin server", "err", err)
		}
	}()
	log.Info("admin socket", "path", path)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		os.Remove(path)
	}, nil
}
