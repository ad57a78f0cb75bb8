package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Probe protocol, spoken by the responder and Probe. Over TCP a client
// sends one line:
//
//	membrane-probe NONCE   the responder answers "NAMESPACE/POD NONCE\n" and closes
//	membrane-echo          the responder echoes every later byte until EOF
//	an HTTP request line   the responder serves HTTP: 200, body "NAMESPACE/POD\n"
//
// Over UDP, a datagram starting "membrane-echo" is sent back whole, and a
// datagram "membrane-probe NONCE" is answered by the datagram
// "NAMESPACE/POD NONCE".
const (
	probeVerb = "membrane-probe"
	echoVerb  = "membrane-echo"
)

// firstLineTimeout bounds how long a TCP client may take to send its
// request line.
const firstLineTimeout = 10 * time.Second

// ResponderConfig configures Respond.
type ResponderConfig struct {
	// Pod is the identity ("namespace/name") in every reply.
	Pod string
	// Ports are served over both TCP and UDP, on all addresses.
	Ports []int
	// Log receives connection errors; nil discards them.
	Log *slog.Logger
}

// Respond serves the probe protocol until ctx ends. ready, if not nil, is
// called once every port is listening.
func Respond(ctx context.Context, cfg ResponderConfig, ready func()) error {
	if cfg.Log == nil {
		cfg.Log = discardLogger()
	}
	r := &responder{pod: cfg.Pod, log: cfg.Log}
	r.http = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			io.WriteString(w, r.pod+"\n")
		}),
		ReadHeaderTimeout: firstLineTimeout,
		ErrorLog:          slog.NewLogLogger(cfg.Log.Handler(), slog.LevelWarn),
	}
	r.httpConns = &chanListener{conns: make(chan net.Conn), done: make(chan struct{})}

	var closers []io.Closer
	var tcps []net.Listener
	var udps []net.PacketConn
	for _, port := range cfg.Ports {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			closeAll(closers)
			return fmt.Errorf("listen tcp port %d: %w", port, err)
		}
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(port))
		if err != nil {
			ln.Close()
			closeAll(closers)
			return fmt.Errorf("listen udp port %d: %w", port, err)
		}
		closers = append(closers, ln, pc)
		tcps = append(tcps, ln)
		udps = append(udps, pc)
	}
	if ready != nil {
		ready()
	}

	var wg sync.WaitGroup
	wg.Go(func() { r.http.Serve(r.httpConns) })
	for _, ln := range tcps {
		wg.Go(func() { r.acceptLoop(ln) })
	}
	for _, pc := range udps {
		wg.Go(func() { r.udpLoop(pc) })
	}
	<-ctx.Done()
	closeAll(closers)
	r.httpConns.Close()
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	r.http.Shutdown(sctx)
	cancel()
	wg.Wait()
	return nil
}

func closeAll(cs []io.Closer) {
	for _, c := range cs {
		c.Close()
	}
}

type responder struct {
	pod       string
	log       *slog.Logger
	http      *http.Server
	httpConns *chanListener
}

func (r *responder) acceptLoop(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Warn("accept", "err", err)
			}
			return
		}
		go r.serveConn(c)
	}
}

// serveConn reads the first line of a TCP connection and dispatches on it.
func (r *responder) serveConn(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(firstLineTimeout))
	br := bufio.NewReader(c)
	line, err := br.ReadSlice('\n')
	if err != nil && len(line) == 0 {
		c.Close()
		return
	}
	text := strings.TrimRight(string(line), "\r\n")
	switch {
	case strings.HasPrefix(text, probeVerb+" "):
		nonce := strings.TrimSpace(strings.TrimPrefix(text, probeVerb+" "))
		c.SetWriteDeadline(time.Now().Add(firstLineTimeout))
		io.WriteString(c, r.pod+" "+nonce+"\n")
		c.Close()
	case text == echoVerb:
		c.SetReadDeadline(time.Time{})
		io.Copy(c, br)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		c.Close()
	case isHTTPRequestLine(text):
		c.SetReadDeadline(time.Time{})
		first := bytes.Clone(line)
		pc := &prereadConn{Conn: c, r: io.MultiReader(bytes.NewReader(first), br)}
		if !r.httpConns.push(pc) {
			c.Close()
		}
	default:
		io.WriteString(c, "unknown request; send '"+probeVerb+" NONCE', '"+echoVerb+"' or HTTP\n")
		c.Close()
	}
}

// isHTTPRequestLine tells whether s looks like "METHOD TARGET HTTP/1.x".
func isHTTPRequestLine(s string) bool {
	method, rest, ok := strings.Cut(s, " ")
	if !ok || method == "" || !strings.HasPrefix(rest[strings.LastIndexByte(rest, ' ')+1:], "HTTP/1.") {
		return false
	}
	for _, ch := range method {
		if ch < 'A' || ch > 'Z' {
			return false
		}
	}
	return true
}

func (r *responder) udpLoop(pc net.PacketConn) {
	buf := make([]byte, 65536) // a whole datagram, fragmented or not
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Warn("udp read", "err", err)
				continue
			}
			return
		}
		if strings.HasPrefix(string(buf[:min(n, len(echoVerb))]), echoVerb) {
			// Echo the datagram as it came: tests send datagrams larger
			// than the MTU to exercise IP fragments both ways.
			if _, err := pc.WriteTo(buf[:n], addr); err != nil {
				r.log.Warn("udp echo", "to", addr, "err", err)
			}
			continue
		}
		msg := strings.TrimSpace(string(buf[:n]))
		if !strings.HasPrefix(msg, probeVerb+" ") {
			continue
		}
		nonce := strings.TrimSpace(strings.TrimPrefix(msg, probeVerb+" "))
		if _, err := pc.WriteTo([]byte(r.pod+" "+nonce), addr); err != nil {
			r.log.Warn("udp reply", "to", addr, "err", err)
		}
	}
}

// prereadConn replays bytes already read from a connection before
// reading on from it.
type prereadConn struct {
	net.Conn
	r io.Reader
}

func (c *prereadConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// chanListener is a net.Listener fed with connections that the responder
// recognised as HTTP.
type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }
