package http1

import "strings"

// Field is one header field. Name is as received.
type Field struct {
	Name, Value string
}

// Header is a header section (or trailer section), in the order received.
// Names compare case-insensitively.
type Header []Field

// Values returns the values of every field named name, in order, or nil.
// It satisfies rules.HeaderView.
func (h Header) Values(name string) []string {
	n := 0
	for i := range h {
		if strings.EqualFold(h[i].Name, name) {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	vals := make([]string, 0, n)
	for i := range h {
		if strings.EqualFold(h[i].Name, name) {
			vals = append(vals, h[i].Value)
		}
	}
	return vals
}

// Get returns the value of the first field named name, or "".
func (h Header) Get(name string) string {
	for i := range h {
		if strings.EqualFold(h[i].Name, name) {
			return h[i].Value
		}
	}
	return ""
}

// Has reports whether a field named name is present.
func (h Header) Has(name string) bool {
	for i := range h {
		if strings.EqualFold(h[i].Name, name) {
			return true
		}
	}
	return false
}

// Add appends a field.
func (h *Header) Add(name, value string) {
	*h = append(*h, Field{Name: name, Value: value})
}

// Del removes every field named name, keeping the order of the rest.
func (h *Header) Del(name string) {
	out := (*h)[:0]
	for _, f := range *h {
		if !strings.EqualFold(f.Name, name) {
			out = append(out, f)
		}
	}
	clear((*h)[len(out):])
	*h = out
}

// Set replaces the fields named name by one field with value: in the place
// of the first of them if there was one, else at the end.
func (h *Header) Set(name, value string) {
	for i := range *h {
		if strings.EqualFold((*h)[i].Name, name) {
			(*h)[i] = Field{Name: name, Value: value}
			rest := (*h)[i+1:]
			rest.Del(name)
			*h = (*h)[:i+1+len(rest)]
			return
		}
	}
	h.Add(name, value)
}

// Clone returns a copy of h that does not share its array.
func (h Header) Clone() Header {
	if h == nil {
		return nil
	}
	return append(Header(make([]Field, 0, len(h))), h...)
}

// isHopByHop reports whether name is a field that belongs to one
// connection and is never forwarded: the framing fields are declared anew
// by the writers.
func isHopByHop(name string) bool {
	switch len(name) {
	case 2:
		return strings.EqualFold(name, "TE")
	case 7:
		return strings.EqualFold(name, "Trailer") || strings.EqualFold(name, "Upgrade")
	case 10:
		return strings.EqualFold(name, "Connection") || strings.EqualFold(name, "Keep-Alive")
	case 14:
		return strings.EqualFold(name, "Content-Length") || strings.EqualFold(name, "HTTP2-Settings")
	case 16:
		return strings.EqualFold(name, "Proxy-Connection")
	case 17:
		return strings.EqualFold(name, "Transfer-Encoding")
	}
	return false
}

// namedByConnection reports whether a Connection field of h lists name.
func (h Header) namedByConnection(name string) bool {
	for i := range h {
		if !strings.EqualFold(h[i].Name, "Connection") {
			continue
		}
		found := false
		eachListElement(h[i].Value, func(tok string) bool {
			found = strings.EqualFold(tok, name)
			return !found
		})
		if found {
			return true
		}
	}
	return false
}

// forwarded reports whether field f of h is forwarded to the next hop:
// not a hop-by-hop field, and not named by Connection (Host excepted: a
// request never loses its Host that way).
func (h Header) forwarded(f *Field) bool {
	if isHopByHop(f.Name) {
		return false
	}
	return fieldKind(f.Name) == kindHost || !h.namedByConnection(f.Name)
}

// RemoveHopByHop removes the fields that the head writers would not
// forward: the hop-by-hop fields and the fields the Connection fields name
// (Host excepted). The runtime calls it before applying policy mutations,
// so that a client cannot make the proxy drop a field the policy added or
// replaced by naming it in Connection.
func (h *Header) RemoveHopByHop() {
	// Decide on the original before changing anything: compacting in
	// place would overwrite the Connection fields the decisions read.
	hh := *h
	keep := 0
	for i := range hh {
		if hh.forwarded(&hh[i]) {
			keep++
		}
	}
	if keep == len(hh) {
		return
	}
	out := make(Header, 0, keep)
	for i := range hh {
		if hh.forwarded(&hh[i]) {
			out = append(out, hh[i])
		}
	}
	*h = out
}

// eachListElement calls fn with every non-empty element of a
// comma-separated list, trimmed of optional whitespace, until fn returns
// false.
func eachListElement(v string, fn func(string) bool) {
	for v != "" {
		elem, rest, _ := strings.Cut(v, ",")
		v = rest
		if elem = trimOWS(elem); elem != "" && !fn(elem) {
			return
		}
	}
}

// trimOWS trims spaces and horizontal tabs at both ends.
func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
