package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/bpf"
)

// ErrMapFull is returned (wrapped) when an update is refused because the map
// holds max_entries elements.
var ErrMapFull = errors.New("map is full")

func wrapUpdate(name string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
		return fmt.Errorf("update %s: %w (%v)", name, ErrMapFull, err)
	}
	return fmt.Errorf("update %s: %w", name, err)
}

// indexedPut writes k -> v to m, a map the programs look up through index
// ix, and then to the index, under the index's lock (index.h says in
// which order a bucket changes).
func indexedPut[K, V any](m *ebpf.Map, ix *index, name string, k *K, v *V) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if err := m.Put(k, v); err != nil {
		return wrapUpdate(name, err)
	}
	return ix.written(ix.put(rawBytes(k), rawBytes(v)))
}

// indexedDelete removes k from m and then from its index ix; a key that is
// not there is not an error.
func indexedDelete[K any](m *ebpf.Map, ix *index, k *K) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return ix.written(ix.del(rawBytes(k)))
}

// ---- ipcache ----------------------------------------------------------------

// IPCacheEntry maps a prefix to the identity of the addresses in it and to
// the set of policy selectors that select them.
type IPCacheEntry struct {
	Prefix   netip.Prefix
	Identity uint32
	Selset   uint32
}

func isHostPrefix(p netip.Prefix) bool { return p.Bits() == p.Addr().BitLen() }

// IPCachePut adds or replaces an entry. Host prefixes (/32, /128) go to the
// exact-match map, shorter ones to the LPM trie.
func (d *Datapath) IPCachePut(e IPCacheEntry) error {
	v := bpf.DatapathIpcacheValue{Identity: e.Identity, Selset: e.Selset}
	p := e.Prefix.Masked()
	if isHostPrefix(p) {
		k := toAddr(p.Addr())
		return indexedPut(d.objs.IpcacheHost, d.ipcIndex, "ipcache_host", &k, &v)
	}
	k := bpf.DatapathIpcacheLpmKey{Prefixlen: prefixBits(p), Addr: toAddr(p.Addr())}
	return wrapUpdate("ipcache_lpm", d.objs.IpcacheLpm.Put(&k, &v))
}

// IPCacheDelete removes an entry; a missing entry is not an error.
func (d *Datapath) IPCacheDelete(p netip.Prefix) error {
	p = p.Masked()
	var err error
	if isHostPrefix(p) {
		k := toAddr(p.Addr())
		err = indexedDelete(d.objs.IpcacheHost, d.ipcIndex, &k)
	} else {
		k := bpf.DatapathIpcacheLpmKey{Prefixlen: prefixBits(p), Addr: toAddr(p.Addr())}
		err = d.objs.IpcacheLpm.Delete(&k)
	}
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete ipcache %s: %w", p, err)
	}
	return nil
}

// IPCacheList returns every entry.
func (d *Datapath) IPCacheList() ([]IPCacheEntry, error) {
	var out []IPCacheEntry
	err := walkMap(d.objs.IpcacheHost, func(hk *bpf.DatapathAddr, v *bpf.DatapathIpcacheValue) error {
		a := fromAddr(*hk)
		out = append(out, IPCacheEntry{Prefix: netip.PrefixFrom(a, a.BitLen()), Identity: v.Identity, Selset: v.Selset})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list ipcache_host: %w", err)
	}
	var lk bpf.DatapathIpcacheLpmKey
	var v bpf.DatapathIpcacheValue
	it := d.objs.IpcacheLpm.Iterate()
	for it.Next(&lk, &v) {
		out = append(out, IPCacheEntry{Prefix: fromPrefix(lk.Addr, lk.Prefixlen), Identity: v.Identity, Selset: v.Selset})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list ipcache_lpm: %w", err)
	}
	return out, nil
}

// ---- endpoints --------------------------------------------------------------

// EndpointInfo is the datapath's view of one address of a local workload.
type EndpointInfo struct {
	Addr     netip.Addr
	ID       uint16
	Ifindex  uint32
	Identity uint32
	Flags    uint16
	// Masks[dir][MaskSelset|MaskAny]: which kinds of policy entries exist.
	Masks [2][2]uint32
}

// Gen is the endpoint's active policy generation (0 or 1).
func (e EndpointInfo) Gen() uint8 {
	if e.Flags&EndpointGen != 0 {
		return 1
	}
	return 0
}

// EndpointPut adds or replaces an endpoint. The replacement is atomic: a
// packet sees either the old or the new value, never a mix.
func (d *Datapath) EndpointPut(e EndpointInfo) error {
	k := toAddr(e.Addr)
	v := bpf.DatapathEndpoint{Ifindex: e.Ifindex, Identity: e.Identity, Id: e.ID, Flags: e.Flags, Masks: e.Masks}
	return indexedPut(d.objs.Endpoints, d.epIndex, "endpoints", &k, &v)
}

// EndpointDelete removes an endpoint address.
func (d *Datapath) EndpointDelete(a netip.Addr) error {
	k := toAddr(a)
	if err := indexedDelete(d.objs.Endpoints, d.epIndex, &k); err != nil {
		return fmt.Errorf("delete endpoint %s: %w", a, err)
	}
	return nil
}

// EndpointList returns every endpoint address.
func (d *Datapath) EndpointList() ([]EndpointInfo, error) {
	var out []EndpointInfo
	err := walkMap(d.objs.Endpoints, func(k *bpf.DatapathAddr, v *bpf.DatapathEndpoint) error {
		out = append(out, EndpointInfo{Addr: fromAddr(*k), ID: v.Id, Ifindex: v.Ifindex, Identity: v.Identity, Flags: v.Flags, Masks: v.Masks})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	return out, nil
}

// ---- policy -----------------------------------------------------------------

// PolicyKey addresses one policy entry.
type PolicyKey struct {
	EpID   uint16
	Dir    Dir
	Gen    uint8
	Selset uint32 // 0: any peer
	Proto  uint8  // 0: any protocol (Plen must be 0)
	Port   uint16 // masked to Plen bits; ICMP: type
	Plen   uint8  // 0..16
}

// PolicyValue is what an entry decides.
type PolicyValue struct {
	Verdict   Verdict
	ProxyPort uint16
	RuleID    uint32
}

func (k PolicyKey) raw() bpf.DatapathPolicyKey {
	return bpf.DatapathPolicyKey{
		Selset: k.Selset,
		EpId:   k.EpID,
		Port:   k.Port,
		DirGen: uint8(k.Dir&1) | (k.Gen&1)<<1,
		Proto:  k.Proto,
		Plen:   k.Plen,
	}
}

func policyKeyFrom(r bpf.DatapathPolicyKey) PolicyKey {
	return PolicyKey{EpID: r.EpId, Dir: Dir(r.DirGen & 1), Gen: (r.DirGen >> 1) & 1, Selset: r.Selset, Proto: r.Proto, Port: r.Port, Plen: r.Plen}
}

// PolicyPut writes entries in one batch.
func (d *Datapath) PolicyPut(keys []PolicyKey, values []PolicyValue) error {
	if len(keys) != len(values) {
		return fmt.Errorf("update policy: %d keys but %d values", len(keys), len(values))
	}
	if len(keys) == 0 {
		return nil
	}
	rk := make([]bpf.DatapathPolicyKey, len(keys))
	rv := make([]bpf.DatapathPolicyValue, len(values))
	for i := range keys {
		rk[i] = keys[i].raw()
		rv[i] = bpf.DatapathPolicyValue{Verdict: uint8(values[i].Verdict), ProxyPort: values[i].ProxyPort, RuleId: values[i].RuleID}
	}
	ix := d.polIndex
	ix.mu.Lock()
	defer ix.mu.Unlock()
	n, err := d.objs.Policy.BatchUpdate(rk, rv, nil)
	if err != nil && errors.Is(err, ebpf.ErrNotSupported) {
		for n = 0; n < len(rk); n++ {
			if err = d.objs.Policy.Put(&rk[n], &rv[n]); err != nil {
				break
			}
		}
	}
	// The index follows what the map took.
	for i := 0; i < n; i++ {
		if ierr := ix.put(rawBytes(&rk[i]), rawBytes(&rv[i])); ierr != nil {
			return wrapUpdate("policy", ix.written(ierr))
		}
	}
	if ierr := ix.written(nil); ierr != nil {
		return wrapUpdate("policy", ierr)
	}
	if err != nil {
		return wrapUpdate("policy", fmt.Errorf("after %d of %d entries: %w", n, len(rk), err))
	}
	return nil
}

// PolicyDelete removes entries; missing ones are ignored.
func (d *Datapath) PolicyDelete(keys []PolicyKey) error {
	ix := d.polIndex
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, k := range keys {
		rk := k.raw()
		if err := d.objs.Policy.Delete(&rk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete policy entry %+v: %w", k, ix.written(err))
		}
		if err := ix.del(rawBytes(&rk)); err != nil {
			return fmt.Errorf("delete policy entry %+v: %w", k, ix.written(err))
		}
	}
	return ix.written(nil)
}

// PolicyList returns every entry.
func (d *Datapath) PolicyList() (map[PolicyKey]PolicyValue, error) {
	out := map[PolicyKey]PolicyValue{}
	err := walkMap(d.objs.Policy, func(k *bpf.DatapathPolicyKey, v *bpf.DatapathPolicyValue) error {
		out[policyKeyFrom(*k)] = PolicyValue{Verdict: Verdict(v.Verdict), ProxyPort: v.ProxyPort, RuleID: v.RuleId}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list policy: %w", err)
	}
	return out, nil
}

// ---- registry ----------------------------------------------------------------

// Registry kinds.
const (
	RegistrySelset uint32 = 1
	RegistryRule   uint32 = 2
)

func registryKey(kind, id uint32) uint64 { return uint64(kind)<<32 | uint64(id) }

// RegistryPut records the fingerprint of an agent-assigned number.
func (d *Datapath) RegistryPut(kind, id uint32, fingerprint uint64) error {
	return wrapUpdate("registry", d.registry.Put(registryKey(kind, id), fingerprint))
}

// RegistryDelete forgets a number.
func (d *Datapath) RegistryDelete(kind, id uint32) error {
	if err := d.registry.Delete(registryKey(kind, id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete registry entry: %w", err)
	}
	return nil
}

// RegistryList returns id → fingerprint for one kind.
func (d *Datapath) RegistryList(kind uint32) (map[uint32]uint64, error) {
	out := map[uint32]uint64{}
	err := walkMap(d.registry, func(k, v *uint64) error {
		if uint32(*k>>32) == kind {
			out[uint32(*k)] = *v
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list registry: %w", err)
	}
	return out, nil
}

// ---- map statistics ---------------------------------------------------------

// MapStat is a map's fill level.
type MapStat struct {
	Name       string
	Entries    int
	MaxEntries int
	// Indexed: the programs look the map up through an index of ours
	// (index.h). Overflowing counts the keys the index could not hold
	// (their bucket full), which the programs find in the kernel map, a
	// slower lookup: many mean the map is sized too small.
	Indexed     bool
	Overflowing int
	// CountedAt is zero when Entries was counted now; else the time of
	// the count Entries starts from (conntrack's: see MapStats).
	CountedAt time.Time
}

// MapStats counts the entries of the datapath's maps. Counting walks the
// maps, so call it for status output, not per packet. Conntrack's count
// starts from the last collection's (CTCollect; the agent's runs every
// 30 s): counting anew maps the whole table, which costs milliseconds and
// evicts what the datapath had in the CPUs' caches, on every status
// request and metrics scrape. To it are added the connections the
// datapath recorded since (its counters), less those deleted since; those
// that ended since stay counted until the next collection, so it is an
// upper bound (CountedAt says when it was counted). Before any collection
// it counts.
func (d *Datapath) MapStats() []MapStat {
	maps := []struct {
		name string
		m    *ebpf.Map
	}{
		{"ipcache_host", d.objs.IpcacheHost},
		{"ipcache_lpm", d.objs.IpcacheLpm},
		{"endpoints", d.objs.Endpoints},
		{"policy", d.objs.Policy},
		{"ct", d.objs.Ct},
		{"frags", d.objs.Frags},
		{"proxy_ct", d.objs.ProxyCt},
		{"registry", d.registry},
	}
	out := make([]MapStat, 0, len(maps))
	for _, e := range maps {
		if e.m == d.objs.Ct {
			st := MapStat{Name: e.name, MaxEntries: d.ctConnections()}
			if n, at, ok := d.ctEstimate(); ok {
				st.Entries, st.CountedAt = n, at
			} else {
				scanCT(e.m, ctScanWindow, func(t *ctTable) bool {
					st.Entries += t.len()
					return true
				})
			}
			out = append(out, st)
			continue
		}
		st := MapStat{Name: e.name, Entries: countEntries(e.m), MaxEntries: int(e.m.MaxEntries())}
		if ix := d.indexOf(e.m); ix != nil {
			st.Indexed, st.Overflowing = true, ix.overflowing()
		}
		out = append(out, st)
	}
	return out
}

// indexOf is the index of map m, nil if it has none.
func (d *Datapath) indexOf(m *ebpf.Map) *index {
	switch m {
	case d.objs.Endpoints:
		return d.epIndex
	case d.objs.IpcacheHost:
		return d.ipcIndex
	case d.objs.Policy:
		return d.polIndex
	}
	return nil
}
