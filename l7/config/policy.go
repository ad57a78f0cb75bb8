package config

import (
	"fmt"
	"sort"

	"github.com/membrane-mesh/membrane/l7/rules"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// ParsePolicy checks an EndpointPolicy resource and compiles it.
func ParsePolicy(p *l7pb.EndpointPolicy) (*rules.Endpoint, error) {
	if err := validate(p); err != nil {
		return nil, resErr("EndpointPolicy", p.GetName(), "", err)
	}
	if p.GetName() == "" {
		return nil, resErr("EndpointPolicy", "", "name", fmt.Errorf("must not be empty"))
	}
	e, err := rules.Compile(p)
	if err != nil {
		return nil, resErr("EndpointPolicy", p.GetName(), "", err)
	}
	return e, nil
}

// NewPolicySet indexes the compiled endpoint policies (in name order, so
// that an error is deterministic).
func NewPolicySet(eps map[string]*rules.Endpoint) (*rules.Set, error) {
	names := make([]string, 0, len(eps))
	for n := range eps {
		names = append(names, n)
	}
	sort.Strings(names)
	list := make([]*rules.Endpoint, 0, len(names))
	for _, n := range names {
		list = append(list, eps[n])
	}
	s, err := rules.NewSet(list)
	if err != nil {
		return nil, fmt.Errorf("EndpointPolicy set: %w", err)
	}
	return s, nil
}
