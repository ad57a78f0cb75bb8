package identity

import (
	"fmt"
	"strings"
	"sync"
)

// Allocator hands out identities for label sets.
type Allocator interface {
	// Allocate returns the identity of each label set, allocating those
	// that have none yet.
	Allocate(sets []Labels) ([]ID, error)
	// Lookup returns the labels of a cluster identity.
	Lookup(id ID) (Labels, bool)
	// Len is the number of allocated cluster identities.
	Len() int
}

// table is the in-memory index both allocators keep. It holds each label
// set once, as its canonical string (a million identities cost tens of
// megabytes, not hundreds); Lookup parses it back.
type table struct {
	byLabels map[string]ID
	// byID[id-MinCluster]: identities are handed out in order, so a slice
	// indexes them densely.
	byID []string
	n    int
	next ID
}

func newTable() table {
	return table{byLabels: map[string]ID{}, next: MinCluster}
}

func (t *table) add(id ID, l Labels) {
	s := l.String()
	t.byLabels[s] = id
	i := int(id - MinCluster)
	if i >= len(t.byID) {
		t.byID = append(t.byID, make([]string, i+1-len(t.byID))...)
	}
	if t.byID[i] == "" {
		t.n++
	}
	t.byID[i] = s
	if id >= t.next {
		t.next = id + 1
	}
}

func (t *table) lookup(id ID) (Labels, bool) {
	i := int(id) - int(MinCluster)
	if i < 0 || i >= len(t.byID) || t.byID[i] == "" {
		return Labels{}, false
	}
	return ParseLabels(t.byID[i]), true
}

// ParseLabels parses the canonical form Labels.String returns.
func ParseLabels(s string) Labels {
	m := map[string]string{}
	if s != "" {
		for _, kv := range strings.Split(s, ",") {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = v
		}
	}
	return NewLabels(m)
}

// Memory is an allocator that lives in one process: for tests and for a
// single agent without a shared datastore.
type Memory struct {
	mu sync.Mutex
	t  table
}

// NewMemory returns an empty in-memory allocator.
func NewMemory() *Memory { return &Memory{t: newTable()} }

func (m *Memory) Allocate(sets []Labels) ([]ID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]ID, len(sets))
	for i, l := range sets {
		id, ok := m.t.byLabels[l.String()]
		if !ok {
			if m.t.next > MaxCluster {
				return nil, fmt.Errorf("allocate identity for %s: all %d cluster identities are in use", l, MaxCluster-MinCluster+1)
			}
			id = m.t.next
			m.t.add(id, l)
		}
		out[i] = id
	}
	return out, nil
}

func (m *Memory) Lookup(id ID) (Labels, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.t.lookup(id)
}

func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.t.n
}
