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
)

// Conn is a tracked connection.
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
	var k bpf.DatapathCtKey
	var v bpf.DatapathCtEntry
	it := d.objs.Ct.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Conn{
			Src:         netip.AddrPortFrom(fromAddr(k.Saddr), ntohs(k.Sport)),
			Dst:         netip.AddrPortFrom(fromAddr(k.Daddr), ntohs(k.Dport)),
			Proto:       k.Proto,
			Flags:       v.Flags,
			Idle:        d.idle(now, v.LastSeen),
			Rev:         v.Rev,
			ProxyPort:   v.ProxyPort,
			RuleEgress:  v.RuleEgress,
			RuleIngress: v.RuleIngress,
		})
		if max > 0 && len(out) >= max {
			break
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list conntrack: %w", err)
	}
	return out, nil
}

// CTCollect deletes expired connections and returns how many it removed.
// The datapath already ignores expired entries; collecting them keeps the
// LRU from evicting live ones.
func (d *Datapath) CTCollect(c Config) (int, error) {
	now, err := d.jiffies()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range []struct {
		name string
		m    *ebpf.Map
	}{{"conntrack", d.objs.Ct}, {"proxy conntrack", d.objs.ProxyCt}} {
		k, err := d.collect(m.m, c, now)
		n += k
		if err != nil {
			return n, fmt.Errorf("collect %s: %w", m.name, err)
		}
	}
	return n, nil
}

func (d *Datapath) collect(m *ebpf.Map, c Config, now uint32) (int, error) {
	var expired []bpf.DatapathCtKey
	var k bpf.DatapathCtKey
	var v bpf.DatapathCtEntry
	it := m.Iterate()
	for it.Next(&k, &v) {
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
		if d.idle(now, v.LastSeen) > life+time.Second {
			expired = append(expired, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	n := 0
	for i := range expired {
		if err := m.Delete(&expired[i]); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, err
		}
	}
	return n, nil
}
