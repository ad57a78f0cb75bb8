package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/membrane-mesh/membrane/l7/accesslog"
	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/l7/http1"
)

// tunnel1 forwards an allowed upgrade request (a WebSocket handshake: the
// policy has checked its method, path and header). If the upstream
// switches protocols, the 101 goes to the client and the connection
// becomes a tunnel: bytes are copied both ways, uninterpreted, until both
// sides have closed, either resets, or stream_idle_timeout passes with no
// byte in either direction. Any other answer is relayed and the connection
// closes: whether the upstream took the request as an upgrade is not known.
// It always returns false (the client connection closes).
func (c *conn) tunnel1(br *bufio.Reader, bw *bufio.Writer, req *http1.Request, target string, lc *config.Listener, rec *accesslog.Record) bool {
	failWith := func(status int, details, reason string) bool {
		fail(rec, status, details, reason)
		http1.WriteSimpleResponse(bw, req.ProtoMinor, status, "text/plain", reason+"\n", true)
		return false
	}
	if hasBody(req) {
		return failWith(400, detailsBadRequest, "an upgrade request with a body is not supported")
	}
	rec.Upstream = c.dst
	up, err := c.p.pool.get(context.Background(), c.src.Addr(), c.dst, lc, true)
	if err != nil {
		return failWith(503, detailsConnectFailed, "upstream connect error: "+err.Error())
	}
	defer up.close()
	idle := lc.HTTP.StreamIdleTimeout
	up.tc.streamMode(idle)
	if err := http1.WriteRequestHead(up.bw, req, target); err != nil {
		up.bw.Reset(&up.tc)
		return failWith(502, detailsMutation, err.Error())
	}
	if err := up.bw.Flush(); err != nil {
		return failWith(502, detailsUpstreamReset, "upstream reset before response: "+err.Error())
	}
	if d := routeTimeout(lc); d > 0 {
		up.tc.readBy(time.Now().Add(d))
	}
	var resp *http1.Response
	for {
		resp, err = http1.ReadUpgradeResponse(up.br, req.Method, req.Upgrade, upstreamLimits)
		var pe *http1.Error
		switch {
		case errors.As(err, &pe):
			return failWith(502, detailsUpstreamProto, pe.Reason)
		case isTimeout(err):
			return failWith(504, detailsUpstreamTimeout, "upstream response timeout")
		case err != nil:
			return failWith(502, detailsUpstreamReset, "upstream reset before response: "+err.Error())
		}
		if resp.Status >= 200 || resp.Status == 101 {
			break
		}
		if http1.WriteResponseHead(bw, resp, req.ProtoMinor, true) != nil || bw.Flush() != nil {
			return failWith(502, detailsUpstreamProto, "invalid informational response")
		}
	}
	rec.Status = uint32(resp.Status)
	if err := http1.WriteResponseHead(bw, resp, req.ProtoMinor, false); err != nil {
		return failWith(502, detailsUpstreamProto, "invalid upstream response: "+err.Error())
	}
	// Envoy starts a route's clock when the request is complete, which
	// an upgraded one never is: here it bounds the wait for the answer,
	// and then no more.
	up.tc.readBy(time.Time{})
	up.tc.streamMode(idle)
	if resp.Status != 101 {
		// The upstream refused the upgrade: relay its answer.
		_, err := http1.CopyBody(bw, http1.ResponseFraming(resp, req.ProtoMinor), up.br, resp.Body, upstreamLimits)
		if err != nil {
			rec.Verdict, rec.StatusDetails, rec.Reason = accesslog.Error, detailsUpstreamAfter, "response body: "+err.Error()
			return false
		}
		rec.Verdict, rec.StatusDetails = accesslog.Forwarded, detailsUpstream
		return false
	}
	if err := bw.Flush(); err != nil {
		fail(rec, 101, detailsDownstreamReset, err.Error())
		return false
	}
	rec.Verdict, rec.StatusDetails = accesslog.Forwarded, detailsUpstream
	c.tc.streamMode(idle)
	if err := c.splice(br, up, idle); err != nil {
		rec.Verdict, rec.StatusDetails, rec.Reason = accesslog.Error, detailsUpstreamAfter, "tunnel: "+err.Error()
		if isTimeout(err) {
			rec.StatusDetails = detailsStreamIdle
		}
	}
	return false
}

// splice copies bytes both ways between the client (whose bytes already
// read wait in br) and the upstream (likewise in up.br) until both
// directions have ended. A side that closes its sending direction has
// that propagated as a half-close; an error on either ends both. Reads
// time out after idle only when neither direction has moved for idle.
func (c *conn) splice(br *bufio.Reader, up *upstream, idle time.Duration) error {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var (
		once     sync.Once
		firstErr error
	)
	stop := func(err error) {
		once.Do(func() {
			firstErr = err
			c.tc.abort()
			up.tc.abort()
		})
	}
	pipe := func(dst io.Writer, src *bufio.Reader, closeWrite func() error) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				last.Store(time.Now().UnixNano())
				if _, werr := dst.Write(buf[:n]); werr != nil {
					stop(werr)
					return
				}
			}
			switch {
			case err == nil:
			case errors.Is(err, io.EOF):
				closeWrite()
				return
			case isTimeout(err) && idle > 0 && time.Since(time.Unix(0, last.Load())) < idle:
				// The other direction is busy: not idle.
			default:
				stop(err)
				return
			}
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pipe(&up.tc, br, up.nc.CloseWrite)
	}()
	pipe(&c.tc, up.br, c.nc.CloseWrite)
	wg.Wait()
	if errors.Is(firstErr, errAborted) {
		return nil
	}
	return firstErr
}
