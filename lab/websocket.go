package lab

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"
)

// The responder's WebSocket endpoint: any path, upgraded with the
// RFC 6455 handshake, echoes every data frame and answers pings; for L7
// tests of upgrades through the node proxy.

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// WebSocketAccept is the Sec-WebSocket-Accept value for a handshake key.
func WebSocketAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// isWebSocket reports whether req asks to upgrade to WebSocket.
func isWebSocket(req *http.Request) bool {
	if !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") || req.Header.Get("Sec-WebSocket-Key") == "" {
		return false
	}
	for _, v := range req.Header.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

// serveWebSocket completes the handshake and echoes until the client
// closes, or a minute passes without a frame.
func (r *responder) serveWebSocket(w http.ResponseWriter, req *http.Request) {
	nc, rw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		http.Error(w, "cannot upgrade: "+err.Error(), http.StatusInternalServerError)
		return
	}
	defer nc.Close()
	rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + WebSocketAccept(req.Header.Get("Sec-WebSocket-Key")) + "\r\n" +
		"X-Membrane-Pod: " + r.pod + "\r\n\r\n")
	if rw.Flush() != nil {
		return
	}
	for {
		nc.SetReadDeadline(time.Now().Add(time.Minute))
		op, payload, err := ReadWebSocketFrame(rw.Reader)
		if err != nil {
			return
		}
		switch op {
		case wsClose:
			WriteWebSocketFrame(rw.Writer, wsClose, payload, false)
			rw.Flush()
			return
		case wsPing:
			op = wsPong
		case wsPong:
			continue
		}
		if WriteWebSocketFrame(rw.Writer, op, payload, false) != nil || rw.Flush() != nil {
			return
		}
	}
}

// WebSocket opcodes.
const (
	wsText  = 0x1
	wsClose = 0x8
	wsPing  = 0x9
	wsPong  = 0xA
	// WebSocketText is the opcode of a text frame.
	WebSocketText = wsText
)

// wsMaxPayload bounds the frames the responder reads.
const wsMaxPayload = 1 << 20

// ReadWebSocketFrame reads one unfragmented frame and returns its opcode
// and unmasked payload.
func ReadWebSocketFrame(br *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 {
		return 0, nil, errors.New("websocket: fragmented frames are not supported")
	}
	op := h[0] & 0x0f
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > wsMaxPayload {
		return 0, nil, errors.New("websocket: frame too large")
	}
	var mask [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(br, mask[:]); err != nil {
			return 0, nil, err
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range p {
			p[i] ^= mask[i%4]
		}
	}
	return op, p, nil
}

// WriteWebSocketFrame writes one final frame; a client masks its frames
// (RFC 6455 section 5.3), a server does not. It does not flush.
func WriteWebSocketFrame(bw *bufio.Writer, op byte, payload []byte, mask bool) error {
	bw.WriteByte(0x80 | op)
	m := byte(0)
	if mask {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		bw.WriteByte(m | byte(n))
	case n < 1<<16:
		bw.WriteByte(m | 126)
		bw.Write(binary.BigEndian.AppendUint16(nil, uint16(n)))
	default:
		bw.WriteByte(m | 127)
		bw.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
	}
	if !mask {
		_, err := bw.Write(payload)
		return err
	}
	var key [4]byte
	rand.Read(key[:])
	bw.Write(key[:])
	out := make([]byte, len(payload))
	for i := range payload {
		out[i] = payload[i] ^ key[i%4]
	}
	_, err := bw.Write(out)
	return err
}
