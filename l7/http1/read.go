package http1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Framing says how a message's body is delimited.
type Framing struct {
	ContentLength int64 // -1: unknown
	Chunked       bool
	UntilClose    bool // responses only: the body runs until the connection closes
}

// Request is a request head.
type Request struct {
	Method     string
	Target     string // as received (origin-form or "*"); see AbsoluteForm
	ProtoMinor int    // HTTP/1.0 or HTTP/1.1
	Header     Header
	Host       string // the Host field's value ("" for HTTP/1.0 without one); see AbsoluteForm
	Body       Framing
	KeepAlive  bool // the client allows the connection to stay open after this exchange
	Expect100  bool // "Expect: 100-continue"
	// Upgrade is the protocol an HTTP/1.1 request asks to switch to: its
	// Upgrade field, when a Connection field names "upgrade". The fields
	// themselves are hop-by-hop: WriteRequestHead writes them anew from
	// Upgrade, so that clearing it forwards a plain request.
	Upgrade string
	// AbsoluteForm is set when the target arrived as an absolute URI
	// ("GET http://web/a HTTP/1.1", as clients send to a forward proxy).
	// As RFC 9112 §3.2.2 has a proxy forward it, Target is then the URI's
	// path and query ("/" when it has none) and Host its authority, which
	// also replaces the Host field's value: the policy checks, and the
	// upstream receives, an origin-form request for that authority.
	AbsoluteForm bool
}

// Response is a response head.
type Response struct {
	ProtoMinor int
	Status     int
	Reason     string
	Header     Header
	Body       Framing // NoBody responses have ContentLength 0
	NoBody     bool    // response to HEAD, 1xx, 204, 304 (and 2xx to CONNECT)
	KeepAlive  bool    // the upstream allows reuse after this response
	// Upgrade is the protocol of a 101 Switching Protocols response
	// (ReadUpgradeResponse): the connection carries it from the byte
	// after the head.
	Upgrade string
}

// ReadRequest reads one request head. It returns io.EOF if the connection
// closed cleanly before any byte of a request (empty lines before a request
// line are skipped, as RFC 9112 section 2.2 allows); *Error for anything
// malformed or over the limits (400; 414 for a request line over
// MaxLineBytes; 431 for a header section over MaxHeaderBytes or
// MaxHeaders; 501 for an unsupported transfer coding; 505 for a version
// other than 1.0 and 1.1); any other error from br, wrapped. The body, if
// any, is left in br for CopyBody.
func ReadRequest(br *bufio.Reader, lim Limits) (*Request, error) {
	lim = lim.withDefaults()
	if err := skipEmptyLines(br, lim.MaxLineBytes); err != nil {
		return nil, err
	}
	var stack [2048]byte
	head, nfields, err := readHead(br, stack[:0], lim, "request line", statusURITooLong)
	if err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, wrapRead("read request head", err)
	}
	req, perr := parseRequest(string(head), nfields)
	if perr != nil {
		return nil, perr
	}
	return req, nil
}

// ReadResponse reads one response head, 1xx included (the caller loops
// until a final one). method is the request's method: HEAD and CONNECT
// change the framing. It returns io.EOF if the connection closed before any
// byte of a response, and *Error with status 502 for anything malformed or
// over the limits.
func ReadResponse(br *bufio.Reader, method string, lim Limits) (*Response, error) {
	return readResponseHead(br, method, "", lim)
}

// ReadUpgradeResponse is ReadResponse for a request that asked to switch
// to protocol upgrade (Request.Upgrade): a 101 Switching Protocols that
// switches to it is accepted (Response.Upgrade says so); one to any other
// protocol is an error.
func ReadUpgradeResponse(br *bufio.Reader, method, upgrade string, lim Limits) (*Response, error) {
	return readResponseHead(br, method, upgrade, lim)
}

func readResponseHead(br *bufio.Reader, method, upgrade string, lim Limits) (*Response, error) {
	lim = lim.withDefaults()
	var stack [2048]byte
	head, nfields, err := readHead(br, stack[:0], lim, "status line", statusBadGateway)
	if err == nil {
		resp, perr := parseResponse(string(head), nfields, method, upgrade)
		if perr == nil {
			return resp, nil
		}
		err = perr
	}
	if err == io.EOF {
		return nil, io.EOF
	}
	var pe *Error
	if errors.As(err, &pe) {
		return nil, &Error{Status: statusBadGateway, Reason: "upstream response: " + pe.Reason}
	}
	return nil, wrapRead("read response head", err)
}

// wrapRead adds context to an I/O error; protocol errors stay as they are
// so the caller gets the *Error itself.
func wrapRead(what string, err error) error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	return fmt.Errorf("%s: %w", what, err)
}

// skipEmptyLines discards CRLFs before a request line, at most limit bytes
// of them. It returns io.EOF if the connection closed before anything else.
func skipEmptyLines(br *bufio.Reader, limit int) error {
	for skipped := 0; ; skipped += 2 {
		b, err := br.Peek(2)
		if len(b) == 0 && err != nil {
			if err == io.EOF {
				return io.EOF
			}
			return fmt.Errorf("read request head: %w", err)
		}
		if len(b) < 2 || b[0] != '\r' || b[1] != '\n' {
			return nil
		}
		if skipped >= limit {
			return protoErr(statusBadRequest, "too many empty lines before the request line")
		}
		if _, err := br.Discard(2); err != nil {
			return fmt.Errorf("read request head: %w", err)
		}
	}
}

// readHead appends the first line and the header section of a message to
// dst, every line with its CRLF but without the empty line that ends the
// section, and returns the number of field lines. It returns io.EOF only if
// the connection closed before the first byte.
func readHead(br *bufio.Reader, dst []byte, lim Limits, firstLine string, lineStatus int) ([]byte, int, error) {
	dst, tooLong, err := appendLine(br, dst, lim.MaxLineBytes)
	if tooLong {
		return nil, 0, protoErr(lineStatus, "%s longer than %d bytes", firstLine, lim.MaxLineBytes)
	}
	if err != nil {
		return nil, 0, err
	}
	if len(dst) == 2 {
		return nil, 0, protoErr(statusBadRequest, "empty %s", firstLine)
	}
	start := len(dst)
	dst, n, err := appendSection(br, dst, lim)
	if err == io.EOF && len(dst) == start {
		err = io.ErrUnexpectedEOF
	}
	return dst, n, err
}

// appendSection appends the lines of a header or trailer section to dst,
// up to and without the empty line that ends it, and returns the number of
// lines. The section, with its end, may not exceed lim.MaxHeaderBytes nor
// hold more than lim.MaxHeaders lines.
func appendSection(br *bufio.Reader, dst []byte, lim Limits) ([]byte, int, error) {
	start := len(dst)
	for n := 0; ; n++ {
		budget := lim.MaxHeaderBytes - (len(dst) - start) - 2
		lineStart := len(dst)
		var tooLong bool
		var err error
		dst, tooLong, err = appendLine(br, dst, budget)
		if tooLong {
			return nil, 0, protoErr(statusHeaderTooLarge, "header section larger than %d bytes", lim.MaxHeaderBytes)
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, 0, err
		}
		if len(dst)-lineStart == 2 {
			return dst[:lineStart], n, nil
		}
		if n == lim.MaxHeaders {
			return nil, 0, protoErr(statusHeaderTooLarge, "more than %d header fields", lim.MaxHeaders)
		}
	}
}

// appendLine appends one line, with its CRLF, to dst. tooLong reports a
// line of more than limit bytes before its CRLF. A line that does not end
// in CRLF or holds a CR elsewhere is a protocol error. err is io.EOF if the
// connection closed before any byte of the line, io.ErrUnexpectedEOF if it
// closed within it.
func appendLine(br *bufio.Reader, dst []byte, limit int) (_ []byte, tooLong bool, err error) {
	start := len(dst)
	for {
		frag, err := br.ReadSlice('\n')
		if len(dst)-start+len(frag) > limit+2 {
			return dst, true, nil
		}
		dst = append(dst, frag...)
		if err == nil {
			break
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && len(dst) > start {
			err = io.ErrUnexpectedEOF
		}
		return dst, false, err
	}
	line := dst[start:]
	n := len(line)
	if n < 2 || line[n-2] != '\r' {
		return dst, false, protoErr(statusBadRequest, "line not terminated by CRLF (bare LF)")
	}
	if bytes.IndexByte(line[:n-2], '\r') >= 0 {
		return dst, false, protoErr(statusBadRequest, "bare CR in line")
	}
	return dst, false, nil
}

// parseFields parses lines, the field lines of a section (each ending in
// CRLF), appending them to h. Names and values slice lines.
func parseFields(lines string, h Header) (Header, *Error) {
	for lines != "" {
		i := strings.Index(lines, "\r\n")
		line := lines[:i]
		lines = lines[i+2:]
		if line[0] == ' ' || line[0] == '\t' {
			return nil, protoErr(statusBadRequest, "obsolete line folding")
		}
		colon := strings.IndexByte(line, ':')
		if colon < 0 {
			return nil, protoErr(statusBadRequest, "header line without a colon: %s", quote(line))
		}
		name := line[:colon]
		if c := name[max(len(name)-1, 0):]; c == " " || c == "\t" {
			return nil, protoErr(statusBadRequest, "whitespace between field name and colon: %s", quote(name))
		}
		if !isToken(name) {
			return nil, protoErr(statusBadRequest, "invalid field name %s", quote(name))
		}
		value := trimOWS(line[colon+1:])
		if !validFieldValue(value) {
			return nil, protoErr(statusBadRequest, "control character in the value of field %s", quote(name))
		}
		h = append(h, Field{Name: name, Value: value})
	}
	return h, nil
}

func parseRequest(s string, nfields int) (*Request, *Error) {
	i := strings.Index(s, "\r\n")
	line, lines := s[:i], s[i+2:]
	method, rest, ok1 := strings.Cut(line, " ")
	target, version, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return nil, protoErr(statusBadRequest, "malformed request line %s", quote(line))
	}
	if !isToken(method) {
		return nil, protoErr(statusBadRequest, "invalid method %s", quote(method))
	}
	req := &Request{Method: method, Target: target}
	switch version {
	case "HTTP/1.1":
		req.ProtoMinor = 1
	case "HTTP/1.0":
		req.ProtoMinor = 0
	default:
		if len(version) == 8 && strings.HasPrefix(version, "HTTP/") && isDigit(version[5]) && version[6] == '.' && isDigit(version[7]) {
			return nil, protoErr(statusVersionNotSupported, "HTTP version %s not supported", quote(version))
		}
		return nil, protoErr(statusBadRequest, "malformed HTTP version %s", quote(version))
	}
	if target == "" {
		return nil, protoErr(statusBadRequest, "malformed request line %s", quote(line))
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c >= 0x7f {
			return nil, protoErr(statusBadRequest, "invalid byte 0x%02x in request target", c)
		}
	}
	switch {
	case method == "CONNECT":
		return nil, protoErr(statusBadRequest, "CONNECT is not supported")
	case target[0] == '/':
	case target == "*":
		if method != "OPTIONS" {
			return nil, protoErr(statusBadRequest, "request target \"*\" is only for OPTIONS")
		}
	case strings.Contains(target, "://"):
		authority, rest, perr := splitAbsolute(target)
		if perr != nil {
			return nil, perr
		}
		req.Target, req.Host, req.AbsoluteForm = rest, authority, true
	default:
		return nil, protoErr(statusBadRequest, "request target must be origin-form (\"/path\"): %s", quote(target))
	}
	h, perr := parseFields(lines, make(Header, 0, nfields))
	if perr != nil {
		return nil, perr
	}
	req.Header = h
	return req, req.interpret()
}

// interpret derives Host, framing, keep-alive and Expect from the fields.
func (req *Request) interpret() *Error {
	absHost := req.Host // the target's authority, for an absolute-form one
	var (
		hosts, hostField     int
		cl                   int64 = -1
		te                   transferCoding
		closeConn, keepAlive bool
		upgradeTok           bool   // a Connection field names "upgrade"
		upgrade              string // the first Upgrade field
	)
	for i := range req.Header {
		f := &req.Header[i]
		switch fieldKind(f.Name) {
		case kindHost:
			hosts++
			hostField = i
			req.Host = f.Value
		case kindContentLength:
			n, ok := parseContentLength(f.Value)
			if !ok {
				return protoErr(statusBadRequest, "invalid Content-Length %s", quote(f.Value))
			}
			if cl >= 0 && n != cl {
				return protoErr(statusBadRequest, "conflicting Content-Length values")
			}
			cl = n
		case kindTransferEncoding:
			te.add(f.Value)
		case kindConnection:
			c, k, u := connectionOptions(f.Value)
			closeConn, keepAlive, upgradeTok = closeConn || c, keepAlive || k, upgradeTok || u
		case kindExpect:
			if strings.EqualFold(f.Value, "100-continue") {
				req.Expect100 = true
			}
		case kindUpgrade:
			if upgrade == "" {
				upgrade = strings.TrimSpace(f.Value)
			}
		}
	}
	switch {
	case hosts > 1:
		return protoErr(statusBadRequest, "more than one Host field")
	case req.AbsoluteForm:
		// The target's authority wins over the Host field, which must
		// then say the same to whoever reads the header.
		req.Host = absHost
		if hosts == 0 {
			req.Header = append(req.Header, Field{Name: "Host", Value: absHost})
		} else {
			req.Header[hostField].Value = absHost
		}
	case hosts == 0 && req.ProtoMinor == 1:
		return protoErr(statusBadRequest, "missing Host field")
	case hosts == 1 && !ValidHost(req.Host):
		return protoErr(statusBadRequest, "invalid Host %s", quote(req.Host))
	}
	switch {
	case te.present:
		if req.ProtoMinor == 0 {
			return protoErr(statusBadRequest, "Transfer-Encoding in an HTTP/1.0 request")
		}
		if cl >= 0 {
			return protoErr(statusBadRequest, "both Transfer-Encoding and Content-Length")
		}
		if te.other != "" {
			return protoErr(statusNotImplemented, "transfer coding %s not supported", quote(te.other))
		}
		if te.chunked != 1 || te.empty {
			return protoErr(statusBadRequest, "malformed Transfer-Encoding")
		}
		req.Body = Framing{ContentLength: -1, Chunked: true}
	case cl >= 0:
		req.Body = Framing{ContentLength: cl}
	default:
		req.Body = Framing{ContentLength: 0}
	}
	if req.ProtoMinor == 1 {
		req.KeepAlive = !closeConn
		// h2c is not an upgrade here: RFC 9113 retired it, and a client
		// offering it takes an HTTP/1.1 answer.
		if upgradeTok && upgrade != "" && !strings.EqualFold(upgrade, "h2c") {
			req.Upgrade = upgrade
		}
	} else {
		req.KeepAlive = keepAlive && !closeConn
	}
	return nil
}

func parseResponse(s string, nfields int, method, upgrade string) (*Response, *Error) {
	i := strings.Index(s, "\r\n")
	line, lines := s[:i], s[i+2:]
	resp := &Response{}
	if len(line) < 12 || line[8] != ' ' {
		return nil, protoErr(statusBadGateway, "malformed status line %s", quote(line))
	}
	switch line[:8] {
	case "HTTP/1.1":
		resp.ProtoMinor = 1
	case "HTTP/1.0":
		resp.ProtoMinor = 0
	default:
		return nil, protoErr(statusBadGateway, "unsupported version in status line %s", quote(line))
	}
	code := line[9:12]
	if !isDigit(code[0]) || code[0] == '0' || !isDigit(code[1]) || !isDigit(code[2]) {
		return nil, protoErr(statusBadGateway, "malformed status code %s", quote(code))
	}
	resp.Status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if len(line) > 12 {
		if line[12] != ' ' {
			return nil, protoErr(statusBadGateway, "malformed status line %s", quote(line))
		}
		resp.Reason = line[13:]
		if !validFieldValue(resp.Reason) {
			return nil, protoErr(statusBadGateway, "control character in reason phrase")
		}
	}
	h, perr := parseFields(lines, make(Header, 0, nfields))
	if perr != nil {
		return nil, perr
	}
	resp.Header = h
	return resp, resp.interpret(method, upgrade)
}

// interpret derives the framing and keep-alive of a response (RFC 9112
// section 6.3).
func (resp *Response) interpret(method, upgrade string) *Error {
	var (
		cl                   int64 = -1
		te                   transferCoding
		closeConn, keepAlive bool
	)
	for i := range resp.Header {
		f := &resp.Header[i]
		switch fieldKind(f.Name) {
		case kindContentLength:
			n, ok := parseContentLength(f.Value)
			if !ok {
				return protoErr(statusBadGateway, "invalid Content-Length %s", quote(f.Value))
			}
			if cl >= 0 && n != cl {
				return protoErr(statusBadGateway, "conflicting Content-Length values")
			}
			cl = n
		case kindTransferEncoding:
			te.add(f.Value)
		case kindConnection:
			c, k, _ := connectionOptions(f.Value)
			closeConn, keepAlive = closeConn || c, keepAlive || k
		}
	}
	if resp.ProtoMinor == 1 {
		resp.KeepAlive = !closeConn
	} else {
		resp.KeepAlive = keepAlive && !closeConn
	}
	st := resp.Status
	if st == 101 {
		if upgrade == "" {
			// The request asked for no upgrade.
			return protoErr(statusBadGateway, "unsolicited 101 Switching Protocols")
		}
		got := strings.TrimSpace(resp.Header.Get("Upgrade"))
		if !resp.Header.namedByConnection("upgrade") || !strings.EqualFold(got, upgrade) {
			return protoErr(statusBadGateway, "101 Switching Protocols to %s, not to the %s the request asked for", quote(got), quote(upgrade))
		}
		resp.Upgrade = got
		resp.NoBody = true
		resp.Body = Framing{ContentLength: 0}
		resp.KeepAlive = false
		return nil
	}
	switch {
	case method == "HEAD" || st/100 == 1 || st == 204 || st == 304:
		resp.NoBody = true
		resp.Body = Framing{ContentLength: 0}
	case method == "CONNECT" && st/100 == 2:
		// A tunnel, which the proxy does not open: nothing follows that
		// it could forward.
		resp.NoBody = true
		resp.Body = Framing{ContentLength: 0}
		resp.KeepAlive = false
	case te.present:
		if resp.ProtoMinor == 0 {
			return protoErr(statusBadGateway, "Transfer-Encoding in an HTTP/1.0 response")
		}
		if te.other != "" {
			return protoErr(statusBadGateway, "transfer coding %s not supported", quote(te.other))
		}
		if te.chunked != 1 || te.empty {
			return protoErr(statusBadGateway, "malformed Transfer-Encoding")
		}
		resp.Body = Framing{ContentLength: -1, Chunked: true}
		if cl >= 0 {
			// Both: Transfer-Encoding wins, and the connection cannot
			// be trusted with another message.
			resp.KeepAlive = false
		}
	case cl >= 0:
		resp.Body = Framing{ContentLength: cl}
	default:
		resp.Body = Framing{ContentLength: -1, UntilClose: true}
		resp.KeepAlive = false
	}
	return nil
}

// transferCoding accumulates the Transfer-Encoding fields of a message.
type transferCoding struct {
	present bool
	empty   bool   // an empty list element
	chunked int    // how many times "chunked" appears
	other   string // a coding other than chunked, if any
}

func (t *transferCoding) add(v string) {
	t.present = true
	for {
		elem, rest, more := strings.Cut(v, ",")
		elem = trimOWS(elem)
		switch {
		case elem == "":
			t.empty = true
		case strings.EqualFold(elem, "chunked"):
			t.chunked++
		case t.other == "":
			t.other = elem
		}
		if !more {
			return
		}
		v = rest
	}
}

// parseContentLength parses a Content-Length value: digits, or a list of
// equal ones. It fails on anything else and on values beyond int64.
func parseContentLength(v string) (int64, bool) {
	n := int64(-1)
	for {
		elem, rest, more := strings.Cut(v, ",")
		elem = trimOWS(elem)
		if elem == "" {
			return 0, false
		}
		var m int64
		for i := 0; i < len(elem); i++ {
			c := elem[i]
			if !isDigit(c) {
				return 0, false
			}
			d := int64(c - '0')
			if m > (1<<63-1-d)/10 {
				return 0, false
			}
			m = m*10 + d
		}
		if n >= 0 && m != n {
			return 0, false
		}
		n = m
		if !more {
			return n, true
		}
		v = rest
	}
}

// connectionOptions reports whether a Connection value holds "close" and
// "keep-alive".
func connectionOptions(v string) (closeConn, keepAlive, upgrade bool) {
	eachListElement(v, func(tok string) bool {
		switch {
		case strings.EqualFold(tok, "close"):
			closeConn = true
		case strings.EqualFold(tok, "keep-alive"):
			keepAlive = true
		case strings.EqualFold(tok, "upgrade"):
			upgrade = true
		}
		return true
	})
	return closeConn, keepAlive, upgrade
}

type kind uint8

const (
	kindOther kind = iota
	kindHost
	kindContentLength
	kindTransferEncoding
	kindConnection
	kindExpect
	kindUpgrade
)

func fieldKind(name string) kind {
	switch len(name) {
	case 4:
		if strings.EqualFold(name, "Host") {
			return kindHost
		}
	case 6:
		if strings.EqualFold(name, "Expect") {
			return kindExpect
		}
	case 7:
		if strings.EqualFold(name, "Upgrade") {
			return kindUpgrade
		}
	case 10:
		if strings.EqualFold(name, "Connection") {
			return kindConnection
		}
	case 14:
		if strings.EqualFold(name, "Content-Length") {
			return kindContentLength
		}
	case 17:
		if strings.EqualFold(name, "Transfer-Encoding") {
			return kindTransferEncoding
		}
	}
	return kindOther
}

// splitAbsolute splits an absolute-form request target into its authority
// and an origin-form target (its path and query, "/" when it has no path).
// A proxy forwards only http and https requests; the authority must name a
// host, and may not carry user information (RFC 9110 §4.2.4 deprecates it,
// and "trusted@evil" is a way to make one host look like another).
func splitAbsolute(target string) (authority, rest string, err *Error) {
	scheme, after, _ := strings.Cut(target, "://")
	if !strings.EqualFold(scheme, "http") && !strings.EqualFold(scheme, "https") {
		return "", "", protoErr(statusBadRequest, "absolute-form request target of scheme %s: only http and https are proxied", quote(scheme))
	}
	end := strings.IndexAny(after, "/?#")
	if end < 0 {
		end = len(after)
	}
	authority, rest = after[:end], after[end:]
	host := authority
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	switch {
	case strings.IndexByte(authority, '@') >= 0:
		return "", "", protoErr(statusBadRequest, "user information in the request target's authority is not allowed: %s", quote(target))
	case host == "":
		return "", "", protoErr(statusBadRequest, "absolute-form request target without a host: %s", quote(target))
	case !ValidHost(authority):
		return "", "", protoErr(statusBadRequest, "invalid authority %s in the request target", quote(authority))
	}
	switch {
	case rest == "":
		rest = "/"
	case rest[0] == '?':
		rest = "/" + rest
	case rest[0] == '#':
		return "", "", protoErr(statusBadRequest, "invalid request target: fragment (\"#\") not allowed")
	}
	return authority, rest, nil
}

// ValidHost reports whether h can be the Host of a request: an
// authority's host and port (reg-name, IPv4, bracketed IPv6), which rules
// out spaces, "/", "@", "?", "#", "\", controls and every byte from 0x80
// up. Empty is valid (RFC 9112 section 3.2). The HTTP/2 server applies it
// to :authority, so that both protocols accept the same hosts.
func ValidHost(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~!$&'()*+,;=:[]%", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validFieldValue reports whether v may be a field value: no controls
// other than HTAB (so no NUL, CR or LF), no DEL.
func validFieldValue[T string | []byte](v T) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// isToken reports whether s is an RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// isTokenChar reports whether c is a token character (RFC 9110 section
// 5.6.2).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
