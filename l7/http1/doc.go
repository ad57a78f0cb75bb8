// Package http1 is a strict HTTP/1.x message codec for membrane-proxy: it
// reads request and response heads, writes them for the other side, and
// copies bodies between the two, re-framing them on the way. It is not a
// server framework: the proxy runtime owns connections, deadlines and the
// request loop, and calls these primitives on bufio readers and writers.
//
// A proxy that enforces policy must see each message exactly as the
// upstream will, so the codec accepts one reading of the bytes and refuses
// everything else (RFC 9112 and docs/L7.md): request lines of a token
// method, an origin-form (or "*") target and "HTTP/1.0" or "HTTP/1.1" (an
// absolute-form http or https target is taken apart into an origin-form one
// and its authority, which becomes the Host); lines ending in CRLF, with no
// bare CR or LF anywhere in a head; field names that are tokens with no
// whitespace before the colon; no obsolete line folding; no control
// characters in values; exactly one valid Host in an HTTP/1.1 request with
// an origin-form target; Content-Length values that agree; Transfer-Encoding
// that is exactly "chunked", never together with Content-Length and never
// in an HTTP/1.0 request. A violation is an *Error carrying the status to
// answer (400, 414 or 431 for sizes, 501 for transfer codings, 505 for
// versions); the runtime answers it and closes the connection.
//
// Heads are written for the next hop, never copied: hop-by-hop fields
// (Connection and the fields it names, Keep-Alive, Proxy-Connection, TE,
// Trailer, Transfer-Encoding, Upgrade, Content-Length, HTTP2-Settings) are
// removed and the framing is declared anew. Chunked bodies are decoded and
// re-encoded, never copied raw, and a body is never written past the length
// its head declared, so no byte the proxy did not parse as body reaches the
// other side as one.
//
// The package allocates little: a head is read into one string that every
// field name and value slices, and bodies are copied out of the reader's
// buffer without an intermediate one. The writers do not flush; CopyBody
// flushes after every piece of body it forwards and when the body ends, so
// a head followed by CopyBody is on the wire when CopyBody returns.
package http1
