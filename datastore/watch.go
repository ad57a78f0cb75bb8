package datastore

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Batch is one step of a Watch: what changed in the store since the
// previous batch.
type Batch struct {
	// Full is true on the first batch and after any resync (inotify
	// overflow, watcher error): Upserts holds ALL current objects, Deletes
	// is empty, and the receiver replaces its state.
	Full    bool
	Upserts []Object
	Deletes []Key
	// Rejected lists every file that is currently invalid (not only the
	// ones that changed). For such a file the watcher keeps serving the
	// last valid version of its object, if it had one: an invalid edit
	// is not a delete.
	Rejected []Rejection
	// Revision is the value of <dir>/revision when the batch was cut. The
	// batch reflects every Apply and Delete that returned a revision up to
	// it.
	Revision int64
}

// Watch timing.
const (
	watchDebounce = 5 * time.Millisecond  // quiet time that ends a burst
	watchMaxDelay = 50 * time.Millisecond // longest a change waits under a continuous stream
	watchResync   = 10 * time.Second      // interval of a safety rescan (stat only)
	watchLockPoll = 10 * time.Millisecond // how often to retry the lock while a writer holds it
	watchRetry    = writeSettle           // delay before reading again after an error or a write in progress
)

// Watch sends the store's state, then its changes, on the returned channel
// until ctx ends, when the channel is closed. The first batch is Full.
// Changes are coalesced: a batch is cut 5 ms after the last change, or 50 ms
// after the first unsent one, whichever is sooner, and while the receiver
// is busy changes accumulate into the next batch. Each batch is read under
// the store's shared lock, so it never holds half of an Apply or Delete.
func (s *Store) Watch(ctx context.Context) (<-chan Batch, error) {
	w, err := fsnotify.NewBufferedWatcher(4096)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", s.dir, err)
	}
	for _, d := range []string{s.objectsDir(), s.dir} {
		if err := w.Add(d); err != nil {
			w.Close()
			return nil, fmt.Errorf("watch %s: %w", d, err)
		}
	}
	ch := make(chan Batch)
	wt := &watcher{store: s, fs: w, out: ch}
	go wt.run(ctx)
	return ch, nil
}

// watcher is the state of one Watch.
type watcher struct {
	store *Store
	fs    *fsnotify.Watcher
	out   chan<- Batch

	files   map[string]*fileState // objects/ as last sent
	cache   map[string]*fileState // objects/ as last read
	lastRev int64
	sent    bool // whether a batch was sent yet
	full    bool // the next batch must be Full
	retry   bool // reading the store failed, or a file was being written: cut again after watchRetry
}

func (wt *watcher) run(ctx context.Context) {
	defer close(wt.out)
	defer wt.fs.Close()
	wt.full = true

	timer := time.NewTimer(0) // fires at once: the first batch
	resync := time.NewTicker(watchResync)
	defer timer.Stop()
	defer resync.Stop()
	var (
		armed   = true
		first   time.Time // first change not yet in a batch
		pending *Batch    // cut but not yet received
		dirty   bool      // changes seen since pending was cut
	)
	arm := func() {
		now := time.Now()
		if !armed {
			armed, first = true, now
		}
		timer.Reset(max(0, min(watchDebounce, watchMaxDelay-now.Sub(first))))
	}
	for {
		var out chan<- Batch // nil, so never ready, until a batch is pending
		var batch Batch
		if pending != nil {
			out, batch = wt.out, *pending
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-wt.fs.Events:
			if !ok {
				return
			}
			if wt.relevant(ev) {
				arm()
			}
		case _, ok := <-wt.fs.Errors:
			if !ok {
				return
			}
			// An overflow or a watcher error: events were lost. The
			// scan does not depend on events, but the contract says
			// the receiver replaces its state after a resync.
			wt.full = true
			arm()
		case <-resync.C:
			arm()
		case <-timer.C:
			armed = false
			if pending != nil {
				dirty = true
				continue
			}
			pending = wt.cut(ctx)
			if wt.retry {
				wt.retry, armed = false, true
				timer.Reset(watchRetry)
			}
		case out <- batch:
			pending = nil
			if dirty {
				dirty = false
				arm()
			}
		}
	}
}

// relevant tells whether an event may change what the watcher serves:
// changes to object files and to the revision file, not temporary files
// nor other entries in the store's directory.
func (wt *watcher) relevant(ev fsnotify.Event) bool {
	dir, name := filepath.Split(ev.Name)
	dir = filepath.Clean(dir)
	switch {
	case strings.HasPrefix(name, "."):
		return false
	case dir == filepath.Clean(wt.store.objectsDir()):
		return true
	case dir == filepath.Clean(wt.store.dir):
		return name == "revision"
	}
	return false
}

// cut reads the store and returns the batch of what changed since the last
// one, or nil when nothing did (or ctx ended). It reads under the shared
// lock, so that the batch holds whole writes. While a writer holds the
// lock, it keeps reading the files the writer has finished, without the
// lock, so that little is left to read once the writer is done.
func (wt *watcher) cut(ctx context.Context) *Batch {
	s := wt.store
	b := &Batch{}
	var unlock func()
	for {
		var err error
		unlock, err = lockFile(s.lockPath(), lockShared|lockNoWait)
		if err == nil {
			break
		}
		if err != errLocked {
			return wt.failed(s.lockPath(), err)
		}
		if cache, _, err := scanObjects(s.objectsDir(), wt.cache); err == nil {
			wt.cache = cache
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(watchLockPoll):
		}
	}
	rev, revErr := readRevision(s.revisionPath())
	next, settling, scanErr := scanObjects(s.objectsDir(), wt.cache)
	unlock()
	if scanErr != nil {
		return wt.failed(s.objectsDir(), scanErr)
	}
	wt.cache = next
	if settling {
		wt.retry = true // read the file being written once it has settled
	}

	full := wt.full || !wt.sent
	rejChanged := false
	for name, st := range next {
		prev := wt.files[name]
		if st == prev {
			continue
		}
		if st.obj != nil {
			st.served = st.obj
			b.Upserts = append(b.Upserts, copyObject(st.obj))
		} else if prev != nil {
			st.served = prev.served
		}
		rejChanged = rejChanged || st.rej != nil || (prev != nil && prev.rej != nil)
	}
	for name, prev := range wt.files {
		if _, ok := next[name]; ok {
			continue
		}
		if prev.served != nil {
			b.Deletes = append(b.Deletes, prev.served.Key)
		}
		rejChanged = rejChanged || prev.rej != nil
	}
	for _, name := range sortedKeys(next) {
		if r := next[name].rej; r != nil {
			b.Rejected = append(b.Rejected, *r)
		}
	}
	if revErr != nil {
		b.Rejected = append(b.Rejected, Rejection{Source: s.revisionPath(), Err: revErr})
		rev = wt.lastRev
		rejChanged = true
	}
	if full {
		b.Full, b.Deletes, b.Upserts = true, nil, nil
		for _, name := range sortedKeys(next) {
			if o := next[name].served; o != nil {
				b.Upserts = append(b.Upserts, copyObject(o))
			}
		}
	}
	b.Revision = rev
	changed := full || len(b.Upserts) > 0 || len(b.Deletes) > 0 || rejChanged || rev != wt.lastRev
	wt.files, wt.lastRev, wt.sent, wt.full = next, rev, true, false
	if !changed {
		return nil
	}
	sortObjects(b.Upserts)
	sortKeys(b.Deletes)
	return b
}

// failed reports an error reading the store: as a rejection, while the
// receiver keeps what it has, in a batch that changes nothing. Before the
// first batch there is nothing to keep; then nothing is sent and the read
// is retried, since the first batch must be Full.
func (wt *watcher) failed(source string, err error) *Batch {
	wt.retry = true
	if !wt.sent {
		return nil
	}
	return &Batch{Revision: wt.lastRev, Rejected: []Rejection{{Source: source, Err: err}}}
}

func sortKeys(keys []Key) {
	m := make(map[Key]*Object, len(keys))
	for _, k := range keys {
		m[k] = nil
	}
	copy(keys, sortedObjectKeys(m))
}
