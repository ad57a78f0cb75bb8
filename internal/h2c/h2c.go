// Package h2c sets net/http up for HTTP/2 with prior knowledge (h2c): the
// HTTP/2 the node proxy serves and speaks upstream, and the lab's
// responders and clients use. net/http has spoken it since Go 1.24
// (http.Protocols); golang.org/x/net/http2's Server and Transport, which
// did this before, are deprecated in its favour.
package h2c

import (
	"context"
	"net"
	"net/http"
)

// Protocols is the protocol set of h2c alone: a server with it serves
// nothing else, a transport with it speaks HTTP/2 on http:// URLs.
func Protocols() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// AndHTTP1 is the protocol set of HTTP/1 and h2c: a server with it tells
// them apart by h2c's preface.
func AndHTTP1() *http.Protocols {
	p := Protocols()
	p.SetHTTP1(true)
	return p
}

// Transport returns a transport speaking h2c over connections from dial.
func Transport(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Transport {
	return &http.Transport{Protocols: Protocols(), DialContext: dial}
}
