package datapath

import (
	"fmt"

	"github.com/membrane-mesh/membrane/bpf"
)

// Counter counts packets and bytes.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// Counters returns per-reason counters summed over CPUs, indexed
// [reason][dir]. Reason 0 counts forwarded packets.
func (d *Datapath) Counters() ([NumReasons][2]Counter, error) {
	var out [NumReasons][2]Counter
	for r := range NumReasons {
		for dir := range 2 {
			var per []bpf.DatapathCounter
			idx := uint32(r*2 + dir)
			if err := d.objs.Counters.Lookup(idx, &per); err != nil {
				return out, fmt.Errorf("read counters: %w", err)
			}
			for _, c := range per {
				out[r][dir].Packets += c.Packets
				out[r][dir].Bytes += c.Bytes
			}
		}
	}
	return out, nil
}

// Stats are global datapath counters.
type Stats struct {
	LostEvents    uint64
	CTCreated     uint64
	CTRevalidated uint64
	FragTracked   uint64
	// CTEvicted counts new connections that took the slot of a tracked
	// one (both their buckets full); CTInsertFailed those not recorded
	// at all (every slot of both buckets was being written).
	CTEvicted      uint64
	CTInsertFailed uint64
}

// Stats sums the global counters over CPUs.
func (d *Datapath) Stats() (Stats, error) {
	var per []bpf.DatapathStats
	if err := d.objs.GlobalStats.Lookup(uint32(0), &per); err != nil {
		return Stats{}, fmt.Errorf("read global_stats: %w", err)
	}
	var s Stats
	for _, c := range per {
		s.LostEvents += c.LostEvents
		s.CTCreated += c.CtCreated
		s.CTRevalidated += c.CtRevalidated
		s.FragTracked += c.FragTracked
		s.CTEvicted += c.CtEvicted
		s.CTInsertFailed += c.CtInsertFailed
	}
	// Verdict events the flow log's readers found overwritten.
	lost, err := d.flowLogLost()
	if err != nil {
		return Stats{}, err
	}
	s.LostEvents += lost
	return s, nil
}
