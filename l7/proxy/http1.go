package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/membrane-mesh/membrane/l7/accesslog"
	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/l7/http1"
	"github.com/membrane-mesh/membrane/l7/normalize"
	"github.com/membrane-mesh/membrane/l7/rules"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// maxDiscard is the largest request body the proxy reads and discards to
// keep a connection open after it answered the request itself.
const maxDiscard = 64 << 10

const defaultDeniedBody = "Access denied"

func limits(s *config.HTTPSettings) http1.Limits {
	return http1.Limits{
		MaxLineBytes:   s.MaxRequestHeadersBytes,
		MaxHeaderBytes: s.MaxRequestHeadersBytes,
		MaxHeaders:     s.MaxHeadersCount,
	}
}

// upstreamLimits bound response heads: the upstream is not the one to
// distrust, but the proxy buffers what it reads.
var upstreamLimits = http1.Limits{MaxLineBytes: 64 << 10, MaxHeaderBytes: 256 << 10, MaxHeaders: 500}

// serveHTTP1 serves HTTP/1.x requests one at a time until the connection
// ends. Pipelined requests wait in br and are answered in order.
func (c *conn) serveHTTP1(br *bufio.Reader) {
	c.p.stats.http1Conns.Add(1)
	bw := c.p.bufs.writer(&c.tc)
	defer c.p.bufs.putWriter(bw)
	for {
		if !c.waitIdle(br, c.l.cfg.Load().HTTP.IdleTimeout) {
			return
		}
		// The configuration current when the request starts applies to it.
		lc := c.l.cfg.Load()
		hs := &lc.HTTP
		start := time.Now()
		// A head that is all here needs no deadline (the usual case: one
		// segment); one that is not must arrive within
		// request_headers_timeout.
		if !headBuffered(br) {
			switch {
			case hs.RequestHeadersTimeout > 0:
				c.tc.readBy(start.Add(hs.RequestHeadersTimeout))
			case hs.IdleTimeout > 0:
				c.tc.readBy(start.Add(hs.IdleTimeout))
			}
		}
		req, err := http1.ReadRequest(br, limits(hs))
		if err != nil {
			if err != io.EOF {
				c.badRequest(bw, lc, start, err)
			}
			return
		}
		c.tc.streamMode(hs.StreamIdleTimeout)
		if !c.exchange(br, bw, req, lc, start) || c.draining.Load() {
			return
		}
	}
}

// badRequest answers (and logs) a request that could not be read.
func (c *conn) badRequest(bw *bufio.Writer, lc *config.Listener, start time.Time, err error) {
	rec := c.record(lc, start, accesslog.HTTP11)
	var pe *http1.Error
	switch {
	case errors.As(err, &pe):
		fail(&rec, pe.Status, detailsBadRequest, pe.Reason)
		c.tc.streamMode(lc.HTTP.StreamIdleTimeout)
		http1.WriteSimpleResponse(bw, 1, pe.Status, "text/plain", pe.Reason+"\n", true)
	case isTimeout(err):
		// A head that did not arrive in time (slowloris): close.
		fail(&rec, 408, detailsHeadersTimeout, "request header section not received within request_headers_timeout")
	default:
		fail(&rec, 0, detailsDownstreamReset, err.Error())
	}
	c.p.finish(lc, &rec)
}

// exchange handles one request; it returns whether the connection stays
// open for another.
func (c *conn) exchange(br *bufio.Reader, bw *bufio.Writer, req *http1.Request, lc *config.Listener, start time.Time) bool {
	proto := accesslog.HTTP11
	if req.ProtoMinor == 0 {
		proto = accesslog.HTTP10
	}
	rec := c.record(lc, start, proto)
	rec.Method, rec.Authority, rec.Path = req.Method, req.Host, req.Target
	rec.HeaderBytes = headBytes(req)
	defer c.p.finish(lc, &rec)

	target, err := normalize.Target(req.Target)
	if err != nil {
		fail(&rec, 400, detailsInvalidPath, err.Error())
		http1.WriteSimpleResponse(bw, req.ProtoMinor, 400, "text/plain", err.Error()+"\n", true)
		return false
	}
	rec.Path = target
	if req.Upgrade != "" && !lc.HTTP.UpgradeAllowed(req.Upgrade) {
		// As Envoy does for an upgrade upgrade_configs does not name.
		reason := "upgrade to " + req.Upgrade + " is not allowed"
		fail(&rec, 403, detailsUpgradeFailed, reason)
		http1.WriteSimpleResponse(bw, req.ProtoMinor, 403, "text/plain", reason+"\n", true)
		return false
	}

	// The policy sees the header the upstream will get: without the
	// hop-by-hop fields and those a Connection field names (which the
	// head writer would drop), so that naming a field in Connection can
	// neither satisfy a rule nor undo a mutation.
	req.Header.RemoveHopByHop()
	dec := c.decide(&rules.Request{Method: req.Method, Target: target, Host: req.Host, Header: req.Header}, &rec)
	if !dec.Allowed {
		return c.deny1(br, bw, req, lc)
	}
	for _, m := range dec.Mutations {
		mutate1(&req.Header, m)
	}
	if req.Upgrade != "" {
		return c.tunnel1(br, bw, req, target, lc, &rec)
	}
	return c.forward1(br, bw, req, target, lc, &rec)
}

func mutate1(h *http1.Header, m rules.Mutation) {
	switch m.Action {
	case l7pb.MismatchAction_MISMATCH_ACTION_ADD:
		h.Add(m.Name, m.Value)
	case l7pb.MismatchAction_MISMATCH_ACTION_DELETE:
		h.Del(m.Name)
	case l7pb.MismatchAction_MISMATCH_ACTION_REPLACE:
		h.Set(m.Name, m.Value)
	}
}

// headBuffered reports whether br holds a whole request head. The empty
// lines the parser skips before a request line are skipped here too: else
// a client could send "\r\n\r\n" first, then trickle the head in under
// the idle timeout instead of request_headers_timeout.
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	for len(b) >= 2 && b[0] == '\r' && b[1] == '\n' {
		b = b[2:]
	}
	return bytes.Contains(b, []byte("\r\n\r\n"))
}

func hasBody(req *http1.Request) bool { return req.Body.Chunked || req.Body.ContentLength > 0 }

// idempotent reports whether a request of method m may be sent twice
// (RFC 9110 section 9.2.2): only such a request is retried once the
// upstream may have received it.
func idempotent(m string) bool {
	switch m {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// deny1 answers a denied request with 403. The connection stays open if
// the client wants it to and the request body (if any) is at most
// maxDiscard bytes, which are read and dropped.
func (c *conn) deny1(br *bufio.Reader, bw *bufio.Writer, req *http1.Request, lc *config.Listener) bool {
	keep := req.KeepAlive && !c.draining.Load() && c.skipBody(br, req, lc)
	http1.WriteSimpleResponse(bw, req.ProtoMinor, 403, "text/plain", deniedBody(lc), !keep)
	return keep
}

// decide checks req against the L7 policy of the connection's two sides
// and notes the outcome in rec (a denial as 403).
func (c *conn) decide(req *rules.Request, rec *accesslog.Record) rules.Decision {
	var dec rules.Decision
	if ids := c.identities(); ids.err != nil {
		dec.Reason = ids.err.Error()
	} else {
		dec = c.p.cfg.Load().Policy.Check(ids.src, ids.dst, c.dst.Port(), req)
	}
	rec.Policy, rec.Mismatches = dec.Policy, dec.Mismatches
	if !dec.Allowed {
		rec.Verdict = accesslog.Denied
		rec.Status = 403
		rec.StatusDetails = detailsDenied
		rec.DeniedBy, rec.Reason = dec.DeniedBy, dec.Reason
	}
	return dec
}

// deniedBody is the body of a 403 the listener's policy answers.
func deniedBody(lc *config.Listener) string {
	if lc.DeniedBody != "" {
		return lc.DeniedBody
	}
	return defaultDeniedBody
}

// skipBody reads and drops a request body of at most maxDiscard bytes. It
// returns false if the body is larger, announced with Expect: 100-continue
// (the client waits before sending it), or broken: the connection must then
// close.
func (c *conn) skipBody(br *bufio.Reader, req *http1.Request, lc *config.Listener) bool {
	if !hasBody(req) {
		return true
	}
	if req.Expect100 || req.Body.ContentLength > maxDiscard {
		return false
	}
	if !req.Body.Chunked {
		_, err := br.Discard(int(req.Body.ContentLength))
		return err == nil
	}
	lw := &limitedDiscard{left: maxDiscard}
	bw := bufio.NewWriterSize(lw, 4096)
	_, err := http1.CopyBody(bw, http1.Framing{ContentLength: -1, UntilClose: true}, br, req.Body, limits(&lc.HTTP))
	return err == nil
}

type limitedDiscard struct{ left int }

var errTooLarge = errors.New("body too large to discard")

func (d *limitedDiscard) Write(p []byte) (int, error) {
	if len(p) > d.left {
		return 0, errTooLarge
	}
	d.left -= len(p)
	return len(p), nil
}

// forward1 sends an allowed request to its original destination and relays
// the response. It returns whether the client connection stays open.
func (c *conn) forward1(br *bufio.Reader, bw *bufio.Writer, req *http1.Request, target string, lc *config.Listener, rec *accesslog.Record) bool {
	if req.Host == "" {
		req.Host = c.dst.String() // HTTP/1.0 without Host: name the destination
	}
	body := hasBody(req)
	// A request may go again on a new connection when the reused one
	// fails, if sending it twice does no harm: it is idempotent and has no
	// body (the proxy keeps no copy of a body to send again). Any other is
	// retried only if none of it was written.
	replayable := idempotent(req.Method) && !body
	// When the proxy answers by itself, the connection stays open only if
	// no request body is left unread.
	keepOnFail := req.KeepAlive && !body && !c.draining.Load()
	failWith := func(status int, details, reason string) bool {
		fail(rec, status, details, reason)
		http1.WriteSimpleResponse(bw, req.ProtoMinor, status, "text/plain", reason+"\n", !keepOnFail)
		return keepOnFail
	}
	rec.Upstream = c.dst
	var (
		up       *upstream
		resp     *http1.Response
		bodyDone chan error
		err      error
		rt       *routeTimer               // nil: no route timeout
		cur      *atomic.Pointer[upstream] // the attempt's, for rt
	)
	if d := routeTimeout(lc); d > 0 {
		// (Allocated only here: Membrane's own routes have none.)
		cur = new(atomic.Pointer[upstream])
		rt = newRouteTimer(d, func(started bool) {
			if u := cur.Load(); u != nil {
				u.tc.expire()
			}
			if started {
				c.tc.expire() // cut the response: the connection closes
			}
		})
		defer rt.finish()
	}
	for attempt := 0; ; attempt++ {
		// A request that cannot be replayed gets a pooled connection
		// only after checking that the upstream has not closed it while
		// idle: the usual way a reused connection fails.
		up, err = c.p.pool.get(context.Background(), c.src.Addr(), c.dst, lc, !replayable)
		if err != nil {
			return failWith(503, detailsConnectFailed, "upstream connect error: "+err.Error())
		}
		if rt != nil {
			cur.Store(up)
			if rt.timedOut() {
				up.tc.expire()
			}
		}
		wroteBefore := up.tc.wrote
		resp, bodyDone, err = c.roundTrip1(br, bw, up, req, target, lc, body, rt)
		if err == nil {
			break
		}
		var bodyErr error
		if bodyDone != nil {
			// The request body may be half sent, or not at all.
			bodyErr = c.stopBody(up, bodyDone)
		}
		// (The body copy, the only other writer, has ended.)
		unsent := up.tc.wrote == wroteBefore
		up.close()
		var me *mutationError
		var pe *http1.Error
		switch {
		case errors.As(err, &me):
			return failWith(502, detailsMutation, err.Error())
		case err == errClientGone:
			// Nobody to answer: the connection closes.
			fail(rec, 0, detailsDownstreamReset, err.Error())
			return false
		case errors.As(bodyErr, &pe):
			fail(rec, pe.Status, detailsBadRequest, pe.Reason)
			http1.WriteSimpleResponse(bw, req.ProtoMinor, pe.Status, "text/plain", pe.Reason+"\n", true)
			return false
		case attempt == 0 && up.reused && staleConn(err) && (replayable || unsent):
			// The upstream closed the idle connection as we reused it.
			// A request it may have received and acted on before closing
			// is not sent again unless that is harmless; one that was
			// not written at all has not started its body copy (that
			// waits for the head), so the body is still unread.
			c.p.stats.retries.Add(1)
			continue
		case errors.As(err, &pe):
			keepOnFail = keepOnFail && bodyDone == nil
			return failWith(502, detailsUpstreamProto, pe.Reason)
		case rt.timedOut() && isTimeout(err):
			keepOnFail = keepOnFail && bodyDone == nil
			return failWith(504, detailsUpstreamTimeout, "upstream request timeout")
		case isTimeout(err):
			keepOnFail = keepOnFail && bodyDone == nil
			return failWith(504, detailsStreamIdle, "upstream response timeout (stream_idle_timeout)")
		default:
			keepOnFail = keepOnFail && bodyDone == nil
			return failWith(502, detailsUpstreamReset, "upstream reset before response: "+err.Error())
		}
	}

	keep := req.KeepAlive && !c.draining.Load()
	if bodyDone != nil {
		select {
		case err := <-bodyDone:
			bodyDone = nil
			if err != nil {
				keep = false
			}
		default:
			// Either the copy is finishing as the response arrives, or the
			// upstream answers before the request body is complete: then
			// the rest of it cannot be awaited.
			t := time.NewTimer(2 * time.Millisecond)
			select {
			case err := <-bodyDone:
				bodyDone = nil
				keep = keep && err == nil
			case <-t.C:
				keep = false
			}
			t.Stop()
		}
	}
	out := http1.ResponseFraming(resp, req.ProtoMinor)
	rec.Status = uint32(resp.Status)
	rt.respond()
	if err := http1.WriteResponseHead(bw, resp, req.ProtoMinor, keep); err != nil {
		if bodyDone != nil {
			c.stopBody(up, bodyDone)
		}
		up.close()
		return failWith(502, detailsUpstreamProto, "invalid upstream response: "+err.Error())
	}
	up.tc.streamMode(lc.HTTP.StreamIdleTimeout)
	_, err = http1.CopyBody(bw, out, up.br, resp.Body, upstreamLimits)
	bodyOK := true
	if bodyDone != nil {
		bodyOK = c.stopBody(up, bodyDone) == nil
	}
	if err != nil {
		// Part of the response is out: all that is left is to close.
		up.close()
		rec.Verdict = accesslog.Error
		rec.StatusDetails = detailsUpstreamAfter
		rec.Reason = "response body: " + err.Error()
		if rt.finish() {
			rec.StatusDetails = detailsUpstreamTimeout
			rec.Reason = "upstream request timeout: response not complete within the route's timeout"
		}
		return false
	}
	rec.Verdict = accesslog.Forwarded
	rec.StatusDetails = detailsUpstream
	if rt.finish() {
		// The time ran out as the response ended: both connections may
		// be expired.
		up.close()
		return false
	}
	if resp.KeepAlive && bodyOK && bodyDone == nil {
		idle := config.DefaultUpstreamIdleTimeout
		if lc.Upstream != nil {
			idle = lc.Upstream.IdleTimeout
		}
		c.p.pool.put(up, idle)
	} else {
		up.close()
	}
	return keep && !out.UntilClose
}

// stopBody ends a request body copy that is still running when the
// exchange is over (the upstream answered early, or failed) and returns its
// result. The client connection cannot be reused, nor can the upstream one:
// reads from the client are aborted and the upstream connection is closed,
// so that the copy stops whichever side it waits for.
func (c *conn) stopBody(up *upstream, bodyDone chan error) error {
	c.tc.abort()
	up.nc.Close()
	return <-bodyDone
}

// errClientGone ends an exchange whose client went away while it waited
// for the response.
var errClientGone = errors.New("client closed the connection while waiting for the response")

// clientWatch hands an exchange's upstream connection to the janitor
// (conn.awaiting) once its request is all sent, and back when the wait for
// the response is over. A request with a body is all sent when its copy,
// which runs beside the response read, ends: the copy may end after the
// response has come, and must not hand over an exchange that is over (the
// janitor could abort a connection already back in the pool).
type clientWatch struct {
	mu          sync.Mutex
	over, armed bool
}

// arm lets the janitor watch the client while up's response is awaited.
// Not when the client has pipelined another request (buffered): it is
// there, and its bytes would hide whether it closed after them.
func (w *clientWatch) arm(c *conn, up *upstream, buffered int) {
	if buffered > 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.over {
		c.awaiting.Store(up)
		w.armed = true
	}
}

// disarm ends the watch; it reports whether the janitor found the client
// gone and aborted the read from up (or is about to).
func (w *clientWatch) disarm(c *conn, up *upstream) (gone bool) {
	w.mu.Lock()
	w.over = true
	armed := w.armed
	w.mu.Unlock()
	return armed && !c.awaiting.CompareAndSwap(up, nil)
}

// mutationError: the request could not be written after policy header
// mutations (an invalid value).
type mutationError struct{ err error }

func (e *mutationError) Error() string { return e.err.Error() }

// roundTrip1 writes the request head, starts copying the body (if any) in
// the background, and reads the response head, relaying 1xx responses to
// the client. bodyDone, when not nil, delivers the body copy's result. The
// route's clock (rt) starts once the request is all sent.
func (c *conn) roundTrip1(br *bufio.Reader, bw *bufio.Writer, up *upstream, req *http1.Request, target string, lc *config.Listener, body bool, rt *routeTimer) (resp *http1.Response, bodyDone chan error, err error) {
	up.tc.streamMode(lc.HTTP.StreamIdleTimeout)
	if err := http1.WriteRequestHead(up.bw, req, target); err != nil {
		up.bw.Reset(&up.tc)
		return nil, nil, &mutationError{err}
	}
	if err := up.bw.Flush(); err != nil {
		return nil, nil, err
	}
	// Until the response comes, nothing reads the client once the
	// request is all sent: the janitor watches it meanwhile.
	var watch clientWatch
	defer func() {
		if watch.disarm(c, up) {
			resp, err = nil, errClientGone
		}
	}()
	if body {
		bodyDone = make(chan error, 1)
		lim := limits(&lc.HTTP)
		go func() {
			_, err := http1.CopyBody(up.bw, http1.RequestFraming(req), br, req.Body, lim)
			if err == nil {
				rt.start()
				watch.arm(c, up, br.Buffered())
			}
			var pe *http1.Error
			if err != nil && (errors.As(err, &pe) || c.tc.readFailed.Load()) {
				// The client's body is broken or gone: wake the response
				// reader, this exchange is over. (If writing to the
				// upstream failed instead, its response may still come.)
				up.tc.abort()
			}
			bodyDone <- err
		}()
	}
	if !body {
		rt.start()
		watch.arm(c, up, br.Buffered())
	}
	for {
		resp, err = http1.ReadResponse(up.br, req.Method, upstreamLimits)
		if err != nil {
			return nil, bodyDone, err
		}
		switch {
		case resp.Status == 101:
			return nil, bodyDone, &http1.Error{Status: 502, Reason: "upstream switched protocols, which the proxy does not support"}
		case resp.Status < 200:
			if err := http1.WriteResponseHead(bw, resp, req.ProtoMinor, true); err != nil {
				return nil, bodyDone, &http1.Error{Status: 502, Reason: fmt.Sprintf("invalid informational response: %v", err)}
			}
			if err := bw.Flush(); err != nil {
				return nil, bodyDone, err
			}
			continue
		}
		return resp, bodyDone, nil
	}
}

// staleConn reports errors of a reused connection the upstream had closed.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
