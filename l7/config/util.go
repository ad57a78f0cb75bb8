package config

import (
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// validator is implemented by messages with protoc-gen-validate rules
// (Envoy's types) and by Membrane's own types (xds/l7pb/validate.go).
type validator interface{ ValidateAll() error }

// validate runs a message's ValidateAll when it has one.
func validate(m proto.Message) error {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("invalid: %v", err)
		}
	}
	return nil
}

// resErr names the resource (and field) an error is about.
func resErr(kind, name, field string, err error) error {
	if field == "" {
		return fmt.Errorf("%s %q: %w", kind, name, err)
	}
	return fmt.Errorf("%s %q: %s: %w", kind, name, field, err)
}

// duration converts a protobuf duration; nil gives dflt.
func duration(d *durationpb.Duration, dflt time.Duration) (time.Duration, error) {
	if d == nil {
		return dflt, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, err
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, fmt.Errorf("must not be negative")
	}
	return v, nil
}

// allowed names the fields of message m, found at path ("" or a path
// ending in "."), that the proxy implements.
type allowed struct {
	path  string
	m     proto.Message
	known []string
}

// unimplemented returns the path of the first field set in one of the
// messages that its list does not name (extraField).
func unimplemented(lists ...allowed) (string, bool) {
	for _, a := range lists {
		if f, ok := extraField(a.m, a.known...); ok {
			return a.path + f, true
		}
	}
	return "", false
}

// extraField returns the name of the first field set in m, in field-number
// order, that is not among known: what the proxy does not implement must
// be refused rather than ignored, so that a control plane that relies on
// it learns so from the NACK.
func extraField(m proto.Message, known ...string) (string, bool) {
	r := m.ProtoReflect()
	if !r.IsValid() {
		return "", false // a nil message: nothing set
	}
	fields := r.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if r.Has(f) && !slices.Contains(known, string(f.Name())) {
			return string(f.Name()), true
		}
	}
	return "", false
}
