// Package normalize puts an HTTP request target into the one canonical form
// that membrane-proxy both checks against policy and forwards upstream.
//
// A policy that allows "/public/.*" must not let "/public/..%2fadmin" or
// "/public/%2e%2e/admin" reach "/admin" on a server that decodes or resolves
// what the proxy did not. Target removes that ambiguity before matching:
// percent-encoded unreserved characters (ALPHA, DIGIT, "-", ".", "_", "~")
// are decoded, every other percent-encoding is written with upper-case hex,
// runs of "/" are merged, and dot segments are removed (RFC 3986 section
// 5.2.4, applied after decoding, so "%2e%2e" is ".."; ".." at the root
// stays at the root). Slashes merge first: an empty segment is no segment,
// so "/a//../b" is "/b", as a server that merges slashes resolves it. Because the proxy
// forwards the normalised target, the upstream sees exactly what was
// checked.
//
// What cannot be made unambiguous is refused: encoded slashes and
// backslashes (%2F, %5C), encoded NUL (%00), malformed percent-encodings, a
// raw backslash, a fragment ("#"), raw bytes that a request must
// percent-encode (controls, space, DEL and bytes of 0x80 and above), and
// dot segments with parameters (".;x", "..;x"), which servers that strip
// path parameters resolve as dot segments ("/public/..;/admin" is "/admin"
// to a Java servlet container). The
// query is not rewritten: it is kept byte for byte as sent, but it may not
// contain those raw bytes or a "#" either. An error's message is one line
// that the proxy sends back with its 400 response.
//
// Target does not allocate when the target is already in normal form, which
// is the common case.
package normalize
