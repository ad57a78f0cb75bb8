package datastore

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// ciliumPeers is a store holding a CiliumNetworkPolicy and a
// CiliumClusterwideNetworkPolicy whose rules have peer lists that are
// absent, empty and non-empty.
const ciliumPeersYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: peers, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: []
    fromCIDR: []
  - fromEndpoints: [{matchLabels: {app: frontend}}]
  - toPorts: [{ports: [{port: "80"}]}]
  egress:
  - toEndpoints: []
    toCIDR: []
  - toCIDR: [10.0.0.0/8]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: peers}
specs:
- endpointSelector: {}
  ingressDeny:
  - fromEndpoints: []
    fromCIDR: [192.0.2.0/24]
  egressDeny:
  - toCIDR: []
`

// listState describes a list for test messages: "nil", "[]" or its length.
func listState(list any) string {
	v := reflect.ValueOf(list)
	switch {
	case v.IsNil():
		return "nil"
	case v.Len() == 0:
		return "[]"
	}
	return strings.Repeat("x", v.Len())
}

// checkPeerLists checks the peer lists of the objects of ciliumPeersYAML.
func checkPeerLists(t *testing.T, where string, objs []Object) {
	t.Helper()
	var cnp *CiliumNetworkPolicy
	var ccnp *CiliumClusterwideNetworkPolicy
	for _, o := range objs {
		switch obj := o.Obj.(type) {
		case *CiliumNetworkPolicy:
			cnp = obj
		case *CiliumClusterwideNetworkPolicy:
			ccnp = obj
		}
	}
	if cnp == nil || ccnp == nil {
		t.Fatalf("%s: policies missing from %v", where, keysOf(objs))
	}
	in, eg := cnp.Spec.Ingress, cnp.Spec.Egress
	ind, egd := ccnp.Specs[0].IngressDeny, ccnp.Specs[0].EgressDeny
	for _, c := range []struct {
		field string
		list  any
		want  string
	}{
		{"ingress[0].fromEndpoints", in[0].FromEndpoints, "[]"},
		{"ingress[0].fromCIDR", in[0].FromCIDR, "[]"},
		{"ingress[0].fromEntities", in[0].FromEntities, "nil"},
		{"ingress[1].fromEndpoints", in[1].FromEndpoints, "x"},
		{"ingress[1].fromCIDR", in[1].FromCIDR, "nil"},
		{"ingress[2].fromEndpoints", in[2].FromEndpoints, "nil"},
		{"ingress[2].fromCIDR", in[2].FromCIDR, "nil"},
		{"ingress[2].fromCIDRSet", in[2].FromCIDRSet, "nil"},
		{"ingress[2].fromRequires", in[2].FromRequires, "nil"},
		{"egress[0].toEndpoints", eg[0].ToEndpoints, "[]"},
		{"egress[0].toCIDR", eg[0].ToCIDR, "[]"},
		{"egress[1].toEndpoints", eg[1].ToEndpoints, "nil"},
		{"egress[1].toCIDR", eg[1].ToCIDR, "x"},
		{"ingressDeny[0].fromEndpoints", ind[0].FromEndpoints, "[]"},
		{"ingressDeny[0].fromCIDR", ind[0].FromCIDR, "x"},
		{"egressDeny[0].toCIDR", egd[0].ToCIDR, "[]"},
		{"egressDeny[0].toEndpoints", egd[0].ToEndpoints, "nil"},
	} {
		if got := listState(c.list); got != c.want {
			t.Errorf("%s: %s is %s, want %s", where, c.field, got, c.want)
		}
	}
}

// TestCiliumStoreRoundTrip checks that an explicitly empty peer list
// (which selects nothing) and an absent one (which does not restrict) stay
// apart through Apply, the files, List and Watch.
func TestCiliumStoreRoundTrip(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	in := mustDecode(t, ciliumPeersYAML)
	checkPeerLists(t, "Decode", in)
	ch := watch(t, s)
	if b := next(t, ch); !b.Full || len(b.Upserts) != 0 {
		t.Fatalf("first batch of an empty store: %+v", b)
	}
	rev, err := s.Apply(in)
	if err != nil {
		t.Fatal(err)
	}
	if in[1].Obj.(*CiliumNetworkPolicy).ResourceVersion != "" {
		t.Error("Apply changed the caller's object")
	}

	// The files: one per object, named by the usual scheme, holding [] and
	// null where the policies do.
	cnpFile := filepath.Join(s.Dir(), "objects", "ciliumnetworkpolicy_shop_peers.yaml")
	ccnpFile := filepath.Join(s.Dir(), "objects", "ciliumclusterwidenetworkpolicy__peers.yaml")
	for file, want := range map[string][]string{
		cnpFile:  {`"fromCIDR": [],`, `"fromEndpoints": [],`, `"fromCIDR": null,`, `"toEndpoints": [],`},
		ccnpFile: {`"fromEndpoints": [],`, `"toCIDR": [],`, `"toEndpoints": null,`},
	} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !strings.Contains(string(data), w) {
				t.Errorf("%s does not hold %q:\n%s", filepath.Base(file), w, data)
			}
		}
	}

	// List, from a cache-less Store too.
	objs, gotRev, rej := s.List()
	if gotRev != rev || len(rej) != 0 || len(objs) != 3 {
		t.Fatalf("List: revision %d (want %d), %d objects, rejected %v", gotRev, rev, len(objs), rej)
	}
	checkPeerLists(t, "List", objs)
	s2, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	objs2, _, _ := s2.List()
	checkPeerLists(t, "List of a new Store", objs2)
	for _, o := range objs2 {
		if o.Revision != rev || o.meta().GetUID() == "" {
			t.Errorf("%s: revision %d, uid %q", o.Key, o.Revision, o.meta().GetUID())
		}
	}

	// Listed objects are copies: changing one changes neither the store
	// nor the next List.
	cnp := objs[1].Obj.(*CiliumNetworkPolicy)
	cnp.Spec.Ingress[0].FromEndpoints = append(cnp.Spec.Ingress[0].FromEndpoints, metav1.LabelSelector{})
	cnp.Spec.Ingress[2].FromCIDR = []string{}
	objs, _, _ = s.List()
	checkPeerLists(t, "List after changing a listed object", objs)

	// Watch.
	state := map[Key]Object{}
	until(t, ch, state, rev)
	var watched []Object
	for _, o := range state {
		watched = append(watched, o)
	}
	checkPeerLists(t, "Watch", watched)

	// A file re-read after a change keeps the distinction too: the
	// watcher rereads the changed file from disk.
	changed := strings.Replace(ciliumPeersYAML, "- toCIDR: [10.0.0.0/8]", "- toCIDR: [10.0.0.0/8]\n    toEndpoints: []", 1)
	rev, err = s.Apply(mustDecode(t, changed))
	if err != nil {
		t.Fatal(err)
	}
	until(t, ch, state, rev)
	eg := state[Key{"CiliumNetworkPolicy", "shop", "peers"}].Obj.(*CiliumNetworkPolicy).Spec.Egress
	if listState(eg[1].ToEndpoints) != "[]" || listState(eg[0].ToCIDR) != "[]" || listState(eg[0].ToEntities) != "nil" {
		t.Errorf("Watch after a change: egress[1].toEndpoints %s, egress[0].toCIDR %s, egress[0].toEntities %s",
			listState(eg[1].ToEndpoints), listState(eg[0].ToCIDR), listState(eg[0].ToEntities))
	}
}

func TestCiliumStoreRules(t *testing.T) {
	t.Parallel()
	s := openStore(t)

	// A CiliumNetworkPolicy needs its Namespace; a clusterwide one does not.
	const cnp = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec: {endpointSelector: {}, ingress: [{}]}\n"
	const ccnp = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}, ingress: [{}]}\n"
	_, err := s.Apply(mustDecode(t, cnp))
	if err == nil || !strings.Contains(err.Error(), `CiliumNetworkPolicy shop/p: metadata.namespace: Namespace "shop" does not exist`) {
		t.Fatalf("CiliumNetworkPolicy without its namespace: %v", err)
	}
	mustApply(t, s, ccnp)
	mustApply(t, s, "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"+cnp)

	// Deleting the namespace deletes the namespaced policy only.
	if _, err := s.Delete([]Key{{Kind: "Namespace", Name: "shop"}}, DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	objs, _, _ := s.List()
	if got := strings.Join(keysOf(objs), ", "); got != "CiliumClusterwideNetworkPolicy p" {
		t.Errorf("after deleting the namespace: %s", got)
	}
	// Delete takes the kind in any case.
	if _, err := s.Delete([]Key{{Kind: "ciliumclusterwidenetworkpolicy", Name: "p"}}, DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// Objects built in Go are validated like decoded ones.
	bad := []Object{
		{Obj: &CiliumClusterwideNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "shop"},
			Spec:       &CiliumRule{EndpointSelector: &metav1.LabelSelector{}},
		}},
		{Obj: &CiliumNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "n", Namespace: "default"},
			Spec: &CiliumRule{
				EndpointSelector: &metav1.LabelSelector{},
				Egress:           []CiliumEgressRule{{ToFQDNs: []any{map[string]any{"matchName": "example.com"}}}},
			},
		}},
	}
	_, err = s.Apply(bad)
	for _, want := range []string{
		"metadata.namespace: CiliumClusterwideNetworkPolicy is cluster-scoped and has no namespace",
		"CiliumNetworkPolicy default/n: spec.egress[0].toFQDNs: DNS names as peers (toFQDNs) are not supported yet",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Apply of invalid Go objects: %v\nwant it to hold %q", err, want)
		}
	}
}

// everyCiliumField sets every field of the Cilium types, unsupported ones
// included, for the deep copy test.
const everyCiliumField = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: all, namespace: shop, labels: {a: b}, annotations: {c: d}}
spec: &rule
  endpointSelector: {matchLabels: {app: web}, matchExpressions: [{key: k, operator: In, values: [v]}]}
  nodeSelector: {matchLabels: {role: worker}}
  description: everything
  labels: [{key: k, value: v, source: s}]
  enableDefaultDeny: {ingress: true, egress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {a: b}}]
    fromRequires: [{matchLabels: {c: d}}]
    fromCIDR: [10.0.0.0/8]
    fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16], cidrGroupRef: g, cidrGroupSelector: {matchLabels: {x: y}}}]
    fromEntities: [world]
    toPorts:
    - ports: [{port: "80", endPort: 90, protocol: TCP}]
      rules: {http: [{method: GET, path: /, host: h, headers: [X-A], headerMatches: [{name: x-b, value: v, mismatch: LOG}, {name: x-c, regex: r, secret: {name: s}}]}], kafka: [{topic: t}], dns: [{matchName: x}], l7proto: p, l7: [{k: v}]}
      terminatingTLS: {secret: {name: a}}
      originatingTLS: {secret: {name: b}}
      serverNames: [example.com]
      listener: {name: l, envoyConfig: {name: e}}
    icmps: [{fields: [{family: IPv6, type: EchoRequest}]}]
    fromGroups: [{aws: {labels: {a: b}}}]
    fromNodes: [{matchLabels: {a: b}}]
    authentication: {mode: required}
  ingressDeny:
  - fromEndpoints: [{}]
    fromRequires: [{}]
    fromCIDR: [10.0.0.0/8]
    fromCIDRSet: [{cidr: 10.0.0.0/8}]
    fromEntities: [world]
    toPorts: [{ports: [{port: "22"}]}]
    icmps: [{fields: [{type: 8}]}]
    fromGroups: [{aws: {}}]
    fromNodes: [{}]
  egress:
  - toEndpoints: [{}]
    toRequires: [{}]
    toCIDR: [10.0.0.0/8]
    toCIDRSet: [{cidr: 10.0.0.0/8}]
    toEntities: [world]
    toPorts: [{ports: [{port: "53"}]}]
    icmps: [{fields: [{type: 8}]}]
    toServices: [{k8sService: {serviceName: s}}]
    toFQDNs: [{matchName: example.com}]
    toGroups: [{aws: {}}]
    toNodes: [{}]
    authentication: {mode: required}
  egressDeny:
  - toEndpoints: [{}]
    toRequires: [{}]
    toCIDR: [10.0.0.0/8]
    toCIDRSet: [{cidr: 10.0.0.0/8}]
    toEntities: [world]
    toPorts: [{ports: [{port: "25"}]}]
    icmps: [{fields: [{type: 8}]}]
    toServices: [{}]
    toGroups: [{}]
    toNodes: [{}]
specs: [*rule]
`

func TestCiliumDeepCopy(t *testing.T) {
	t.Parallel()
	var cnp CiliumNetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(everyCiliumField), &cnp); err != nil {
		t.Fatal(err)
	}
	var ccnp CiliumClusterwideNetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(everyCiliumField), &ccnp); err != nil {
		t.Fatal(err)
	}
	// The fixture must set every field of every Cilium type, so that a
	// field added later without a deep copy is caught here.
	set := map[string]bool{}
	all := map[string]bool{}
	fieldsSet(reflect.ValueOf(cnp), set, all)
	for f := range all {
		if !set[f] {
			t.Errorf("the fixture does not set %s; add it", f)
		}
	}

	for _, c := range []struct {
		name     string
		orig, cp any
	}{
		{"CiliumNetworkPolicy", &cnp, cnp.DeepCopyObject()},
		{"CiliumClusterwideNetworkPolicy", &ccnp, ccnp.DeepCopyObject()},
		{"empty lists", &CiliumNetworkPolicy{Specs: []CiliumRule{{Ingress: []CiliumIngressRule{{FromEndpoints: []metav1.LabelSelector{}, FromCIDR: []string{}}}}}}, nil},
	} {
		if c.cp == nil {
			c.cp = c.orig.(*CiliumNetworkPolicy).DeepCopy()
		}
		if !reflect.DeepEqual(c.orig, c.cp) {
			t.Errorf("%s: the copy differs from the original", c.name)
		}
		checkNoSharing(t, reflect.ValueOf(c.orig), reflect.ValueOf(c.cp), c.name)
	}
	if (*CiliumNetworkPolicy)(nil).DeepCopy() != nil || (*CiliumClusterwideNetworkPolicy)(nil).DeepCopy() != nil {
		t.Error("DeepCopy of nil is not nil")
	}
}

// fieldsSet records, as "Type.Field", the fields of Cilium types in v that
// are set (set) and that exist (all).
func fieldsSet(v reflect.Value, set, all map[string]bool) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			fieldsSet(v.Elem(), set, all)
		}
	case reflect.Slice:
		for i := range v.Len() {
			fieldsSet(v.Index(i), set, all)
		}
	case reflect.Struct:
		t := v.Type()
		if t.PkgPath() != reflect.TypeFor[CiliumRule]().PkgPath() {
			return
		}
		for i := range t.NumField() {
			name := t.Name() + "." + t.Field(i).Name
			all[name] = true
			if !v.Field(i).IsZero() {
				set[name] = true
			}
			fieldsSet(v.Field(i), set, all)
		}
	}
}

// checkNoSharing fails when a and b (a deep copy of a) share memory.
func checkNoSharing(t *testing.T, a, b reflect.Value, p string) {
	t.Helper()
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() {
			return
		}
		if a.Pointer() == b.Pointer() {
			t.Errorf("%s: the copy shares the pointer", p)
		}
		checkNoSharing(t, a.Elem(), b.Elem(), p)
	case reflect.Interface:
		if !a.IsNil() {
			checkNoSharing(t, a.Elem(), b.Elem(), p)
		}
	case reflect.Slice:
		if a.Len() > 0 && a.Pointer() == b.Pointer() {
			t.Errorf("%s: the copy shares the list", p)
		}
		for i := range a.Len() {
			checkNoSharing(t, a.Index(i), b.Index(i), p+"["+strconv.Itoa(i)+"]")
		}
	case reflect.Map:
		if a.Len() > 0 && a.Pointer() == b.Pointer() {
			t.Errorf("%s: the copy shares the map", p)
		}
		for _, k := range a.MapKeys() {
			checkNoSharing(t, a.MapIndex(k), b.MapIndex(k), p+"."+k.String())
		}
	case reflect.Struct:
		for i := range a.NumField() {
			if a.Type().Field(i).IsExported() {
				checkNoSharing(t, a.Field(i), b.Field(i), p+"."+a.Type().Field(i).Name)
			}
		}
	}
}

func TestICMPTypeNumber(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		family, name string
		want         uint8
		ok           bool
	}{
		{"IPv4", "EchoRequest", 8, true},
		{"", "Echo", 8, true},
		{"IPv4", "EchoReply", 0, true},
		{"IPv4", "RouterSelection", 10, true},
		{"IPv4", "Photuris", 40, true},
		{"IPv4", "ExtendedEchoReply", 43, true},
		{"IPv6", "EchoRequest", 128, true},
		{"IPv6", "EchoReply", 129, true},
		{"IPv6", "PacketTooBig", 2, true},
		{"IPv6", "NeighborSolicitation", 135, true},
		{"IPv6", "HomeAgentAddressDiscoveryRequest", 144, true},
		{"IPv6", "DuplicateAddressConfirmationCodeSuffix", 158, true},
		{"IPv6", "ExtendedEchoReply", 161, true},
		{"IPv6", "Echo", 0, false},
		{"IPv4", "PacketTooBig", 0, false},
		{"IPv4", "echorequest", 0, false},
		{"ipv4", "EchoRequest", 0, false},
		{"IPv4", "8", 8, true},
		{"IPv6", "255", 255, true},
		{"IPv6", "256", 0, false},
		{"IPv4", "08", 0, false},
		{"IPv7", "8", 0, false},
	} {
		got, ok := ICMPTypeNumber(c.family, c.name)
		if got != c.want || ok != c.ok {
			t.Errorf("ICMPTypeNumber(%q, %q) = %d, %v; want %d, %v", c.family, c.name, got, ok, c.want, c.ok)
		}
	}
	if len(icmpV4Types) != 14 || len(icmpV6Types) != 27 {
		t.Errorf("%d IPv4 and %d IPv6 names, want 14 and 27", len(icmpV4Types), len(icmpV6Types))
	}

	// TypeNumber takes every spelling that validation accepts.
	objs := mustDecode(t, `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: icmp}
spec:
  endpointSelector: {}
  ingress:
  - icmps: [{fields: [{type: 8}, {type: "8"}, {type: EchoRequest}, {type: EchoRequest, family: IPv6}, {type: 0}, {type: "255", family: IPv6}]}]
`)
	var got []string
	for _, f := range objs[0].Obj.(*CiliumClusterwideNetworkPolicy).Spec.Ingress[0].ICMPs[0].Fields {
		n, ok := f.TypeNumber()
		if !ok {
			t.Errorf("TypeNumber of %+v: not ok", f)
		}
		got = append(got, strconv.Itoa(int(n)))
	}
	if want := "8 8 8 128 0 255"; strings.Join(got, " ") != want {
		t.Errorf("TypeNumber: %s, want %s", strings.Join(got, " "), want)
	}
	if _, ok := (CiliumICMPField{}).TypeNumber(); ok {
		t.Error("TypeNumber without a type: ok")
	}
}

func TestCiliumCIDRPrefix(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in, want string
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"192.0.2.1", "192.0.2.1/32"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"fd00::/64", "fd00::/64"},
		{"", ""},
		{"::ffff:10.0.0.1", ""},
		{"example.com", ""},
	} {
		got, ok := CiliumCIDRPrefix(c.in)
		if c.want == "" {
			if ok {
				t.Errorf("CiliumCIDRPrefix(%q) = %v, want not ok", c.in, got)
			}
			continue
		}
		if !ok || got != netip.MustParsePrefix(c.want) {
			t.Errorf("CiliumCIDRPrefix(%q) = %v, %v; want %s", c.in, got, ok, c.want)
		}
	}
}

func TestCiliumKinds(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		obj        any
		kind       string
		namespaced bool
	}{
		{&CiliumNetworkPolicy{}, "CiliumNetworkPolicy", true},
		{&CiliumClusterwideNetworkPolicy{}, "CiliumClusterwideNetworkPolicy", false},
	} {
		k := kindOf(c.obj)
		if k == nil || k.kind != c.kind || k.namespaced != c.namespaced || k.apiVersion != "cilium.io/v2" || lookupKind("cilium.io/v2", c.kind) != k {
			t.Errorf("%s: registry row %+v", c.kind, k)
		}
	}
}

// HTTP rule expressions are validated the way membrane-proxy compiles them,
// anchored as ^(?:expr)$: an expression one nesting level short of Go's
// limit compiles alone but not anchored, and would make the proxy reject
// every policy it came with.
func TestCiliumHTTPRegexAnchored(t *testing.T) {
	t.Parallel()
	nested := func(depth int, expr string) string {
		return strings.Repeat("(", depth) + expr + strings.Repeat(")", depth)
	}
	doc := func(path, regex string) string {
		return `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: shop}
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - path: "` + path + `"
          headerMatches: [{name: x-re, regex: "` + regex + `"}]
`
	}
	if _, err := Decode("ok.yaml", []byte(doc(nested(998, "/"), nested(998, "a")))); err != nil {
		t.Fatalf("998 nested groups: %v", err)
	}
	_, err := Decode("deep.yaml", []byte(doc(nested(999, "/"), nested(999, "a"))))
	for _, want := range []string{
		`spec.ingress[0].toPorts[0].rules.http[0].path: "((((`,
		`spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].regex: "((((`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("999 nested groups: error lacks %q: %.300v", want, err)
		}
	}
	if err == nil || strings.Count(err.Error(), "is not a valid regular expression (RE2 syntax; it must match the whole") != 2 ||
		strings.Count(err.Error(), "expression nests too deeply") != 2 {
		t.Errorf("999 nested groups: want two \"nests too deeply\" errors, got %.300v", err)
	}
	// The expressions (some 2 KB each) are quoted cut short, not whole
	// and twice.
	if err != nil && len(err.Error()) > 2000 {
		t.Errorf("999 nested groups: a %d-byte error; want the expressions cut short", len(err.Error()))
	}
}
