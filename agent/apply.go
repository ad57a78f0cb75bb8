package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/internal/ifname"
	"github.com/membrane-mesh/membrane/policy"
)

// applier delivers engine snapshots to the BPF maps. It keeps a mirror of
// what the maps hold (read back from the pinned maps at startup), writes
// only differences, and orders its writes so that no packet meets a state
// that is neither the old nor the new one:
//
//  1. fingerprints of new selector sets and rules go to the registry;
//  2. addresses endpoints no longer have, and endpoints that left, are
//     removed; each changed endpoint gets its complete new entries in its
//     inactive generation — plus, unchanged, the entries of selector sets
//     that are about to disappear but that ipcache entries still carry —
//     and then one atomic update per address switches generation, flags
//     and masks;
//  3. the ipcache is updated;
//  4. the policy revision is bumped, so established connections are
//     checked against the new state on their next packet;
//  5. old generations and entries of vanished selector sets are deleted.
type applier struct {
	dp  *datapath.Datapath
	log *slog.Logger

	ipcache   map[netip.Prefix]datapath.IPCacheEntry
	endpoints map[policy.PodKey]*epState
	usedIDs   map[uint16]bool
	// lastID is the endpoint ID allocated last; allocation goes on from
	// it (allocID).
	lastID uint16
	// Registry mirror: id -> fingerprint.
	regSelsets map[uint32]uint64
	regRules   map[uint32]uint64
	// adopted: endpoint IDs and generations found in the maps at startup,
	// by address.
	adopted map[netip.Addr]datapath.EndpointInfo
	// full counts updates each map refused because it was full.
	full map[string]uint64
	// pending are endpoints whose maps are written and whose programs
	// still need attaching, done in parallel at the end of the endpoint
	// pass.
	pending []*epState
	// proxyRouting installs the policy routing of the redirect to the node
	// proxy (nil without L7); it runs before the first redirect entry is
	// written. Until then no route lookup of the node pays for the rule.
	proxyRouting func() error
	proxyRouted  bool
}

// routeToProxy installs the proxy's policy routing the first time entries
// redirect to it.
func (a *applier) routeToProxy(entries map[policy.EntryKey]policy.Value) error {
	if a.proxyRouting == nil || a.proxyRouted {
		return nil
	}
	for _, v := range entries {
		if v.Verdict == policy.Redirect {
			if err := a.proxyRouting(); err != nil {
				return err
			}
			a.proxyRouted = true
			a.log.Info("proxy routing installed: the first policy redirects to the L7 proxy")
			return nil
		}
	}
	return nil
}

// attachWorkers bounds concurrent attachments. A first tcx attachment
// waits for an RCU grace period with the RTNL lock held, so the kernel
// serialises those (docs/ARCHITECTURE.md: ~54 s for 1,000 endpoints
// here); several workers still overlap each one's interface lookup and
// pin reads and writes with another's wait, and an agent's restart,
// which updates its pinned links instead, is not held up by one slow
// interface.
const attachWorkers = 32

// attachPending attaches the programs of every pending endpoint.
func (a *applier) attachPending(problem func(string, ...any)) {
	if len(a.pending) == 0 {
		return
	}
	var mu sync.Mutex
	work := make(chan *epState)
	var wg sync.WaitGroup
	for range min(attachWorkers, len(a.pending)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for st := range work {
				err := a.dp.AttachEndpoint(st.ifname)
				mu.Lock()
				if err != nil {
					problem("endpoint %s: %v", st.key, err)
					st.state = api.EndpointFailed
					st.message = err.Error()
				} else {
					st.attached = true
					if !st.failing {
						st.state = api.EndpointReady
						st.message = ""
					}
				}
				mu.Unlock()
			}
		}()
	}
	for _, st := range a.pending {
		work <- st
	}
	close(work)
	wg.Wait()
	a.pending = a.pending[:0]
}

// noteFull counts err against a map if it is a map-full error.
func (a *applier) noteFull(name string, err error) {
	if errors.Is(err, datapath.ErrMapFull) {
		a.full[name]++
	}
}

// epState is what the maps hold for one endpoint.
type epState struct {
	key     policy.PodKey
	id      uint16
	ifname  string
	ifindex uint32
	addrs   []netip.Addr
	gen     uint8
	flags   uint16
	entries map[policy.EntryKey]policy.Value // active generation

	identity identity.ID
	state    string
	message  string
	// attached: this process attached (or adopted) the programs on
	// ifindex.
	attached bool
	// failing: the last apply could not write its state in full (a map
	// was full); it fails closed until one can.
	failing bool
}

func newApplier(dp *datapath.Datapath, log *slog.Logger) (*applier, error) {
	a := &applier{
		dp:        dp,
		log:       log,
		ipcache:   map[netip.Prefix]datapath.IPCacheEntry{},
		endpoints: map[policy.PodKey]*epState{},
		usedIDs:   map[uint16]bool{},
		adopted:   map[netip.Addr]datapath.EndpointInfo{},
		full:      map[string]uint64{},
	}
	ipc, err := dp.IPCacheList()
	if err != nil {
		return nil, err
	}
	for _, e := range ipc {
		a.ipcache[e.Prefix] = e
	}
	eps, err := dp.EndpointList()
	if err != nil {
		return nil, err
	}
	for _, e := range eps {
		a.adopted[e.Addr] = e
		a.usedIDs[e.ID] = true
		a.lastID = max(a.lastID, e.ID)
	}
	if a.regSelsets, err = dp.RegistryList(datapath.RegistrySelset); err != nil {
		return nil, err
	}
	if a.regRules, err = dp.RegistryList(datapath.RegistryRule); err != nil {
		return nil, err
	}
	return a, nil
}

// adoptEntries reads back the active entries of endpoints found at startup,
// so the first apply after a restart writes nothing when nothing changed.
func (a *applier) adoptEntries() (map[uint16]map[policy.EntryKey]policy.Value, map[uint16][]datapath.PolicyKey, error) {
	all, err := a.dp.PolicyList()
	if err != nil {
		return nil, nil, err
	}
	gens := map[uint16]uint8{}
	for _, e := range a.adopted {
		gens[e.ID] = e.Gen()
	}
	active := map[uint16]map[policy.EntryKey]policy.Value{}
	stale := map[uint16][]datapath.PolicyKey{}
	for k, v := range all {
		g, ok := gens[k.EpID]
		if !ok || k.Gen != g {
			stale[k.EpID] = append(stale[k.EpID], k)
			continue
		}
		m := active[k.EpID]
		if m == nil {
			m = map[policy.EntryKey]policy.Value{}
			active[k.EpID] = m
		}
		m[policy.EntryKey{Dir: policy.Dir(k.Dir), Selset: k.Selset, Entry: policy.Entry{Proto: k.Proto, Port: k.Port, Plen: k.Plen}}] =
			policy.Value{Verdict: policy.Verdict(v.Verdict), ProxyPort: v.ProxyPort, RuleID: v.RuleID}
	}
	return active, stale, nil
}

// applyResult reports problems that left part of the state unapplied.
type applyResult struct {
	problems []string
}

// ifindexOf returns the interface index of a pod's host-side veth, or 0.
type ifindexFunc func(name string) uint32

// apply delivers snap.
func (a *applier) apply(snap *policy.Snapshot, ifindexOf ifindexFunc, adoptedEntries map[uint16]map[policy.EntryKey]policy.Value) applyResult {
	var res applyResult
	problem := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		res.problems = append(res.problems, msg)
		a.log.Warn(msg)
	}

	// 1. Registry: new numbers first, so a crash after any later step
	// still lets a restart reuse them.
	for id, ss := range snap.Selsets {
		if a.regSelsets[id] != ss.Fingerprint {
			if err := a.dp.RegistryPut(datapath.RegistrySelset, id, ss.Fingerprint); err != nil {
				problem("record selector set %d: %v", id, err)
			}
			a.regSelsets[id] = ss.Fingerprint
		}
	}
	for id, ref := range snap.Rules {
		fp := policy.RuleFingerprint(ref)
		if a.regRules[id] != fp {
			if err := a.dp.RegistryPut(datapath.RegistryRule, id, fp); err != nil {
				problem("record rule %d: %v", id, err)
			}
			a.regRules[id] = fp
		}
	}

	// Selector sets carried by ipcache entries now but not by the new
	// state: endpoints keep their entries for them until the ipcache no
	// longer refers to them.
	retiring := map[uint32]bool{}
	for _, e := range a.ipcache {
		if e.Selset != 0 {
			retiring[e.Selset] = true
		}
	}
	for _, addr := range snap.IPCache {
		delete(retiring, addr.Selset)
	}

	// 2. Endpoints. First the addresses endpoints no longer have, and
	// the endpoints that are gone: an address may have moved to another
	// endpoint in this snapshot, whose record written first would then
	// be deleted as the old owner's; and their room in the maps goes to
	// the endpoints written after.
	for key, st := range a.endpoints {
		if ep, ok := snap.Endpoints[key]; ok {
			a.releaseAddrs(st, ep.Pod.IPs, problem)
		} else {
			a.removeEndpoint(st, problem)
			delete(a.endpoints, key)
		}
	}
	for _, key := range slices.SortedFunc(maps.Keys(snap.Endpoints), comparePodKey) {
		a.applyEndpoint(snap.Endpoints[key], ifindexOf, adoptedEntries, retiring, problem)
	}
	a.attachPending(problem)

	// 3. ipcache.
	for p, addr := range snap.IPCache {
		want := datapath.IPCacheEntry{Prefix: p, Identity: uint32(addr.Identity), Selset: addr.Selset}
		if cur, ok := a.ipcache[p]; ok && cur == want {
			continue
		}
		if err := a.dp.IPCachePut(want); err != nil {
			name := "ipcache_lpm"
			if p.Bits() == p.Addr().BitLen() {
				name = "ipcache_host"
			}
			a.noteFull(name, err)
			problem("ipcache %s: %v", p, err)
			continue
		}
		a.ipcache[p] = want
	}
	for p := range a.ipcache {
		if _, ok := snap.IPCache[p]; !ok {
			if err := a.dp.IPCacheDelete(p); err != nil {
				problem("ipcache %s: %v", p, err)
				continue
			}
			delete(a.ipcache, p)
		}
	}
	// Addresses the ipcache could not take would be mistaken for the
	// world: until every one fits, the datapath fails closed on peers
	// without an entry of their own.
	missing := 0
	for p, addr := range snap.IPCache {
		if cur, ok := a.ipcache[p]; !ok || cur.Identity != uint32(addr.Identity) || cur.Selset != addr.Selset {
			missing++
		}
	}
	if missing > 0 {
		problem("ipcache: %d addresses do not fit (map full: raise --map-size-ipcache-host/-lpm); new connections with peers that have no entry fail closed", missing)
	}
	if err := a.dp.SetIPCacheIncomplete(missing > 0); err != nil {
		problem("ipcache: %v", err)
	}

	// 4. Re-check established connections.
	if _, err := a.dp.BumpPolicyRevision(); err != nil {
		problem("bump policy revision: %v", err)
	}

	// 5. Entries of vanished selector sets. One that an ipcache entry
	// still carries (its update or deletion failed above) is not gone:
	// the datapath still meets it, so its entries stay until a later
	// apply gets that entry written.
	for _, e := range a.ipcache {
		delete(retiring, e.Selset)
	}
	if len(retiring) > 0 {
		for _, st := range a.endpoints {
			var del []datapath.PolicyKey
			for k := range st.entries {
				if retiring[k.Selset] {
					del = append(del, st.datapathKey(k, st.gen))
				}
			}
			if len(del) == 0 {
				continue
			}
			// st.entries may be the engine's map: replaced, not changed.
			st.entries = maps.Clone(st.entries)
			maps.DeleteFunc(st.entries, func(k policy.EntryKey, _ policy.Value) bool { return retiring[k.Selset] })
			if err := a.dp.PolicyDelete(del); err != nil {
				problem("endpoint %s: delete entries of vanished selector sets: %v", st.key, err)
			}
		}
		for id := range retiring {
			if _, live := snap.Selsets[id]; !live {
				if err := a.dp.RegistryDelete(datapath.RegistrySelset, id); err == nil {
					delete(a.regSelsets, id)
				}
			}
		}
	}
	for id := range a.regRules {
		if _, live := snap.Rules[id]; !live {
			if err := a.dp.RegistryDelete(datapath.RegistryRule, id); err == nil {
				delete(a.regRules, id)
			}
		}
	}
	for id := range a.regSelsets {
		if _, live := snap.Selsets[id]; !live && !retiring[id] {
			if err := a.dp.RegistryDelete(datapath.RegistrySelset, id); err == nil {
				delete(a.regSelsets, id)
			}
		}
	}
	return res
}

func comparePodKey(a, b policy.PodKey) int {
	if a.Namespace != b.Namespace {
		if a.Namespace < b.Namespace {
			return -1
		}
		return 1
	}
	if a.Name < b.Name {
		return -1
	}
	if a.Name > b.Name {
		return 1
	}
	return 0
}

func (st *epState) datapathKey(k policy.EntryKey, gen uint8) datapath.PolicyKey {
	return datapath.PolicyKey{EpID: st.id, Dir: datapath.Dir(k.Dir), Gen: gen, Selset: k.Selset, Proto: k.Proto, Port: k.Port, Plen: k.Plen}
}

// allocID hands out the first free endpoint ID after the last one it
// handed out, wrapping around: a freed ID comes back only after all the
// others have. Verdicts of a deleted endpoint are read up to a poll
// interval later (longer after a restart, from the flow log's backlog),
// and are labelled with the endpoint their ID names then: reused at once,
// the lowest free ID would credit them to a pod created meanwhile.
func (a *applier) allocID() (uint16, error) {
	id := a.lastID
	for range 65535 {
		if id++; id == 0 {
			id = 1
		}
		if !a.usedIDs[id] {
			a.usedIDs[id] = true
			a.lastID = id
			return id, nil
		}
	}
	return 0, errors.New("all 65535 endpoint IDs are in use")
}

func (a *applier) applyEndpoint(ep *policy.Endpoint, ifindexOf ifindexFunc, adoptedEntries map[uint16]map[policy.EntryKey]policy.Value,
	retiring map[uint32]bool, problem func(string, ...any)) {
	key := ep.Pod.Key
	st := a.endpoints[key]
	name := ifname.Host(key.Namespace, key.Name)
	ifindex := ifindexOf(name)

	if st == nil {
		st = &epState{key: key, ifname: name, addrs: slices.Clone(ep.Pod.IPs), identity: ep.Identity}
		// An endpoint the maps already know (agent restart): keep its ID
		// and generation, and start from the entries the maps hold.
		for _, addr := range ep.Pod.IPs {
			if info, ok := a.adopted[addr]; ok {
				st.id, st.gen, st.flags, st.ifindex = info.ID, info.Gen(), info.Flags, info.Ifindex
				st.entries = adoptedEntries[info.ID]
				break
			}
		}
		if st.id == 0 {
			id, err := a.allocID()
			if err != nil {
				problem("endpoint %s: %v", key, err)
				return
			}
			st.id = id
		}
		if st.entries == nil {
			st.entries = map[policy.EntryKey]policy.Value{}
		}
		a.endpoints[key] = st
	}
	st.identity = ep.Identity

	if ifindex == 0 {
		st.state = api.EndpointWaitingInterface
		st.message = fmt.Sprintf("interface %s does not exist yet", name)
		return
	}

	// Desired entries, plus those of selector sets still in the ipcache.
	desired := ep.Entries
	carried := false
	for k := range st.entries {
		if retiring[k.Selset] {
			carried = true
			break
		}
	}
	if carried {
		desired = maps.Clone(ep.Entries)
		for k, v := range st.entries {
			if retiring[k.Selset] {
				desired[k] = v
			}
		}
	}

	flags := uint16(0)
	if ep.Enforce[policy.Ingress] {
		flags |= datapath.EndpointIngressEnforced
	}
	if ep.Enforce[policy.Egress] {
		flags |= datapath.EndpointEgressEnforced
	}

	sameEntries := maps.Equal(desired, st.entries)
	sameAddrs := slices.Equal(st.addrs, ep.Pod.IPs) && st.ifindex == ifindex
	wasFailed := st.flags&datapath.EndpointFailClosed != 0
	if st.ifindex != ifindex {
		st.attached = false // the interface was recreated
	}
	if sameEntries && sameAddrs && !wasFailed && st.flags&^datapath.EndpointGen == flags {
		if !st.attached {
			a.pending = append(a.pending, st)
		}
		return
	}

	newGen := st.gen
	var keys []datapath.PolicyKey // the new generation's
	if !sameEntries {
		newGen = st.gen ^ 1
		keys = make([]datapath.PolicyKey, 0, len(desired))
		vals := make([]datapath.PolicyValue, 0, len(desired))
		if err := a.routeToProxy(desired); err != nil {
			problem("endpoint %s: %v (its L7 traffic fails until this is fixed)", key, err)
		}
		for k, v := range desired {
			keys = append(keys, st.datapathKey(k, newGen))
			vals = append(vals, datapath.PolicyValue{Verdict: datapath.Verdict(v.Verdict), ProxyPort: v.ProxyPort, RuleID: v.RuleID})
		}
		if err := a.dp.PolicyPut(keys, vals); err != nil {
			a.noteFull("policy", err)
			// Fail closed: the endpoint drops new connections until a
			// later apply succeeds.
			problem("endpoint %s: cannot program %d policy entries: %v", key, len(keys), err)
			st.state = api.EndpointFailed
			st.message = fmt.Sprintf("policy not programmed, failing closed: %v", err)
			a.writeEndpoint(st, ifindex, st.flags|datapath.EndpointFailClosed, problem)
			a.deleteGen(st, newGen, keys, problem)
			a.attachFailing(st)
			return
		}
	}

	if newGen == 1 {
		flags |= datapath.EndpointGen
	}
	masks := policy.Masks(&policy.Endpoint{Entries: desired})
	st.addrs = slices.Clone(ep.Pod.IPs) // those it no longer has are released (apply)
	if n, ok := a.writeEndpointAddrs(st, st.addrs, ifindex, flags, masks, problem); !ok {
		if newGen != st.gen {
			// The addresses written before the one that failed
			// moved to the new generation, the others did not: put
			// them back on the old one, failing closed, and empty
			// the new one, which the next change writes into again
			// (an entry of this version left there would take
			// effect with it).
			back := st.flags | datapath.EndpointFailClosed
			a.writeEndpointAddrs(st, st.addrs[:n], ifindex, back, policy.Masks(&policy.Endpoint{Entries: st.entries}), problem)
			st.flags = back
			a.deleteGen(st, newGen, keys, problem)
		}
		a.attachFailing(st)
		return
	}
	oldGen := st.gen
	oldEntries := st.entries
	st.gen, st.flags, st.ifindex = newGen, flags, ifindex
	st.entries = desired // shared with the engine, which never changes it
	if newGen != oldGen && len(oldEntries) > 0 {
		old := make([]datapath.PolicyKey, 0, len(oldEntries))
		for k := range oldEntries {
			old = append(old, st.datapathKey(k, oldGen))
		}
		a.deleteGen(st, oldGen, old, problem)
	}

	// Programs last (attachPending): when they first see this endpoint,
	// its state is complete.
	st.failing = false
	if !st.attached {
		a.pending = append(a.pending, st)
		return
	}
	st.state = api.EndpointReady
	st.message = ""
}

// attachFailing queues the programs of an endpoint whose state could not
// be written in full, if they are not attached yet: without them its
// packets would go unchecked (fail open), while with them they meet its
// fail-closed record, or no record at all, and drop. It stays failed.
func (a *applier) attachFailing(st *epState) {
	st.failing = true
	if !st.attached {
		a.pending = append(a.pending, st)
	}
}

func (a *applier) writeEndpoint(st *epState, ifindex uint32, flags uint16, problem func(string, ...any)) {
	masks := policy.Masks(&policy.Endpoint{Entries: st.entries})
	a.writeEndpointAddrs(st, st.addrs, ifindex, flags, masks, problem)
	st.flags = flags
}

// writeEndpointAddrs writes the records of st's addresses addrs, up to
// the first that fails (the endpoint is then failed); it returns how many
// it wrote, and whether that was all of them.
func (a *applier) writeEndpointAddrs(st *epState, addrs []netip.Addr, ifindex uint32, flags uint16, masks [2][2]uint32, problem func(string, ...any)) (int, bool) {
	for i, addr := range addrs {
		info := datapath.EndpointInfo{Addr: addr, ID: st.id, Ifindex: ifindex, Identity: uint32(st.identity), Flags: flags, Masks: masks}
		if err := a.dp.EndpointPut(info); err != nil {
			a.noteFull("endpoints", err)
			problem("endpoint %s: write %s: %v", st.key, addr, err)
			st.state = api.EndpointFailed
			st.message = err.Error()
			return i, false
		}
	}
	return len(addrs), true
}

func (a *applier) deleteGen(st *epState, gen uint8, keys []datapath.PolicyKey, problem func(string, ...any)) {
	if err := a.dp.PolicyDelete(keys); err != nil {
		problem("endpoint %s: delete generation %d: %v", st.key, gen, err)
	}
}

// releaseAddrs deletes the records of st's addresses that are not in
// keep. (One the kernel refuses to delete is reported; a restarted agent
// drops it with the other records no pod claims.)
func (a *applier) releaseAddrs(st *epState, keep []netip.Addr, problem func(string, ...any)) {
	st.addrs = slices.DeleteFunc(st.addrs, func(addr netip.Addr) bool {
		if slices.Contains(keep, addr) {
			return false
		}
		if err := a.dp.EndpointDelete(addr); err != nil {
			problem("endpoint %s: %v", st.key, err)
		}
		return true
	})
}

// removeEndpoint undoes everything for a pod that left this node.
func (a *applier) removeEndpoint(st *epState, problem func(string, ...any)) {
	if err := a.dp.DetachEndpoint(st.ifname); err != nil {
		problem("endpoint %s: %v", st.key, err)
	}
	a.releaseAddrs(st, nil, problem)
	keys := make([]datapath.PolicyKey, 0, len(st.entries))
	for k := range st.entries {
		keys = append(keys, st.datapathKey(k, st.gen))
	}
	a.deleteGen(st, st.gen, keys, problem)
	delete(a.usedIDs, st.id)
}

// purgeStale deletes entries found at startup that belong to no active
// generation (an agent that died between writing and cleaning up).
func (a *applier) purgeStale(stale map[uint16][]datapath.PolicyKey) {
	for id, keys := range stale {
		if err := a.dp.PolicyDelete(keys); err != nil {
			a.log.Warn("delete stale policy entries", "endpoint", id, "err", err)
		}
	}
}

// forgetAdopted drops endpoints found at startup that no pod claims, once
// the first full apply is done, with their policy entries.
func (a *applier) forgetAdopted(adoptedEntries map[uint16]map[policy.EntryKey]policy.Value) {
	claimed := map[netip.Addr]bool{}
	for _, st := range a.endpoints {
		for _, addr := range st.addrs {
			claimed[addr] = true
		}
	}
	for addr, info := range a.adopted {
		if claimed[addr] {
			continue
		}
		if err := a.dp.EndpointDelete(addr); err != nil {
			a.log.Warn("delete orphaned endpoint", "addr", addr, "err", err)
		}
		used := false
		for _, st := range a.endpoints {
			if st.id == info.ID {
				used = true
			}
		}
		if !used {
			st := &epState{key: policy.PodKey{Name: addr.String()}, id: info.ID, gen: info.Gen()}
			var keys []datapath.PolicyKey
			for k := range adoptedEntries[info.ID] {
				keys = append(keys, st.datapathKey(k, st.gen))
			}
			if err := a.dp.PolicyDelete(keys); err != nil {
				a.log.Warn("delete orphaned endpoint entries", "addr", addr, "err", err)
			}
			delete(adoptedEntries, info.ID)
			delete(a.usedIDs, info.ID)
		}
	}
	a.adopted = map[netip.Addr]datapath.EndpointInfo{}
}
