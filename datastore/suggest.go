package datastore

import (
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
)

// jsonFields returns the JSON names of the fields of struct type t,
// including those of embedded structs that encoding/json inlines.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			for n, t := range jsonFields(ft) {
				if _, ok := out[n]; !ok {
					out[n] = t
				}
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

var indexRE = regexp.MustCompile(`\[[^\]]*\]`)

// structAt returns the struct type that holds the last field of p (a path
// such as spec.ingress[0].fromm) inside root, or nil when p leaves structs.
func structAt(root reflect.Type, p string) reflect.Type {
	segs := strings.Split(indexRE.ReplaceAllString(p, ""), ".")
	t := root
	for i, seg := range segs {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return nil
		}
		if i == len(segs)-1 {
			return t
		}
		ft, ok := jsonFields(t)[seg]
		if !ok {
			return nil
		}
		t = ft
	}
	return nil
}

// fieldExplainer is implemented by (pointers to) types that know better
// than a spelling hint why a field is not theirs, typically because the
// API defines it elsewhere (a deny rule's toPorts has no L7 rules).
// explainUnknownField returns "" for a field it has nothing to say about.
type fieldExplainer interface {
	explainUnknownField(name string) string
}

// unknownFieldMsg explains an unknown field at path p of an object of
// type root and suggests the field the user probably meant.
func unknownFieldMsg(root reflect.Type, p string) string {
	name := p[strings.LastIndex(p, ".")+1:]
	name = indexRE.ReplaceAllString(name, "")
	st := structAt(root, p)
	if st == nil {
		return "unknown field; remove it"
	}
	if ex, ok := reflect.New(st).Interface().(fieldExplainer); ok {
		if msg := ex.explainUnknownField(name); msg != "" {
			return msg
		}
	}
	known := sortedKeys(jsonFields(st))
	if best := closest(name, known); best != "" {
		return fmt.Sprintf("unknown field %q; did you mean %q?", name, best)
	}
	if len(known) > 16 {
		return fmt.Sprintf("unknown field %q; remove it or check its spelling and indentation", name)
	}
	return fmt.Sprintf("unknown field %q; the fields here are: %s", name, strings.Join(known, ", "))
}

// closest returns the candidate nearest to s by edit distance, ignoring
// case, when it is near enough to be a likely typo; otherwise "".
func closest(s string, candidates []string) string {
	if len(s) > 64 {
		return ""
	}
	best, bestDist := "", 3 // accept up to 2 edits
	if len(s) <= 4 {
		bestDist = 2 // short names: 1 edit
	}
	for _, c := range candidates {
		d := editDistance(strings.ToLower(s), strings.ToLower(c))
		if d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// suggestKind returns a supported kind that kind is probably a misspelling
// of, or "".
func suggestKind(kind string) string {
	var names []string
	for _, k := range kinds {
		if !slices.Contains(names, k.kind) {
			names = append(names, k.kind)
		}
	}
	return closest(kind, names)
}
