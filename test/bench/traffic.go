package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/lab"
)

// Throughput and new-connection rate of pod-to-pod traffic on one node,
// with the datapath (agent, an enforced ingress policy that allows the
// traffic) and without (the same lab wiring, no programs). The two labs
// are up together and runs alternate between them, so both see the same
// machine.

func trafficObjects(name string, withPolicy bool) []datastore.Object {
	objs := []datastore.Object{
		labObj(name, datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"}),
		nsObj("bench", nil),
		podObj("bench", "server", "node1", map[string]string{"app": "server"},
			corev1.Container{Name: "iperf", Command: []string{"iperf3", "-s", "-p", "5201"}},
			corev1.Container{Name: "responder", Ports: []corev1.ContainerPort{{ContainerPort: 80}}}),
		podObj("bench", "client", "node1", map[string]string{"app": "client"},
			corev1.Container{Name: "idle", Command: []string{"sleep", "infinity"}}),
	}
	if withPolicy {
		objs = append(objs, npObj(&networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "server-from-client"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: *matchLabels("app", "server"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: matchLabels("app", "client")}},
					Ports: []networkingv1.NetworkPolicyPort{tcpPort(5201), tcpPort(80)},
				}},
			},
		}))
	}
	return objs
}

type iperfResult struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf runs one iperf3 client from bench/client to the server.
func iperf(l *lab.Lab, seconds int) (float64, error) {
	ip, err := podIPv4(l, "bench/server")
	if err != nil {
		return 0, err
	}
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds+20)*time.Second)
	defer cancel()
	code, err := l.Exec(ctx, "bench/client", []string{"iperf3", "-c", ip, "-p", "5201", "-t", fmt.Sprint(seconds), "-O", "1", "-J"}, lab.Stdio{Stdout: &out, Stderr: &errOut})
	if err != nil {
		return 0, err
	}
	var res iperfResult
	if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil || code != 0 {
		return 0, fmt.Errorf("iperf3 exited %d: %s %s", code, res.Error, strings.TrimSpace(errOut.String()))
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

// iperfRun is how long each iperf3 run lasts, in seconds.
const iperfRun = 3

// iperfProgramCost runs iperf3 in the lab with the datapath twice more,
// with the kernel's run-time statistics on, and says what the programs
// cost per packet and what share of the CPU time the transfer used they
// took: a figure the machine's noise does not blur, beside the ratios it
// does.
func iperfProgramCost(with *lab.Lab) string {
	stats, err := newProgStats(filepath.Join(with.PinDir("node1"), "links"))
	if err != nil {
		return fmt.Sprintf("(no BPF run-time statistics: %v)\n", err)
	}
	defer stats.close()
	var perPacket, packetsPerSec, cpuShare, busyCPUs, busyShare []float64
	for i := 0; i < 2; i++ {
		b0, berr := machineBusy()
		s, err := stats.measure(func() (float64, error) { return iperf(with, iperfRun) })
		if err != nil {
			return fmt.Sprintf("(iperf3 with run-time statistics: %v)\n", err)
		}
		b1, berr1 := machineBusy()
		if s.runs == 0 {
			continue
		}
		perPacket = append(perPacket, s.perRun())
		packetsPerSec = append(packetsPerSec, float64(s.runs)/s.wall.Seconds())
		cpuShare = append(cpuShare, 100*s.runtime.Seconds()/s.wall.Seconds())
		if berr == nil && berr1 == nil && b1 > b0 {
			busyCPUs = append(busyCPUs, (b1-b0).Seconds()/s.wall.Seconds())
			busyShare = append(busyShare, 100*s.runtime.Seconds()/(b1-b0).Seconds())
		}
	}
	if len(perPacket) == 0 {
		return "(the programs did not run during iperf3)\n"
	}
	out := fmt.Sprintf("2 more runs with the datapath and kernel run-time statistics on (a run is one packet,\n"+
		"data or ACK, at one hook; GSO makes a data packet up to 64 KiB):\n"+
		"  datapath programs: median %.0f ns per run [%s], %.0f runs/s [%s],\n"+
		"  %.2f%% of one CPU [%s], the statistics' own clock reads included.\n",
		median(perPacket), fmtList(perPacket), median(packetsPerSec), fmtList(packetsPerSec),
		median(cpuShare), fmtList(cpuShare))
	if len(busyShare) > 0 {
		share := median(busyShare)
		out += fmt.Sprintf("  The machine's %d CPUs were busy %.2f CPUs' worth [%s] (iperf3 waits on wake-ups too);\n"+
			"  the programs took %.2f%% of that busy time [%s]. Were the transfer bound by its CPU time,\n"+
			"  that is what it would lose: a ratio of about %.3f.\n",
			runtime.NumCPU(), median(busyCPUs), fmtList(busyCPUs), share, fmtList(busyShare), 1-share/100)
	}
	return out
}

// connRate opens and closes as many TCP connections as it can from
// bench/client to the server's responder for d, with workers in parallel.
func connRate(l *lab.Lab, d time.Duration, workers int) (float64, error) {
	ip, err := podIPv4(l, "bench/server")
	if err != nil {
		return 0, err
	}
	client, err := l.Pod("bench/client")
	if err != nil {
		return 0, err
	}
	addr := net.JoinHostPort(ip, "80")
	var n, fails atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	var firstErr error
	var errOnce sync.Once
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := netns.Do(client.Netns, func() error {
				dialer := net.Dialer{Timeout: time.Second}
				for time.Now().Before(deadline) {
					c, err := dialer.Dial("tcp4", addr)
					if err != nil {
						fails.Add(1)
						continue
					}
					// Reset instead of FIN: no TIME_WAIT pile-up eating
					// the client's ports.
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
					n.Add(1)
				}
				return nil
			})
			if err != nil {
				errOnce.Do(func() { firstErr = err })
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	if f := fails.Load(); f > n.Load()/100 {
		return 0, fmt.Errorf("%d of %d connections failed", f, f+n.Load())
	}
	return float64(n.Load()) / d.Seconds(), nil
}

// connRun is how long each connection-rate run lasts.
const connRun = time.Second

func benchTraffic(r *report, b binaries, rounds int, tput, conns bool) {
	with, downWith, err := upLab(b, trafficObjects(uniqueName("bw"), true), false)
	if err != nil {
		r.failed("throughput with/without datapath", "≥ 0.97", err)
		r.failed("new connections/s with/without datapath", "≥ 0.90", err)
		return
	}
	defer downWith()
	without, downWithout, err := upLab(b, trafficObjects(uniqueName("bn"), false), true)
	if err != nil {
		r.failed("throughput with/without datapath", "≥ 0.97", err)
		r.failed("new connections/s with/without datapath", "≥ 0.90", err)
		return
	}
	defer downWithout()
	labs := map[string]*lab.Lab{"with": with, "without": without}

	if tput {
		const tputName = "throughput with/without datapath (iperf3)"
		var body strings.Builder
		// The target figure: the datapath switched on and off every
		// 20 ms inside one transfer, which the machine's swings from
		// one second to the next do not reach; the same switch with
		// nothing behind it says how exact that is.
		transfer := func(l *lab.Lab) func(int) error {
			return func(s int) error { _, err := iperf(l, s); return err }
		}
		on, err := bypassRatio(with, transfer(with), countBytes)
		var cal bypassResult
		if err == nil {
			cal, err = bypassRatio(without, transfer(without), countBytes)
		}
		if err != nil {
			r.failed(tputName, "≥ 0.97", err)
		} else {
			body.WriteString(describeBypass(on, cal, "transfer", countBytes))
		}
		// Beside it, whole runs with and without in pairs: iperf3
		// drifts by ±40% between minutes here and one pair of runs by
		// ±10%, so three times the rounds of the other comparisons.
		p, perr := pairedRounds(3*rounds, func(k string) (float64, error) { return iperf(labs[k], iperfRun) })
		if perr != nil {
			fmt.Fprintf(&body, "(runs in pairs: %v)\n", perr)
		} else {
			fmt.Fprintf(&body, "\nWhole %d s runs (1 s omitted), one in each lab, in pairs: ", iperfRun)
			body.WriteString(p.describe("%.2f Gbit/s"))
			body.WriteString(iperfProgramCost(with))
		}
		r.section("Pod-to-pod throughput (iperf3, same node)", body.String())
		if err == nil {
			r.check(tputName, median(on.ratios), "x", 0.97, false)
			r.info("  the same, nothing behind the switch (the method's error)", median(cal.ratios), "x")
		}
		if perr == nil {
			r.info("  the same in 3 s runs in pairs (noisier)", p.ratio, "x")
			r.info("throughput with datapath", p.with, "Gbit/s")
		}
	}
	if conns {
		const connName = "new TCP connections/s with/without datapath"
		// The target figure, as for throughput: the datapath switched
		// on and off every 20 ms inside one run of connections opened
		// and reset, packets counted per state (a connection is the
		// same packets either way); the same switch with nothing
		// behind it gives the method's error.
		churn := func(l *lab.Lab) func(int) error {
			return func(s int) error { _, err := connRate(l, time.Duration(s)*time.Second, 4); return err }
		}
		on, serr := bypassRatio(with, churn(with), countPackets)
		var cal bypassResult
		if serr == nil {
			cal, serr = bypassRatio(without, churn(without), countPackets)
		}
		// Beside it, whole runs in pairs: the rate of one run swings by
		// ±15% from second to second on a shared machine, so many short
		// runs, each paired with a run of the other lab right before or
		// after it, and the median of the pairs' ratios. Kernel run-time
		// statistics slow every program run a little (two clock reads),
		// so they are on only in extra runs after the comparison.
		p, err := pairedRounds(4*rounds, func(k string) (float64, error) { return connRate(labs[k], connRun, 4) })
		if err != nil {
			r.failed(connName, "≥ 0.90", err)
			return
		}

		// The agent shares the machine's two CPUs with the benchmark: its
		// CPU per 1,000 connections/s (mostly reading the verdict events)
		// is reported beside the ratio, with the programs' own run time.
		var agentCPU, bpfPerConn, bpfPerRun []float64
		agentPID := with.AgentPID("node1")
		stats, err := newProgStats(filepath.Join(with.PinDir("node1"), "links"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: no BPF run-time statistics:", err)
		} else {
			for i := 0; i < 3; i++ {
				cpu0, _, _ := procStat(agentPID)
				s, err := stats.measure(func() (float64, error) { return connRate(with, connRun, 4) })
				c := s.value
				if err != nil || c == 0 {
					break
				}
				if agentPID != 0 {
					cpu1, _, _ := procStat(agentPID)
					agentCPU = append(agentCPU, (cpu1-cpu0).Seconds()/s.wall.Seconds()*1000/c)
				}
				if s.runs > 0 {
					bpfPerConn = append(bpfPerConn, float64(s.runtime.Nanoseconds())/(c*connRun.Seconds())/1000)
					bpfPerRun = append(bpfPerRun, s.perRun())
				}
			}
			stats.close()
		}

		var body strings.Builder
		// The switch flips the programs, not the agent, which reads the
		// verdict events of the "on" periods whenever it polls: its CPU
		// per connection is charged to the datapath, as if spent in
		// those periods of a CPU-bound run.
		charged, charge := 0.0, 1.0
		if serr == nil {
			body.WriteString(describeBypass(on, cal, "run of connections opened and reset (4 workers)", countPackets))
			charged = median(on.ratios)
			if cw := float64(runtime.NumCPU()) * 1e6 / p.with; len(agentCPU) > 0 && cw > 0 {
				a := median(agentCPU) * 1e3 // µs of agent CPU per connection
				charge = cw / (cw + a)
				fmt.Fprintf(&body, "  the agent's reading of the verdict events, %.1f µs per connection (runs below), charged to\n"+
					"  the datapath (%.1f µs per connection): on/off %.3f\n", a, cw, charged*charge)
			} else {
				body.WriteString("  (the agent's CPU was not measured: the ratio above is not charged with it)\n")
			}
			charged *= charge
		}
		fmt.Fprintf(&body, "\nWhole %s runs, one in each lab, in pairs: ", connRun)
		body.WriteString(p.describe("%.0f/s"))
		if len(bpfPerConn) > 0 {
			// The clients keep every CPU busy, so CPU time per
			// connection is about CPUs / rate.
			cpus := float64(runtime.NumCPU())
			cw, cwo := cpus*1e6/p.with, cpus*1e6/p.without
			fmt.Fprintf(&body, "3 more runs with the datapath and kernel run-time statistics on:\n"+
				"  agent CPU per 1,000 connections/s: median %.3f vCPU [%s]\n"+
				"  datapath programs: median %.0f ns per packet [%s], %.2f µs per connection [%s]\n"+
				"  CPU time per connection (all CPUs busy, medians above): with %.0f µs, without %.0f µs;\n"+
				"  the programs' own run time is %.1f µs of the %.1f µs difference (%.1f%% of a connection's CPU time)\n",
				median(agentCPU), fmtList(agentCPU), median(bpfPerRun), fmtList(bpfPerRun), median(bpfPerConn), fmtList(bpfPerConn),
				cw, cwo, median(bpfPerConn), cw-cwo, 100*median(bpfPerConn)/cw)
		}
		r.section("New TCP connections per second (same node, 4 workers, connect+reset)", body.String())
		if serr != nil {
			r.failed(connName, "≥ 0.90", serr)
		} else {
			r.check(connName, charged, "x", 0.90, false)
			r.info("  the same, nothing behind the switch (the method's error)", median(cal.ratios), "x")
		}
		r.info(fmt.Sprintf("  the same in %s runs in pairs (noisier)", connRun), p.ratio, "x")
		r.info("new TCP connections/s with datapath", p.with, "conn/s")
	}
}

// paired holds a comparison run in rounds of one run with and one without
// the datapath, back to back.
type paired struct {
	rounds               int
	samples              map[string][]float64 // "with", "without"
	ratios               []float64            // per round, with/without
	with, without, ratio float64              // medians
}

// pairedRounds runs run("with") and run("without") n times, the order
// alternating from round to round.
func pairedRounds(n int, run func(k string) (float64, error)) (*paired, error) {
	p := &paired{rounds: n, samples: map[string][]float64{}}
	for round := 0; round < n; round++ {
		order := []string{"with", "without"}
		if round%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		got := map[string]float64{}
		for _, k := range order {
			v, err := run(k)
			if err != nil {
				return nil, fmt.Errorf("%s datapath: %w", k, err)
			}
			got[k] = v
			p.samples[k] = append(p.samples[k], v)
		}
		p.ratios = append(p.ratios, got["with"]/got["without"])
	}
	p.with, p.without, p.ratio = median(p.samples["with"]), median(p.samples["without"]), median(p.ratios)
	return p, nil
}

// describe reports the rounds, each value printed with format.
func (p *paired) describe(format string) string {
	q1, q3 := quartiles(p.ratios)
	return fmt.Sprintf("%d rounds, each one run with and one without, back to back (order alternates)\n"+
		"with datapath (enforced policy):  median "+format+"  [%s]\nwithout datapath:                 median "+format+"  [%s]\n"+
		"ratio with/without: median of the rounds' ratios %.3f (middle half %.3f-%.3f) [%s]; ratio of the medians %.3f\n",
		p.rounds, p.with, fmtList(p.samples["with"]), p.without, fmtList(p.samples["without"]), p.ratio, q1, q3, fmtList(p.ratios), p.with/p.without)
}
