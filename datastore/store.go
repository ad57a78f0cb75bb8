package datastore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"encoding/json"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// Store is a datastore directory. Its methods may be called concurrently,
// and any number of Stores, in this process or others, may share one
// directory: writers serialise on an flock of <dir>/.lock.
type Store struct {
	dir string

	mu    sync.Mutex            // serialises this Store's operations and guards cache
	cache map[string]*fileState // objects/ as last read, by file name
}

// DeleteOptions tune Delete.
type DeleteOptions struct {
	// IgnoreNotFound makes deleting an object that does not exist a no-op
	// instead of an error.
	IgnoreNotFound bool
}

// Open opens the datastore in dir, creating dir, dir/objects and
// dir/revision (at 0) when they do not exist.
func Open(dir string) (*Store, error) {
	s := &Store{dir: dir}
	if err := os.MkdirAll(s.objectsDir(), 0o755); err != nil {
		return nil, fmt.Errorf("open datastore %s: %w", dir, err)
	}
	unlock, err := lockFile(s.lockPath(), lockExclusive)
	if err != nil {
		return nil, fmt.Errorf("open datastore %s: %w", dir, err)
	}
	defer unlock()
	if _, err := os.Stat(s.revisionPath()); os.IsNotExist(err) {
		if err := writeFileAtomic(dir, "revision", []byte("0\n")); err != nil {
			return nil, fmt.Errorf("open datastore %s: %w", dir, err)
		}
		if err := syncDir(dir); err != nil {
			return nil, fmt.Errorf("open datastore %s: %w", dir, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("open datastore %s: %w", dir, err)
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) objectsDir() string   { return filepath.Join(s.dir, "objects") }
func (s *Store) lockPath() string     { return filepath.Join(s.dir, ".lock") }
func (s *Store) revisionPath() string { return filepath.Join(s.dir, "revision") }

// List returns the valid objects in the store, sorted by key, and the
// store's revision, read together under a shared lock so that they are
// consistent. Files that do not decode or validate are returned as
// rejections, and so are errors reading the store.
func (s *Store) List() (objs []Object, rev int64, rejected []Rejection) {
	return s.list(nil)
}

// Revision returns the store's revision.
func (s *Store) Revision() (int64, error) {
	unlock, err := lockFile(s.lockPath(), lockShared)
	if err != nil {
		return 0, err
	}
	defer unlock()
	return readRevision(s.revisionPath())
}

// Exists reports whether an object with key k is stored (valid or not),
// without reading it.
func (s *Store) Exists(k Key) bool {
	k, err := normalizeKey(k)
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(s.objectsDir(), fileName(k)))
	return err == nil
}

// ListKinds is List for the objects of some kinds only; it reads no file of
// the other kinds.
func (s *Store) ListKinds(kinds ...string) (objs []Object, rev int64, rejected []Rejection) {
	return s.list(kindFilter(kinds, nil))
}

func (s *Store) list(keep func(string) bool) (objs []Object, rev int64, rejected []Rejection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := lockFile(s.lockPath(), lockShared)
	if err != nil {
		return nil, 0, []Rejection{{Source: s.lockPath(), Err: err}}
	}
	defer unlock()
	rev, err = readRevision(s.revisionPath())
	if err != nil {
		rejected = append(rejected, Rejection{Source: s.revisionPath(), Err: err})
	}
	var states map[string]*fileState
	if keep != nil {
		states, _, err = scanObjects(s.objectsDir(), s.cache, keep)
	} else {
		states, _, err = scanObjects(s.objectsDir(), s.cache)
	}
	if err != nil {
		return nil, rev, append(rejected, Rejection{Source: s.objectsDir(), Err: err})
	}
	s.cache = states
	for _, name := range sortedKeys(states) {
		if keep != nil && !keep(name) {
			continue
		}
		if st := states[name]; st.obj != nil {
			objs = append(objs, copyObject(st.obj))
		} else {
			rejected = append(rejected, *st.rej)
		}
	}
	sortObjects(objs)
	return objs, rev, rejected
}

// Apply validates objs together with the objects already in the store and,
// when everything is valid, writes them and bumps the revision, which it
// returns. Each written object gets metadata.resourceVersion set to the new
// revision and keeps the uid it had in the store (a new object gets a
// random one). An object the store already holds as it would be written
// (the same after defaults, resourceVersion and uid aside) is not written
// again and keeps its resourceVersion; when no object changes, nothing is
// written and Apply returns the current revision. When anything is
// invalid, Apply writes nothing and returns an ErrorList of every problem.
// objs are not modified.
func (s *Store) Apply(objs []Object) (int64, error) {
	rev, _, err := s.ApplyReport(objs)
	return rev, err
}

// ApplyReport is Apply that also says which objects it wrote: an object
// whose key is not in written was stored as given already (kubectl's
// "unchanged").
func (s *Store) ApplyReport(objs []Object) (rev int64, written map[Key]bool, err error) {
	prepared, errs := prepareApply(objs)
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := lockFile(s.lockPath(), lockExclusive)
	if err != nil {
		return 0, nil, fmt.Errorf("apply: %w", err)
	}
	defer unlock()
	removeTempFiles(s.objectsDir())
	removeTempFiles(s.dir)

	// Read what the rules across objects need (and the files being
	// replaced, to keep their UIDs), not every stored policy.
	replaced := make(map[string]bool, len(prepared))
	for i := range prepared {
		replaced[fileName(prepared[i].Key)] = true
	}
	keep := kindFilter(unionKinds, replaced)
	states, _, err := scanObjects(s.objectsDir(), s.cache, keep)
	if err != nil {
		return 0, nil, fmt.Errorf("apply: %w", err)
	}
	s.cache = states
	union := make(map[Key]*Object, len(states)+len(prepared))
	for name, st := range states {
		if st.obj != nil && keep(name) {
			union[st.obj.Key] = st.obj
		}
	}
	changed := make(map[Key]bool, len(prepared))
	for i := range prepared {
		union[prepared[i].Key] = &prepared[i]
		changed[prepared[i].Key] = true
	}
	errs = append(errs, checkUnion(union, changed)...)
	if len(errs) > 0 {
		sortErrors(errs)
		return 0, nil, errs
	}
	// An object the store holds as it would write it is left alone
	// (kubectl's "unchanged"); when that is every object, nothing is
	// written and the revision stays, so watchers see no change.
	write := prepared[:0]
	for i := range prepared {
		if !sameAsStored(&prepared[i], states[fileName(prepared[i].Key)]) {
			write = append(write, prepared[i])
		}
	}
	prepared = write
	written = make(map[Key]bool, len(prepared))
	for i := range prepared {
		written[prepared[i].Key] = true
	}
	if len(prepared) == 0 {
		rev, err := readRevision(s.revisionPath())
		return rev, written, err
	}

	rev, err = readRevision(s.revisionPath())
	if err != nil {
		return 0, nil, fmt.Errorf("apply: %w", err)
	}
	rev++
	for i := range prepared {
		o := &prepared[i]
		m := o.meta()
		m.SetResourceVersion(strconv.FormatInt(rev, 10))
		if st := states[fileName(o.Key)]; st != nil && st.obj != nil && st.obj.meta().GetUID() != "" {
			m.SetUID(st.obj.meta().GetUID())
		} else {
			m.SetUID(types.UID(newUID()))
		}
		o.Revision = rev
		o.Source = filepath.Join(s.objectsDir(), fileName(o.Key))
	}
	if err := s.writeObjects(prepared); err != nil {
		return 0, nil, fmt.Errorf("apply: %w", err)
	}
	if err := s.writeRevision(rev); err != nil {
		return 0, nil, fmt.Errorf("apply: %w", err)
	}
	return rev, written, nil
}

// sameAsStored tells whether o, validated and defaulted for writing, is
// what the store holds in st: the two compare equal as the store writes
// them (JSON), with o given the stored resourceVersion and uid that a
// write would replace and keep. A stored file that is not valid, or lacks
// either, is never the same. o's resourceVersion and uid are overwritten.
func sameAsStored(o *Object, st *fileState) bool {
	if st == nil || st.obj == nil {
		return false
	}
	old, m := st.obj.meta(), o.meta()
	if old == nil || m == nil || old.GetUID() == "" || old.GetResourceVersion() == "" {
		return false
	}
	m.SetResourceVersion(old.GetResourceVersion())
	m.SetUID(old.GetUID())
	a, err := json.Marshal(o.Obj)
	if err != nil {
		return false
	}
	b, err := json.Marshal(st.obj.Obj)
	return err == nil && bytes.Equal(a, b)
}

// prepareApply copies objs, fills in defaults and validates each on its
// own.
func prepareApply(objs []Object) ([]Object, ErrorList) {
	var errs ErrorList
	out := make([]Object, 0, len(objs))
	for _, in := range objs {
		ki := kindOf(in.Obj)
		if ki == nil {
			errs = append(errs, &Error{Source: in.Source, Key: in.Key, Msg: fmt.Sprintf("cannot store a %T; supported kinds are %s", in.Obj, supportedKinds())})
			continue
		}
		o := copyObject(&in)
		m := o.meta()
		var fe fieldErrors
		if ki.namespaced && m.GetNamespace() == "" {
			m.SetNamespace("default")
		}
		if !ki.namespaced && m.GetNamespace() != "" {
			fe.add("metadata.namespace", fmt.Sprintf("%s is cluster-scoped and has no namespace; remove metadata.namespace", ki.kind))
		}
		key := Key{Kind: ki.kind, Namespace: m.GetNamespace(), Name: m.GetName()}
		if in.Key != (Key{}) && in.Key != key {
			fe.add("", fmt.Sprintf("Object.Key says %s but the object is %s", in.Key, key))
		}
		ki.setTypeMeta(o.Obj)
		ki.setDefaults(o.Obj)
		fe = append(fe, ki.validate(o.Obj)...)
		if n := len(fileName(key)); len(fe) == 0 && n > maxFileName {
			fe.add("metadata.name", fmt.Sprintf("too long for this datastore, which keeps each object in a file named %s_NAMESPACE_NAME.yaml of at most %d characters (this one: %d); shorten the name", strings.ToLower(ki.kind), maxFileName, n))
		}
		if len(fe) > 0 {
			errs = append(errs, fe.withObject(in.Source, key)...)
			continue
		}
		o.Key = key
		out = append(out, o)
	}
	out, dupErrs := rejectDuplicateKeys(out)
	return out, append(errs, dupErrs...)
}

// writeObjects writes each object to its file and records it in the cache.
// Crash safety with one sync for the whole batch: every object goes to a
// temporary file, the file system is synced once, and only then are the
// temporary files renamed into place (and the directory synced), so no
// reader or crash ever sees a partly written object.
func (s *Store) writeObjects(objs []Object) error {
	dir := s.objectsDir()
	tmps := make([]string, len(objs))
	cleanup := func() {
		for _, t := range tmps {
			if t != "" {
				os.Remove(t)
			}
		}
	}
	err := parallel(len(objs), writeWorkers, func(i int) error {
		// JSON (which is YAML): readers decode it without the YAML parser,
		// several times faster; nil and empty lists stay apart.
		data, err := json.MarshalIndent(objs[i].Obj, "", "  ")
		if err != nil {
			return fmt.Errorf("encode %s: %w", objs[i].Key, err)
		}
		data = append(data, '\n')
		tmps[i], err = writeTemp(dir, fileName(objs[i].Key), data)
		return err
	})
	if err == nil {
		err = syncFS(dir)
	}
	if err != nil {
		cleanup()
		return err
	}
	for i := range objs {
		if err := os.Rename(tmps[i], filepath.Join(dir, fileName(objs[i].Key))); err != nil {
			s.cache = nil // some files changed; read all again next time
			tmps = tmps[i:]
			cleanup()
			return fmt.Errorf("write %s: %w", filepath.Join(dir, fileName(objs[i].Key)), err)
		}
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	for i := range objs {
		name := fileName(objs[i].Key)
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil {
			o := objs[i]
			s.cache[name] = &fileState{id: statID(fi), obj: &o}
		}
	}
	return nil
}

// writeRevision writes the revision file; it comes last in every write so
// that a reader that sees revision R also sees everything written for R.
func (s *Store) writeRevision(rev int64) error {
	if err := writeFileAtomic(s.dir, "revision", []byte(strconv.FormatInt(rev, 10)+"\n")); err != nil {
		return err
	}
	return syncDir(s.dir)
}

// Delete removes the objects named by keys and bumps the revision, which
// it returns. Deleting a Namespace also deletes every object in it, as
// Kubernetes does. A key without a namespace means namespace "default" for
// namespaced kinds. Deleting an object that does not exist is an error
// unless opts.IgnoreNotFound; on any error nothing is deleted. When nothing
// was deleted the revision stays as it is.
func (s *Store) Delete(keys []Key, opts DeleteOptions) (int64, error) {
	var errs ErrorList
	var want []Key
	for _, k := range keys {
		k, err := normalizeKey(k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		want = append(want, k)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := lockFile(s.lockPath(), lockExclusive)
	if err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	defer unlock()
	removeTempFiles(s.objectsDir())
	removeTempFiles(s.dir)

	entries, err := os.ReadDir(s.objectsDir())
	if err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	present := map[string]bool{}
	for _, e := range entries {
		present[e.Name()] = true
	}
	remove := map[string]bool{}
	for _, k := range want {
		name := fileName(k)
		if !present[name] {
			if !opts.IgnoreNotFound {
				errs = append(errs, &Error{Key: k, Msg: "not found in the datastore; nothing to delete"})
			}
		} else {
			remove[name] = true
		}
		if k.Kind != "Namespace" || (!present[name] && !opts.IgnoreNotFound) {
			continue
		}
		for _, e := range entries {
			if fk, ok := parseFileName(e.Name()); ok && fk.Namespace == k.Name {
				remove[e.Name()] = true
			}
		}
	}
	if len(errs) > 0 {
		return 0, errs
	}
	if len(remove) == 0 {
		return readRevision(s.revisionPath())
	}
	rev, err := readRevision(s.revisionPath())
	if err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	for _, name := range sortedKeys(remove) {
		if err := os.Remove(filepath.Join(s.objectsDir(), name)); err != nil && !os.IsNotExist(err) {
			s.cache = nil
			return 0, fmt.Errorf("delete %s: %w", name, err)
		}
		delete(s.cache, name)
	}
	if err := syncDir(s.objectsDir()); err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	rev++
	if err := s.writeRevision(rev); err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	return rev, nil
}

// normalizeKey checks a key given to Delete: a known kind (any case), a
// name that can be a file name, namespace "default" when left out.
func normalizeKey(k Key) (Key, error) {
	var ki *kindInfo
	for _, row := range kinds {
		if strings.EqualFold(row.kind, k.Kind) {
			ki = row
		}
	}
	if ki == nil {
		return k, &Error{Key: k, Field: "kind", Msg: fmt.Sprintf("unsupported kind %q; supported kinds are %s", k.Kind, supportedKinds())}
	}
	k.Kind = ki.kind
	if ki.namespaced && k.Namespace == "" {
		k.Namespace = "default"
	}
	if !ki.namespaced && k.Namespace != "" {
		return k, &Error{Key: k, Field: "metadata.namespace", Msg: fmt.Sprintf("%s is cluster-scoped and has no namespace", ki.kind)}
	}
	if msg := checkName(k.Name, dns1123Subdomain); msg != "" || k.Name == "" {
		return k, &Error{Key: k, Field: "metadata.name", Msg: "invalid name " + strconv.Quote(k.Name)}
	}
	if msgs := checkName(k.Namespace, dns1123Subdomain); ki.namespaced && msgs != "" {
		return k, &Error{Key: k, Field: "metadata.namespace", Msg: "invalid namespace " + strconv.Quote(k.Namespace)}
	}
	return k, nil
}

// writeWorkers is how many files Apply writes at once; parallel writes
// let the file system batch their fsyncs.
const writeWorkers = 16

// parallel runs f(0..n-1) on up to workers goroutines and returns all
// errors joined.
func parallel(n, workers int, f func(i int) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		next = make(chan int)
	)
	for range min(workers, n) {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

// copyObject returns a deep copy of o.
func copyObject(o *Object) Object {
	out := *o
	if r, ok := o.Obj.(runtime.Object); ok {
		out.Obj = r.DeepCopyObject()
	}
	return out
}

// sortErrors orders errors by file, then by document within the file.
func sortErrors(errs []error) {
	where := func(err error) (string, int) {
		var e *Error
		if !errors.As(err, &e) {
			return "", 0
		}
		file, doc, ok := strings.Cut(e.Source, "#")
		n, _ := strconv.Atoi(doc)
		if !ok {
			n = 0
		}
		return file, n
	}
	slices.SortStableFunc(errs, func(a, b error) int {
		fa, na := where(a)
		fb, nb := where(b)
		if c := strings.Compare(fa, fb); c != 0 {
			return c
		}
		return na - nb
	})
}

func sortObjects(objs []Object) {
	slices.SortFunc(objs, func(a, b Object) int {
		return strings.Compare(a.Kind+"\x00"+a.Namespace+"\x00"+a.Name, b.Kind+"\x00"+b.Namespace+"\x00"+b.Name)
	})
}
