package datastore

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// writeSettle is how long an empty object file is taken to be a write in
// progress: editors and shell redirections truncate a file before they
// write it. A scan keeps what it had for such a file, and the write that
// follows is read by a later one; a file still empty when it is older is
// read, and rejected as empty.
const writeSettle = time.Second

// fileState is what a reader knows about one file in objects/.
type fileState struct {
	id  fileID
	obj *Object    // the object, when the file is valid
	rej *Rejection // why the file is not served, when it is not valid
	// served is the version of the file's object a watcher serves: obj,
	// or the last valid version while the file is invalid. Unused by
	// Store's own cache.
	served *Object
}

// fileName is the name of key's file in objects/:
// <kind lowercased>_<namespace>_<name>.yaml. Kubernetes names cannot hold
// "_", so the name can be split again.
func fileName(key Key) string {
	return strings.ToLower(key.Kind) + "_" + key.Namespace + "_" + key.Name + ".yaml"
}

// parseFileName returns the key a file name in objects/ stands for.
func parseFileName(name string) (Key, bool) {
	base, ok := strings.CutSuffix(name, ".yaml")
	parts := strings.Split(base, "_")
	if !ok || len(parts) != 3 || parts[2] == "" {
		return Key{}, false
	}
	for _, k := range kinds {
		if k.fileKind() == parts[0] && (parts[1] != "") == k.namespaced {
			return Key{Kind: k.kind, Namespace: parts[1], Name: parts[2]}, true
		}
	}
	return Key{}, false
}

// scanObjects returns the state of every object file in dir, and whether
// it passed over a file being written (see writeSettle), which a later
// scan must read. Files whose
// fileID is the same as in prev are not read again: their entry in prev
// is reused, so a changed file is one whose entry pointer differs.
// Hidden files (temporary files of writers) and files not ending in .yaml
// are skipped. With keep, only files keep accepts (by name) are read; the
// others keep their entry from prev, unchecked.
func scanObjects(dir string, prev map[string]*fileState, keep ...func(name string) bool) (_ map[string]*fileState, settling bool, _ error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", dir, err)
	}
	next := make(map[string]*fileState, len(entries))
	var changed []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".yaml") {
			continue
		}
		if len(keep) > 0 && !keep[0](name) {
			if p := prev[name]; p != nil {
				next[name] = p
			}
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed since ReadDir
		}
		if p := prev[name]; p != nil && p.id == statID(fi) {
			next[name] = p
			continue
		}
		if fi.Size() == 0 && time.Since(fi.ModTime()) < writeSettle {
			if p := prev[name]; p != nil {
				next[name] = p
			}
			settling = true
			continue
		}
		changed = append(changed, name)
	}
	// Decoding is CPU-bound: use every core.
	read := make([]*fileState, len(changed))
	parallel(len(changed), runtime.GOMAXPROCS(0), func(i int) error {
		read[i] = readObjectFile(dir, changed[i])
		return nil
	})
	for i, name := range changed {
		if read[i] != nil {
			next[name] = read[i]
		}
	}
	return next, settling, nil
}

// readObjectFile reads and checks one object file; nil when it vanished.
func readObjectFile(dir, name string) *fileState {
	src := filepath.Join(dir, name)
	fileKey, nameOK := parseFileName(name)
	reject := func(id fileID, err error) *fileState {
		r := &Rejection{Source: src, Err: err}
		if nameOK {
			r.Key = &fileKey
		}
		return &fileState{id: id, rej: r}
	}
	f, err := os.Open(src)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return reject(fileID{}, fmt.Errorf("read %s: %w", src, err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return reject(fileID{}, fmt.Errorf("read %s: %w", src, err))
	}
	id := statID(fi)
	if !fi.Mode().IsRegular() {
		return reject(id, &Error{Source: src, Msg: "not a regular file; the datastore holds one object per regular file"})
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return reject(id, fmt.Errorf("read %s: %w", src, err))
	}
	objs, err := Decode(src, data)
	switch {
	case err != nil:
		return reject(id, err)
	case !nameOK:
		return reject(id, &Error{Source: src, Msg: "not a datastore file name; files in objects/ are named <kind>_<namespace>_<name>.yaml (namespace empty for cluster-scoped kinds)"})
	case len(objs) != 1:
		return reject(id, &Error{Source: src, Key: fileKey, Msg: fmt.Sprintf("holds %d objects; a datastore file holds exactly one", len(objs))})
	case objs[0].Key != fileKey:
		return reject(id, &Error{Source: src, Key: objs[0].Key, Msg: fmt.Sprintf("the file name is for %s; rename the file to %s", fileKey, fileName(objs[0].Key))})
	}
	o := objs[0]
	if m := o.meta(); m != nil {
		o.Revision, _ = strconv.ParseInt(m.GetResourceVersion(), 10, 64)
	}
	return &fileState{id: id, obj: &o}
}

// readRevision reads <dir>/revision; a missing file is revision 0.
func readRevision(file string) (int64, error) {
	data, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", file, err)
	}
	rev, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil || rev < 0 {
		return 0, fmt.Errorf("read %s: %q is not a revision (a decimal number)", file, strings.TrimSpace(string(data)))
	}
	return rev, nil
}

// kindFilter accepts the files of the given kinds, and any file named in
// extra.
func kindFilter(kinds []string, extra map[string]bool) func(string) bool {
	prefixes := make([]string, len(kinds))
	for i, k := range kinds {
		prefixes[i] = strings.ToLower(k) + "_"
	}
	return func(name string) bool {
		if extra[name] {
			return true
		}
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				return true
			}
		}
		return false
	}
}

// unionKinds are the kinds that rules across objects look at: policies
// never do, so applying a thousand policies reads none of the stored ones.
var unionKinds = []string{"Namespace", "Pod", "Node", "Lab"}
