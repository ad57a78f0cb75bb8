package datastore

import (
	"encoding/json"
	"slices"
	"strings"
)

// fieldSet lists the supported fields of an object, by JSON name. A nil
// value accepts the field and everything below it; a non-nil value lists
// the supported fields inside it (of each element, for a list).
type fieldSet map[string]fieldSet

// metadataFields are the metadata fields Membrane supports on every kind.
var metadataFields = fieldSet{
	"name": nil, "namespace": nil, "labels": nil, "annotations": nil,
	"resourceVersion": nil, "uid": nil,
}

// podFields is the subset of Pod that the lab can run: processes, not
// images.
var podFields = fieldSet{
	"apiVersion": nil, "kind": nil, "metadata": metadataFields,
	"spec": fieldSet{
		"nodeName": nil, "serviceAccountName": nil,
		"containers": fieldSet{
			"name": nil, "image": nil, "command": nil, "args": nil, "workingDir": nil,
			"env":   fieldSet{"name": nil, "value": nil},
			"ports": fieldSet{"name": nil, "containerPort": nil, "protocol": nil},
		},
	},
	"status": fieldSet{
		"podIP": nil, "hostIP": nil,
		"podIPs": fieldSet{"ip": nil},
	},
}

var nodeFields = fieldSet{
	"apiVersion": nil, "kind": nil, "metadata": metadataFields,
	"spec":   fieldSet{"podCIDR": nil, "podCIDRs": nil},
	"status": fieldSet{"addresses": fieldSet{"type": nil, "address": nil}},
}

// checkSupported reports every field of v (a decoded JSON value) that set
// does not list and whose value is not empty. Paths in skip were already
// reported (as unknown fields).
func checkSupported(v any, set fieldSet, p path, skip map[string]bool, errs *fieldErrors) {
	switch v := v.(type) {
	case []any:
		for i, el := range v {
			checkSupported(el, set, p.index(i), skip, errs)
		}
	case map[string]any:
		for _, name := range sortedKeys(v) {
			sub, ok := set[name]
			child := p.child(name)
			switch {
			case !ok && !skip[string(child)] && !isEmptyJSON(v[name]):
				errs.add(child, "not supported by Membrane's datastore; remove it (supported here: "+strings.Join(sortedKeys(set), ", ")+")")
			case ok && sub != nil:
				checkSupported(v[name], sub, child, skip, errs)
			}
		}
	}
}

// isEmptyJSON tells whether v means the same as an absent field: null, "",
// 0, false, or a list or object holding only such values.
func isEmptyJSON(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case bool:
		return !v
	case string:
		return v == ""
	case json.Number:
		f, err := v.Float64()
		return err == nil && f == 0
	case float64:
		return v == 0
	case []any:
		return len(v) == 0
	case map[string]any:
		for _, el := range v {
			if !isEmptyJSON(el) {
				return false
			}
		}
		return true
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
