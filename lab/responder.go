package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/membrane-mesh/membrane/internal/h2c"
)

// Probe protocol, spoken by the responder and Probe. Over TCP a client
// sends one line:
//
//	membrane-probe NONCE   the responder answers "NAME NONCE SOURCE\n" and closes
//	membrane-echo          the responder echoes every later byte until EOF
//	the HTTP/2 preface     h2c: gRPC's standard health service
//	                       (grpc.health.v1.Health/Check and /Watch), and
//	                       other requests as over HTTP/1
//	an HTTP request line   the responder serves HTTP: 200, body "NAME\n",
//	                       headers X-Membrane-Pod (NAME), X-Membrane-Source,
//	                       X-Membrane-Request ("METHOD URI PROTO"),
//	                       X-Membrane-Host (the Host, or HTTP/2's
//	                       :authority) and X-Echo-H for every other
//	                       request header H; a
//	                       WebSocket handshake (HTTP/1.1) is accepted and
//	                       every frame echoed, pings answered
//
// Over UDP, a datagram starting "membrane-echo" is sent back whole, and a
// datagram "membrane-probe NONCE" is answered by the datagram
// "NAME NONCE SOURCE". NAME is the responder's name ("NAMESPACE/POD",
// "world" or "node/NODE"), SOURCE the address and port it saw the request
// come from ("10.244.0.1:4242", "[fd00::1]:4242"). UDP replies leave from
// the address the request was sent to, so that a responder with several
// addresses (the world host) answers connected sockets.
const (
	probeVerb = "membrane-probe"
	echoVerb  = "membrane-echo"
)

// firstLineTimeout bounds how long a TCP client may take to send its
// request line.
const firstLineTimeout = 10 * time.Second

// defaultIdleTimeout is how long the responder keeps an HTTP connection
// (HTTP/1 keep-alive or HTTP/2) open without a request on it: long
// enough for a client to reuse it, short enough that clients that never
// close theirs cannot pile connections up in a long-lived lab.
const defaultIdleTimeout = 30 * time.Second

// ResponderConfig configures Respond.
type ResponderConfig struct {
	// Pod is the identity in every reply: "namespace/name", "world" or
	// "node/NAME".
	Pod string
	// Ports are served over both TCP and UDP, on all addresses.
	Ports []int
	// Log receives connection errors; nil discards them.
	Log *slog.Logger
	// IdleTimeout closes HTTP connections without a request for that
	// long; zero means defaultIdleTimeout.
	IdleTimeout time.Duration
}

// Respond serves the probe protocol until ctx ends. ready, if not nil, is
// called once every port is listening.
func Respond(ctx context.Context, cfg ResponderConfig, ready func()) error {
	if cfg.Log == nil {
		cfg.Log = discardLogger()
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	r := &responder{pod: cfg.Pod, log: cfg.Log}
	// HTTP/1 and h2c (prior knowledge) on one server: gRPC (the standard
	// health service, grpc.health.v1.Health: Check and the streaming
	// Watch) over HTTP/2, anything else answered alike in both.
	r.http = &http.Server{
		Protocols: h2c.AndHTTP1(),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.ProtoMajor == 2 && strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc") {
				r.grpc.ServeHTTP(w, req)
				return
			}
			if req.ProtoMajor == 1 && isWebSocket(req) {
				r.serveWebSocket(w, req)
				return
			}
			// What arrived, for L7 tests: who answered, who asked, the
			// request line and every request header (X-Echo-NAME).
			h := w.Header()
			h.Set("Content-Type", "text/plain; charset=utf-8")
			h.Set("X-Membrane-Pod", r.pod)
			h.Set("X-Membrane-Source", req.RemoteAddr)
			h.Set("X-Membrane-Request", req.Method+" "+req.RequestURI+" "+req.Proto)
			// net/http moves the Host header (or :authority) out of
			// req.Header, so it would not be echoed with the others.
			h.Set("X-Membrane-Host", req.Host)
			for k, vs := range req.Header {
				h["X-Echo-"+k] = vs
			}
			if req.Body != nil {
				io.Copy(io.Discard, req.Body)
			}
			io.WriteString(w, r.pod+"\n")
		}),
		ReadHeaderTimeout: firstLineTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(cfg.Log.Handler(), slog.LevelWarn),
	}
	r.httpConns = &chanListener{conns: make(chan net.Conn), done: make(chan struct{})}
	r.grpc = grpc.NewServer()
	healthpb.RegisterHealthServer(r.grpc, health.NewServer())

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
	r.grpc.Stop()
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
	grpc      *grpc.Server
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
		io.WriteString(c, r.pod+" "+nonce+" "+peerString(c.RemoteAddr())+"\n")
		c.Close()
	case text == echoVerb:
		c.SetReadDeadline(time.Time{})
		io.Copy(c, br)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		c.Close()
	case text == "PRI * HTTP/2.0" || isHTTPRequestLine(text):
		// HTTP/1 or HTTP/2 with prior knowledge (h2c).
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

// peerString formats a connection's remote address as "IP:PORT", with
// IPv4 addresses unmapped.
func peerString(a net.Addr) string {
	switch v := a.(type) {
	case *net.TCPAddr:
		ap := v.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
	case *net.UDPAddr:
		ap := v.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
	}
	return a.String()
}

func (r *responder) udpLoop(pc net.PacketConn) {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		r.log.Warn("udp: not a *net.UDPConn", "type", fmt.Sprintf("%T", pc))
		return
	}
	enablePktinfo(uc)
	buf := make([]byte, 65536) // a whole datagram, fragmented or not
	oob := make([]byte, 256)
	for {
		n, oobn, _, addr, err := uc.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Warn("udp read", "err", err)
				continue
			}
			return
		}
		// Answer from the address the datagram was sent to.
		reply := replyPktinfo(oob[:oobn])
		if strings.HasPrefix(string(buf[:min(n, len(echoVerb))]), echoVerb) {
			// Echo the datagram as it came: tests send datagrams larger
			// than the MTU to exercise IP fragments both ways.
			if _, _, err := uc.WriteMsgUDPAddrPort(buf[:n], reply, addr); err != nil {
				r.log.Warn("udp echo", "to", addr, "err", err)
			}
			continue
		}
		msg := strings.TrimSpace(string(buf[:n]))
		if !strings.HasPrefix(msg, probeVerb+" ") {
			continue
		}
		nonce := strings.TrimSpace(strings.TrimPrefix(msg, probeVerb+" "))
		peer := netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
		if _, _, err := uc.WriteMsgUDPAddrPort([]byte(r.pod+" "+nonce+" "+peer.String()), reply, addr); err != nil {
			r.log.Warn("udp reply", "to", addr, "err", err)
		}
	}
}

// enablePktinfo asks the kernel to tell the destination address of every
// datagram uc receives: IPV6_PKTINFO on a (dual-stack) IPv6 socket, which
// covers IPv4 datagrams too, else IP_PKTINFO. Without it, replies leave
// from whatever address the kernel picks, which is right for a pod (one
// address per family) but not for the world host.
func enablePktinfo(uc *net.UDPConn) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1) != nil {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
	})
}

// replyPktinfo turns the packet info of a received datagram into the
// control message that sends the reply from the address it was sent to.
// It leaves the interface to the routing table, except for link-local
// addresses (169.254.1.1 is on every pod's veth), which need it.
func replyPktinfo(oob []byte) []byte {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo: the address (IPv4-mapped for IPv4), then
			// the interface index.
			var out unix.Inet6Pktinfo
			copy(out.Addr[:], m.Data[:16])
			if netip.AddrFrom16(out.Addr).IsLinkLocalUnicast() {
				out.Ifindex = binary.NativeEndian.Uint32(m.Data[16:20])
			}
			return unix.PktInfo6(&out)
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo: interface index, local address, and the
			// header's destination address.
			var out unix.Inet4Pktinfo
			copy(out.Spec_dst[:], m.Data[8:12])
			if netip.AddrFrom4(out.Spec_dst).IsLinkLocalUnicast() {
				out.Ifindex = int32(binary.NativeEndian.Uint32(m.Data[0:4]))
			}
			return unix.PktInfo4(&out)
		}
	}
	return nil
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
