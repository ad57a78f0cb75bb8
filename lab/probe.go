package lab

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/membrane-mesh/membrane/internal/netns"
)

// DefaultProbeTimeout is how long a probe waits for an answer.
const DefaultProbeTimeout = time.Second

// udpResend is how often a UDP probe resends its datagram.
const udpResend = 100 * time.Millisecond

// ProbeSpec says what to probe.
type ProbeSpec struct {
	// From and To are pods ("namespace/name"), "world", "world:ADDRESS"
	// or "node/NAME"; see WorldName for what these mean.
	From, To string
	Port     int
	// Protocol is "tcp" (default) or "udp".
	Protocol string
	// Family is the IP family of the probe: 4 or 6. Default: the family
	// of a "world:ADDRESS" endpoint, else 4.
	Family int
	// Timeout bounds the probe; default DefaultProbeTimeout.
	Timeout time.Duration
}

func (s *ProbeSpec) defaults() error {
	s.Protocol = strings.ToLower(s.Protocol)
	if s.Protocol == "" {
		s.Protocol = "tcp"
	}
	if s.Protocol != "tcp" && s.Protocol != "udp" {
		return fmt.Errorf("protocol %q: want tcp or udp", s.Protocol)
	}
	if s.Family != 0 && s.Family != 4 && s.Family != 6 {
		return fmt.Errorf("IP family %d: want 4 or 6", s.Family)
	}
	if s.Port < 1 || s.Port > 65535 {
		return fmt.Errorf("port %d out of range", s.Port)
	}
	if s.Timeout <= 0 {
		s.Timeout = DefaultProbeTimeout
	}
	return nil
}

// ProbeResult is the outcome of a probe that ran.
type ProbeResult struct {
	Allowed bool
	// Detail says why a probe was denied: "timeout", "connection
	// refused", …
	Detail string
	// ConnectOnly: the probed port is not one the target's built-in
	// responder serves (a command's, or nobody's), so the probe could
	// only check that a TCP connection opens or that a UDP datagram gets
	// an answer, not who answered.
	ConnectOnly bool
	// Refused: denied because the destination refused the connection (a
	// TCP reset, an ICMP port unreachable). The datapath drops silently,
	// so the network let the probe through and nothing listens there.
	Refused bool
	// Proxy: allowed because the node proxy answered in the responder's
	// place. L7 policy applies to the port: the connection was allowed
	// and redirected at L3/L4, and the proxy decides each request (test
	// those with lab http or lab grpc).
	Proxy   bool
	Elapsed time.Duration
	// Target is the address and port probed.
	Target netip.AddrPort
	// Source is the address and port the responder saw the probe come
	// from, if it was allowed (and the responder is recent enough to
	// say).
	Source netip.AddrPort
}

// String returns "allowed" or "denied".
func (r ProbeResult) String() string {
	if r.Allowed {
		return "allowed"
	}
	return "denied"
}

// Probe connects from one endpoint (a pod, the world host or a node) to
// another and sends the responder's probe request. It is allowed if To's
// responder answered with its name and the probe's nonce, denied if
// nothing (or a refusal: Refused) came back in time. Where L7 policy
// redirects the port to the node proxy, the proxy answers the probe
// request (an HTTP error): allowed, with Proxy set. A reply from anyone
// else is an error, as are unknown endpoints.
//
// A port To's responder does not serve belongs to one of its commands (or
// to nothing). The probe does not speak the command's protocol there: a
// TCP probe is allowed once the connection opens and closes it at once, a
// UDP probe once any datagram comes back (ConnectOnly).
func (l *Lab) Probe(ctx context.Context, spec ProbeSpec) (ProbeResult, error) {
	if err := spec.defaults(); err != nil {
		return ProbeResult{}, err
	}
	from, err := l.resolve(spec.From)
	if err != nil {
		return ProbeResult{}, err
	}
	to, err := l.resolve(spec.To)
	if err != nil {
		return ProbeResult{}, err
	}
	family, ip, err := pickEnds(spec.Family, spec.From, spec.To, from, to)
	if err != nil {
		return ProbeResult{}, err
	}
	return probe(ctx, from.netns, from.src(family), to, netip.AddrPortFrom(ip, uint16(spec.Port)), spec.Protocol, spec.Timeout)
}

// probe runs one probe of to at dst from inside the network namespace src,
// from the address bind (if valid; else the kernel chooses).
func probe(ctx context.Context, src string, bind netip.Addr, to endpoint, dst netip.AddrPort, proto string, timeout time.Duration) (ProbeResult, error) {
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	want := to.name
	connectOnly := !to.answers(dst.Port())
	nonce := newNonce()
	desc := fmt.Sprintf("probe %s %s/%s", want, proto, dst)
	if bind.IsValid() {
		desc += " from " + bind.String()
	}

	// The socket must be created inside src; once created it stays there,
	// so only the dial runs on a thread in src.
	var conn net.Conn
	var dialErr error
	if err := netns.Do(src, func() error {
		var d net.Dialer
		if bind.IsValid() {
			if proto == "tcp" {
				d.LocalAddr = &net.TCPAddr{IP: bind.AsSlice()}
			} else {
				d.LocalAddr = &net.UDPAddr{IP: bind.AsSlice()}
			}
		}
		conn, dialErr = d.DialContext(pctx, proto, dst.String())
		return nil
	}); err != nil {
		return ProbeResult{}, fmt.Errorf("%s: %w", desc, err)
	}
	denied := func(err error) (ProbeResult, error) {
		if ctx.Err() != nil {
			return ProbeResult{}, fmt.Errorf("%s: %w", desc, ctx.Err())
		}
		return ProbeResult{Detail: denyReason(err), Refused: errors.Is(err, syscall.ECONNREFUSED),
			ConnectOnly: connectOnly, Elapsed: time.Since(start), Target: dst}, nil
	}
	if dialErr != nil {
		return denied(dialErr)
	}
	defer conn.Close()
	if connectOnly && proto == "tcp" {
		return ProbeResult{Allowed: true, ConnectOnly: true, Elapsed: time.Since(start), Target: dst}, nil
	}
	deadline, _ := pctx.Deadline()
	stop := context.AfterFunc(pctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()

	var reply string
	var err error
	if proto == "tcp" {
		reply, err = probeTCP(conn, nonce, deadline)
	} else {
		reply, err = probeUDP(conn, nonce, deadline)
	}
	if err != nil {
		return denied(err)
	}
	if connectOnly {
		return ProbeResult{Allowed: true, ConnectOnly: true, Elapsed: time.Since(start), Target: dst}, nil
	}
	if proto == "tcp" && strings.HasPrefix(reply, "HTTP/") {
		// The responder never answers a probe request in HTTP: the node
		// proxy took the connection (L7 policy on this port) and
		// rejected the request, which is no HTTP.
		return ProbeResult{Allowed: true, Proxy: true, Elapsed: time.Since(start), Target: dst,
			Detail: "the node proxy answered (" + reply + "): L7 policy decides each request on this port"}, nil
	}
	source, ok := parseProbeReply(reply, want, nonce)
	if !ok {
		return ProbeResult{}, fmt.Errorf("%s: got reply %q, want %q: something other than %s's responder answered", desc, reply, want+" "+nonce+" SOURCE", want)
	}
	return ProbeResult{Allowed: true, Elapsed: time.Since(start), Target: dst, Source: source}, nil
}

// parseProbeReply checks a reply "NAME NONCE [SOURCE]" and returns the
// source address the responder saw (zero if it did not say).
func parseProbeReply(reply, want, nonce string) (netip.AddrPort, bool) {
	f := strings.Fields(reply)
	if len(f) < 2 || len(f) > 3 || f[0] != want || f[1] != nonce {
		return netip.AddrPort{}, false
	}
	if len(f) == 2 {
		return netip.AddrPort{}, true
	}
	ap, err := netip.ParseAddrPort(f[2])
	if err != nil {
		return netip.AddrPort{}, false
	}
	return ap, true
}

func probeTCP(conn net.Conn, nonce string, deadline time.Time) (string, error) {
	conn.SetDeadline(deadline)
	if _, err := conn.Write([]byte(probeVerb + " " + nonce + "\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReaderSize(conn, 512).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func probeUDP(conn net.Conn, nonce string, deadline time.Time) (string, error) {
	msg := []byte(probeVerb + " " + nonce)
	buf := make([]byte, 512)
	for {
		if _, err := conn.Write(msg); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			return "", err
		}
		conn.SetReadDeadline(minTime(time.Now().Add(udpResend), deadline))
		n, err := conn.Read(buf)
		if err == nil {
			return strings.TrimSpace(string(buf[:n])), nil
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return "", err
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || !time.Now().Before(deadline) {
			return "", err
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// denyReason names why a probe got no answer.
func denyReason(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return "refused locally"
	default:
		return err.Error()
	}
}

func newNonce() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// pickEnds chooses the IP family of a connection from `from` to `to`
// (refs fromRef and toRef): want (4 or 6), else that of a "world:ADDRESS"
// end, else 4. It returns the family and the destination's address, or
// an error when the ends disagree or one has no address of the family: a
// pod without an address of the family cannot send, and that is the
// lab's shape, not a verdict.
func pickEnds(want int, fromRef, toRef string, from, to endpoint) (int, netip.Addr, error) {
	if want != 0 && want != 4 && want != 6 {
		return 0, netip.Addr{}, fmt.Errorf("IP family %d: want 4 or 6", want)
	}
	family := want
	for _, e := range []endpoint{from, to} {
		if f := e.family(); f != 0 {
			if family != 0 && family != f {
				return 0, netip.Addr{}, fmt.Errorf("%s -> %s: %s is an IPv%d address, but the connection is IPv%d", fromRef, toRef, e.fixed, f, family)
			}
			family = f
		}
	}
	if family == 0 {
		family = 4
	}
	ip, err := to.dst(family)
	if err != nil {
		return 0, netip.Addr{}, err
	}
	if _, err := from.dst(family); err != nil {
		return 0, netip.Addr{}, err
	}
	return family, ip, nil
}
