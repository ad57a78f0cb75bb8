package datastore

import (
	"fmt"
	"net/netip"
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Name rules, as Kubernetes applies them per kind.
const (
	dns1123Label     = "label"     // up to 63 of [a-z0-9-], alphanumeric at both ends
	dns1123Subdomain = "subdomain" // up to 253 characters, dot-separated labels
)

// maxAnnotationsSize is the limit Kubernetes puts on the total size of an
// object's annotations.
const maxAnnotationsSize = 256 * 1024

// validateMeta checks name, namespace, labels and annotations.
func validateMeta(m *metav1.ObjectMeta, nameRule string, namespaced bool) fieldErrors {
	var fe fieldErrors
	p := path("metadata")
	switch {
	case m.Name == "":
		fe.add(p.child("name"), "required; every object needs a name")
	default:
		if msg := checkName(m.Name, nameRule); msg != "" {
			fe.add(p.child("name"), msg)
		}
	}
	if namespaced {
		if msgs := content.IsDNS1123Label(m.Namespace); len(msgs) > 0 {
			fe.add(p.child("namespace"), fmt.Sprintf("%q is not a valid namespace name: %s", m.Namespace, strings.Join(msgs, "; ")))
		}
	}
	fe = append(fe, validateLabels(m.Labels, p.child("labels"))...)
	size := 0
	for _, k := range sortedKeys(m.Annotations) {
		size += len(k) + len(m.Annotations[k])
		if msgs := content.IsLabelKey(k); len(msgs) > 0 {
			fe.add(p.child("annotations").key(k), "invalid annotation key: "+strings.Join(msgs, "; "))
		}
	}
	if size > maxAnnotationsSize {
		fe.add(p.child("annotations"), fmt.Sprintf("annotations are %d bytes, more than the limit of %d", size, maxAnnotationsSize))
	}
	return fe
}

// checkName returns why name breaks rule, or "".
func checkName(name, rule string) string {
	var msgs []string
	kind := "a DNS-1123 subdomain"
	if rule == dns1123Label {
		msgs, kind = content.IsDNS1123Label(name), "a DNS-1123 label"
	} else {
		msgs = content.IsDNS1123Subdomain(name)
	}
	if len(msgs) == 0 {
		return ""
	}
	return fmt.Sprintf("%q is not a valid name (it must be %s): %s", name, kind, strings.Join(msgs, "; "))
}

// validateLabels checks label keys and values.
func validateLabels(labels map[string]string, p path) fieldErrors {
	var fe fieldErrors
	for _, k := range sortedKeys(labels) {
		if msgs := content.IsLabelKey(k); len(msgs) > 0 {
			fe.add(p.key(k), fmt.Sprintf("invalid label key %q: %s", k, strings.Join(msgs, "; ")))
		}
		if msgs := content.IsLabelValue(labels[k]); len(msgs) > 0 {
			fe.add(p.key(k), fmt.Sprintf("invalid label value %q: %s", labels[k], strings.Join(msgs, "; ")))
		}
	}
	return fe
}

// validateSelector checks a label selector. A nil selector is valid.
func validateSelector(s *metav1.LabelSelector, p path) fieldErrors {
	if s == nil {
		return nil
	}
	fe := validateLabels(s.MatchLabels, p.child("matchLabels"))
	for i, r := range s.MatchExpressions {
		rp := p.child("matchExpressions").index(i)
		if r.Key == "" {
			fe.add(rp.child("key"), "required; name the label this expression tests")
		} else if msgs := content.IsLabelKey(r.Key); len(msgs) > 0 {
			fe.add(rp.child("key"), fmt.Sprintf("invalid label key %q: %s", r.Key, strings.Join(msgs, "; ")))
		}
		switch r.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(r.Values) == 0 {
				fe.add(rp.child("values"), fmt.Sprintf("required when operator is %s; list at least one value", r.Operator))
			}
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(r.Values) > 0 {
				fe.add(rp.child("values"), fmt.Sprintf("must be empty when operator is %s; remove values", r.Operator))
			}
		case "":
			fe.add(rp.child("operator"), "required; use In, NotIn, Exists or DoesNotExist")
		default:
			fe.add(rp.child("operator"), fmt.Sprintf("%q is not a valid operator; use In, NotIn, Exists or DoesNotExist", r.Operator))
		}
		for j, v := range r.Values {
			if msgs := content.IsLabelValue(v); len(msgs) > 0 {
				fe.add(rp.child("values").index(j), fmt.Sprintf("invalid label value %q: %s", v, strings.Join(msgs, "; ")))
			}
		}
	}
	return fe
}

// parseIP parses an IP address the way Membrane accepts it: no zone, no
// IPv4-mapped IPv6, no leading zeros. It returns why s is invalid, or "".
func parseIP(s string) (netip.Addr, string) {
	if s == "" {
		return netip.Addr{}, "required"
	}
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return a, fmt.Sprintf("%q is not a valid IP address (e.g. 10.244.0.5 or fd00::5)", s)
	case a.Zone() != "":
		return a, fmt.Sprintf("%q has a zone; remove %%%s", s, a.Zone())
	case a.Is4In6():
		return a, fmt.Sprintf("%q is an IPv4-mapped IPv6 address; write it as %s", s, a.Unmap())
	case a.IsUnspecified():
		return a, fmt.Sprintf("%q is the unspecified address; use a unicast address", s)
	}
	return a, ""
}

// parseCIDR parses a CIDR. Host bits may be set (10.0.0.1/24), as
// Kubernetes accepts them. It returns why s is invalid, or "".
func parseCIDR(s string) (netip.Prefix, string) {
	if s == "" {
		return netip.Prefix{}, "required"
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Sprintf("%q is not a valid CIDR (e.g. 10.0.0.0/16 or fd00::/64)", s)
	}
	return p, ""
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// validProtocol returns why protocol is invalid, or "".
func checkProtocol(protocol string) string {
	switch protocol {
	case "TCP", "UDP", "SCTP":
		return ""
	}
	if up := strings.ToUpper(protocol); up == "TCP" || up == "UDP" || up == "SCTP" {
		return fmt.Sprintf("%q is not a valid protocol; write it in upper case: %s", protocol, up)
	}
	return fmt.Sprintf("%q is not a valid protocol; use TCP, UDP or SCTP", protocol)
}
