package datastore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"

	sjson "sigs.k8s.io/json"
)

// Decode reads the objects in data: one or more YAML documents separated by
// "---" lines, or a stream of JSON objects. Empty documents are skipped.
// Decoding is strict: unknown fields, duplicate fields, fields Membrane does
// not support and invalid values are all errors. Decode returns the valid
// objects and, when anything was wrong, an ErrorList with every problem.
// source names data in Object.Source and in errors.
func Decode(source string, data []byte) ([]Object, error) {
	return decode(source, data, false)
}

// decode is Decode; with keysOnly, it reads only what names each object
// (apiVersion, kind, metadata.name and namespace), and the objects it
// returns have a Key and a Source but no Obj.
func decode(source string, data []byte, keysOnly bool) ([]Object, error) {
	docs, errs := splitDocuments(source, data)
	count := 0
	for _, d := range docs {
		if d.failed || !isNullJSON(d.json) {
			count++
		}
	}
	var objs []Object
	index := 0
	for _, d := range docs {
		if !d.failed && isNullJSON(d.json) {
			continue
		}
		index++
		if d.failed {
			continue
		}
		src := source
		if count > 1 {
			src = fmt.Sprintf("%s#%d", source, index)
		}
		obj, derrs := decodeDocument(src, d, keysOnly)
		errs = append(errs, derrs...)
		if derrs == nil {
			objs = append(objs, obj)
		}
	}
	objs, dupErrs := rejectDuplicateKeys(objs)
	errs = append(errs, dupErrs...)
	return objs, ErrorList(errs).orNil()
}

// DecodePath decodes a file, or every file ending in .yaml, .yml or .json
// in a directory and its subdirectories, in lexical order. Hidden files and
// directories (name starting with ".") are skipped. An object defined twice
// is an error naming both places.
func DecodePath(root string) ([]Object, error) { return DecodePaths(root) }

// DecodePaths is DecodePath for several files and directories, decoded as
// one input: the objects of all of them, in order, and every problem in
// any of them. An object defined twice, in one file or in two, is an error
// naming both places. A file named twice (directly or in a directory) is
// read once.
func DecodePaths(roots ...string) ([]Object, error) {
	return decodePaths(false, roots)
}

// DecodeKeys reads the files and directories as DecodePaths does, but only
// what names each object (apiVersion, kind, metadata.name and namespace):
// what deleting them needs. The rest of each object is not read, so a file
// whose objects no longer validate can still name them for deletion, as
// with kubectl delete -f. The objects have a Key and a Source, no Obj.
func DecodeKeys(roots ...string) ([]Object, error) {
	return decodePaths(true, roots)
}

func decodePaths(keysOnly bool, roots []string) ([]Object, error) {
	var objs []Object
	var errs ErrorList
	read := map[string]bool{}
	decodeFile := func(p string) {
		abs, err := filepath.Abs(p)
		if err != nil {
			abs = filepath.Clean(p)
		}
		if read[abs] {
			return
		}
		read[abs] = true
		data, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", p, err))
			return
		}
		o, err := decode(p, data, keysOnly)
		objs = append(objs, o...)
		if list, ok := err.(ErrorList); ok {
			errs = append(errs, list...)
		} else if err != nil {
			errs = append(errs, err)
		}
	}
	for _, root := range roots {
		info, err := os.Stat(root)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err // not "read x: stat x: …"
			}
			errs = append(errs, fmt.Errorf("read %s: %w", root, err))
			continue
		}
		if !info.IsDir() {
			decodeFile(root)
			continue
		}
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				errs = append(errs, fmt.Errorf("read %s: %w", p, err))
				return nil
			}
			if p != root && strings.HasPrefix(d.Name(), ".") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if !d.IsDir() && isManifestName(d.Name()) {
				decodeFile(p)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", root, err))
		}
	}
	objs, dupErrs := rejectDuplicateKeys(objs)
	errs = append(errs, dupErrs...)
	return objs, errs.orNil()
}

func isManifestName(name string) bool {
	ext := filepath.Ext(name)
	return ext == ".yaml" || ext == ".yml" || ext == ".json"
}

// rejectDuplicateKeys removes the second and later definitions of a key
// and reports them, naming the first definition.
func rejectDuplicateKeys(objs []Object) ([]Object, []error) {
	var errs []error
	first := make(map[Key]string, len(objs))
	out := objs[:0]
	for _, o := range objs {
		if src, dup := first[o.Key]; dup {
			errs = append(errs, &Error{Source: o.Source, Key: o.Key,
				Msg: fmt.Sprintf("defined twice: also in %s; keep one of them", src)})
			continue
		}
		first[o.Key] = o.Source
		out = append(out, o)
	}
	return out, errs
}

func isNullJSON(j []byte) bool {
	return bytes.Equal(bytes.TrimSpace(j), []byte("null"))
}

// decodeDocument decodes and validates one document.
func decodeDocument(source string, doc document, keysOnly bool) (obj Object, errs []error) {
	defer func() {
		if r := recover(); r != nil {
			obj, errs = Object{}, []error{&Error{Source: source, Line: doc.line, Msg: fmt.Sprint("cannot decode: ", r)}}
		}
	}()
	var generic any
	dec := json.NewDecoder(bytes.NewReader(doc.json))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		return Object{}, []error{&Error{Source: source, Line: doc.line, Msg: "invalid JSON: " + err.Error()}}
	}
	m, ok := generic.(map[string]any)
	if !ok {
		return Object{}, []error{&Error{Source: source, Line: doc.line,
			Msg: fmt.Sprintf("expected an object with apiVersion, kind and metadata, found %s", jsonKind(generic))}}
	}

	var fe fieldErrors
	apiVersion := stringField(m, "apiVersion", "apiVersion", &fe)
	kind := stringField(m, "kind", "kind", &fe)
	badHeader := len(fe) > 0
	meta, _ := m["metadata"].(map[string]any)
	// A name or namespace of the wrong type is reported by decodeTyped.
	name := stringField(meta, "name", "metadata.name", nil)
	namespace := stringField(meta, "namespace", "metadata.namespace", nil)
	key := Key{Kind: kind, Namespace: namespace, Name: name}
	fail := func() (Object, []error) {
		all := append(append(fieldErrors{}, doc.dups...), fe...)
		return Object{}, all.withObject(source, key)
	}

	ki := lookupKind(apiVersion, kind)
	switch {
	case badHeader:
		return fail() // apiVersion or kind is not a string
	case kind == "":
		fe.add("kind", "required; set it to one of: "+supportedKinds())
		return fail()
	case ki == nil && len(kindByName(kind)) == 0:
		msg := fmt.Sprintf("unsupported kind %q; supported kinds are %s", kind, supportedKinds())
		if s := suggestKind(kind); s != "" {
			msg = fmt.Sprintf("unsupported kind %q; did you mean %q? (supported kinds are %s)", kind, s, supportedKinds())
		}
		fe.add("kind", msg)
		return fail()
	case apiVersion == "":
		fe.add("apiVersion", fmt.Sprintf("required; kind %s is served as apiVersion %s", kind, apiVersionsOf(kindByName(kind))))
		return fail()
	case ki == nil:
		fe.add("apiVersion", fmt.Sprintf("%q does not serve kind %s; use apiVersion %s", apiVersion, kind, apiVersionsOf(kindByName(kind))))
		return fail()
	}

	if ki.namespaced && namespace == "" {
		key.Namespace = "default"
	}
	if !ki.namespaced && namespace != "" {
		fe.add("metadata.namespace", fmt.Sprintf("%s is cluster-scoped and has no namespace; remove metadata.namespace", kind))
		key.Namespace = ""
	}
	if keysOnly {
		if name == "" {
			fe.add("metadata.name", "required; name the object")
		}
		if len(fe) > 0 || len(doc.dups) > 0 {
			return fail()
		}
		return Object{Key: key, Source: source}, nil
	}

	typed, typeErrs, strictErrs := decodeTyped(doc.json, generic, ki.newObj)
	fe = append(fe, typeErrs...)
	skip := map[string]bool{}
	rootType := reflect.TypeOf(ki.newObj())
	for _, se := range strictErrs {
		f, ok := se.(sjson.FieldError)
		if !ok {
			fe.add("", se.Error())
			continue
		}
		switch p := f.FieldPath(); {
		case strings.HasPrefix(se.Error(), "unknown field"):
			skip[p] = true
			fe.add(path(p), unknownFieldMsg(rootType, p))
		case strings.HasPrefix(se.Error(), "duplicate field"):
			fe.add(path(p), "duplicate field; keep only one")
		default:
			fe.add(path(p), se.Error())
		}
	}
	checkSupported(generic, ki.supported, "", skip, &fe)

	if typed != nil {
		if ki.namespaced {
			typed.(interface{ SetNamespace(string) }).SetNamespace(key.Namespace)
		}
		ki.setDefaults(typed)
		// A value that had the wrong type was left out; do not also
		// complain that it is missing.
		for _, e := range ki.validate(typed) {
			if !underAny(e.Field, typeErrs) {
				fe = append(fe, e)
			}
		}
	}
	if len(fe) > 0 || len(doc.dups) > 0 {
		return fail()
	}
	return Object{Key: key, Source: source, Obj: typed}, nil
}

// stringField returns m[name] when it is a string, and reports it to fe
// (if not nil) when it is something else.
func stringField(m map[string]any, name string, p path, fe *fieldErrors) string {
	v, ok := m[name]
	if !ok || v == nil {
		return ""
	}
	s, ok := v.(string)
	if !ok && fe != nil {
		fe.add(p, fmt.Sprintf("must be a string, found %s", jsonKind(v)))
	}
	return s
}

func jsonKind(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return fmt.Sprintf("the string %q", v)
	case bool:
		return fmt.Sprintf("the boolean %v", v)
	case json.Number:
		return "the number " + v.String()
	}
	return fmt.Sprintf("%T", v)
}

var typeErrorRE = regexp.MustCompile(`^json: cannot unmarshal (\w+)(?: (\S+))? into Go (?:struct field \w+\.(\S+)|value) of type (.+)$`)

// maxTypeErrors bounds the decoding passes of one document.
const maxTypeErrors = 20

// decodeTyped decodes data into a new object of the kind, collecting every
// value of the wrong type: the JSON decoder reports only the first, so
// after each one the value is removed from generic (the same document,
// decoded) and decoding starts over. obj is nil when a value could not be
// removed; strictErrs are the unknown and duplicate fields.
func decodeTyped(data []byte, generic any, newObj func() any) (obj any, typeErrs fieldErrors, strictErrs []error) {
	for range maxTypeErrors {
		obj = newObj()
		strict, err := sjson.UnmarshalStrict(data, obj, sjson.DisallowUnknownFields, sjson.DisallowDuplicateFields)
		if err == nil {
			return obj, typeErrs, strict
		}
		e, steps := decodeError(err, generic)
		typeErrs = append(typeErrs, e)
		if len(steps) == 0 || !removeAt(generic, steps) {
			return nil, typeErrs, nil
		}
		if data, err = json.Marshal(generic); err != nil {
			return nil, typeErrs, nil
		}
	}
	return nil, typeErrs, nil
}

// underAny tells whether field is one of the fields of errs or inside one.
func underAny(field string, errs fieldErrors) bool {
	for _, e := range errs {
		if e.Field != "" && (field == e.Field || strings.HasPrefix(field, e.Field+".") || strings.HasPrefix(field, e.Field+"[")) {
			return true
		}
	}
	return false
}

// decodeError turns an error of the typed JSON decoder into an Error with
// the field path (including list indices, which the decoder leaves out),
// and returns the steps (map keys and list indices) to the bad value.
func decodeError(err error, generic any) (*Error, []any) {
	m := typeErrorRE.FindStringSubmatch(err.Error())
	if m == nil {
		return &Error{Msg: "invalid value: " + err.Error()}, nil
	}
	got, literal, field, want := m[1], m[2], m[3], m[4]
	p := path(field)
	var steps []any
	if field != "" {
		if found, st, ok := locate(generic, strings.Split(field, "."), got, "", nil); ok {
			p, steps = found, st
		}
	}
	found := describeJSONType(got)
	if literal != "" {
		found = literal
	}
	return &Error{Field: string(p), Msg: fmt.Sprintf("must be %s, found %s", describeGoType(want), found)}, steps
}

// locate finds the first value of JSON type got along segs in v, and
// returns its path, with list indices and map keys filled in, and the
// steps to it.
func locate(v any, segs []string, got string, p path, steps []any) (path, []any, bool) {
	if arr, ok := v.([]any); ok && (len(segs) > 0 || got != "array") {
		for i, el := range arr {
			if found, st, ok := locate(el, segs, got, p.index(i), append(steps[:len(steps):len(steps)], i)); ok {
				return found, st, true
			}
		}
		return "", nil, false
	}
	if len(segs) == 0 {
		if jsonTypeName(v) == got {
			return p, steps, true
		}
		if m, ok := v.(map[string]any); ok {
			for _, k := range sortedKeys(m) {
				if jsonTypeName(m[k]) == got {
					return p.key(k), append(steps[:len(steps):len(steps)], k), true
				}
			}
		}
		return "", nil, false
	}
	m, ok := v.(map[string]any)
	if !ok {
		return "", nil, false
	}
	child, ok := m[segs[0]]
	if !ok {
		return "", nil, false
	}
	return locate(child, segs[1:], got, p.child(segs[0]), append(steps[:len(steps):len(steps)], segs[0]))
}

// removeAt removes the value at steps from v: a map entry is deleted, a
// list element set to null.
func removeAt(v any, steps []any) bool {
	for i, step := range steps {
		last := i == len(steps)-1
		switch step := step.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return false
			}
			if last {
				delete(m, step)
				return true
			}
			v = m[step]
		case int:
			a, ok := v.([]any)
			if !ok || step >= len(a) {
				return false
			}
			if last {
				a[step] = nil
				return true
			}
			v = a[step]
		}
	}
	return false
}

func jsonTypeName(v any) string {
	switch v.(type) {
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case bool:
		return "bool"
	case json.Number, float64:
		return "number"
	}
	return "null"
}

func describeJSONType(t string) string {
	switch t {
	case "object":
		return "an object"
	case "array":
		return "a list"
	case "string":
		return "a string"
	case "bool":
		return "true/false"
	case "number":
		return "a number"
	}
	return t
}

func describeGoType(t string) string {
	switch {
	case t == "string":
		return "a string"
	case t == "bool":
		return "true or false"
	case strings.HasPrefix(t, "int") || strings.HasPrefix(t, "uint"):
		return "an integer"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["):
		if strings.HasSuffix(t, "]string") {
			return "a map of strings"
		}
		return "an object"
	}
	return "an object"
}
