package http1

import "fmt"

// Error is a protocol error: the runtime answers Status with Reason as the
// body and closes the connection. Reason is one line.
type Error struct {
	Status int
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("http1: %s (status %d)", e.Reason, e.Status)
}

func protoErr(status int, format string, args ...any) *Error {
	return &Error{Status: status, Reason: fmt.Sprintf(format, args...)}
}

// Statuses of protocol errors.
const (
	statusBadRequest          = 400
	statusURITooLong          = 414
	statusHeaderTooLarge      = 431
	statusNotImplemented      = 501
	statusBadGateway          = 502
	statusVersionNotSupported = 505
)

// Limits bound what the codec reads. Zero (or negative) fields take the
// defaults of DefaultLimits.
type Limits struct {
	MaxLineBytes   int // request line, status line or chunk-size line; default 8 KiB
	MaxHeaderBytes int // whole header section (or trailer section); default 60 KiB
	MaxHeaders     int // number of header fields; default 100
}

const (
	defaultMaxLineBytes   = 8 << 10
	defaultMaxHeaderBytes = 60 << 10
	defaultMaxHeaders     = 100
)

// DefaultLimits are the limits used for zero fields of a Limits. It
// documents them: the codec takes the defaults from constants, so changing
// this variable changes nothing.
var DefaultLimits = Limits{
	MaxLineBytes:   defaultMaxLineBytes,
	MaxHeaderBytes: defaultMaxHeaderBytes,
	MaxHeaders:     defaultMaxHeaders,
}

func (l Limits) withDefaults() Limits {
	if l.MaxLineBytes <= 0 {
		l.MaxLineBytes = defaultMaxLineBytes
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = defaultMaxHeaderBytes
	}
	if l.MaxHeaders <= 0 {
		l.MaxHeaders = defaultMaxHeaders
	}
	return l
}

// quote returns s for a reason: quoted, and cut if long.
func quote(s string) string {
	const maxLen = 64
	if len(s) > maxLen {
		return fmt.Sprintf("%q...", s[:maxLen])
	}
	return fmt.Sprintf("%q", s)
}
