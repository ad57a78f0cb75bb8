package identity

import (
	"fmt"
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

// table is the in-memory index both allocators keep.
type table struct {
	byLabels map[string]ID
	byID     map[ID]Labels
	next     ID
}

func newTable() table {
	return table{byLabels: map[string]ID{}, byID: map[ID]Labels{}, next: MinCluster}
}

func (t *table) add(id ID, l Labels) {
	t.byLabels[l.String()] = id
	t.byID[id] = l
	if id >= t.next {
		t.next = id + 1
	}
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
	l, ok := m.t.byID[id]
	return l, ok
}

func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.t.byID)
}
