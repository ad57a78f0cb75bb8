package datastore

import (
	"strconv"
	"strings"
)

// Error is one problem found in the input, formatted as
//
//	<source>: <Kind> <namespace>/<name>: <field path>: <message>
//
// with the parts that are unknown left out, and "line N" after the source
// when the problem is a YAML syntax error.
type Error struct {
	Source string // file, with "#N" for the Nth document of a multi-document file; "" if unknown
	Line   int    // 1-based line in the file, 0 if unknown
	Key    Key    // the object; zero if unknown
	Field  string // field path such as spec.ingress[0].from[1].ipBlock.cidr; "" for the whole object
	Msg    string // what is wrong and how to fix it
}

func (e *Error) Error() string {
	var parts []string
	if e.Source != "" {
		parts = append(parts, e.Source)
	}
	if e.Line > 0 {
		parts = append(parts, "line "+strconv.Itoa(e.Line))
	}
	if e.Key.Kind != "" {
		parts = append(parts, e.Key.String())
	}
	if e.Field != "" {
		parts = append(parts, e.Field)
	}
	parts = append(parts, e.Msg)
	return strings.Join(parts, ": ")
}

// ErrorList holds every problem found in one input, so that the user can
// fix them all at once. Its Error method puts one problem on each line.
type ErrorList []error

func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, err := range l {
		lines[i] = err.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the errors of the list, for errors.Is and errors.As.
func (l ErrorList) Unwrap() []error { return l }

// orNil returns nil for an empty list, so that a nil error means success.
func (l ErrorList) orNil() error {
	if len(l) == 0 {
		return nil
	}
	return l
}

// fieldErrors collects validation problems of one object. Source and Key
// are filled in by the caller.
type fieldErrors []*Error

func (f *fieldErrors) add(field path, msg string) {
	*f = append(*f, &Error{Field: string(field), Msg: msg})
}

// withObject fills in Source and Key and returns the problems as errors.
func (f fieldErrors) withObject(source string, key Key) []error {
	out := make([]error, len(f))
	for i, e := range f {
		e.Source, e.Key = source, key
		out[i] = e
	}
	return out
}

// path is a field path in the notation of error messages:
// spec.ingress[0].from[1].ipBlock, metadata.labels["app"].
type path string

func (p path) child(name string) path {
	if p == "" {
		return path(name)
	}
	return p + "." + path(name)
}

func (p path) index(i int) path { return p + path("["+strconv.Itoa(i)+"]") }

func (p path) key(k string) path { return p + path("["+strconv.Quote(k)+"]") }
