package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
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
		var runErr error
		for round := 0; round < rounds && runErr == nil; round++ {
			for _, k := range order(round) {
				c, err := connRate(labs[k], 2*time.Second, 4)
				if err != nil {
					runErr = fmt.Errorf("%s datapath: %w", k, err)
					break
				}
				samples[k] = append(samples[k], c)
			}
		}
		if runErr != nil {
			r.failed("new connections/s with/without datapath", "≥ 0.90", runErr)
		} else {
			w, wo := median(samples["with"]), median(samples["without"])
			r.section("New TCP connections per second (same node, 4 workers, 2 s runs, connect+reset)", fmt.Sprintf(
				"%d interleaved rounds (order alternates)\nwith datapath (enforced policy):  median %.0f/s  [%s]\nwithout datapath:                 median %.0f/s  [%s]\nratio with/without: %.3f\n",
				rounds, w, fmtList(samples["with"]), wo, fmtList(samples["without"]), w/wo))
			r.check("new TCP connections/s with/without datapath", w/wo, "x", 0.90, false)
			r.info("new TCP connections/s with datapath", w, "conn/s")
		}
	}
}
