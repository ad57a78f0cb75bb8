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
// converted: Load refuses it, naming the map, and leaves the pins alone.

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
	// src: for the conntrack index (ct), the table the connections came
	// from, which may be an older build's one map (pool nil).
	src ctSource
}

// pinnedDiff compares the map pinned at path with ms. It returns the open
// pinned map when only its capacity or flags differ, or it is an index of
// another hash (to migrate), nil when it matches or is absent, and an
// error when its layout differs.
func pinnedDiff(path string, ms *ebpf.MapSpec) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", path, err)
	}
	info, err := m.Info()
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("inspect pinned map %s: %w", path, err)
	}
	if info.Type != ms.Type || info.KeySize != ms.KeySize || info.ValueSize != ms.ValueSize {
		m.Close()
		return nil, fmt.Errorf("pinned map %s (%v key %d value %d) differs in layout from this build's (%v key %d value %d): "+
			"this datapath version cannot take over its entries; roll back to the previous version, or remove the pins "+
			"(which forgets established connections)",
			path, info.Type, info.KeySize, info.ValueSize, ms.Type, ms.KeySize, ms.ValueSize)
	}
	if info.MaxEntries == ms.MaxEntries && info.Flags == ms.Flags {
		stale, err := indexHashStale(ms.Name, m)
		if err != nil || !stale {
			m.Close()
			return nil, err
		}
	}
	return m, nil
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
		ms  *ebpf.MapSpec
		old *ebpf.Map
	}
	var jobs []job
	closeAll := func() {
		for _, j := range jobs {
			j.old.Close()
		}
	}
	bySpec := map[string]*ebpf.MapSpec{}
	for _, ms := range specs {
		bySpec[ms.Name] = ms
	}
	ctSrc, err := planCTMigration(dir, bySpec)
	if err != nil {
		return nil, err
	}
	closeAll = func() {
		for _, j := range jobs {
			j.old.Close()
		}
		if ctSrc != nil {
			ctSrc.close()
		}
	}
	for _, ms := range specs {
		if isCTMap(ms.Name) {
			continue // planCTMigration's
		}
		old, err := pinnedDiff(filepath.Join(dir, ms.Name), ms)
		if err != nil {
			closeAll()
			return nil, err
		}
		if old != nil {
			jobs = append(jobs, job{ms, old})
		}
	}
	if len(jobs) == 0 && ctSrc == nil {
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
		retired = append(retired, retiredMap{name: j.ms.Name, old: j.old, new: nm})
		if !migratable(j.ms.Name) {
			continue
		}
		n, err := copyMap(j.ms.Name, j.old, nm, false)
		if err != nil {
			return fail(fmt.Errorf("migrate pinned map %s to %d entries: copied %d: %w (it holds more than fit: raise its size setting)",
				j.ms.Name, j.ms.MaxEntries, n, err))
		}
	}

	if ctSrc != nil {
		var nm ctMaps
		for _, e := range []struct {
			name string
			m    **ebpf.Map
			old  *ebpf.Map
		}{{bpf.DatapathMapCt, &nm.index, ctSrc.index}, {bpf.DatapathMapCtPool, &nm.pool, ctSrc.pool}, {bpf.DatapathMapCtNext, &nm.next, ctSrc.next}} {
			spec := bySpec[e.name].Copy()
			spec.Pinning = ebpf.PinNone
			m, err := ebpf.NewMap(spec)
			if err != nil {
				return fail(fmt.Errorf("migrate pinned map %s: create: %w", e.name, err))
			}
			*e.m = m
			r := retiredMap{name: e.name, old: e.old, new: m}
			if e.name == bpf.DatapathMapCt {
				r.src = *ctSrc
			}
			retired = append(retired, r)
		}
		t, err := openCTTable(nm)
		if err != nil {
			return fail(fmt.Errorf("migrate conntrack: %w", err))
		}
		n, err := ctCopy(*ctSrc, t, false)
		t.close()
		if err != nil {
			return fail(fmt.Errorf("migrate conntrack to %d connections: copied %d: %w (it holds more than fit: raise --map-size-conntrack)",
				ctCapacity(nm.index.MaxEntries()), n, err))
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

// copyMap copies the entries of map name from from into to, as they are.
func copyMap(name string, from, to *ebpf.Map, onlyMissing bool) (int, error) {
	return copyEntries(from, to, onlyMissing)
}

// isCTMap reports whether name is one of conntrack's pinned maps, which
// planCTMigration migrates together.
func isCTMap(name string) bool {
	return name == bpf.DatapathMapCt || name == bpf.DatapathMapCtPool || name == bpf.DatapathMapCtNext
}

// close closes the source's maps.
func (s *ctSource) close() {
	for _, m := range []*ebpf.Map{s.index, s.pool, s.next} {
		if m != nil {
			m.Close()
		}
	}
}

// planCTMigration looks at conntrack's pinned maps in dir and returns the
// table to copy connections from when they must be replaced: an older
// build's one map (a kernel LRU hash, or a table with or without spill
// counts), or this build's maps sized otherwise. It returns nil when they
// are absent or already as specs says, and an error when they cannot be
// taken over.
func planCTMigration(dir string, specs map[string]*ebpf.MapSpec) (*ctSource, error) {
	open := func(name string) (*ebpf.Map, *ebpf.MapInfo, error) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("open pinned map %s: %w", filepath.Join(dir, name), err)
		}
		info, err := m.Info()
		if err != nil {
			m.Close()
			return nil, nil, fmt.Errorf("inspect pinned map %s: %w", filepath.Join(dir, name), err)
		}
		return m, info, nil
	}
	idx, info, err := open(bpf.DatapathMapCt)
	if err != nil || idx == nil {
		return nil, err
	}
	pool, pinfo, err := open(bpf.DatapathMapCtPool)
	if err != nil {
		idx.Close()
		return nil, err
	}
	next, _, err := open(bpf.DatapathMapCtNext)
	if err != nil {
		idx.Close()
		if pool != nil {
			pool.Close()
		}
		return nil, err
	}
	src := &ctSource{ctMaps{idx, pool, next}}
	if isOldConntrack(info) || isV1Table(info.Type, info.ValueSize) || isV2Table(info.Type, info.ValueSize) {
		// An older build's one map; a pool or counter pinned beside it
		// is left over from a failed migration, and replaced.
		if pool != nil {
			pool.Close()
		}
		if next != nil {
			next.Close()
		}
		src.pool, src.next = nil, nil
		return src, nil
	}
	is, ps := specs[bpf.DatapathMapCt], specs[bpf.DatapathMapCtPool]
	if pool == nil || next == nil || checkCTMaps(src.ctMaps) != nil {
		src.close()
		return nil, fmt.Errorf("pinned conntrack maps in %s (ct %v value %d) differ in layout from this build's (value %d): "+
			"this datapath version cannot take over its connections; roll back to the previous version, or remove the pins "+
			"(which forgets established connections)", dir, info.Type, info.ValueSize, is.ValueSize)
	}
	if info.MaxEntries == is.MaxEntries && info.Flags == is.Flags && pinfo.MaxEntries == ps.MaxEntries && pinfo.Flags == ps.Flags {
		src.close()
		return nil, nil
	}
	return src, nil
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
		switch {
		case r.name == bpf.DatapathMapCt:
			t, err := d.ctView()
			if err != nil {
				errs = append(errs, fmt.Errorf("finish migration of conntrack: %w", err))
				break
			}
			n, err := ctCopy(r.src, t, true)
			t.close()
			total += n
			if err != nil {
				errs = append(errs, fmt.Errorf("finish migration of conntrack: %w", err))
			}
		case lateCopy(r.name):
			if to := d.mapByName(r.name); to != nil {
				n, err := copyMap(r.name, r.old, to, true)
				total += n
				if err != nil {
					errs = append(errs, fmt.Errorf("finish migration of %s: %w", r.name, err))
				}
			}
		}
		if r.old != nil {
			r.old.Close()
		}
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
