package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/bpf"
)

// CT entry flags.
const (
	CTEgress    = 1 << 0
	CTIngress   = 1 << 1
	CTReplySeen = 1 << 2
	CTClosing   = 1 << 3
	CTRedirect  = 1 << 4
	CTSynOnly   = 1 << 5
	CTDenied    = 1 << 6 // cut by a policy change; both directions drop
	CTSwapped   = 1 << 7 // the key is the original tuple reversed (one entry serves both directions)
	CTHostSrc   = 1 << 8 // the original source is this node
	CTHostDst   = 1 << 9 // the original destination is this node
)

// Conn is a tracked connection, as its first packet travelled.
type Conn struct {
	Src, Dst    netip.AddrPort
	Proto       uint8
	Flags       uint16
	Idle        time.Duration // since the last refresh (refreshed at most once a second)
	Rev         uint32
	ProxyPort   uint16
	RuleEgress  uint32
	RuleIngress uint32
}

// idle converts a jiffies timestamp into time since.
func (d *Datapath) idle(now uint32, lastSeen uint64) time.Duration {
	ticks := (now - uint32(lastSeen&0x7fffffff)) & 0x7fffffff
	return time.Duration(ticks) * time.Second / time.Duration(d.hz)
}

// Conns returns up to max tracked connections (0: all).
func (d *Datapath) Conns(max int) ([]Conn, error) {
	now, err := d.jiffies()
	if err != nil {
		return nil, err
	}
	var out []Conn
	_, err = d.ctWalk(func(k *bpf.DatapathCtKey, v *bpf.DatapathCtEntry) ctVisit {
		src := netip.AddrPortFrom(fromAddr(k.Saddr), ntohs(k.Sport))
		dst := netip.AddrPortFrom(fromAddr(k.Daddr), ntohs(k.Dport))
		if v.Flags&CTSwapped != 0 {
			src, dst = dst, src
		}
		out = append(out, Conn{
			Src:         src,
			Dst:         dst,
			Proto:       k.Proto,
			Flags:       v.Flags,
			Idle:        d.idle(now, v.LastSeen),
			Rev:         v.Rev,
			ProxyPort:   v.ProxyPort,
			RuleEgress:  v.RuleEgress,
			RuleIngress: v.RuleIngress,
		})
		if max > 0 && len(out) >= max {
			return ctStop
		}
		return ctKeep
	})
	return out, err
}

// CTCollection is what one conntrack collection found.
type CTCollection struct {
	Expired int     // entries deleted
	Entries int     // entries found (conntrack and proxy conntrack)
	Fill    float64 // the fuller map's entries found / its capacity
}

// CTCollect deletes expired connections. The datapath already ignores
// expired entries; collecting them keeps their slots free for new
// connections, which would otherwise evict live ones from a full bucket.
func (d *Datapath) CTCollect(c Config) (CTCollection, error) {
	var res CTCollection
	now, err := d.jiffies()
	if err != nil {
		return res, err
	}
	// Read before the walk: a connection recorded during it is counted
	// twice (found, and recorded since) rather than not at all.
	start := time.Now()
	before, err := d.Stats()
	if err != nil {
		return res, fmt.Errorf("collect conntrack: %w", err)
	}
	seen := 0
	res.Expired, err = d.ctWalk(func(k *bpf.DatapathCtKey, v *bpf.DatapathCtEntry) ctVisit {
		seen++
		if d.expired(c, now, k, v) {
			return ctDelete
		}
		return ctKeep
	})
	if err != nil {
		return res, fmt.Errorf("collect conntrack: %w", err)
	}
	res.Entries = seen
	res.Fill = float64(seen) / float64(d.ctConnections())
	d.ctTally.mu.Lock()
	d.ctTally.valid, d.ctTally.at = true, start
	d.ctTally.found, d.ctTally.recorded = int64(seen-res.Expired), before.ctRecorded()
	d.ctTally.mu.Unlock()

	var expired []bpf.DatapathCtKey
	seen = 0
	err = walkMap(d.objs.ProxyCt, func(k *bpf.DatapathCtKey, v *bpf.DatapathCtEntry) error {
		seen++
		if d.expired(c, now, k, v) {
			expired = append(expired, *k)
		}
		return nil
	})
	res.Entries += seen
	if f := float64(seen) / float64(d.objs.ProxyCt.MaxEntries()); f > res.Fill {
		res.Fill = f
	}
	if err != nil {
		return res, fmt.Errorf("collect proxy conntrack: %w", err)
	}
	n, err := deleteKeys(d.objs.ProxyCt, expired)
	res.Expired += n
	if err != nil {
		return res, fmt.Errorf("collect proxy conntrack: %w", err)
	}
	return res, nil
}

// expired reports whether a connection has been idle for longer than its
// lifetime (and the second of slack the datapath gives it).
func (d *Datapath) expired(c Config, now uint32, k *bpf.DatapathCtKey, v *bpf.DatapathCtEntry) bool {
	life := c.CTOther
	if k.Proto == unix.IPPROTO_TCP {
		switch {
		case v.Flags&CTDenied != 0:
			life = c.CTTCPEstablished
		case v.Flags&CTClosing != 0:
			life = c.CTTCPClosing
		case v.Flags&CTSynOnly != 0:
			life = c.CTTCPSyn
		default:
			life = c.CTTCPEstablished
		}
	}
	return d.idle(now, v.LastSeen) > life+time.Second
}

// ctSwap reports whether k's ends are out of conntrack order: the
// datapath's ct_canonical (bpf/include/parse.h) would reverse it. Older
// builds keyed conntrack by the original tuple; ctCopy rekeys their
// entries. The
// order compares the address words as the kernel loads them, then the
// ports as stored; any fixed order works as long as both agree.
func ctSwap(k *bpf.DatapathCtKey) bool {
	for i := range k.Saddr.W {
		if k.Saddr.W[i] != k.Daddr.W[i] {
			return k.Saddr.W[i] > k.Daddr.W[i]
		}
	}
	return k.Sport > k.Dport
}

func ctReverse(k bpf.DatapathCtKey) bpf.DatapathCtKey {
	return bpf.DatapathCtKey{Saddr: k.Daddr, Daddr: k.Saddr, Sport: k.Dport, Dport: k.Sport, Proto: k.Proto}
}

// ctBatch is how many conntrack entries one batched deletion removes.
const ctBatch = 4096

// deleteKeys deletes keys from m, in batches where the kernel supports it.
// A key already gone (the datapath's LRU evicted it) is not an error.
func deleteKeys(m *ebpf.Map, keys []bpf.DatapathCtKey) (int, error) {
	n := 0
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), ctBatch)]
		k, err := m.BatchDelete(chunk, nil)
		n += k
		switch {
		case err == nil:
			keys = keys[len(chunk):]
		case errors.Is(err, ebpf.ErrKeyNotExist):
			keys = keys[k+1:] // a batch stops at the first missing key: skip it
		case errors.Is(err, ebpf.ErrNotSupported):
			for i := range keys {
				if err := m.Delete(&keys[i]); err == nil {
					n++
				} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
					return n, err
				}
			}
			return n, nil
		default:
			return n, err
		}
	}
	return n, nil
}

// CTFlush deletes every tracked connection (conntrack and proxy
// conntrack) and returns how many it removed. Established connections are
// then decided afresh by policy on their next packet; benchmarks use it
// between runs.
func (d *Datapath) CTFlush() (int, error) {
	n := 0
	err := scanCT(d.objs.Ct, ctScanWindow, func(t *ctTable) bool {
		n += t.clear()
		return true
	})
	d.ctForgot(n)
	if err != nil {
		return n, fmt.Errorf("flush conntrack: %w", err)
	}
	var keys []bpf.DatapathCtKey
	err = walkMap(d.objs.ProxyCt, func(k *bpf.DatapathCtKey, _ *bpf.DatapathCtEntry) error {
		keys = append(keys, *k)
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("flush proxy conntrack: %w", err)
	}
	k, err := deleteKeys(d.objs.ProxyCt, keys)
	n += k
	if err != nil {
		return n, fmt.Errorf("flush proxy conntrack: %w", err)
	}
	return n, nil
}

// CTDelete forgets the given connections (as Conns lists them, or either
// direction of one) and returns how many it found; their next packets are
// decided by policy again. Unlike CTFlush it touches only their buckets.
func (d *Datapath) CTDelete(conns []Conn) (int, error) {
	ct, err := d.ctView()
	if err != nil {
		return 0, err
	}
	defer ct.close()
	n := ct.deleteConns(conns)
	d.ctForgot(n)
	return n, nil
}

// ctTally is the last conntrack collection's count, kept up to date
// without walking the table: less the connections deleted since, plus
// those the datapath has recorded since (its counters).
type ctTally struct {
	mu       sync.Mutex
	valid    bool      // a collection has counted
	at       time.Time // when
	found    int64     // what it found and kept, less deletions since
	recorded uint64    // the datapath's recorded connections then
}

// ctRecorded is how many new connections the datapath gave a slot of
// their own: those that took a tracked connection's slot, or found none,
// did not add one.
func (s Stats) ctRecorded() uint64 {
	return s.CTCreated - s.CTEvicted - s.CTInsertFailed
}

// ctEstimate is the count MapStats reports after a collection.
// Connections that ended since stay in it until the next collection, and
// one re-created in its old entry's slot counts again: an upper bound. ok
// is false before any collection.
func (d *Datapath) ctEstimate() (n int, at time.Time, ok bool) {
	t := &d.ctTally
	t.mu.Lock()
	valid, at, found, recorded := t.valid, t.at, t.found, t.recorded
	t.mu.Unlock()
	if !valid {
		return 0, time.Time{}, false
	}
	if s, err := d.Stats(); err == nil && s.ctRecorded() >= recorded {
		found += int64(s.ctRecorded() - recorded)
	}
	return int(min(max(found, 0), int64(d.ctConnections()))), at, true
}

// ctForgot takes n deleted connections off the count MapStats reports.
func (d *Datapath) ctForgot(n int) {
	d.ctTally.mu.Lock()
	d.ctTally.found -= int64(n)
	d.ctTally.mu.Unlock()
}

func (t *ctTable) deleteConns(conns []Conn) int {
	n := 0
	for _, c := range conns {
		k := bpf.DatapathCtKey{
			Saddr: toAddr(c.Src.Addr()), Daddr: toAddr(c.Dst.Addr()),
			Sport: htons(c.Src.Port()), Dport: htons(c.Dst.Port()), Proto: c.Proto,
		}
		if ctSwap(&k) {
			k = ctReverse(k)
		}
		if t.remove(&k) {
			n++
		}
	}
	return n
}

// ctConnections is how many connections the datapath's table is sized
// for.
func (d *Datapath) ctConnections() int { return ctCapacity(d.objs.Ct.MaxEntries()) }

// CTCapacity is how many connections conntrack holds: Sizes.Conntrack
// rounded up to a power of two, at least 16.
func (d *Datapath) CTCapacity() int { return d.ctConnections() }
