package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/lab"
)

// HTTP through the node proxy versus direct, in one lab: the server's port
// 80 has an L7 rule (its connections go through membrane-proxy), port 8080
// an L3/L4 rule (straight through the datapath). Both carry the same
// requests to the same responder, so the difference is the proxy.

const l7BenchPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: "/.*"}]}
    - ports: [{port: "8080", protocol: TCP}]
`

func l7BenchObjects(name string) []datastore.Object {
	objs := []datastore.Object{
		labObj(name, datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"}),
		nsObj("bench", nil),
		podObj("bench", "server", "node1", map[string]string{"app": "server"},
			corev1.Container{Name: "responder", Ports: []corev1.ContainerPort{{ContainerPort: 80}, {ContainerPort: 8080}}}),
		podObj("bench", "client", "node1", map[string]string{"app": "client"},
			corev1.Container{Name: "idle", Command: []string{"sleep", "infinity"}}),
	}
	pol, err := datastore.Decode("bench.yaml", []byte(l7BenchPolicy))
	if err != nil {
		panic(err)
	}
	return append(objs, pol...)
}

type wrkResult struct {
	rps           float64
	p50, p99      time.Duration
	errorsNon2xx  int
	socketErrors  string
	requestsTotal int
}

var (
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkLatency = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSocket  = regexp.MustCompile(`Socket errors: (.*)`)
	wrkTotal   = regexp.MustCompile(`(\d+) requests in`)
)

// runWrk runs wrk in bench/client against url.
func runWrk(l *lab.Lab, url string, conns int, seconds int) (wrkResult, error) {
	threads := min(conns, 2)
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds+30)*time.Second)
	defer cancel()
	code, err := l.Exec(ctx, "bench/client", []string{"wrk", "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-d", fmt.Sprintf("%ds", seconds), "--latency", url}, lab.Stdio{Stdout: &out, Stderr: &errOut})
	if err != nil {
		return wrkResult{}, err
	}
	if code != 0 {
		return wrkResult{}, fmt.Errorf("wrk exited %d: %s", code, strings.TrimSpace(errOut.String()+out.String()))
	}
	s := out.String()
	var r wrkResult
	m := wrkRPS.FindStringSubmatch(s)
	if m == nil {
		return r, fmt.Errorf("wrk: no Requests/sec in %q", s)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	for _, lm := range wrkLatency.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(lm[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[lm[3]]
		d := time.Duration(v * float64(unit))
		if lm[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(s); m != nil {
		r.errorsNon2xx, _ = strconv.Atoi(m[1])
	}
	if m := wrkSocket.FindStringSubmatch(s); m != nil {
		r.socketErrors = m[1]
	}
	if m := wrkTotal.FindStringSubmatch(s); m != nil {
		r.requestsTotal, _ = strconv.Atoi(m[1])
	}
	if r.errorsNon2xx > 0 {
		return r, fmt.Errorf("wrk: %d non-2xx responses", r.errorsNon2xx)
	}
	return r, nil
}

// fixedRate sends GET requests at rate per second for d over conns
// keep-alive connections from bench/client, and returns every request's
// latency: from writing the request to reading the whole response. (Each
// connection sends every conns/rate seconds, far more than a response
// takes, so a slow response does not hide the ones behind it; timing from
// the scheduled start instead would add the client's own wake-up delay on
// this machine, hundreds of microseconds of noise, to both sides.)
func fixedRate(l *lab.Lab, addr string, rate, conns int, d time.Duration) ([]time.Duration, error) {
	client, err := l.Pod("bench/client")
	if err != nil {
		return nil, err
	}
	n := int(d.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	start := time.Now().Add(50 * time.Millisecond)
	lat := make([]time.Duration, n)
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c net.Conn
			if err := netns.Do(client.Netns, func() error {
				var err error
				c, err = net.DialTimeout("tcp4", addr, 2*time.Second)
				return err
			}); err != nil {
				errs <- err
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			req := []byte("GET /bench HTTP/1.1\r\nHost: " + addr + "\r\n\r\n")
			for i := w; i < n; i += conns {
				due := start.Add(time.Duration(i) * interval)
				if wait := time.Until(due); wait > 0 {
					time.Sleep(wait)
				}
				sent := time.Now()
				if _, err := c.Write(req); err != nil {
					errs <- err
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("status %d", resp.StatusCode)
					return
				}
				lat[i] = time.Since(sent)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return lat, nil
}

func pct(v []time.Duration, p float64) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// procStat returns a process's CPU time so far and its resident memory.
func procStat(pid int) (cpu time.Duration, rss int64, err error) {
	cpu, rss, _, err = procStatAnon(pid)
	return cpu, rss, err
}

// machineBusy returns the CPU time all CPUs have spent working so far
// (user, nice, system, irq and softirq in /proc/stat; not idle, iowait or
// time the hypervisor took).
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system irq softirq
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		ticks += v
	}
	const hz = 100 // USER_HZ
	return time.Duration(ticks) * time.Second / hz, nil
}

// procStatAnon is procStat with the anonymous part of the resident set
// (heap, stacks: what is not pages of files).
func procStatAnon(pid int) (cpu time.Duration, rss, anon int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+2:]))
	// Fields after the command: state is f[0]; utime and stime are the
	// 14th and 15th fields of the line, f[11] and f[12] here.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ
	cpu = time.Duration(ut+st) * time.Second / hz
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return cpu, 0, 0, err
	}
	kb := func(v string) int64 {
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return n << 10
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss = kb(v)
		}
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			anon = kb(v)
		}
	}
	return cpu, rss, anon, nil
}

func benchL7(r *report, b binaries, rounds int) {
	const (
		rpsName   = "HTTP requests/s through the proxy / direct (wrk, 64 connections)"
		rps1Name  = "HTTP requests/s through the proxy / direct (wrk, 1 connection)"
		p99Name   = "p99 latency added by the proxy at 1,000 req/s"
		p50Name   = "p50 latency added by the proxy at 1,000 req/s"
		cpuName   = "proxy CPU per 1,000 req/s"
		rssName   = "proxy RSS (peak over the runs)"
		rateConns = 4
	)
	fail := func(err error) {
		r.failed(p99Name, "≤ 0.3 ms", err)
		r.failed(cpuName, "≤ 0.1 vCPU", err)
		r.failed(rssName, "≤ 30 MB", err)
	}
	l, down, err := upLab(b, l7BenchObjects(uniqueName("bl")), false)
	if err != nil {
		fail(err)
		return
	}
	defer down()
	ip, err := podIPv4(l, "bench/server")
	if err != nil {
		fail(err)
		return
	}
	targets := map[string]string{"proxy": net.JoinHostPort(ip, "80"), "direct": net.JoinHostPort(ip, "8080")}
	order := func(round int) []string {
		if round%2 == 0 {
			return []string{"proxy", "direct"}
		}
		return []string{"direct", "proxy"}
	}
	proxyPID := l.ProxyPID("node1")
	var peakRSS, peakAnon int64
	sampleRSS := func() {
		if _, rss, anon, err := procStatAnon(proxyPID); err == nil {
			peakRSS, peakAnon = max(peakRSS, rss), max(peakAnon, anon)
		}
	}
	// The server's responder: a plain Go net/http server, for reference.
	serverPID := 0
	if p, err := l.Pod("bench/server"); err == nil {
		for _, proc := range p.Processes {
			if proc.Kind == lab.KindResponder {
				serverPID = proc.PID
			}
		}
	}

	// Throughput: wrk with 1 and 64 connections.
	type wrkKey struct {
		target string
		conns  int
	}
	wrks := map[wrkKey][]wrkResult{}
	for round := 0; round < rounds; round++ {
		for _, conns := range []int{1, 64} {
			for _, k := range order(round) {
				res, err := runWrk(l, "http://"+targets[k]+"/bench", conns, 3)
				if err != nil {
					fail(fmt.Errorf("wrk %s, %d connections: %w", k, conns, err))
					return
				}
				sampleRSS()
				wrks[wrkKey{k, conns}] = append(wrks[wrkKey{k, conns}], res)
			}
		}
	}
	medRPS := func(k wrkKey) (float64, []float64) {
		var v []float64
		for _, x := range wrks[k] {
			v = append(v, x.rps)
		}
		return median(v), v
	}
	var body strings.Builder
	fmt.Fprintf(&body, "wrk, 3 s runs, %d interleaved rounds (order alternates); GET /bench to the lab responder.\n", rounds)
	for _, conns := range []int{1, 64} {
		pr, prs := medRPS(wrkKey{"proxy", conns})
		dr, drs := medRPS(wrkKey{"direct", conns})
		fmt.Fprintf(&body, "%2d connections: proxy median %.0f req/s [%s], direct median %.0f req/s [%s], ratio %.3f\n",
			conns, pr, fmtList(prs), dr, fmtList(drs), pr/dr)
		var pp50, pp99, dp50, dp99 []float64
		for _, x := range wrks[wrkKey{"proxy", conns}] {
			pp50, pp99 = append(pp50, us(x.p50)), append(pp99, us(x.p99))
		}
		for _, x := range wrks[wrkKey{"direct", conns}] {
			dp50, dp99 = append(dp50, us(x.p50)), append(dp99, us(x.p99))
		}
		fmt.Fprintf(&body, "                wrk latency (saturated): proxy p50 %.0f µs p99 %.0f µs, direct p50 %.0f µs p99 %.0f µs (medians)\n",
			median(pp50), median(pp99), median(dp50), median(dp99))
		name := rps1Name
		if conns == 64 {
			name = rpsName
		}
		r.info(name, pr/dr, "x")
	}

	// Latency and CPU at a fixed 1,000 req/s.
	added50, added99 := []float64{}, []float64{}
	var p99s = map[string][]float64{}
	var cpuPer1k, serverCPUPer1k []float64
	const rate, dur = 1000, 5 * time.Second
	for round := 0; round < rounds; round++ {
		res := map[string][]time.Duration{}
		for _, k := range order(round) {
			cpu0, _, _ := procStat(proxyPID)
			srv0, _, _ := procStat(serverPID)
			t0 := time.Now()
			lat, err := fixedRate(l, targets[k], rate, rateConns, dur)
			if err != nil {
				fail(fmt.Errorf("fixed rate %s: %w", k, err))
				return
			}
			if k == "proxy" {
				cpu1, _, _ := procStat(proxyPID)
				vcpu := (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds()
				cpuPer1k = append(cpuPer1k, vcpu*1000/rate)
			} else if serverPID != 0 {
				srv1, _, _ := procStat(serverPID)
				vcpu := (srv1 - srv0).Seconds() / time.Since(t0).Seconds()
				serverCPUPer1k = append(serverCPUPer1k, vcpu*1000/rate)
			}
			sampleRSS()
			res[k] = lat
			p99s[k] = append(p99s[k], us(pct(lat, 99)))
		}
		added50 = append(added50, us(pct(res["proxy"], 50)-pct(res["direct"], 50)))
		added99 = append(added99, us(pct(res["proxy"], 99)-pct(res["direct"], 99)))
	}
	fmt.Fprintf(&body, "\nFixed rate: %d req/s for %s over %d keep-alive connections, latency from writing a request to reading its response, %d rounds.\n", rate, dur, rateConns, rounds)
	fmt.Fprintf(&body, "p99 proxy [%s] µs, direct [%s] µs\n", fmtList(p99s["proxy"]), fmtList(p99s["direct"]))
	fmt.Fprintf(&body, "added by the proxy: p50 median %.0f µs [%s], p99 median %.0f µs [%s]\n", median(added50), fmtList(added50), median(added99), fmtList(added99))
	fmt.Fprintf(&body, "proxy CPU per 1,000 req/s: median %.3f vCPU [%s]\n", median(cpuPer1k), fmtList(cpuPer1k))
	fmt.Fprintf(&body, "for reference, the server (the lab responder, Go net/http) per 1,000 req/s served directly: median %.3f vCPU [%s]\n",
		median(serverCPUPer1k), fmtList(serverCPUPer1k))
	fmt.Fprintf(&body, "proxy RSS, peak over all runs: %.1f MB, of which %.1f MB anonymous (heap, stacks) and the rest pages of its executable\n",
		float64(peakRSS)/(1<<20), float64(peakAnon)/(1<<20))
	r.section("HTTP through the L7 proxy vs direct (same node, same responder)", body.String())
	r.check(p99Name, median(added99)/1000, "ms", 0.3, true)
	r.info(p50Name, median(added50)/1000, "ms")
	r.check(cpuName, median(cpuPer1k), "vCPU", 0.1, true)
	r.check(rssName, float64(peakRSS)/(1<<20), "MB", 30, true)
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
