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
	errStop := errors.New("stop")
	err = walkCT(d.objs.Ct, func(k *bpf.DatapathCtKey, v *bpf.DatapathCtEntry) error {
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
			return errStop
		}
		return nil
	})
	if err != nil && err != errStop {
		return nil, fmt.Errorf("list conntrack: %w", err)
	}
	return out, nil
}

// CTCollection is what one conntrack collection found.
type CTCollection struct {
	Expired int     // entries deleted
	Entries int     // entries found (conntrack and proxy conntrack)
	Fill    float64 // the fuller map's entries found / its capacity
}

// CTCollect deletes expired connections. The datapath already ignores
// expired entries; collecting them keeps the LRU from evicting live ones
// (which a full table does on every new connection, at a cost).
func (d *Datapath) CTCollect(c Config) (CTCollection, error) {
	var res CTCollection
	now, err := d.jiffies()
	if err != nil {
		return res, err
	}
	for _, m := range []struct {
		name string
		m    *ebpf.Map
		// Entries an older datapath wrote (one per direction, keyed as
		// the packet travelled) are rekeyed the way this one looks them
		// up; proxy_ct keeps its keys as they are.
		canonical bool
	}{{"conntrack", d.objs.Ct, true}, {"proxy conntrack", d.objs.ProxyCt, false}} {
		seen, expired, err := d.collect(m.m, c, now, m.canonical)
		res.Expired += expired
		res.Entries += seen
		if f := float64(seen) / float64(m.m.MaxEntries()); f > res.Fill {
			res.Fill = f
		}
		if err != nil {
			return res, fmt.Errorf("collect %s: %w", m.name, err)
		}
	}
	return res, nil
}

// collect returns how many entries it found and how many it deleted.
func (d *Datapath) collect(m *ebpf.Map, c Config, now uint32, canonical bool) (int, int, error) {
	var expired, rekey []bpf.DatapathCtKey
	var rekeyed []bpf.DatapathCtEntry
	seen := 0
	err := walkCT(m, func(k *bpf.DatapathCtKey, v *bpf.DatapathCtEntry) error {
		seen++
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
		switch {
		case d.idle(now, v.LastSeen) > life+time.Second:
			expired = append(expired, *k)
		case canonical && ctSwap(k):
			rekey = append(rekey, *k)
			rekeyed = append(rekeyed, *v)
		}
		return nil
	})
	if err != nil {
		return seen, 0, err
	}
	for i := range rekey {
		k := ctReverse(rekey[i])
		v := rekeyed[i]
		v.Flags |= CTSwapped
		// An entry the datapath already made under the new key wins.
		if err := m.Update(&k, &v, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return seen, 0, fmt.Errorf("rekey connection: %w", err)
		}
	}
	if _, err := deleteKeys(m, rekey); err != nil {
		return seen, 0, err
	}
	n, err := deleteKeys(m, expired)
	return seen, n, err
}

// ctSwap reports whether k's ends are out of conntrack order: the
// datapath's ct_canonical (bpf/include/parse.h) would reverse it. The
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

// ctBatch is how many conntrack entries one batched system call moves.
const ctBatch = 4096

// walkCT calls fn for every entry of a conntrack map, reading them in
// batches (a few system calls for a large table, where iterating costs two
// per entry); where the kernel has no batch operations it iterates. An
// error from fn stops the walk and is returned. Entries the datapath adds
// or removes meanwhile may or may not be seen.
func walkCT(m *ebpf.Map, fn func(*bpf.DatapathCtKey, *bpf.DatapathCtEntry) error) error {
	keys := make([]bpf.DatapathCtKey, ctBatch)
	vals := make([]bpf.DatapathCtEntry, ctBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if ferr := fn(&keys[i], &vals[i]); ferr != nil {
				return ferr
			}
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil // done
		case errors.Is(err, ebpf.ErrNotSupported) && n == 0:
			var k bpf.DatapathCtKey
			var v bpf.DatapathCtEntry
			it := m.Iterate()
			for it.Next(&k, &v) {
				if ferr := fn(&k, &v); ferr != nil {
					return ferr
				}
			}
			return it.Err()
		default:
			return err
		}
	}
}

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

// CTFlush deletes every tracked connection (both conntrack maps) and
// returns how many it removed. Established connections are then decided
// afresh by policy on their next packet; benchmarks use it between runs.
func (d *Datapath) CTFlush() (int, error) {
	n := 0
	for _, m := range []*ebpf.Map{d.objs.Ct, d.objs.ProxyCt} {
		var keys []bpf.DatapathCtKey
		err := walkCT(m, func(k *bpf.DatapathCtKey, _ *bpf.DatapathCtEntry) error {
			keys = append(keys, *k)
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("flush conntrack: %w", err)
		}
		k2, err := deleteKeys(m, keys)
		n += k2
		if err != nil {
			return n, fmt.Errorf("flush conntrack: %w", err)
		}
	}
	return n, nil
}
