package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/membrane-mesh/membrane/bpf/reference"
	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/lab"
)

// Within one iperf3 transfer, or one run of connections opened and reset,
// the datapath on and off: the switch of bpf/reference/bypass.c, first in
// the tcx chain of both pods' veths, lets the datapath run or skips it,
// and flips every bypassPeriod. Pairs of periods (in random order) give a
// ratio each. The machine's speed swings by ±10% from one second to the
// next, and runs of a few seconds compared in pairs inherit that; 20 ms
// periods do not.

const (
	bypassPeriod   = 20 * time.Millisecond
	bypassTransfer = 20 // seconds
)

type bypassResult struct {
	ratios []float64 // per pair of periods: rate on / rate skipped
	total  float64   // everything counted on / skipped, per second
}

// What the switch counts in each state: bytes (throughput) or packets (a
// connection opened and reset is a fixed number of them).
type bypassCounter int

const (
	countBytes bypassCounter = iota
	countPackets
)

// bypassRatio runs load (traffic between pods bench/client and
// bench/server on one node, for the seconds it is given) in l and switches
// the programs behind the switch on and off while it runs. In a lab
// without the datapath, nothing is behind the switch: both states are the
// same, and the result is the method's own error.
func bypassRatio(l *lab.Lab, load func(seconds int) error, counter bypassCounter) (bypassResult, error) {
	var res bypassResult
	var objs reference.BypassObjects
	if err := reference.LoadBypassObjects(&objs, nil); err != nil {
		return res, fmt.Errorf("load the bypass switch: %w", err)
	}
	defer objs.Close()
	var links []link.Link
	defer func() {
		for _, k := range links {
			k.Close()
		}
	}()
	for _, ref := range []string{"bench/client", "bench/server"} {
		p, err := l.Pod(ref)
		if err != nil {
			return res, err
		}
		node := ""
		for _, n := range l.Nodes() {
			if n.Name == p.Node {
				node = n.Netns
			}
		}
		// A tcx link names its device by index in the namespace of
		// the thread that creates it: the node's.
		if err := netns.Do(node, func() error {
			ifc, err := net.InterfaceByName(p.HostInterface)
			if err != nil {
				return err
			}
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				k, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: objs.Bypass, Attach: at, Anchor: link.Head()})
				if err != nil {
					return fmt.Errorf("attach the bypass switch to %s: %w", p.HostInterface, err)
				}
				links = append(links, k)
			}
			return nil
		}); err != nil {
			return res, err
		}
	}

	counts := objs.BypassBytes
	if counter == countPackets {
		counts = objs.BypassPackets
	}
	countOf := func(state uint32) (uint64, error) {
		var per []uint64
		if err := counts.Lookup(state, &per); err != nil {
			return 0, err
		}
		var sum uint64
		for _, b := range per {
			sum += b
		}
		return sum, nil
	}
	done := make(chan error, 1)
	go func() { done <- load(bypassTransfer) }()
	// iperf3 omits its first second (slow start); so does the switch,
	// and it stops a second before the load ends.
	time.Sleep(time.Second)
	var total [2]float64
	var elapsed [2]time.Duration
	end := time.Now().Add(time.Duration(bypassTransfer-2) * time.Second)
	var err error
	for time.Now().Before(end) && err == nil {
		order := [2]uint32{0, 1}
		if rand.IntN(2) == 1 {
			order = [2]uint32{1, 0}
		}
		var rate [2]float64
		for _, s := range order {
			if err = objs.BypassState.Put(uint32(0), s); err != nil {
				break
			}
			var b0, b1 uint64
			if b0, err = countOf(s); err != nil {
				break
			}
			t0 := time.Now()
			time.Sleep(bypassPeriod)
			if b1, err = countOf(s); err != nil {
				break
			}
			d := time.Since(t0)
			rate[s] = float64(b1-b0) / d.Seconds()
			total[s] += float64(b1 - b0)
			elapsed[s] += d
		}
		if err == nil && rate[1] > 0 {
			res.ratios = append(res.ratios, rate[0]/rate[1])
		}
	}
	objs.BypassState.Put(uint32(0), uint32(0))
	if ierr := <-done; ierr != nil {
		return res, ierr
	}
	if err != nil {
		return res, fmt.Errorf("bypass switch: %w", err)
	}
	if len(res.ratios) == 0 || total[1] == 0 {
		return res, fmt.Errorf("no traffic passed the bypass switch")
	}
	res.total = (total[0] / elapsed[0].Seconds()) / (total[1] / elapsed[1].Seconds())
	return res, nil
}

// describeBypass reports the switch's result with the datapath behind it
// and, for calibration, in the lab without it. load names what ran ("transfer"),
// counter what was compared.
func describeBypass(on, cal bypassResult, load string, counter bypassCounter) string {
	q1, q3 := quartiles(on.ratios)
	c1, c3 := quartiles(cal.ratios)
	rate, all := "throughput", "bytes"
	if counter == countPackets {
		rate, all = "packet-rate", "packets"
	}
	return fmt.Sprintf("Within one %d s %s (its first and last second left out), the datapath on and off: a\n"+
		"switch program first in the tcx chain of both pods' veths (bpf/reference/bypass.c) lets the\n"+
		"datapath run or accepts each packet before it, flipped every %s in pairs of random order.\n"+
		"The figure is the median of the pairs' %s ratios; the switch runs in both states.\n"+
		"  with the datapath behind the switch: on/off median of %d pairs %.3f (middle half %.3f-%.3f),\n"+
		"    all %s %.3f\n"+
		"  in the lab without it (both states the same: the method's own error): median of %d pairs %.3f\n"+
		"    (middle half %.3f-%.3f), all %s %.3f\n",
		bypassTransfer, load, bypassPeriod, rate, len(on.ratios), median(on.ratios), q1, q3, all, on.total,
		len(cal.ratios), median(cal.ratios), c1, c3, all, cal.total)
}
