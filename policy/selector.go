package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/identity"
)

// A Selector picks addresses. Three kinds exist: label selectors (match an
// address's identity labels), CIDR selectors (match the address itself) and
// named-port selectors (match pods that name a port; used to resolve egress
// named ports exactly). Key is canonical: two selectors with the same
// meaning have the same key, and the engine shares them.
type Selector interface {
	Key() string
	String() string
}

// Operator of a label requirement.
type Operator string

const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// Requirement is one condition on one label key.
type Requirement struct {
	Key    string
	Op     Operator
	Values []string // sorted, unique; empty for Exists/DoesNotExist
}

func (r Requirement) matches(l identity.Labels) bool {
	v, ok := l.Get(r.Key)
	switch r.Op {
	case OpIn:
		return ok && slices.Contains(r.Values, v)
	case OpNotIn:
		return !ok || !slices.Contains(r.Values, v)
	case OpExists:
		return ok
	case OpDoesNotExist:
		return !ok
	}
	return false
}

func (r Requirement) String() string {
	switch r.Op {
	case OpExists:
		return r.Key
	case OpDoesNotExist:
		return "!" + r.Key
	case OpIn:
		if len(r.Values) == 1 {
			return r.Key + "=" + r.Values[0]
		}
		return r.Key + " in (" + strings.Join(r.Values, ",") + ")"
	case OpNotIn:
		if len(r.Values) == 1 {
			return r.Key + "!=" + r.Values[0]
		}
		return r.Key + " notin (" + strings.Join(r.Values, ",") + ")"
	}
	return "?"
}

// LabelSelector is a conjunction of requirements; no requirements selects
// every address that has labels (every identity, reserved ones included).
type LabelSelector struct {
	Reqs []Requirement // sorted by Key, then Op
	key  string
}

// NewLabelSelector normalises reqs (sorting, deduplicating) and computes the
// canonical key.
func NewLabelSelector(reqs ...Requirement) *LabelSelector {
	rs := make([]Requirement, 0, len(reqs))
	for _, r := range reqs {
		v := slices.Clone(r.Values)
		slices.Sort(v)
		v = slices.Compact(v)
		rs = append(rs, Requirement{Key: r.Key, Op: r.Op, Values: v})
	}
	slices.SortFunc(rs, func(a, b Requirement) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		if c := strings.Compare(string(a.Op), string(b.Op)); c != 0 {
			return c
		}
		return slices.Compare(a.Values, b.Values)
	})
	rs = slices.CompactFunc(rs, func(a, b Requirement) bool {
		return a.Key == b.Key && a.Op == b.Op && slices.Equal(a.Values, b.Values)
	})
	s := &LabelSelector{Reqs: rs}
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.String()
	}
	s.key = "labels:" + strings.Join(parts, ";")
	return s
}

// Matches reports whether labels l satisfy every requirement.
func (s *LabelSelector) Matches(l identity.Labels) bool {
	for _, r := range s.Reqs {
		if !r.matches(l) {
			return false
		}
	}
	return true
}

func (s *LabelSelector) Key() string { return s.key }

func (s *LabelSelector) String() string {
	if len(s.Reqs) == 0 {
		return "{}"
	}
	parts := make([]string, len(s.Reqs))
	for i, r := range s.Reqs {
		parts[i] = r.String()
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// RequirementsFrom converts a Kubernetes label selector. keyPrefix is put in
// front of every key (namespace selectors match the namespace labels an
// identity carries under identity.LabelNamespaceLabel). The datastore has
// validated the selector; an invalid operator still returns an error rather
// than selecting something unintended.
func RequirementsFrom(ls *metav1.LabelSelector, keyPrefix string) ([]Requirement, error) {
	if ls == nil {
		return nil, nil
	}
	var out []Requirement
	for k, v := range ls.MatchLabels {
		out = append(out, Requirement{Key: keyPrefix + k, Op: OpIn, Values: []string{v}})
	}
	for _, e := range ls.MatchExpressions {
		var op Operator
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			op = OpIn
		case metav1.LabelSelectorOpNotIn:
			op = OpNotIn
		case metav1.LabelSelectorOpExists:
			op = OpExists
		case metav1.LabelSelectorOpDoesNotExist:
			op = OpDoesNotExist
		default:
			return nil, fmt.Errorf("unsupported operator %q for key %q", e.Operator, e.Key)
		}
		out = append(out, Requirement{Key: keyPrefix + e.Key, Op: op, Values: e.Values})
	}
	return out, nil
}

// CIDRSelector selects the addresses inside Prefix and outside every Except.
type CIDRSelector struct {
	Prefix netip.Prefix
	Except []netip.Prefix // sorted
	// WorldOnly: only addresses outside the cluster match (CiliumNetworkPolicy
	// CIDR rules never select pods or nodes). Without it, pod and node
	// addresses match too (Kubernetes NetworkPolicy ipBlock).
	WorldOnly bool
	key       string
}

// NewCIDRSelector masks the prefixes (host bits are ignored, as Kubernetes
// does) and computes the key. The selector matches any address in range,
// pod addresses included, as a NetworkPolicy ipBlock does.
func NewCIDRSelector(p netip.Prefix, except []netip.Prefix) *CIDRSelector {
	return newCIDRSelector(p, except, false)
}

// NewWorldCIDRSelector is NewCIDRSelector for addresses outside the cluster
// only, as a CiliumNetworkPolicy fromCIDR/toCIDR rule is.
func NewWorldCIDRSelector(p netip.Prefix, except []netip.Prefix) *CIDRSelector {
	return newCIDRSelector(p, except, true)
}

func newCIDRSelector(p netip.Prefix, except []netip.Prefix, worldOnly bool) *CIDRSelector {
	p = p.Masked()
	ex := make([]netip.Prefix, 0, len(except))
	for _, e := range except {
		ex = append(ex, e.Masked())
	}
	slices.SortFunc(ex, comparePrefix)
	ex = slices.Compact(ex)
	s := &CIDRSelector{Prefix: p, Except: ex, WorldOnly: worldOnly}
	var b strings.Builder
	if worldOnly {
		b.WriteString("cidr-world:")
	} else {
		b.WriteString("cidr:")
	}
	b.WriteString(p.String())
	for _, e := range ex {
		b.WriteString("!")
		b.WriteString(e.String())
	}
	s.key = b.String()
	return s
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Matches reports whether every address of prefix q is selected. The
// engine only asks about prefixes that are nested in or disjoint from the
// selector's own prefixes, so "all of q" and "any of q" agree.
func (s *CIDRSelector) Matches(q netip.Prefix) bool {
	if q.Addr().Is4() != s.Prefix.Addr().Is4() {
		return false
	}
	if q.Bits() < s.Prefix.Bits() || !s.Prefix.Contains(q.Addr()) {
		return false
	}
	for _, e := range s.Except {
		if q.Bits() >= e.Bits() && e.Contains(q.Addr()) {
			return false
		}
	}
	return true
}

func (s *CIDRSelector) Key() string { return s.key }

func (s *CIDRSelector) String() string {
	suffix := ""
	if s.WorldOnly {
		suffix = " (outside the cluster)"
	}
	if len(s.Except) == 0 {
		return s.Prefix.String() + suffix
	}
	ex := make([]string, len(s.Except))
	for i, e := range s.Except {
		ex[i] = e.String()
	}
	return s.Prefix.String() + " except " + strings.Join(ex, ",") + suffix
}

// Prefixes are the prefixes the selector needs in the ipcache so that every
// address resolves to an entry whose selector set is exact.
func (s *CIDRSelector) Prefixes() []netip.Prefix {
	return append([]netip.Prefix{s.Prefix}, s.Except...)
}

// NamedPortSelector selects pods that declare a container port with this
// name, protocol and number.
type NamedPortSelector struct {
	Name   string
	Proto  uint8
	Number uint16
	key    string
}

// NewNamedPortSelector builds the selector.
func NewNamedPortSelector(name string, proto uint8, number uint16) *NamedPortSelector {
	return &NamedPortSelector{Name: name, Proto: proto, Number: number,
		key: fmt.Sprintf("namedport:%s/%s=%d", name, ProtoName(proto), number)}
}

func (s *NamedPortSelector) Key() string { return s.key }

func (s *NamedPortSelector) String() string {
	return fmt.Sprintf("port %q (%s %d)", s.Name, ProtoName(s.Proto), s.Number)
}
