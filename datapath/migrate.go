package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/membrane-mesh/membrane/bpf"
)

// Migration of pinned maps whose capacity or flags changed (a --map-size-*
// setting, or a datapath build that sizes a map differently) while their
// type, key and value stayed the same, and of indexes laid out by another
// build's hash.
//
// Load creates the map anew, copies the old one's entries into it and pins
// it in the old one's place, before any program of this build runs. The
// programs still attached keep the old map until the agent attaches this
// build's; connections they open meanwhile are copied over by
// FinishMigration, which the agent calls once its first sync has attached
// the new programs. A map whose key or value layout changed cannot be
// converted: Load refuses it, naming the map, and leaves the pins alone;
// but one whose entries start empty anyway (events, the flow log,
// statistics, the indexes) is replaced in this build's layout.

// migratable reports how a pinned map is carried over when its capacity or
// flags change: its entries are copied, or (events, statistics and the
// indexes) it starts empty.
func migratable(name string) (copyEntries bool) {
	switch name {
	case bpf.DatapathMapEvents, bpf.DatapathMapFlowlog, bpf.DatapathMapCounters, bpf.DatapathMapGlobalStats:
		return false
	case bpf.DatapathMapEndpointsIndex, bpf.DatapathMapIpcacheIndex, bpf.DatapathMapPolicyIndex:
		return false // rebuilt from their maps by Load (index.go)
	}
	return true
}

// transient names the maps whose entries live for seconds (the first
// fragment's ports, for the fragments that follow): one pinned in another
// layout is replaced empty rather than refused, which costs at most the
// fragments in flight.
func transient(name string) bool {
	return name == bpf.DatapathMapFrags
}

// lateCopy names the maps the old programs keep writing until they are
// replaced: FinishMigration copies what they added.
func lateCopy(name string) bool {
	switch name {
	case bpf.DatapathMapCt, bpf.DatapathMapProxyCt, bpf.DatapathMapFrags:
		return true
	}
	return false
}

// retiredMap is a map a migration replaced, kept open for FinishMigration.
type retiredMap struct {
	name     string
	old, new *ebpf.Map
	fresh    bool // started empty: nothing is copied
}

// pinnedDiff compares the map pinned at path with ms. It returns the open
// pinned map when only its capacity or flags differ, it is an index of
// another hash, or its entries are not carried over (or transient) and its
// layout differs (to migrate; fresh: to start empty), nil when it matches
// or is absent, and an error when the layout of a map whose entries are
// carried over differs.
func pinnedDiff(path string, ms *ebpf.MapSpec) (m *ebpf.Map, fresh bool, err error) {
	m, err = ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("open pinned map %s: %w", path, err)
	}
	info, err := m.Info()
	if err != nil {
		m.Close()
		return nil, false, fmt.Errorf("inspect pinned map %s: %w", path, err)
	}
	if ms.Name == bpf.DatapathMapCt {
		if _, older := olderCTTable(m); older || isOldConntrack(info) {
			return m, false, nil // an older build's kernel LRU or table: copied into this one
		}
	}
	if info.Type != ms.Type || info.KeySize != ms.KeySize || info.ValueSize != ms.ValueSize {
		if !migratable(ms.Name) || transient(ms.Name) {
			return m, true, nil // starts empty in this build's layout
		}
		m.Close()
		return nil, false, fmt.Errorf("pinned map %s (%v key %d value %d) differs in layout from this build's (%v key %d value %d): "+
			"this datapath version cannot take over its entries; roll back to the previous version, or remove the pins "+
			"(which forgets established connections)",
			path, info.Type, info.KeySize, info.ValueSize, ms.Type, ms.KeySize, ms.ValueSize)
	}
	if info.MaxEntries == ms.MaxEntries && info.Flags == ms.Flags {
		stale, err := indexHashStale(ms.Name, m)
		if err != nil || !stale {
			m.Close()
			return nil, false, err
		}
	}
	return m, !migratable(ms.Name), nil
}

// indexHashStale reports whether name is an index whose pinned buckets
// were laid out by another build's hash (index.h, index_bucket): some key
// sits in a bucket this build's hash does not give it. Such an index is
// replaced like a resized one, and the programs still attached keep
// reading the old one until this build's replace them; rewritten in
// place, it would hide its keys from them meanwhile.
func indexHashStale(name string, m *ebpf.Map) (bool, error) {
	var keySize int
	switch name {
	case bpf.DatapathMapEndpointsIndex, bpf.DatapathMapIpcacheIndex:
		keySize = addrSize
	case bpf.DatapathMapPolicyIndex:
		keySize = policyKeySize
	default:
		return false, nil
	}
	errStale := errors.New("stale")
	layout := &index{keySize: keySize}
	mask := m.MaxEntries() - 1
	err := walkRaw(m, func(kb, b []byte) error {
		for s := 0; s < indexSlots; s++ {
			if b[s] == indexValid && indexBucketOf(layout.keyAt(b, s), mask) != binary.NativeEndian.Uint32(kb) {
				return errStale
			}
		}
		return nil
	})
	if errors.Is(err, errStale) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read pinned %s: %w", name, err)
	}
	return false, nil
}

// migratePinned replaces every pinned map in dir whose capacity or flags
// differ from its spec. An error before the pins are swapped (a map's
// entries do not fit its new size) leaves every pin as it was.
func migratePinned(dir string, specs []*ebpf.MapSpec) ([]retiredMap, error) {
	type job struct {
		ms    *ebpf.MapSpec
		old   *ebpf.Map
		fresh bool
	}
	var jobs []job
	closeAll := func() {
		for _, j := range jobs {
			j.old.Close()
		}
	}
	for _, ms := range specs {
		old, fresh, err := pinnedDiff(filepath.Join(dir, ms.Name), ms)
		if err != nil {
			closeAll()
			return nil, err
		}
		if old != nil {
			jobs = append(jobs, job{ms, old, fresh})
		}
	}
	if len(jobs) == 0 {
		return nil, nil
	}

	// Build every replacement before touching a pin.
	var retired []retiredMap
	fail := func(err error) ([]retiredMap, error) {
		for _, r := range retired {
			r.new.Close()
		}
		closeAll()
		return nil, err
	}
	for _, j := range jobs {
		spec := j.ms.Copy()
		spec.Pinning = ebpf.PinNone
		nm, err := ebpf.NewMap(spec)
		if err != nil {
			return fail(fmt.Errorf("migrate pinned map %s: create: %w", j.ms.Name, err))
		}
		retired = append(retired, retiredMap{name: j.ms.Name, old: j.old, new: nm, fresh: j.fresh})
		if j.ms.Name == bpf.DatapathMapCt {
			// A new table, a new seed: its connections are copied in by
			// it, and Load reads it back from the pin.
			seed, err := newCTSeed()
			if err == nil {
				err = setCTSeed(nm, seed)
			}
			if err != nil {
				return fail(fmt.Errorf("migrate pinned map %s: %w", j.ms.Name, err))
			}
		}
		if j.fresh {
			continue
		}
		n, err := copyMap(j.ms.Name, j.old, nm, false)
		if err != nil {
			return fail(fmt.Errorf("migrate pinned map %s to %d entries: copied %d: %w (it holds more than fit: raise its size setting)",
				j.ms.Name, j.ms.MaxEntries, n, err))
		}
	}

	// Swap the pins: each rename replaces the old pin at once.
	for _, r := range retired {
		path := filepath.Join(dir, r.name)
		tmp := filepath.Join(dir, "migrating-"+r.name) // bpffs refuses names with a dot
		os.Remove(tmp)
		if err := r.new.Pin(tmp); err != nil {
			return fail(fmt.Errorf("migrate pinned map %s: pin: %w", r.name, err))
		}
		if err := os.Rename(tmp, path); err != nil {
			r.new.Unpin()
			return fail(fmt.Errorf("migrate pinned map %s: replace pin: %w", r.name, err))
		}
	}
	for i := range retired {
		retired[i].new.Close() // the collection loads it from its pin
		retired[i].new = nil
	}
	return retired, nil
}

// copyEntries copies every entry of from into to and returns how many it
// wrote. With onlyMissing, entries to already has are left alone.
func copyEntries(from, to *ebpf.Map, onlyMissing bool) (int, error) {
	flags := ebpf.UpdateAny
	if onlyMissing {
		flags = ebpf.UpdateNoExist
	}
	n := 0
	err := walkRaw(from, func(key, val []byte) error {
		if err := to.Update(key, val, flags); err != nil {
			if onlyMissing && errors.Is(err, ebpf.ErrKeyExist) {
				return nil
			}
			return err
		}
		n++
		return nil
	})
	return n, err
}

// copyMap copies the entries of map name from from into to: as they are,
// or, for conntrack, connection by connection into the table.
func copyMap(name string, from, to *ebpf.Map, onlyMissing bool) (int, error) {
	if name != bpf.DatapathMapCt {
		return copyEntries(from, to, onlyMissing)
	}
	t, err := openCTTable(to)
	if err != nil {
		return 0, err
	}
	defer t.close()
	return ctCopy(from, t, onlyMissing)
}

// Migrated names the pinned maps Load replaced because their capacity or
// flags changed.
func (d *Datapath) Migrated() []string {
	names := make([]string, 0, len(d.retired))
	for _, r := range d.retired {
		names = append(names, r.name)
	}
	return names
}

// FinishMigration copies the connections the previous programs recorded
// in replaced conntrack maps since Load, and releases those maps. Call it
// once this build's programs are attached everywhere. It returns how many
// entries it copied.
func (d *Datapath) FinishMigration() (int, error) {
	var errs []error
	total := 0
	for _, r := range d.retired {
		if lateCopy(r.name) && !r.fresh {
			to := d.mapByName(r.name)
			if to != nil {
				n, err := copyMap(r.name, r.old, to, true)
				total += n
				if err != nil {
					errs = append(errs, fmt.Errorf("finish migration of %s: %w", r.name, err))
				}
			}
		}
		r.old.Close()
	}
	d.retired = nil
	return total, errors.Join(errs...)
}

func (d *Datapath) mapByName(name string) *ebpf.Map {
	switch name {
	case bpf.DatapathMapCt:
		return d.objs.Ct
	case bpf.DatapathMapProxyCt:
		return d.objs.ProxyCt
	case bpf.DatapathMapFrags:
		return d.objs.Frags
	}
	return nil
}
