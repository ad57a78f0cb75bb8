package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/membrane-mesh/membrane/internal/h2c"
	"github.com/membrane-mesh/membrane/internal/netns"
)

// L7 clients for labs: one HTTP request or one gRPC health call from inside
// an endpoint, to see what L7 policy does (membranectl lab http, lab grpc).
// Every responder answers HTTP/1.1, h2c and gRPC's health service on each
// of its ports.

// HTTPSpec is one HTTP request from an endpoint to another.
type HTTPSpec struct {
	// From and To are endpoints as for Probe.
	From, To string
	Port     int
	// Method defaults to GET, Path to "/".
	Method string
	Path   string
	// Host sets the Host header (default: the destination address); over
	// HTTP/2 it is the :authority. A Host entry in Header does the same.
	Host   string
	Header http.Header
	Body   string
	// HTTP2 speaks h2c (HTTP/2 with prior knowledge) instead of HTTP/1.1.
	HTTP2 bool
	// Family is the IP family, 4 or 6, as for Probe.
	Family  int
	Timeout time.Duration
}

// HTTPResult is the response.
type HTTPResult struct {
	Proto  string
	Status int
	Header http.Header
	Body   string
}

// dialer dials from inside an endpoint's network namespace, from its
// source address when it has one.
func (l *Lab) dialer(from endpoint, family int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{}
		if b := from.src(family); b.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: b.AsSlice()}
		}
		var c net.Conn
		err := netns.Do(from.netns, func() error {
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// InputError is an error in what a request asks for (an endpoint that is
// none, a bad port or path), as opposed to a request that got no answer.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// l7Target resolves From and To and returns the source endpoint, the IP
// family (as for Probe) and the destination address.
func (l *Lab) l7Target(fromRef, toRef string, port, family int) (endpoint, int, netip.AddrPort, error) {
	fail := func(err error) (endpoint, int, netip.AddrPort, error) {
		return endpoint{}, 0, netip.AddrPort{}, &InputError{err}
	}
	from, err := l.resolve(fromRef)
	if err != nil {
		return fail(err)
	}
	to, err := l.resolve(toRef)
	if err != nil {
		return fail(err)
	}
	if port < 1 || port > 65535 {
		return fail(fmt.Errorf("port %d: want 1-65535", port))
	}
	family, ip, err := pickEnds(family, fromRef, toRef, from, to)
	if err != nil {
		return fail(err)
	}
	return from, family, netip.AddrPortFrom(ip, uint16(port)), nil
}

// HTTP sends one request and returns the response (any status). An error
// means no response came: refused, timed out, reset.
func (l *Lab) HTTP(ctx context.Context, spec HTTPSpec) (*HTTPResult, error) {
	from, family, dst, err := l.l7Target(spec.From, spec.To, spec.Port, spec.Family)
	if err != nil {
		return nil, err
	}
	if spec.Timeout <= 0 {
		spec.Timeout = 5 * time.Second
	}
	if spec.Method == "" {
		spec.Method = http.MethodGet
	}
	if spec.Path == "" {
		spec.Path = "/"
	}
	if !strings.HasPrefix(spec.Path, "/") {
		return nil, &InputError{fmt.Errorf("path %q: want a path starting with /", spec.Path)}
	}
	// net/http sends req.Host and drops a Host header, so a Host given as
	// a header (membranectl lab http -H 'Host: x') would silently not
	// reach the server: it sets req.Host instead.
	host := spec.Host
	header := http.Header{}
	for k, vs := range spec.Header {
		if http.CanonicalHeaderKey(k) != "Host" {
			header[k] = vs
			continue
		}
		for _, v := range vs {
			if host != "" && v != host {
				return nil, &InputError{fmt.Errorf("Host %q and Host %q: a request has one Host; give it once, with --host or with -H 'Host: NAME'", host, v)}
			}
			host = v
		}
	}
	// Every call is one request on connections of its own, which must not
	// outlive it: an HTTP/2 transport keeps its connection open for reuse,
	// and nothing would ever reuse or close it.
	dial := l.dialer(from, family)
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	track := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		return c, err
	}
	var rt *http.Transport
	if spec.HTTP2 {
		rt = h2c.Transport(track)
	} else {
		rt = &http.Transport{DialContext: track, DisableKeepAlives: true}
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	var body io.Reader
	if spec.Body != "" {
		body = strings.NewReader(spec.Body)
	}
	req, err := http.NewRequestWithContext(ctx, spec.Method, "http://"+dst.String()+spec.Path, body)
	if err != nil {
		return nil, err
	}
	req.Header = header
	if host != "" {
		req.Host = host
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s from %s: %w", spec.Method, req.URL, spec.From, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s from %s: read body: %w", spec.Method, req.URL, spec.From, err)
	}
	return &HTTPResult{Proto: resp.Proto, Status: resp.StatusCode, Header: resp.Header, Body: string(b)}, nil
}

// GRPCSpec is one call of grpc.health.v1.Health from an endpoint to
// another: Check, or Watch (a server stream; the first message counts).
type GRPCSpec struct {
	From, To string
	Port     int
	// Service is the health service name to ask about ("" for the server).
	Service string
	Watch   bool
	// Family is the IP family, 4 or 6, as for Probe.
	Family  int
	Timeout time.Duration
}

// GRPCResult is the call's outcome: Code "OK" with the serving status, or
// the error code and message (e.g. "PermissionDenied", "Access denied").
type GRPCResult struct {
	Method  string
	Code    string
	Message string
	Serving string
}

// GRPC makes one health call. An error means the call could not be made
// at all (bad endpoint); a failed call is a result with its code.
func (l *Lab) GRPC(ctx context.Context, spec GRPCSpec) (*GRPCResult, error) {
	from, family, dst, err := l.l7Target(spec.From, spec.To, spec.Port, spec.Family)
	if err != nil {
		return nil, err
	}
	if spec.Timeout <= 0 {
		spec.Timeout = 5 * time.Second
	}
	dial := l.dialer(from, family)
	cc, err := grpc.NewClient("passthrough:///"+dst.String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) }))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	req := &healthpb.HealthCheckRequest{Service: spec.Service}
	res := &GRPCResult{Method: "/grpc.health.v1.Health/Check"}
	var resp *healthpb.HealthCheckResponse
	if spec.Watch {
		res.Method = "/grpc.health.v1.Health/Watch"
		var stream grpc.ServerStreamingClient[healthpb.HealthCheckResponse]
		if stream, err = hc.Watch(ctx, req); err == nil {
			resp, err = stream.Recv()
		}
	} else {
		resp, err = hc.Check(ctx, req)
	}
	if err != nil {
		st, _ := status.FromError(err)
		res.Code, res.Message = st.Code().String(), st.Message()
		return res, nil
	}
	res.Code, res.Serving = "OK", resp.GetStatus().String()
	return res, nil
}

// String renders a result as "CODE[: message]" or "OK SERVING".
func (r *GRPCResult) String() string {
	switch {
	case r.Code == "OK":
		return "OK " + r.Serving
	case r.Message != "":
		return r.Code + ": " + r.Message
	}
	return r.Code
}

// StatusLine renders an HTTP result's first line.
func (r *HTTPResult) StatusLine() string {
	return r.Proto + " " + strconv.Itoa(r.Status) + " " + http.StatusText(r.Status)
}
