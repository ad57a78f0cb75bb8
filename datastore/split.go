package datastore

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	yaml3 "go.yaml.in/yaml/v3"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// document is one YAML or JSON document of an input, converted to JSON.
type document struct {
	line int    // first line of the document in the input
	json []byte // the document as JSON; "null" when empty
	// dups are the duplicate fields of a YAML document (JSON documents
	// have theirs reported by the strict JSON decoder).
	dups fieldErrors
	// failed is set for a document that is not valid YAML; it has no JSON
	// but still counts for the numbering of the documents after it.
	failed bool
}

// splitDocuments cuts data into documents. Syntax errors are returned with
// their line; a syntax error ends the input for YAML streams whose
// separators cannot be trusted anymore, and for JSON streams.
func splitDocuments(source string, data []byte) ([]document, []error) {
	data = bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n"))
	if looksLikeJSON(source, data) {
		return splitJSON(source, data)
	}
	return splitYAML(source, data)
}

// looksLikeJSON tells whether data is to be read as a stream of JSON
// objects rather than YAML: a .json file, or input that starts like a JSON
// object ({"...). YAML flow style ({a: b}) is read as YAML.
func looksLikeJSON(source string, data []byte) bool {
	if strings.HasSuffix(source, ".json") {
		return true
	}
	trimmed := bytes.TrimLeft(data, " \t\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return false
	}
	rest := bytes.TrimLeft(trimmed[1:], " \t\n")
	return len(rest) > 0 && (rest[0] == '"' || rest[0] == '}')
}

func splitJSON(source string, data []byte) ([]document, []error) {
	var docs []document
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		start := int(dec.InputOffset())
		for start < len(data) && (data[start] == ' ' || data[start] == '\t' || data[start] == '\n' || data[start] == '\r') {
			start++
		}
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			line := lineAt(data, start)
			var syn *json.SyntaxError
			if errors.As(err, &syn) {
				line = lineAt(data, int(syn.Offset))
			}
			return docs, []error{&Error{Source: source, Line: line, Msg: "invalid JSON: " + jsonErrText(err)}}
		}
		docs = append(docs, document{line: lineAt(data, start), json: raw})
	}
}

func jsonErrText(err error) string {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected end of input; check for a missing } or ]"
	}
	return err.Error()
}

// lineAt returns the 1-based line of byte offset off in data.
func lineAt(data []byte, off int) int {
	off = min(max(off, 0), len(data))
	return 1 + bytes.Count(data[:off], []byte("\n"))
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func splitYAML(source string, data []byte) ([]document, []error) {
	var docs []document
	var errs []error
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	cursor := 0
	for {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, errs
		}
		if err != nil {
			return docs, append(errs, &Error{Source: source, Line: badSeparatorLine(data, cursor),
				Msg: "invalid YAML: " + err.Error() + "; a line starting with --- separates documents and may be followed only by a comment"})
		}
		// The reader returns whole lines of data; find them to learn
		// where the document starts.
		start := cursor
		if i := bytes.Index(data[cursor:], bytes.TrimSuffix(raw, []byte("\n"))); i >= 0 {
			start = cursor + i
			cursor = start + len(raw) - 1
		}
		doc := document{line: lineAt(data, start)}
		if err := parseYAMLDocument(raw, doc.line, &doc); err != nil {
			errs = append(errs, &Error{Source: source, Line: err.line, Msg: "invalid YAML: " + err.msg})
			docs = append(docs, document{line: doc.line, failed: true})
			continue
		}
		docs = append(docs, doc)
	}
}

type yamlError struct {
	line int
	msg  string
}

// parseYAMLDocument converts one YAML document to JSON and finds its
// duplicate fields. firstLine is the document's first line in the input.
func parseYAMLDocument(raw []byte, firstLine int, doc *document) (yerr *yamlError) {
	defer func() {
		// The YAML parsers are not ours; never let a bug in them take
		// down the caller.
		if r := recover(); r != nil {
			yerr = &yamlError{line: firstLine, msg: fmt.Sprint("cannot parse: ", r)}
		}
	}()
	toErr := func(err error) *yamlError {
		msg := err.Error()
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			n, _ := strconv.Atoi(m[1])
			return &yamlError{line: firstLine + n - 1, msg: m[2]}
		}
		if m, ok := strings.CutPrefix(msg, "yaml: "); ok {
			return &yamlError{line: firstLine, msg: m + " (somewhere in the document starting on this line)"}
		}
		return &yamlError{line: firstLine, msg: msg}
	}
	var root yaml3.Node
	if err := yaml3.Unmarshal(raw, &root); err != nil {
		return toErr(err)
	}
	findDuplicates(&root, "", firstLine-1, &doc.dups)
	j, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return toErr(err)
	}
	doc.json = j
	return nil
}

// findDuplicates reports every mapping key that occurs twice in the same
// mapping. lineOffset turns the node's line into a line of the input.
func findDuplicates(n *yaml3.Node, p path, lineOffset int, errs *fieldErrors) {
	switch n.Kind {
	case yaml3.DocumentNode:
		for _, c := range n.Content {
			findDuplicates(c, p, lineOffset, errs)
		}
	case yaml3.SequenceNode:
		for i, c := range n.Content {
			findDuplicates(c, p.index(i), lineOffset, errs)
		}
	case yaml3.MappingNode:
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml3.ScalarNode || k.Value == "<<" {
				continue
			}
			child := p.child(k.Value)
			if first, dup := seen[k.Value]; dup {
				errs.add(child, fmt.Sprintf("duplicate field: set on line %d and again on line %d; keep only one", first+lineOffset, k.Line+lineOffset))
			} else {
				seen[k.Value] = k.Line
			}
			findDuplicates(v, child, lineOffset, errs)
		}
	}
}

// badSeparatorLine returns the line, at or after byte offset from, of the
// first "---" line followed by something other than a comment.
func badSeparatorLine(data []byte, from int) int {
	line := lineAt(data, from)
	for _, l := range bytes.SplitAfter(data[from:], []byte("\n")) {
		if rest, ok := bytes.CutPrefix(l, []byte("---")); ok {
			rest = bytes.TrimSpace(rest)
			if len(rest) > 0 && rest[0] != '#' {
				return line
			}
		}
		line++
	}
	return lineAt(data, from)
}
