package http1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// CopyBody copies one message body from src, framed as in, to dst, framed
// as out (the framing the head written before declared; RequestFraming and
// ResponseFraming give it). A chunked body is decoded and re-encoded,
// never copied raw: chunk extensions are dropped, and the trailer section
// is parsed under lim and forwarded (minus hop-by-hop fields and Host) when
// out is chunked. UntilClose reads to EOF. A body that does not fit out (a
// Content-Length of out that the body would exceed or not reach) is an
// error, and no byte beyond the declared length is written.
//
// CopyBody flushes dst whenever it has forwarded all that src had buffered,
// before it would wait for more, and at the end, so bodies stream. It
// returns the number of body bytes copied. Protocol errors in src are
// *Error (400, or 431 for a trailer section over the limits); a connection
// that ends within a body is io.ErrUnexpectedEOF, wrapped.
func CopyBody(dst *bufio.Writer, out Framing, src *bufio.Reader, in Framing, lim Limits) (int64, error) {
	lim = lim.withDefaults()
	if !out.Chunked && !out.UntilClose && out.ContentLength < 0 {
		return 0, errors.New("copy body: output framing has no length")
	}
	w := bodyWriter{dst: dst, out: out}
	var trailer Header
	var err error
	switch {
	case in.Chunked:
		trailer, err = copyChunked(&w, src, lim)
	case in.UntilClose:
		err = copyN(&w, src, -1)
	case in.ContentLength >= 0:
		err = copyN(&w, src, in.ContentLength)
	default:
		err = errors.New("input framing has no length")
	}
	if err == nil {
		err = w.finish(trailer)
	}
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) {
			return w.written, pe
		}
		return w.written, fmt.Errorf("copy body: %w", err)
	}
	return w.written, nil
}

// bodyWriter writes body data framed as out.
type bodyWriter struct {
	dst     *bufio.Writer
	out     Framing
	written int64
}

func (w *bodyWriter) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if !w.out.Chunked && !w.out.UntilClose && int64(len(p)) > w.out.ContentLength-w.written {
		return fmt.Errorf("body longer than the declared Content-Length %d", w.out.ContentLength)
	}
	if w.out.Chunked {
		size := strconv.AppendInt(w.dst.AvailableBuffer(), int64(len(p)), 16)
		size = append(size, '\r', '\n')
		if _, err := w.dst.Write(size); err != nil {
			return fmt.Errorf("write body: %w", err)
		}
	}
	if _, err := w.dst.Write(p); err != nil {
		return fmt.Errorf("write body: %w", err)
	}
	if w.out.Chunked {
		if _, err := w.dst.WriteString("\r\n"); err != nil {
			return fmt.Errorf("write body: %w", err)
		}
	}
	w.written += int64(len(p))
	return nil
}

func (w *bodyWriter) flush() error {
	if w.dst.Buffered() == 0 {
		return nil
	}
	if err := w.dst.Flush(); err != nil {
		return fmt.Errorf("write body: %w", err)
	}
	return nil
}

// flushUnlessLineBuffered flushes unless src holds a whole line, that is,
// before reading a line from src could wait for the peer.
func (w *bodyWriter) flushUnlessLineBuffered(src *bufio.Reader) error {
	if b, _ := src.Peek(src.Buffered()); bytes.IndexByte(b, '\n') >= 0 {
		return nil
	}
	return w.flush()
}

// finish ends the body: the last chunk and the trailer section for
// chunked output, a length check otherwise; then flushes.
func (w *bodyWriter) finish(trailer Header) error {
	switch {
	case w.out.Chunked:
		w.dst.WriteString("0\r\n")
		for i := range trailer {
			f := &trailer[i]
			if trailer.forwarded(f) && fieldKind(f.Name) != kindHost {
				writeField(w.dst, f.Name, f.Value)
			}
		}
		w.dst.WriteString("\r\n")
	case !w.out.UntilClose && w.written != w.out.ContentLength:
		return fmt.Errorf("body of %d bytes shorter than the declared Content-Length %d", w.written, w.out.ContentLength)
	}
	if err := w.dst.Flush(); err != nil {
		return fmt.Errorf("write body: %w", err)
	}
	return nil
}

// copyN copies n bytes (n < 0: until EOF) from src to w, straight out of
// src's buffer.
func copyN(w *bodyWriter, src *bufio.Reader, n int64) error {
	for left := n; left != 0; {
		if src.Buffered() == 0 {
			// About to wait for the peer: let what we have go first.
			if err := w.flush(); err != nil {
				return err
			}
		}
		if _, err := src.Peek(1); err != nil {
			if err == io.EOF {
				if n < 0 {
					return nil
				}
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read body: %w", err)
		}
		k := src.Buffered()
		if left >= 0 && int64(k) > left {
			k = int(left)
		}
		p, _ := src.Peek(k)
		if err := w.write(p); err != nil {
			return err
		}
		src.Discard(k)
		if left > 0 {
			left -= int64(k)
		}
	}
	return nil
}

// copyChunked decodes a chunked body from src into w and returns its
// trailer section.
func copyChunked(w *bodyWriter, src *bufio.Reader, lim Limits) (Header, error) {
	for {
		if err := w.flushUnlessLineBuffered(src); err != nil {
			return nil, err
		}
		var stack [64]byte
		line, tooLong, err := appendLine(src, stack[:0], lim.MaxLineBytes)
		if tooLong {
			return nil, protoErr(statusBadRequest, "chunk size line longer than %d bytes", lim.MaxLineBytes)
		}
		if err != nil {
			return nil, chunkReadErr(err)
		}
		size, perr := parseChunkSize(line[:len(line)-2])
		if perr != nil {
			return nil, perr
		}
		if size == 0 {
			break
		}
		if err := copyN(w, src, size); err != nil {
			return nil, err
		}
		if src.Buffered() < 2 {
			if err := w.flush(); err != nil {
				return nil, err
			}
		}
		crlf, err := src.Peek(2)
		if len(crlf) == 2 && crlf[0] == '\r' && crlf[1] == '\n' {
			src.Discard(2)
			continue
		}
		if err != nil && (len(crlf) == 0 || crlf[0] == '\r') {
			return nil, chunkReadErr(err) // the connection ended
		}
		return nil, protoErr(statusBadRequest, "chunk data not followed by CRLF")
	}
	if err := w.flushUnlessLineBuffered(src); err != nil {
		return nil, err
	}
	var stack [256]byte
	section, n, err := appendSection(src, stack[:0], lim)
	if err != nil {
		return nil, chunkReadErr(err)
	}
	if n == 0 {
		return nil, nil
	}
	trailer, perr := parseFields(string(section), make(Header, 0, n))
	if perr != nil {
		return nil, perr
	}
	return trailer, nil
}

func chunkReadErr(err error) error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read chunked body: %w", err)
}

// parseChunkSize parses a chunk-size line without its CRLF: at most 16 hex
// digits, then optionally chunk extensions, which are checked for
// characters and dropped.
func parseChunkSize(line []byte) (int64, *Error) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		d, ok := hexValue(line[i])
		if !ok {
			break
		}
		if i == 16 || n > (1<<63-1)>>4 {
			return 0, protoErr(statusBadRequest, "chunk size too large")
		}
		n = n<<4 | int64(d)
	}
	if i == 0 {
		return 0, protoErr(statusBadRequest, "malformed chunk size %s", quote(string(line)))
	}
	ext := line[i:]
	for len(ext) > 0 && (ext[0] == ' ' || ext[0] == '\t') {
		ext = ext[1:]
	}
	// Whitespace may only come before a ";" (BWS).
	if len(ext) > 0 && ext[0] != ';' || len(ext) == 0 && i < len(line) {
		return 0, protoErr(statusBadRequest, "malformed chunk size %s", quote(string(line)))
	}
	if !validFieldValue(ext) {
		return 0, protoErr(statusBadRequest, "control character in chunk extension")
	}
	return n, nil
}

func hexValue(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
