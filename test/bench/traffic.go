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
const connRun = 2 * time.Second

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
	order := func(round int) []string {
		if round%2 == 0 {
			return []string{"with", "without"}
		}
		return []string{"without", "with"}
	}

	if tput {
		samples := map[string][]float64{}
		var runErr error
		for round := 0; round < rounds && runErr == nil; round++ {
			for _, k := range order(round) {
				g, err := iperf(labs[k], 3)
				if err != nil {
					runErr = fmt.Errorf("%s datapath: %w", k, err)
					break
				}
				samples[k] = append(samples[k], g)
			}
		}
		if runErr != nil {
			r.failed("throughput with/without datapath", "≥ 0.97", runErr)
		} else {
			w, wo := median(samples["with"]), median(samples["without"])
			r.section("Pod-to-pod throughput (iperf3, same node, 3 s runs, 1 s omitted)", fmt.Sprintf(
				"%d interleaved rounds (order alternates)\nwith datapath (enforced policy):  median %.2f Gbit/s  [%s]\nwithout datapath:                 median %.2f Gbit/s  [%s]\nratio with/without: %.3f\n",
				rounds, w, fmtList(samples["with"]), wo, fmtList(samples["without"]), w/wo))
			r.check("throughput with/without datapath (iperf3)", w/wo, "x", 0.97, false)
			r.info("throughput with datapath", w, "Gbit/s")
		}
	}
	if conns {
		samples := map[string][]float64{}
		// The agent shares the machine's two CPUs with the benchmark: its
		// CPU per 1,000 connections/s (mostly reading the verdict events)
		// is reported beside the ratio.
		var agentCPU, bpfPerConn, bpfPerRun []float64
		agentPID := with.AgentPID("node1")
		// Kernel run-time statistics of the datapath's programs; they
		// add two clock reads to every run, so the "with" runs are
		// slowed a little by the measurement itself (an upper bound).
		stats, err := newProgStats(filepath.Join(with.PinDir("node1"), "links"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: no BPF run-time statistics:", err)
		} else {
			defer stats.close()
		}
		var runErr error
		for round := 0; round < rounds && runErr == nil; round++ {
			for _, k := range order(round) {
				cpu0, _, _ := procStat(agentPID)
				var rt0 time.Duration
				var n0 uint64
				if stats != nil {
					rt0, n0 = stats.read()
				}
				t0 := time.Now()
				c, err := connRate(labs[k], connRun, 4)
				if err != nil {
					runErr = fmt.Errorf("%s datapath: %w", k, err)
					break
				}
				if k == "with" && agentPID != 0 {
					cpu1, _, _ := procStat(agentPID)
					vcpu := (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds()
					agentCPU = append(agentCPU, vcpu*1000/c)
				}
				if k == "with" && stats != nil {
					rt1, n1 := stats.read()
					conns := c * connRun.Seconds()
					if n1 > n0 && conns > 0 {
						bpfPerConn = append(bpfPerConn, float64((rt1-rt0).Nanoseconds())/conns/1000)
						bpfPerRun = append(bpfPerRun, float64((rt1-rt0).Nanoseconds())/float64(n1-n0))
					}
				}
				samples[k] = append(samples[k], c)
			}
		}
		if runErr != nil {
			r.failed("new connections/s with/without datapath", "≥ 0.90", runErr)
		} else {
			w, wo := median(samples["with"]), median(samples["without"])
			var body strings.Builder
			fmt.Fprintf(&body, "%d interleaved rounds (order alternates)\nwith datapath (enforced policy):  median %.0f/s  [%s]\nwithout datapath:                 median %.0f/s  [%s]\nratio with/without: %.3f\n",
				rounds, w, fmtList(samples["with"]), wo, fmtList(samples["without"]), w/wo)
			fmt.Fprintf(&body, "agent CPU per 1,000 connections/s (with): median %.3f vCPU [%s]\n", median(agentCPU), fmtList(agentCPU))
			if len(bpfPerConn) > 0 {
				// The clients keep every CPU busy, so CPU time per
				// connection is about CPUs / rate.
				cpus := float64(runtime.NumCPU())
				cw, cwo := cpus*1e6/w, cpus*1e6/wo
				fmt.Fprintf(&body, "datapath programs on this traffic (kernel run-time statistics, with): median %.0f ns per packet [%s], %.2f µs per connection [%s]\n",
					median(bpfPerRun), fmtList(bpfPerRun), median(bpfPerConn), fmtList(bpfPerConn))
				fmt.Fprintf(&body, "CPU time per connection (all CPUs busy): with %.0f µs, without %.0f µs; the programs' own run time is %.1f µs of the %.1f µs difference\n",
					cw, cwo, median(bpfPerConn), cw-cwo)
			}
			r.section("New TCP connections per second (same node, 4 workers, 2 s runs, connect+reset)", body.String())
			r.check("new TCP connections/s with/without datapath", w/wo, "x", 0.90, false)
			r.info("new TCP connections/s with datapath", w, "conn/s")
		}
	}
}
