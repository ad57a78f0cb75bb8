package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/membrane-mesh/membrane/internal/h2c"
	"github.com/membrane-mesh/membrane/l7/accesslog"
	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/l7/http1"
	"github.com/membrane-mesh/membrane/l7/normalize"
	"github.com/membrane-mesh/membrane/l7/rules"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// gRPC status codes the proxy answers with.
const (
	grpcPermissionDenied = 7
	grpcUnavailable      = 14
	grpcInternal         = 13
)

// h2Server is the HTTP/2 server of one listener configuration: a
// net/http server of h2c alone with the listener's limits, serving each
// connection through a listener of its own (connListener), so that
// Shutdown sends a GOAWAY on every connection it serves.
type h2Server struct {
	cfg  *config.Listener
	srv  *http.Server
	once sync.Once
}

// h2For returns the HTTP/2 server for the listener's configuration lc.
func (l *listener) h2For(lc *config.Listener) *h2Server {
	if s := l.h2.Load(); s != nil && s.cfg == lc {
		return s
	}
	s := newH2Server(l.p, lc)
	l.h2.Store(s)
	return s
}

// maxH2Window is one less than the largest flow-control window net/http
// takes (4 MiB); a larger configured window is capped there.
const maxH2Window = 4<<20 - 1

func newH2Server(p *Proxy, lc *config.Listener) *h2Server {
	hs := &lc.HTTP
	srv := &http.Server{
		Protocols:      h2c.Protocols(),
		MaxHeaderBytes: hs.MaxRequestHeadersBytes,
		IdleTimeout:    hs.IdleTimeout,
		ErrorLog:       log.New(io.Discard, "", 0),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          int(hs.MaxConcurrentStreams),
			MaxReceiveBufferPerConnection: min(int(hs.InitialConnWindow), maxH2Window),
			MaxReceiveBufferPerStream:     min(int(hs.InitialStreamWindow), maxH2Window),
			CountError: func(errType string) {
				p.stats.h2Errors.Add(1)
				p.log.Debug("HTTP/2 protocol error", "type", errType)
			},
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Context().Value(h2ConnKey{}).(*conn).serveStream(w, r)
		}),
		ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
			return context.WithValue(ctx, h2ConnKey{}, nc.(*h2Conn).c)
		},
	}
	if w := srv.HTTP2.MaxReceiveBufferPerConnection; w > 0 && w < 65535 {
		srv.HTTP2.MaxReceiveBufferPerConnection = 65535
	}
	return &h2Server{cfg: lc, srv: srv}
}

// shutdown sends a GOAWAY on every connection of this server; they close
// once their streams end. A connection handed to it afterwards is closed.
func (s *h2Server) shutdown() {
	s.once.Do(func() {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			s.srv.Shutdown(ctx)
		}()
	})
}

// h2ConnKey keys a stream's proxy connection in its request's context.
type h2ConnKey struct{}

// h2Conn is a connection handed to the HTTP/2 server: it replays the bytes
// sniffing peeked, carries its proxy connection to the streams' handler,
// and tells serveHTTP2 when the server has closed it.
type h2Conn struct {
	*net.TCPConn
	c      *conn
	pre    []byte
	closed chan struct{}
	once   sync.Once
}

func (h *h2Conn) Read(b []byte) (int, error) {
	if len(h.pre) > 0 {
		n := copy(b, h.pre)
		h.pre = h.pre[n:]
		return n, nil
	}
	return h.TCPConn.Read(b)
}

func (h *h2Conn) Close() error {
	h.once.Do(func() { close(h.closed) })
	return h.TCPConn.Close()
}

// connListener hands one connection to http.Server.Serve, then blocks
// until that connection or the listener is closed, so that Serve returns
// when the server is done with it or shut down.
type connListener struct {
	nc     *h2Conn
	stop   chan struct{}
	once   sync.Once
	handed bool // only Serve's goroutine calls Accept
}

func (l *connListener) Accept() (net.Conn, error) {
	if !l.handed {
		l.handed = true
		return l.nc, nil
	}
	select {
	case <-l.nc.closed:
	case <-l.stop:
	}
	return nil, net.ErrClosed
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.stop) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.nc.LocalAddr() }

// serveHTTP2 serves an h2c (prior knowledge) connection until it closes.
func (c *conn) serveHTTP2(pre []byte, lc *config.Listener) {
	c.p.stats.http2Conns.Add(1)
	s := c.l.h2For(lc)
	c.h2.Store(s)
	if c.draining.Load() {
		s.shutdown()
	}
	c.nc.SetDeadline(time.Time{})
	hc := &h2Conn{TCPConn: c.nc, c: c, pre: pre, closed: make(chan struct{})}
	ln := &connListener{nc: hc, stop: make(chan struct{})}
	s.srv.Serve(ln)
	if !ln.handed {
		return // shut down before it took the connection (serve closes it)
	}
	// Serve returns when the listener is closed by a shutdown; the
	// connection's GOAWAY and last streams may still be under way.
	<-hc.closed
}

// isGRPC reports whether a request is gRPC (content-type application/grpc,
// application/grpc+proto, ...).
func isGRPC(h http.Header) bool {
	ct := h.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc") && (len(ct) == len("application/grpc") || ct[len("application/grpc")] == '+' || ct[len("application/grpc")] == ';')
}

// serveStream handles one HTTP/2 stream.
func (c *conn) serveStream(w http.ResponseWriter, r *http.Request) {
	lc := c.l.cfg.Load()
	start := time.Now()
	rec := c.record(lc, start, accesslog.HTTP2)
	rec.Method, rec.Authority, rec.Path = r.Method, r.Host, r.RequestURI
	rec.HeaderBytes = h2HeaderBytes(r)
	defer c.p.finish(lc, &rec)
	grpc := isGRPC(r.Header)

	// What HTTP/1's parser refuses in a request head is refused here too:
	// the net/http server bounds the header list only in bytes, and lets
	// any byte from 0x80 up through in :authority (and in :path, which
	// normalize.Target refuses below).
	if limit := maxHeaders(&lc.HTTP); h2FieldCount(r) > limit {
		c.reject2(w, &rec, grpc, 431, detailsBadRequest, fmt.Sprintf("more than %d header fields", limit))
		return
	}
	if !http1.ValidHost(r.Host) {
		c.reject2(w, &rec, grpc, 400, detailsBadRequest, "invalid :authority "+quoteShort(r.Host))
		return
	}
	target, err := normalize.Target(r.RequestURI)
	if err != nil {
		c.reject2(w, &rec, grpc, 400, detailsInvalidPath, err.Error())
		return
	}
	rec.Path = target

	dec := c.decide(&rules.Request{Method: r.Method, Target: target, Host: r.Host, Header: r.Header}, &rec)
	if !dec.Allowed {
		if grpc {
			c.grpcAnswer(w, &rec, grpcPermissionDenied, defaultDeniedBody)
			return
		}
		plain(w, 403, deniedBody(lc))
		return
	}
	for _, m := range dec.Mutations {
		mutate2(r.Header, m)
	}
	c.forward2(w, r, target, lc, &rec, grpc)
}

// reject2 answers a stream the proxy refuses before the policy sees it
// (status 400 or 431, as HTTP/1 would answer the same head); a gRPC client
// gets INTERNAL, as Envoy maps a 400 for gRPC.
func (c *conn) reject2(w http.ResponseWriter, rec *accesslog.Record, grpc bool, status int, details, reason string) {
	fail(rec, status, details, reason)
	if grpc {
		c.grpcAnswer(w, rec, grpcInternal, reason)
		return
	}
	plain(w, status, reason+"\n")
}

// maxHeaders is the listener's max_headers_count, or http1's default
// (the same) when the settings have none.
func maxHeaders(hs *config.HTTPSettings) int {
	if hs.MaxHeadersCount > 0 {
		return hs.MaxHeadersCount
	}
	return config.DefaultMaxHeadersCount
}

// h2FieldCount counts a request's header fields as HTTP/1 would count its
// field lines: the regular fields (net/http has already joined cookie
// crumbs into one), and the authority once, as the Host field it stands
// for, whether it came as :authority or as a host field. The other
// pseudo-header fields stand for the request line, which HTTP/1 does not
// count either.
func h2FieldCount(r *http.Request) int {
	n := 0
	for _, vv := range r.Header {
		n += len(vv)
	}
	if _, ok := r.Header["Host"]; !ok && r.Host != "" {
		n++
	}
	return n
}

// quoteShort quotes s for a message, cut after 64 bytes as http1 cuts the
// values it quotes: the quoting escapes what is not printable UTF-8.
func quoteShort(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "..."
	}
	return strconv.Quote(s)
}

func mutate2(h http.Header, m rules.Mutation) {
	switch m.Action {
	case l7pb.MismatchAction_MISMATCH_ACTION_ADD:
		h.Add(m.Name, m.Value)
	case l7pb.MismatchAction_MISMATCH_ACTION_DELETE:
		h.Del(m.Name)
	case l7pb.MismatchAction_MISMATCH_ACTION_REPLACE:
		h.Set(m.Name, m.Value)
	}
}

func plain(w http.ResponseWriter, status int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// grpcAnswer ends a gRPC request with a trailers-only response: HTTP 200
// and grpc-status in the one HEADERS frame (with END_STREAM). The record
// logs what went on the wire, as Envoy's does: status 200 and the gRPC
// status; its verdict and details say why.
func (c *conn) grpcAnswer(w http.ResponseWriter, rec *accesslog.Record, code int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(code))
	h.Set("Grpc-Message", grpcEncode(msg))
	w.WriteHeader(200)
	rec.Status = 200
	rec.GRPCStatus, rec.HasGRPCStatus = int32(code), true
}

// grpcEncode percent-encodes a grpc-message.
func grpcEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

func h2HeaderBytes(r *http.Request) uint64 {
	n := len(r.Method) + len(r.RequestURI) + len(r.Host) + 32
	for k, vv := range r.Header {
		for _, v := range vv {
			n += len(k) + len(v) + 32
		}
	}
	return uint64(n)
}

// dialParams carry a request's upstream settings to the transport's dialer.
type dialParams struct {
	mark    uint32
	timeout time.Duration
}

type dialParamsKey struct{}

// forward2 sends an allowed stream to the original destination over h2c
// and relays the response, streaming both ways, trailers included.
func (c *conn) forward2(w http.ResponseWriter, r *http.Request, target string, lc *config.Listener, rec *accesslog.Record, grpc bool) {
	rec.Upstream = c.dst
	failWith := func(status int, details, reason string) {
		fail(rec, status, details, reason)
		if grpc {
			c.grpcAnswer(w, rec, grpcUnavailable, reason)
			return
		}
		plain(w, status, reason+"\n")
	}
	idle := config.DefaultUpstreamIdleTimeout
	dp := &dialParams{mark: lc.Mark, timeout: config.DefaultConnectTimeout}
	if lc.Upstream != nil {
		idle, dp.timeout = lc.Upstream.IdleTimeout, lc.Upstream.ConnectTimeout
	}
	tr, err := c.p.h2up.get(c.src.Addr(), idle)
	if err != nil {
		failWith(503, detailsConnectFailed, err.Error())
		return
	}

	ctx, cancel := context.WithCancel(context.WithValue(r.Context(), dialParamsKey{}, dp))
	defer cancel()
	rc := http.NewResponseController(w)
	var timedOut, started atomic.Bool
	wd := startWatchdog(lc.HTTP.StreamIdleTimeout, func() {
		timedOut.Store(true)
		cancel() // the upstream stream, and the wait for its response
		if started.Load() {
			// Mid-response: unblock a write the client does not read.
			past := time.Unix(1, 0)
			rc.SetReadDeadline(past)
			rc.SetWriteDeadline(past)
		}
	})
	defer wd.stop()
	var rt *routeTimer // nil: no route timeout (Membrane's own routes)
	if d := routeTimeout(lc); d > 0 {
		rt = newRouteTimer(d, func(started bool) {
			cancel() // the upstream stream, and the wait for its response
			if started {
				past := time.Unix(1, 0)
				rc.SetReadDeadline(past)
				rc.SetWriteDeadline(past)
			}
		})
		defer rt.finish()
	}

	path, query, _ := strings.Cut(target, "?")
	out := &http.Request{
		Method:        r.Method,
		URL:           &url.URL{Scheme: "http", Host: c.dst.String(), Opaque: path, RawQuery: query},
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Host:          r.Host,
		Header:        r.Header,
		ContentLength: r.ContentLength,
		Trailer:       r.Trailer,
		Body:          http.NoBody,
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = nil // do not let the transport add one
	}
	if r.ContentLength != 0 {
		out.Body = &touchReader{r: r.Body, wd: wd, rt: rt}
	} else {
		rt.start()
	}
	out = out.WithContext(ctx)
	resp, err := tr.RoundTrip(out)
	if err != nil {
		var de *dialError
		switch {
		case r.Context().Err() != nil:
			fail(rec, 0, detailsDownstreamReset, "client reset the stream")
		case rt.timedOut():
			failWith(504, detailsUpstreamTimeout, "upstream request timeout")
		case timedOut.Load():
			failWith(504, detailsStreamIdle, "upstream response timeout (stream_idle_timeout)")
		case errors.As(err, &de):
			failWith(503, detailsConnectFailed, "upstream connect error: "+de.err.Error())
		default:
			failWith(502, detailsUpstreamReset, "upstream reset before response: "+err.Error())
		}
		return
	}
	defer resp.Body.Close()
	wd.touch()
	h := w.Header()
	for k, vv := range resp.Header {
		if k == "Trailer" {
			continue
		}
		h[k] = vv
	}
	rec.Status = uint32(resp.StatusCode)
	rec.StatusDetails = detailsUpstream
	rec.Verdict = accesslog.Forwarded
	started.Store(true)
	rt.respond()
	w.WriteHeader(resp.StatusCode)
	if resp.ContentLength != 0 {
		// Stream: the client sees the headers now, not with the first data.
		// A response with no body (a gRPC trailers-only response) must not
		// be flushed early: its headers end the stream.
		if err := rc.Flush(); err != nil {
			c.abortStream(rec, detailsDownstreamReset, "write response: "+err.Error())
		}
	}
	bp := c.p.bufs.copyBuf()
	defer c.p.bufs.putCopyBuf(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			wd.touch()
			if _, err := w.Write(buf[:n]); err != nil {
				c.abortStream(rec, detailsDownstreamReset, "write response: "+err.Error())
			}
			if err := rc.Flush(); err != nil {
				c.abortStream(rec, detailsDownstreamReset, "write response: "+err.Error())
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			details := detailsUpstreamAfter
			switch {
			case rt.timedOut():
				details = detailsUpstreamTimeout
			case timedOut.Load():
				details = detailsStreamIdle
			}
			c.abortStream(rec, details, "response body: "+rerr.Error())
		}
	}
	if rt.finish() {
		// Out of time as the body ended: the trailers would go out on a
		// stream whose deadlines have passed.
		c.abortStream(rec, detailsUpstreamTimeout, "upstream request timeout: response not complete within the route's timeout")
	}
	for k, vv := range resp.Trailer {
		for _, v := range vv {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
}

// abortStream resets the downstream stream (RST_STREAM) after part of the
// response went out.
func (c *conn) abortStream(rec *accesslog.Record, details, reason string) {
	rec.Verdict = accesslog.Error
	rec.StatusDetails = details
	rec.Reason = reason
	panic(http.ErrAbortHandler)
}

// touchReader notes progress of a request body for the stream's watchdog,
// and its end for the route's clock.
type touchReader struct {
	r  io.ReadCloser
	wd *watchdog
	rt *routeTimer
}

func (t *touchReader) Read(b []byte) (int, error) {
	n, err := t.r.Read(b)
	if n > 0 {
		t.wd.touch()
	}
	if err == io.EOF {
		t.rt.start()
	}
	return n, err
}

func (t *touchReader) Close() error { return t.r.Close() }

// watchdog calls onIdle once a stream has made no progress for idle.
type watchdog struct {
	idle   time.Duration
	last   atomic.Int64 // unix nanoseconds of the last progress
	timer  *time.Timer
	onIdle func()
}

func startWatchdog(idle time.Duration, onIdle func()) *watchdog {
	if idle <= 0 {
		return nil
	}
	w := &watchdog{idle: idle, onIdle: onIdle}
	w.last.Store(time.Now().UnixNano())
	w.timer = time.AfterFunc(idle, w.check)
	return w
}

func (w *watchdog) check() {
	since := time.Duration(time.Now().UnixNano() - w.last.Load())
	if since >= w.idle {
		w.onIdle()
		return
	}
	w.timer.Reset(w.idle - since)
}

func (w *watchdog) touch() {
	if w != nil {
		w.last.Store(time.Now().UnixNano())
	}
}

func (w *watchdog) stop() {
	if w != nil {
		w.timer.Stop()
	}
}
