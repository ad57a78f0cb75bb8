package normalize

import (
	"errors"
	"fmt"
	"strings"
)

// Target normalises an origin-form request target ("/path?query") before
// policy matching and forwarding, so that the upstream sees exactly what the
// policy checked. It returns the normalised target, or an error whose
// message is one line saying what is wrong (the caller answers 400 with it).
//
// The asterisk-form "*" (OPTIONS) is returned unchanged. Anything else must
// start with "/". See the package documentation for the rules.
func Target(target string) (string, error) {
	if target == "*" {
		return target, nil
	}
	if target == "" {
		return "", fmt.Errorf("invalid request target: empty")
	}
	if target[0] != '/' {
		return "", fmt.Errorf("invalid request target: must start with \"/\" (origin-form)")
	}
	path, query := target, ""
	if i := strings.IndexByte(target, '?'); i >= 0 {
		path, query = target[:i], target[i:]
	}
	if err := checkQuery(query); err != nil {
		return "", err
	}
	normal, err := checkPath(path)
	if err != nil {
		return "", err
	}
	if normal {
		return target, nil
	}
	var stack [256]byte // most targets fit: the copy below is the only allocation
	buf, err := appendPath(stack[:0], path)
	if err != nil {
		return "", err
	}
	buf = append(buf, query...)
	return string(buf), nil
}

// checkQuery rejects the raw bytes a query may not carry. The query is
// otherwise kept as sent: it is not decoded, and a malformed percent-encoding
// in it is the application's business.
func checkQuery(q string) error {
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '#':
			return fmt.Errorf("invalid request target: fragment (\"#\") not allowed")
		case mustEncode(c):
			return fmt.Errorf("invalid request target: raw byte 0x%02x in query (must be percent-encoded)", c)
		}
	}
	return nil
}

// checkPath validates path (which starts with "/") and reports whether it is
// already in normal form, in which case Target can return its input as is.
func checkPath(path string) (normal bool, err error) {
	normal = true
	segStart := 1
	for i := 1; i <= len(path); i++ {
		if i == len(path) || path[i] == '/' {
			seg := path[segStart:i]
			if (seg == "" && i < len(path)) || seg == "." || seg == ".." {
				normal = false
			}
			if isDotWithParams(seg) {
				return false, errDotParams()
			}
			segStart = i + 1
			continue
		}
		c := path[i]
		switch {
		case c == '%':
			if i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2]) {
				end := min(i+3, len(path))
				return false, fmt.Errorf("invalid request target: malformed percent-encoding %q in path", path[i:end])
			}
			v := unhex(path[i+1])<<4 | unhex(path[i+2])
			switch v {
			case '/':
				return false, fmt.Errorf("invalid request target: encoded slash %q in path", path[i:i+3])
			case '\\':
				return false, fmt.Errorf("invalid request target: encoded backslash %q in path", path[i:i+3])
			case 0:
				return false, fmt.Errorf("invalid request target: encoded NUL %q in path", path[i:i+3])
			}
			if isUnreserved(v) || isLowerHex(path[i+1]) || isLowerHex(path[i+2]) {
				normal = false
			}
			i += 2
		case c == '\\':
			return false, fmt.Errorf("invalid request target: backslash in path")
		case c == '#':
			return false, fmt.Errorf("invalid request target: fragment (\"#\") not allowed")
		case mustEncode(c):
			return false, fmt.Errorf("invalid request target: raw byte 0x%02x in path (must be percent-encoded)", c)
		}
	}
	return normal, nil
}

// appendPath appends the normal form of path, which checkPath accepted, to
// buf: every segment is decoded as it is copied, then dropped ("" and "."),
// or dropped together with the segment before it (".."). Empty segments are
// what runs of slashes leave, so dropping them merges the slashes. A path
// whose last segment was dropped keeps a trailing slash ("/a/b/.." is
// "/a/"), as RFC 3986 section 5.2.4 does.
func appendPath(buf []byte, path string) ([]byte, error) {
	base := len(buf)
	trailing := false
	rest := path[1:]
	for {
		seg, after, more := strings.Cut(rest, "/")
		mark := len(buf)
		buf = append(buf, '/')
		buf = appendDecoded(buf, seg)
		d := buf[mark+1:]
		if isDotWithParams(d) {
			return nil, errDotParams()
		}
		switch {
		case len(d) == 0 || (len(d) == 1 && d[0] == '.'):
			buf = buf[:mark]
			trailing = !more
		case len(d) == 2 && d[0] == '.' && d[1] == '.':
			buf = buf[:mark]
			// Remove the previous segment; at the root there is none.
			for len(buf) > base {
				c := buf[len(buf)-1]
				buf = buf[:len(buf)-1]
				if c == '/' {
					break
				}
			}
			trailing = !more
		default:
			trailing = false
		}
		if !more {
			break
		}
		rest = after
	}
	if trailing || len(buf) == base {
		buf = append(buf, '/')
	}
	return buf, nil
}

// isDotWithParams reports whether seg is a dot segment with parameters,
// such as "..;x": servers that strip path parameters (Java servlet
// containers) resolve it as "..", so "/public/..;/admin" would reach
// "/admin" there while looking like a path under "/public/" here.
func isDotWithParams[T string | []byte](seg T) bool {
	return len(seg) >= 2 && seg[0] == '.' && (seg[1] == ';' || len(seg) >= 3 && seg[1] == '.' && seg[2] == ';')
}

// errDotParams is returned for dot segments with parameters.
func errDotParams() error {
	return errors.New("invalid request target: dot segment with parameters (\"..;\") in path")
}

// appendDecoded appends seg, a valid path segment, decoding percent-encoded
// unreserved characters and upper-casing the hex digits of the rest.
func appendDecoded(buf []byte, seg string) []byte {
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		if c != '%' {
			buf = append(buf, c)
			continue
		}
		v := unhex(seg[i+1])<<4 | unhex(seg[i+2])
		if isUnreserved(v) {
			buf = append(buf, v)
		} else {
			buf = append(buf, '%', upperHex[v>>4], upperHex[v&0xf])
		}
		i += 2
	}
	return buf
}

const upperHex = "0123456789ABCDEF"

// mustEncode reports whether c may not appear raw in a request target:
// controls, space, DEL, and every byte that is not ASCII.
func mustEncode(c byte) bool { return c <= ' ' || c >= 0x7f }

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isLowerHex(c byte) bool { return 'a' <= c && c <= 'f' }

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
