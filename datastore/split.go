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
	toErr := func(err error) *yamlError { return yamlSyntaxError(raw, firstLine, err) }
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

// yamlSyntaxError turns an error of the YAML parsers about raw, a document
// starting on line firstLine of the input, into one naming the line of the
// offending token.
//
// The parsers' own line is not that. Both go.yaml.in/yaml/v3 (which parses
// first) and v2 (under sigs.k8s.io/yaml) are ports of libyaml, whose marks
// count lines from 0; they add 1 only for scanner errors (a bad character,
// tab or indentation, an unclosed quote), so a parser error (an unclosed
// flow collection, a key or "-" where none fits) names the line before.
// Each reports one of two marks: the context (where the construct being
// read starts: the unclosed "{", the quote) or the problem (where reading
// it failed); v3 prefers the context, v2 the problem, and both fall back
// to the other one, or to no line at all, when the mark is on the first
// line. So the document is parsed again behind one blank line, where no
// mark is on the first line, by both parsers, which gives both marks; the
// message tells the error's class, hence how to count.
//
// The offending token is at the problem mark, except when the problem is
// the end of the document (what the context opens is never closed) and
// for unclosed flow collections ("{" or "[" without "}" or "]"), which are
// named by their opening bracket.
func yamlSyntaxError(raw []byte, firstLine int, err error) *yamlError {
	msg, ok := strings.CutPrefix(err.Error(), "yaml: ")
	if !ok {
		return &yamlError{line: firstLine, msg: err.Error()}
	}
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		msg = m[2]
	}
	padded := padYAML(raw)
	var ctxLine, probLine int
	var n yaml3.Node
	if l, pmsg, ok := yamlErrorLine(yaml3.Unmarshal(padded, &n)); ok && pmsg == msg {
		ctxLine = libyamlLine(l, msg)
	}
	if _, perr := yaml.YAMLToJSON(padded); perr != nil {
		if l, pmsg, ok := yamlErrorLine(perr); ok && pmsg == msg {
			probLine = libyamlLine(l, msg)
		}
	}
	lines := bytes.Count(raw, []byte("\n"))
	if len(raw) > 0 && raw[len(raw)-1] != '\n' {
		lines++
	}
	lines = max(lines, 1)
	inDoc := func(l int) bool { return l >= 1 && l <= lines }
	line := 0
	switch bracket, flow := unclosedFlow[msg]; {
	case flow && inDoc(ctxLine):
		line = ctxLine
		if inDoc(probLine) && probLine != ctxLine {
			msg += fmt.Sprintf(": the %s on this line is not closed, or its entries lack a ',' (the parser stopped on line %d)", bracket, firstLine+probLine-1)
		} else {
			msg += fmt.Sprintf(": the %s on this line is never closed", bracket)
		}
	case inDoc(probLine):
		line = probLine
	case msg == "found unexpected end of stream" && inDoc(ctxLine):
		// libyaml's only end of stream error: in a quoted scalar.
		line = ctxLine
		msg += ": a quote opened on this line is never closed"
	case inDoc(ctxLine):
		line = ctxLine
	case probLine > lines || ctxLine > lines:
		line = lines // the end of the document
	default:
		return &yamlError{line: firstLine, msg: msg + " (somewhere in the document starting on this line)"}
	}
	return &yamlError{line: firstLine + line - 1, msg: msg}
}

// padYAML returns raw behind one blank line (after the byte order mark, if
// any, which must stay first).
func padYAML(raw []byte) []byte {
	bom := []byte("\ufeff")
	out := make([]byte, 0, len(raw)+1)
	if bytes.HasPrefix(raw, bom) {
		out = append(out, bom...)
		raw = raw[len(bom):]
	}
	return append(append(out, '\n'), raw...)
}

// yamlErrorLine returns the line and the message of a YAML parser error
// "yaml: line N: msg".
func yamlErrorLine(err error) (line int, msg string, ok bool) {
	if err == nil {
		return 0, "", false
	}
	m := yamlLineRE.FindStringSubmatch(err.Error())
	if m == nil {
		return 0, "", false
	}
	line, _ = strconv.Atoi(m[1])
	return line, m[2], true
}

// libyamlLine turns the line a YAML parser reported for the padded document
// (see yamlSyntaxError) into the 1-based line of the document: parser
// errors report the 0-based line, one short, which the blank line in front
// makes up for; scanner errors report it 1-based, one more.
func libyamlLine(reported int, msg string) int {
	if libyamlParserErrors[msg] {
		return reported
	}
	return reported - 1
}

// libyamlParserErrors are the messages of libyaml's parser errors
// (yaml_parser_set_parser_error in parserc.go of go.yaml.in/yaml/v2 and
// v3); every other message with a line is a scanner error.
var libyamlParserErrors = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found duplicate %TAG directive":         true,
	"found undefined tag handle":             true,
}

// unclosedFlow are the parser errors of a flow collection that does not
// end where it should, with the bracket that opens it.
var unclosedFlow = map[string]string{
	"did not find expected ',' or '}'": "{",
	"did not find expected ',' or ']'": "[",
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
