package http1

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
)

// RequestFraming is the framing WriteRequestHead declares for req, and so
// the out framing to give CopyBody: chunked if the request is chunked or
// its length is unknown (ContentLength < 0), else its Content-Length.
func RequestFraming(req *Request) Framing {
	if req.Body.Chunked || req.Body.ContentLength < 0 {
		return Framing{ContentLength: -1, Chunked: true}
	}
	return Framing{ContentLength: req.Body.ContentLength}
}

// ResponseFraming is the framing WriteResponseHead declares for resp to a
// client of version HTTP/1.protoMinor, and so the out framing to give
// CopyBody: no body for NoBody responses; the Content-Length when it is
// known; otherwise chunked for an HTTP/1.1 client, or until close for an
// HTTP/1.0 one (the connection must then close after the body).
func ResponseFraming(resp *Response, protoMinor int) Framing {
	switch {
	case resp.NoBody:
		return Framing{ContentLength: 0}
	case !resp.Body.Chunked && !resp.Body.UntilClose && resp.Body.ContentLength >= 0:
		return Framing{ContentLength: resp.Body.ContentLength}
	case protoMinor >= 1:
		return Framing{ContentLength: -1, Chunked: true}
	default:
		return Framing{ContentLength: -1, UntilClose: true}
	}
}

// WriteRequestHead writes the head of req for the upstream, always as
// HTTP/1.1: the request line with target (the normalised target the policy
// checked); the header fields in order minus the hop-by-hop ones
// (Connection and every field it names, Keep-Alive, Proxy-Connection, TE,
// Trailer, Transfer-Encoding, Upgrade, Content-Length, HTTP2-Settings);
// "Host: req.Host" if the header has no Host field (an HTTP/1.0 request:
// the runtime may set req.Host to the original destination first); then
// the framing of RequestFraming: "Transfer-Encoding: chunked", or
// "Content-Length: n" (left out for an empty body of GET, HEAD, DELETE and
// TRACE requests that had no Content-Length field). It validates everything
// it writes (a header changed by policy mutations could be invalid) and
// writes nothing if anything is. It does not flush.
func WriteRequestHead(bw *bufio.Writer, req *Request, target string) error {
	if !isToken(req.Method) {
		return fmt.Errorf("write request head: invalid method %s", quote(req.Method))
	}
	if !validTarget(target) {
		return fmt.Errorf("write request head: invalid request target %s", quote(target))
	}
	hasHost := false
	for i := range req.Header {
		f := &req.Header[i]
		if err := checkField(f); err != nil {
			return fmt.Errorf("write request head: %w", err)
		}
		if fieldKind(f.Name) == kindHost {
			hasHost = true
		}
	}
	if !hasHost && !ValidHost(req.Host) {
		return fmt.Errorf("write request head: invalid Host %s", quote(req.Host))
	}

	if req.Upgrade != "" && !validFieldValue(req.Upgrade) {
		return fmt.Errorf("write request head: invalid Upgrade %s", quote(req.Upgrade))
	}

	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(target)
	bw.WriteString(" HTTP/1.1\r\n")
	writeFields(bw, req.Header)
	if req.Upgrade != "" {
		bw.WriteString("Connection: Upgrade\r\n")
		writeField(bw, "Upgrade", req.Upgrade)
	}
	if !hasHost {
		writeField(bw, "Host", req.Host)
	}
	out := RequestFraming(req)
	switch {
	case out.Chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case out.ContentLength == 0 && !req.Header.Has("Content-Length") && noBodySemantics(req.Method):
	default:
		writeContentLength(bw, out.ContentLength)
	}
	if _, err := bw.WriteString("\r\n"); err != nil {
		return fmt.Errorf("write request head: %w", err)
	}
	return nil
}

// WriteResponseHead writes the head of resp for the downstream client,
// whose request was HTTP/1.protoMinor: always as HTTP/1.1 (RFC 9110
// section 6.2), hop-by-hop fields removed, framing declared anew as
// ResponseFraming says (a HEAD or 304 response keeps a Content-Length it
// had), "Connection: close" when keepAlive is false or the body runs until
// close, and "Connection: keep-alive" for an HTTP/1.0 client otherwise.
// An informational (1xx) response to an HTTP/1.0 client is not written
// (RFC 9110 section 15.2). It does not flush.
func WriteResponseHead(bw *bufio.Writer, resp *Response, protoMinor int, keepAlive bool) error {
	if resp.Status < 100 || resp.Status > 999 {
		return fmt.Errorf("write response head: invalid status %d", resp.Status)
	}
	if !validFieldValue(resp.Reason) {
		return fmt.Errorf("write response head: invalid reason phrase %s", quote(resp.Reason))
	}
	for i := range resp.Header {
		if err := checkField(&resp.Header[i]); err != nil {
			return fmt.Errorf("write response head: %w", err)
		}
	}
	info := resp.Status < 200
	if info && protoMinor == 0 {
		return nil
	}
	if resp.Upgrade != "" && (resp.Status != 101 || !validFieldValue(resp.Upgrade)) {
		return fmt.Errorf("write response head: Upgrade %s on a %d response", quote(resp.Upgrade), resp.Status)
	}
	writeStatusLine(bw, resp.Status, resp.Reason)
	writeFields(bw, resp.Header)
	if resp.Upgrade != "" {
		bw.WriteString("Connection: Upgrade\r\n")
		writeField(bw, "Upgrade", resp.Upgrade)
	}
	if !info {
		out := ResponseFraming(resp, protoMinor)
		switch {
		case resp.NoBody:
			// A HEAD or 304 response may say how long the body would
			// be; 204 (and 1xx) may not.
			if resp.Status != 204 {
				if v := resp.Header.Get("Content-Length"); v != "" {
					if n, ok := parseContentLength(v); ok {
						writeContentLength(bw, n)
					}
				}
			}
		case out.Chunked:
			bw.WriteString("Transfer-Encoding: chunked\r\n")
		case out.UntilClose:
			keepAlive = false
		default:
			writeContentLength(bw, out.ContentLength)
		}
		switch {
		case !keepAlive:
			bw.WriteString("Connection: close\r\n")
		case protoMinor == 0:
			bw.WriteString("Connection: keep-alive\r\n")
		}
	}
	if _, err := bw.WriteString("\r\n"); err != nil {
		return fmt.Errorf("write response head: %w", err)
	}
	return nil
}

// WriteSimpleResponse writes a complete response the proxy makes itself
// (403 Access denied, 400 ...): the status line, Content-Type (text/plain
// if contentType is empty), Content-Length, "Connection: close" if
// closeConn (else "Connection: keep-alive" for an HTTP/1.0 client), and the
// body. It flushes bw.
func WriteSimpleResponse(bw *bufio.Writer, protoMinor, status int, contentType, body string, closeConn bool) error {
	if status < 200 || status > 999 {
		return fmt.Errorf("write response: invalid status %d for a complete response", status)
	}
	noBody := status == 204 || status == 304
	if noBody && body != "" {
		return fmt.Errorf("write response: a %d response has no body", status)
	}
	if contentType == "" {
		contentType = "text/plain"
	}
	if !validFieldValue(contentType) {
		return fmt.Errorf("write response: invalid Content-Type %s", quote(contentType))
	}
	writeStatusLine(bw, status, http.StatusText(status))
	writeField(bw, "Content-Type", contentType)
	if !noBody {
		writeContentLength(bw, int64(len(body)))
	}
	switch {
	case closeConn:
		bw.WriteString("Connection: close\r\n")
	case protoMinor == 0:
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
	bw.WriteString(body)
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write response: %w", err)
	}
	return nil
}

func writeStatusLine(bw *bufio.Writer, status int, reason string) {
	bw.WriteString("HTTP/1.1 ")
	// Appending to the writer's free space allocates nothing (a local
	// array would escape through Write).
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(status), 10))
	bw.WriteByte(' ')
	bw.WriteString(reason)
	bw.WriteString("\r\n")
}

// writeFields writes the fields of h that are forwarded to the next hop.
func writeFields(bw *bufio.Writer, h Header) {
	for i := range h {
		if h.forwarded(&h[i]) {
			writeField(bw, h[i].Name, h[i].Value)
		}
	}
}

func writeField(bw *bufio.Writer, name, value string) {
	bw.WriteString(name)
	bw.WriteString(": ")
	bw.WriteString(value)
	bw.WriteString("\r\n")
}

func writeContentLength(bw *bufio.Writer, n int64) {
	bw.WriteString("Content-Length: ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), n, 10))
	bw.WriteString("\r\n")
}

// checkField validates a field before it is written.
func checkField(f *Field) error {
	if !isToken(f.Name) {
		return fmt.Errorf("invalid field name %s", quote(f.Name))
	}
	if !validFieldValue(f.Value) {
		return fmt.Errorf("invalid value of field %s", quote(f.Name))
	}
	return nil
}

// validTarget reports whether t can be written as a request target.
func validTarget(t string) bool {
	if t == "" {
		return false
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// noBodySemantics reports whether a request of method m is not expected
// to carry content, so that an empty body needs no Content-Length.
func noBodySemantics(m string) bool {
	switch m {
	case "GET", "HEAD", "DELETE", "TRACE":
		return true
	}
	return false
}
