package datastore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func watch(t *testing.T, s *Store) <-chan Batch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func next(t *testing.T, ch <-chan Batch) Batch {
	t.Helper()
	select {
	case b, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("no batch within 5s")
	}
	return Batch{}
}

// until reads batches, applying them to state, until the revision reaches
// rev, and returns the number of batches read.
func until(t *testing.T, ch <-chan Batch, state map[Key]Object, rev int64) (last Batch, n int) {
	t.Helper()
	for {
		b := next(t, ch)
		n++
		if b.Full {
			clear(state)
		}
		for _, o := range b.Upserts {
			state[o.Key] = o
		}
		for _, k := range b.Deletes {
			delete(state, k)
		}
		if b.Revision >= rev {
			return b, n
		}
	}
}

func TestWatch(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	mustApply(t, s, shop)
	ch := watch(t, s)

	first := next(t, ch)
	if !first.Full || first.Revision != 1 || len(first.Upserts) != 3 || len(first.Deletes) != 0 {
		t.Fatalf("first batch: full %v, revision %d, %d upserts, %d deletes", first.Full, first.Revision, len(first.Upserts), len(first.Deletes))
	}

	rev := mustApply(t, s, "apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: shop}\nspec: {containers: [{name: c}]}\n")
	b := next(t, ch)
	if b.Full || b.Revision != rev || len(b.Upserts) != 1 || b.Upserts[0].Key != (Key{"Pod", "shop", "db"}) || b.Upserts[0].Revision != rev {
		t.Fatalf("batch after apply: %+v", b)
	}

	rev, err := s.Delete([]Key{{Kind: "Namespace", Name: "shop"}}, DeleteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b = next(t, ch)
	var deleted []string
	for _, k := range b.Deletes {
		deleted = append(deleted, k.String())
	}
	want := "Namespace shop, NetworkPolicy shop/allow-web, Pod shop/db, Pod shop/web"
	if b.Revision != rev || len(b.Upserts) != 0 || strings.Join(deleted, ", ") != want {
		t.Fatalf("batch after delete: revision %d (want %d), upserts %v, deletes %s (want %s)", b.Revision, rev, keysOf(b.Upserts), strings.Join(deleted, ", "), want)
	}
}

// watchShop applies shop, watches the store past its first batch, and
// returns the file of Pod shop/web.
func watchShop(t *testing.T) (*Store, <-chan Batch, string) {
	t.Helper()
	s := openStore(t)
	mustApply(t, s, shop)
	ch := watch(t, s)
	next(t, ch)
	return s, ch, filepath.Join(s.Dir(), "objects", "pod_shop_web.yaml")
}

// webWithProbe is Pod shop/web with a field Membrane refuses.
const webWithProbe = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containers: [{name: c, livenessProbe: {exec: {command: [x]}}}]}\n"

func TestWatchKeepsLastValidVersion(t *testing.T) {
	t.Parallel()
	s, ch, file := watchShop(t)
	if err := os.WriteFile(file, []byte(webWithProbe), 0o644); err != nil {
		t.Fatal(err)
	}
	b := next(t, ch)
	if len(b.Upserts) != 0 || len(b.Deletes) != 0 || len(b.Rejected) != 1 {
		t.Fatalf("batch after bad edit: %d upserts, %d deletes, rejected %v", len(b.Upserts), len(b.Deletes), b.Rejected)
	}
	if r := b.Rejected[0]; r.Source != file || r.Key == nil || *r.Key != (Key{"Pod", "shop", "web"}) || !strings.Contains(r.Err.Error(), "livenessProbe: not supported") {
		t.Fatalf("rejection: %+v", r)
	}

	// A resync still serves the last valid version.
	w := &watcher{store: s, full: true, files: nil}
	full := w.cut(context.Background())
	found := false
	for _, o := range full.Upserts {
		found = found || o.Key == Key{"Pod", "shop", "web"}
	}
	if found {
		t.Error("a fresh watcher served an invalid file") // it never saw a valid version
	}

	// Fixing the file clears the rejection; of the objects applied again
	// only the repaired one is written.
	rev := mustApply(t, s, shop)
	b = next(t, ch)
	if b.Revision != rev || len(b.Rejected) != 0 || len(b.Upserts) != 1 || b.Upserts[0].Key != (Key{"Pod", "shop", "web"}) {
		t.Fatalf("batch after repair: revision %d, %d upserts, rejected %v", b.Revision, len(b.Upserts), b.Rejected)
	}

	// Removing a file that was only ever invalid is not a delete.
	bad := filepath.Join(s.Dir(), "objects", "pod_shop_bad.yaml")
	os.WriteFile(bad, []byte("garbage: ["), 0o644)
	if b = next(t, ch); len(b.Rejected) != 1 {
		t.Fatalf("rejected %v", b.Rejected)
	}
	os.Remove(bad)
	if b = next(t, ch); len(b.Rejected) != 0 || len(b.Deletes) != 0 {
		t.Fatalf("after removing the bad file: rejected %v, deletes %v", b.Rejected, b.Deletes)
	}
}

// An editor or a shell redirection truncates a file before writing it. The
// watcher takes an empty file for a write in progress: it keeps serving
// what it had, reads the write that follows, and rejects a file only once
// it has stayed empty for writeSettle.
func TestWatchWaitsForWritesInProgress(t *testing.T) {
	t.Parallel()
	s, ch, file := watchShop(t)
	if err := os.Truncate(file, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-ch:
		t.Fatalf("a batch for a file being written: %d upserts, %d deletes, rejected %v", len(b.Upserts), len(b.Deletes), b.Rejected)
	case <-time.After(writeSettle / 4):
	}
	if err := os.WriteFile(file, []byte(webWithProbe), 0o644); err != nil {
		t.Fatal(err)
	}
	b := next(t, ch)
	if len(b.Upserts) != 0 || len(b.Deletes) != 0 || len(b.Rejected) != 1 || !strings.Contains(b.Rejected[0].Err.Error(), "livenessProbe") {
		t.Fatalf("batch after the write: %d upserts, %d deletes, rejected %v", len(b.Upserts), len(b.Deletes), b.Rejected)
	}

	// A file that stays empty is rejected once it has settled.
	empty := filepath.Join(s.Dir(), "objects", "pod_shop_empty.yaml")
	created := time.Now()
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	b = next(t, ch)
	if time.Since(created) < writeSettle-10*time.Millisecond {
		t.Errorf("an empty file was rejected after %s, before it settled", time.Since(created))
	}
	if len(b.Rejected) != 2 || b.Rejected[0].Source != empty || !strings.Contains(b.Rejected[0].Err.Error(), "holds 0 objects") {
		t.Fatalf("batch for the empty file: rejected %v", b.Rejected)
	}
}

// TestWatchRevisionContract applies in a loop while watching and checks
// that whenever a batch claims revision R, every object written at or
// before R is there.
func TestWatchRevisionContract(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	mustApply(t, s, "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
	ch := watch(t, s)
	writer, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	written := make(chan int64, 100)
	go func() {
		defer close(written)
		for i := range 30 {
			rev, err := writer.Apply(mustDecode(t, fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: shop}\nspec: {containers: [{name: c}]}\n", i)))
			if err != nil {
				t.Error(err)
				return
			}
			written <- rev
		}
	}()
	state := map[Key]Object{}
	var last int64
	for rev := range written {
		last = rev
	}
	b, _ := until(t, ch, state, last)
	if b.Revision != last || len(state) != 31 {
		t.Fatalf("at revision %d: %d objects, want 31", b.Revision, len(state))
	}
	for k, o := range state {
		if o.Revision > b.Revision {
			t.Errorf("%s has revision %d, newer than its batch %d", k, o.Revision, b.Revision)
		}
	}
}

func TestWatch1000Objects(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	mustApply(t, s, "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
	var b strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: shop}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.%d.%d.1}\n", i, i/250, i%250)
	}
	objs := mustDecode(t, b.String())
	ch := watch(t, s)
	state := map[Key]Object{}
	until(t, ch, state, 1)

	start := time.Now()
	rev, err := s.Apply(objs)
	if err != nil {
		t.Fatal(err)
	}
	applied := time.Now()
	last, n := until(t, ch, state, rev)
	latency := time.Since(applied)
	t.Logf("apply of 1000 pods took %v; watcher had them %v later in %d batches", applied.Sub(start), latency, n)
	if len(state) != 1001 || last.Revision != rev {
		t.Fatalf("%d objects at revision %d", len(state), last.Revision)
	}
	if n > 3 {
		t.Errorf("1000 objects arrived in %d batches, want at most 3", n)
	}
	// Latency is a benchmark figure (make bench measures apply-to-
	// enforcement); this test only catches a pathology, with room for CI
	// running every package at once, and for the race detector.
	limit := 5 * time.Second
	if latency > limit {
		t.Errorf("1000 objects arrived %v after Apply returned, want at most %v", latency, limit)
	}
}

func TestWatchClosesOnCancel(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	next(t, ch)
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			for range ch {
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after cancel")
	}
}
