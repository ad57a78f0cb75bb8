package datastore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustDecode(t *testing.T, yaml string) []Object {
	t.Helper()
	objs, err := Decode("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func mustApply(t *testing.T, s *Store, yaml string) int64 {
	t.Helper()
	rev, err := s.Apply(mustDecode(t, yaml))
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func keysOf(objs []Object) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.Key.String())
	}
	return out
}

// dirSnapshot returns the names and contents of every file under dir.
func dirSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		out[p] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

const shop = `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, command: [sleep, inf]}]}
status: {podIP: 10.244.0.5}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec: {podSelector: {matchLabels: {app: web}}}
`

func TestStoreRoundTrip(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	objs, rev, rej := s.List()
	if len(objs) != 0 || rev != 0 || len(rej) != 0 {
		t.Fatalf("fresh store: %d objects, revision %d, rejected %v", len(objs), rev, rej)
	}
	if rev := mustApply(t, s, shop); rev != 1 {
		t.Fatalf("first apply: revision %d, want 1", rev)
	}
	objs, rev, rej = s.List()
	if rev != 1 || len(rej) != 0 {
		t.Fatalf("revision %d, rejected %v", rev, rej)
	}
	want := []string{"Namespace shop", "NetworkPolicy shop/allow-web", "Pod shop/web"}
	if got := keysOf(objs); !slices.Equal(got, want) {
		t.Fatalf("List: %v, want %v", got, want)
	}
	for _, o := range objs {
		if o.Revision != 1 || o.meta().GetResourceVersion() != "1" || o.meta().GetUID() == "" {
			t.Errorf("%s: revision %d, resourceVersion %q, uid %q", o.Key, o.Revision, o.meta().GetResourceVersion(), o.meta().GetUID())
		}
		if want := filepath.Join(s.Dir(), "objects", fileName(o.Key)); o.Source != want {
			t.Errorf("%s: source %q, want %q", o.Key, o.Source, want)
		}
	}
	pod := objs[2].Obj.(*corev1.Pod)
	uid := pod.UID
	if pod.Labels["app"] != "web" || pod.Status.PodIP != "10.244.0.5" || pod.Spec.ServiceAccountName != "default" {
		t.Errorf("pod read back as %+v", pod)
	}

	// Re-applying the same objects writes nothing and keeps the revision.
	before := dirSnapshot(t, s.Dir())
	if rev := mustApply(t, s, shop); rev != 1 {
		t.Fatalf("second apply of the same objects: revision %d, want 1", rev)
	}
	if after := dirSnapshot(t, s.Dir()); !mapsEqual(before, after) {
		t.Fatal("applying the same objects again changed the store")
	}
	// Changing one writes that one only, at a new revision, with its uid;
	// a new Store instance (no cache) reads the same.
	if rev := mustApply(t, s, strings.Replace(shop, "labels: {app: web}", "labels: {app: web, tier: front}", 1)); rev != 2 {
		t.Fatalf("apply of a changed pod: revision %d, want 2", rev)
	}
	s2, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	objs, rev, _ = s2.List()
	if rev != 2 || objs[2].Obj.(*corev1.Pod).UID != uid || objs[2].Revision != 2 || objs[2].Obj.(*corev1.Pod).Labels["tier"] != "front" {
		t.Errorf("after re-apply: revision %d, pod uid %q (was %q), pod revision %d, labels %v", rev, objs[2].Obj.(*corev1.Pod).UID, uid, objs[2].Revision, objs[2].Obj.(*corev1.Pod).Labels)
	}
	if objs[0].Revision != 1 || objs[1].Revision != 1 {
		t.Errorf("unchanged objects rewritten: revisions %d, %d, want 1", objs[0].Revision, objs[1].Revision)
	}
	if rev, err := s2.Revision(); rev != 2 || err != nil {
		t.Errorf("Revision: %d, %v", rev, err)
	}

	// Objects handed out are copies.
	objs[2].Obj.(*corev1.Pod).Labels["app"] = "changed"
	objs, _, _ = s.List()
	if objs[2].Obj.(*corev1.Pod).Labels["app"] != "web" {
		t.Error("changing a listed object changed the store's cache")
	}

	// Delete one object.
	rev, err = s.Delete([]Key{{Kind: "NetworkPolicy", Namespace: "shop", Name: "allow-web"}}, DeleteOptions{})
	if err != nil || rev != 3 {
		t.Fatalf("delete: revision %d, %v", rev, err)
	}
	objs, _, _ = s2.List()
	if got, want := keysOf(objs), []string{"Namespace shop", "Pod shop/web"}; !slices.Equal(got, want) {
		t.Fatalf("after delete: %v, want %v", got, want)
	}

	// Other entries in the directory are left alone.
	if err := os.MkdirAll(filepath.Join(s.Dir(), "identities"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, rej := s.List(); len(rej) != 0 {
		t.Errorf("foreign directory rejected: %v", rej)
	}
}

func TestDeleteCascadeAndErrors(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	mustApply(t, s, shop+`
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: other}
spec: {containers: [{name: c}]}
`)
	// A missing object is an error naming it, and nothing is deleted.
	before := dirSnapshot(t, s.Dir())
	_, err := s.Delete([]Key{{Kind: "Namespace", Name: "shop"}, {Kind: "Pod", Name: "ghost"}}, DeleteOptions{})
	if err == nil || !strings.Contains(err.Error(), "Pod default/ghost: not found") {
		t.Fatalf("delete of a missing object: %v", err)
	}
	if after := dirSnapshot(t, s.Dir()); !mapsEqual(before, after) {
		t.Fatal("failed delete changed the store")
	}
	// Unless told to ignore it; then the namespace goes with its objects.
	rev, err := s.Delete([]Key{{Kind: "namespace", Name: "shop"}, {Kind: "Pod", Name: "ghost"}}, DeleteOptions{IgnoreNotFound: true})
	if err != nil || rev != 2 {
		t.Fatalf("delete: revision %d, %v", rev, err)
	}
	objs, _, _ := s.List()
	if got, want := keysOf(objs), []string{"Namespace other", "Pod other/web"}; !slices.Equal(got, want) {
		t.Fatalf("after cascade: %v, want %v", got, want)
	}
	// Deleting nothing leaves the revision alone.
	rev, err = s.Delete([]Key{{Kind: "Pod", Namespace: "x", Name: "y"}}, DeleteOptions{IgnoreNotFound: true})
	if err != nil || rev != 2 {
		t.Fatalf("empty delete: revision %d, %v", rev, err)
	}
	// Keys that cannot name a file are refused.
	for _, k := range []Key{{Kind: "Pod", Namespace: "x", Name: "../../etc"}, {Kind: "Service", Name: "x"}, {Kind: "Node", Namespace: "x", Name: "n"}} {
		if _, err := s.Delete([]Key{k}, DeleteOptions{IgnoreNotFound: true}); err == nil {
			t.Errorf("delete %v: no error", k)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || v != w {
			return false
		}
	}
	return true
}

func TestApplyWritesNothingOnError(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	mustApply(t, s, shop)
	before := dirSnapshot(t, s.Dir())
	objs := mustDecode(t, `
apiVersion: v1
kind: Pod
metadata: {name: fine, namespace: shop}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: clash, namespace: shop}
spec: {containers: [{name: c}]}
status: {podIP: 10.244.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: lost, namespace: nowhere}
spec: {containers: [{name: c}]}
`)
	rev, err := s.Apply(objs)
	if err == nil || rev != 0 {
		t.Fatalf("apply: revision %d, error %v", rev, err)
	}
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("want an ErrorList of 2, got %#v", err)
	}
	for _, want := range []string{"10.244.0.5 is already the IP of Pod shop/web", `Namespace "nowhere" does not exist`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if after := dirSnapshot(t, s.Dir()); !mapsEqual(before, after) {
		t.Fatal("failed apply changed the store")
	}
	// An object built in Go is validated too.
	bad := &corev1.Pod{}
	bad.Name, bad.Namespace = "Bad_Name", "shop"
	if _, err := s.Apply([]Object{{Obj: bad}}); err == nil || !strings.Contains(err.Error(), "metadata.name") {
		t.Fatalf("apply of an invalid Go object: %v", err)
	}
}

func TestHandEditedFileIsRejected(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	mustApply(t, s, shop)
	objects := filepath.Join(s.Dir(), "objects")
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(objects, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("pod_shop_web.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containerz: []}\n")
	write("pod_shop_other.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containers: [{name: c}]}\n")
	write("notes.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: notes}\n")
	write("README", "not yaml, not read")
	objs, _, rej := s.List()
	if got, want := keysOf(objs), []string{"Namespace shop", "NetworkPolicy shop/allow-web"}; !slices.Equal(got, want) {
		t.Errorf("List: %v, want %v", got, want)
	}
	var msgs []string
	for _, r := range rej {
		msgs = append(msgs, strings.ReplaceAll(r.Err.Error(), s.Dir(), "$STORE"))
	}
	want := []string{
		`$STORE/objects/notes.yaml: not a datastore file name; files in objects/ are named <kind>_<namespace>_<name>.yaml (namespace empty for cluster-scoped kinds)`,
		`$STORE/objects/pod_shop_other.yaml: Pod shop/web: the file name is for Pod shop/other; rename the file to pod_shop_web.yaml`,
		`$STORE/objects/pod_shop_web.yaml: Pod shop/web: spec.containerz: unknown field "containerz"; did you mean "containers"?` + "\n" +
			`$STORE/objects/pod_shop_web.yaml: Pod shop/web: spec.containers: required; a Pod needs at least one container, whose command the lab runs`,
	}
	if !slices.Equal(msgs, want) {
		t.Errorf("rejections:\n%s\nwant:\n%s", strings.Join(msgs, "\n"), strings.Join(want, "\n"))
	}
	if rej[2].Key == nil || *rej[2].Key != (Key{"Pod", "shop", "web"}) {
		t.Errorf("rejection key %v", rej[2].Key)
	}
	// Applying the object again repairs the file.
	mustApply(t, s, shop)
	if _, _, rej := s.List(); len(rej) != 2 {
		t.Errorf("after repair: %d rejections, want 2", len(rej))
	}
}

// TestConcurrentWriters runs writers on separate Store instances (flock is
// per open file, so they exclude each other like separate processes) and
// checks that every apply got its own revision and nothing was lost.
func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
	const writers, applies = 4, 10
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		revs = map[int64]bool{}
	)
	for w := range writers {
		ws, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for i := range applies {
				objs := mustDecode(t, fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: p%d-%d, namespace: shop}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.%d.%d}\n", w, i, w, i+1))
				rev, err := ws.Apply(objs)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if revs[rev] {
					t.Errorf("revision %d returned twice", rev)
				}
				revs[rev] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	objs, rev, rej := s.List()
	if len(objs) != 1+writers*applies || rev != 1+writers*applies || len(rej) != 0 {
		t.Errorf("after concurrent applies: %d objects, revision %d, %d rejections", len(objs), rev, len(rej))
	}
}

func TestOpenKeepsRevision(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	mustApply(t, s, shop)
	s2, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if _, rev, _ := s2.List(); rev != 1 {
		t.Errorf("revision after reopen: %d", rev)
	}
}

func TestLabDefaulted(t *testing.T) {
	t.Parallel()
	l := (&Lab{}).Defaulted()
	if len(l.Spec.Nodes) != 1 || l.Spec.Nodes[0].Name != "node1" || l.Spec.Nodes[0].PodCIDR != "10.244.0.0/24" || l.Spec.TrustDomain != "cluster.local" {
		t.Errorf("defaulted empty lab: %+v", l.Spec)
	}
	in := &Lab{Spec: LabSpec{Nodes: []LabNode{{Name: "a"}, {Name: "b", PodCIDRs: []string{"10.1.0.0/24", "fd00::/64"}}, {Name: "c"}}}}
	l = in.Defaulted()
	got := fmt.Sprint(LabNodePodCIDRs(l.Spec.Nodes[0]), LabNodePodCIDRs(l.Spec.Nodes[1]), LabNodePodCIDRs(l.Spec.Nodes[2]))
	if want := "[10.244.0.0/24] [10.1.0.0/24 fd00::/64] [10.244.2.0/24]"; got != want {
		t.Errorf("node CIDRs %s, want %s", got, want)
	}
	if in.Spec.Nodes[0].PodCIDR != "" {
		t.Error("Defaulted changed its receiver")
	}
}

// A name Kubernetes accepts but the object's file name cannot hold is
// refused at validation, naming the field (it failed in the write, with
// the operating system's "file name too long"); the longest that fits is
// stored.
func TestApplyNameTooLongForFile(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	ns := strings.Repeat("n", 63)
	nsYAML := "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + ns + "}\n"
	pod := func(name string) string {
		return nsYAML + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec: {containers: [{name: c}]}\n"
	}
	long := strings.Repeat("p", 243)
	_, err := s.Apply(mustDecode(t, pod(long)))
	if err == nil || !strings.Contains(err.Error(), "metadata.name: too long for this datastore") || !strings.Contains(err.Error(), "shorten the name") {
		t.Fatalf("apply of a pod whose file name is too long: %v", err)
	}
	fits := strings.Repeat("p", maxFileName-len("pod__.yaml")-len(ns))
	mustApply(t, s, pod(fits))
	if _, err := os.Stat(filepath.Join(s.objectsDir(), fileName(Key{Kind: "Pod", Namespace: ns, Name: fits}))); err != nil {
		t.Fatal(err)
	}
}
