package identity

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestPodLabels(t *testing.T) {
	// Pod labels with derived keys are left out: they must not override
	// the derived ones, nor add namespace labels the namespace lacks.
	l := PodLabels(map[string]string{
		"app": "web", LabelNamespace: "evil", LabelServiceAccount: "admin",
		LabelNamespaceLabel + "team": "b", LabelNamespaceLabel + "tier": "frontend",
	}, "x", map[string]string{"team": "a"}, "", "")
	if v, _ := l.Get(LabelNamespace); v != "x" {
		t.Fatalf("namespace label %q: a pod label must not override it", v)
	}
	want := "app=web,io.cilium.k8s.namespace.labels.team=a,io.cilium.k8s.policy.cluster=default,io.cilium.k8s.policy.serviceaccount=default,io.kubernetes.pod.namespace=x"
	if l.String() != want {
		t.Fatalf("got %s\nwant %s", l, want)
	}
}

func TestReserved(t *testing.T) {
	if got := ReservedLabels(Host).String(); got != "reserved:host" {
		t.Fatal(got)
	}
	if id, ok := ReservedByName("world"); !ok || id != World {
		t.Fatal(id, ok)
	}
}

func TestJournalSharedAndStable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identities", "journal")
	a, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	web := NewLabels(map[string]string{"app": "web"})
	db := NewLabels(map[string]string{"app": "db"})
	ida, err := a.Allocate([]Labels{web, db, web})
	if err != nil {
		t.Fatal(err)
	}
	if ida[0] != ida[2] || ida[0] == ida[1] || ida[0] < MinCluster {
		t.Fatalf("ids %v", ida)
	}
	// b did not see a's allocation in memory yet: it must catch up, not
	// allocate twice.
	idb, err := b.Allocate([]Labels{db, web})
	if err != nil {
		t.Fatal(err)
	}
	if idb[0] != ida[1] || idb[1] != ida[0] {
		t.Fatalf("b got %v, a got %v", idb, ida)
	}
	// A restart reads the same numbers back.
	c, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := c.Lookup(ida[1]); !ok || l.String() != db.String() {
		t.Fatalf("after reopen: %v %v", l, ok)
	}
}

func TestJournalConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	const writers, sets = 4, 200
	results := make([][]ID, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			j, err := OpenJournal(path)
			if err != nil {
				t.Error(err)
				return
			}
			var in []Labels
			for i := range sets {
				// Every writer asks for the same sets, in a different order.
				k := (i*7 + w*13) % sets
				in = append(in, NewLabels(map[string]string{"n": fmt.Sprint(k)}))
			}
			ids, err := j.Allocate(in)
			if err != nil {
				t.Error(err)
				return
			}
			byN := make([]ID, sets)
			for i, l := range in {
				v, _ := l.Get("n")
				var n int
				fmt.Sscan(v, &n)
				byN[n] = ids[i]
			}
			results[w] = byN
		}()
	}
	wg.Wait()
	for w := 1; w < writers; w++ {
		for n := range sets {
			if results[w][n] != results[0][n] {
				t.Fatalf("writer %d got %d for set %d, writer 0 got %d", w, results[w][n], n, results[0][n])
			}
		}
	}
	j, _ := OpenJournal(path)
	if j.Len() != sets {
		t.Fatalf("%d identities allocated, want %d", j.Len(), sets)
	}
}

func TestJournalSurvivesTornWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	if err := os.WriteFile(path, []byte("256 app=a\n257 app=b\n258 app=c"), 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	if j.Len() != 2 {
		t.Fatalf("%d identities, want 2 (the torn third line is not an allocation)", j.Len())
	}
	ids, err := j.Allocate([]Labels{NewLabels(map[string]string{"app": "d"})})
	if err != nil {
		t.Fatal(err)
	}
	if ids[0] != 258 {
		t.Fatalf("got %d, want 258", ids[0])
	}
	k, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := k.Lookup(258); l.String() != "app=d" {
		t.Fatalf("258 = %q", l)
	}
	if k.Len() != 3 {
		t.Fatalf("%d identities after reopen, want 3", k.Len())
	}
}

func BenchmarkMemoryAllocate(b *testing.B) {
	m := NewMemory()
	sets := make([]Labels, 1000)
	for i := range sets {
		sets[i] = NewLabels(map[string]string{"app": fmt.Sprint(i), "tier": "x"})
	}
	b.ResetTimer()
	for b.Loop() {
		m.Allocate(sets)
	}
}

// A damaged line is an error at every read, with its byte offset: not
// skipped (its identity could be handed out again), and an identity out
// of the cluster range is not taken as the next to allocate from.
func TestJournalDamagedLine(t *testing.T) {
	for _, c := range []struct{ name, content string }{
		{"garbage", "256 app=a\nnonsense\n257 app=b\n"},
		{"beyond the cluster range", "256 app=a\n4294967295 app=b\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "journal")
			if err := os.WriteFile(path, []byte(c.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := OpenJournal(path); err == nil || !strings.Contains(err.Error(), "at byte 10") {
				t.Fatalf("open: %v, want an error at byte 10", err)
			}
		})
	}
	// Found by a process that had opened it before the damage: its next
	// allocation fails at the same line, and so does the one after.
	path := filepath.Join(t.TempDir(), "journal")
	if err := os.WriteFile(path, []byte("256 app=a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("999999999999 app=b\n")
	f.Close()
	for range 2 {
		if _, err := j.Allocate([]Labels{NewLabels(map[string]string{"app": "c"})}); err == nil || !strings.Contains(err.Error(), "at byte 10") {
			t.Fatalf("allocate: %v, want an error at byte 10", err)
		}
	}
}
