package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vishvananda/netlink"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/internal/ifname"
	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/lab"
)

// manyPolicies returns n NetworkPolicies spread over namespaces: a mix of
// pod and namespace selectors, port lists, ranges, ipBlocks and egress.
func manyPolicies(prefix string, n int, namespaces []string) []datastore.Object {
	out := make([]datastore.Object, 0, n)
	for i := 0; i < n; i++ {
		ns := namespaces[i%len(namespaces)]
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", prefix, i)}}
		np.Spec.PodSelector = *matchLabels("app", fmt.Sprintf("svc%d", i%97))
		peer := networkingv1.NetworkPolicyPeer{PodSelector: matchLabels("role", fmt.Sprintf("r%d", i%13))}
		switch i % 4 {
		case 1:
			peer = networkingv1.NetworkPolicyPeer{NamespaceSelector: matchLabels("team", fmt.Sprintf("t%d", i%7))}
		case 2:
			peer = networkingv1.NetworkPolicyPeer{PodSelector: matchLabels("role", fmt.Sprintf("r%d", i%13)), NamespaceSelector: matchLabels("team", fmt.Sprintf("t%d", i%7))}
		case 3:
			peer = networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("172.%d.0.0/16", 16+i%16), Except: []string{fmt.Sprintf("172.%d.1.0/24", 16+i%16)}}}
		}
		ports := []networkingv1.NetworkPolicyPort{tcpPort(8000 + i%50)}
		if i%5 == 0 {
			end := int32(9000 + i%100)
			p := tcpPort(8500)
			p.EndPort = &end
			ports = append(ports, p)
		}
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{peer}, Ports: ports}}
		if i%3 == 0 {
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
			np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}}}
		}
		out = append(out, npObj(np))
	}
	return out
}

// ---- time from applying 1,000 policies to enforcement ----------------------

func benchConverge(r *report, b binaries, rounds int) {
	const namespaces = 50
	name := uniqueName("bc")
	objs := []datastore.Object{
		labObj(name, datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"}, datastore.LabNode{Name: "node2", PodCIDR: "10.244.2.0/24"}),
		nsObj("bench", nil),
		podObj("bench", "server", "node1", map[string]string{"app": "server"}, corev1.Container{Name: "r", Ports: []corev1.ContainerPort{{ContainerPort: 80}}}),
		podObj("bench", "client", "node2", map[string]string{"app": "client"}, corev1.Container{Name: "r", Ports: []corev1.ContainerPort{{ContainerPort: 80}}}),
	}
	var nsNames []string
	for i := 0; i < namespaces; i++ {
		ns := fmt.Sprintf("ns%d", i)
		nsNames = append(nsNames, ns)
		objs = append(objs, nsObj(ns, map[string]string{"team": fmt.Sprintf("t%d", i%7)}))
		// A pod per namespace on each node, selected by some policies.
		for j, node := range []string{"node1", "node2"} {
			objs = append(objs, podObj(ns, fmt.Sprintf("p%d", j), node,
				map[string]string{"app": fmt.Sprintf("svc%d", (i*2+j)%97), "role": fmt.Sprintf("r%d", i%13)},
				corev1.Container{Name: "idle", Command: []string{"sleep", "infinity"}}))
		}
	}
	l, down, err := upLab(b, objs, false)
	if err != nil {
		r.failed("1,000 policies applied to enforced", "≤ 1 s", err)
		return
	}
	defer down()
	ctx := context.Background()

	rounds = min(rounds, 5)
	var enforced, applied []float64
	var regen []float64
	for round := 0; round < rounds; round++ {
		pols := manyPolicies(fmt.Sprintf("r%d", round), 999, nsNames)
		// The thousandth closes the server: traffic shows when the batch
		// is enforced.
		deny := npObj(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("r%d-close", round)},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: *matchLabels("app", "server"), PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}})
		pols = append(pols, deny)

		if res, err := l.Probe(ctx, lab.ProbeSpec{From: "bench/client", To: "bench/server", Port: 80, Timeout: time.Second}); err != nil || !res.Allowed {
			r.failed("1,000 policies applied to enforced", "≤ 1 s", fmt.Errorf("round %d: client cannot reach server before the policies (%v)", round, err))
			return
		}
		var mu sync.Mutex
		var firstDenied time.Time
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ { // overlapping probers: a 10 ms resolution
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				time.Sleep(time.Duration(w) * 5 * time.Millisecond)
				for {
					select {
					case <-stop:
						return
					default:
					}
					start := time.Now()
					res, err := l.Probe(ctx, lab.ProbeSpec{From: "bench/client", To: "bench/server", Port: 80, Timeout: 150 * time.Millisecond})
					if err == nil && !res.Allowed {
						mu.Lock()
						if firstDenied.IsZero() || start.Before(firstDenied) {
							firstDenied = start
						}
						mu.Unlock()
						return
					}
					time.Sleep(15 * time.Millisecond)
				}
			}(w)
		}
		t0 := time.Now()
		if _, err := l.Apply(ctx, pols); err != nil {
			close(stop)
			wg.Wait()
			r.failed("1,000 policies applied to enforced", "≤ 1 s", err)
			return
		}
		tApplied := time.Since(t0)
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			done := !firstDenied.IsZero()
			mu.Unlock()
			if done || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		close(stop)
		wg.Wait()
		if firstDenied.IsZero() {
			r.failed("1,000 policies applied to enforced", "≤ 1 s", fmt.Errorf("round %d: never enforced", round))
			return
		}
		enforced = append(enforced, firstDenied.Sub(t0).Seconds())
		applied = append(applied, tApplied.Seconds())
		if s, err := l.Agent("node1").Status(ctx); err == nil {
			regen = append(regen, s.LastRegeneration.Seconds()*1000)
		}
		// Remove them for the next round.
		var keys []datastore.Key
		for _, p := range pols {
			keys = append(keys, p.Key)
		}
		if _, err := l.Delete(ctx, keys, datastore.DeleteOptions{}); err != nil {
			r.failed("1,000 policies applied to enforced", "≤ 1 s", err)
			return
		}
	}
	r.section("1,000 policies: apply to enforcement (2-node lab, 50 namespaces, 102 pods)", fmt.Sprintf(
		"%d rounds. From the start of `apply` (validating and writing 1,000 objects to the datastore)\nto the first denied probe of a connection the last policy closes:\n  enforced after: median %.3f s  [%s]\n  apply returned (every agent applied): median %.3f s  [%s]\n  agent regeneration (compute + maps), node1: median %.1f ms  [%s]\n",
		rounds, median(enforced), fmtList(enforced), median(applied), fmtList(applied), median(regen), fmtList(regen)))
	r.check("1,000 policies applied to enforced", median(enforced), "s", 1, true)
}

// ---- agent memory with 1,000 endpoints and 1,000 policies -------------------

func benchMemory(r *report, b binaries) {
	peak, settled, anon, ready, err := measureAgentMemory(b, 1000, 1000)
	teardown := settle()
	if err != nil {
		r.failed("agent RSS, 1,000 endpoints + 1,000 policies", "≤ 60 MB", err)
		return
	}
	r.section("Agent memory", fmt.Sprintf(
		"One agent in its own network namespace with 1,000 workload interfaces (programs attached to each),\n"+
			"a datastore of 1,000 pods on its node and 1,000 NetworkPolicies; VmRSS sampled every 200 ms.\n"+
			"Running (highest sample 6 to 10 s after every endpoint was ready, once the agent has returned its\n"+
			"start-up heap and released the executable pages only start-up touched): %.1f MB, of which %.1f MB anonymous.\n"+
			"Start-up peak (highest sample in the 2 s after every endpoint was ready): %.1f MB.\n"+
			"Time from agent start to 1,000 endpoints ready: %.2f s (each tcx attachment waits for an RCU grace period\n"+
			"with the RTNL lock held, so they do not overlap).\n"+
			"Tearing it down (the namespace with its 1,000 interfaces and their 2,000 tcx links) kept the kernel busy for\n"+
			"%.0f s after the agent had gone; the next section waits for that.\n", settled, anon, peak, ready.Seconds(), teardown.Seconds()))
	r.check("agent RSS, 1,000 endpoints + 1,000 policies", settled, "MB", 60, true)
	r.info("agent RSS peak in the 2 s after start-up", peak, "MB")
	r.info("agent start to 1,000 endpoints ready", ready.Seconds(), "s")
}

func measureAgentMemory(b binaries, endpoints, policies int) (peak, settled, anon float64, ready time.Duration, err error) {
	id := uniqueName("bm")
	nsName := "mbr-" + id + "-node"
	base := filepath.Join("/run/membrane", id)
	dsDir := filepath.Join(base, "datastore")
	bpffs := filepath.Join(base, "bpffs")
	sock := filepath.Join(base, "agent.sock")
	if err := os.MkdirAll(bpffs, 0o700); err != nil {
		return 0, 0, 0, 0, err
	}
	defer os.RemoveAll(base)
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("mount bpffs: %w", err)
	}
	defer unix.Unmount(bpffs, unix.MNT_DETACH)
	if err := netns.Create(nsName); err != nil {
		return 0, 0, 0, 0, err
	}
	defer netns.Delete(nsName)

	h, err := netns.Netlink(nsName)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer h.Close()
	var objs []datastore.Object
	objs = append(objs, nsObj("bench", map[string]string{"team": "t1"}))
	for i := 0; i < endpoints; i++ {
		pod := fmt.Sprintf("w%d", i)
		host := ifname.Host("bench", pod)
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: "p" + strconv.Itoa(i)}
		if err := h.LinkAdd(veth); err != nil {
			return 0, 0, 0, 0, fmt.Errorf("create veth %d: %w", i, err)
		}
		ip := netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)})
		p := podObj("bench", pod, "bench-node", map[string]string{"app": fmt.Sprintf("svc%d", i%97), "role": fmt.Sprintf("r%d", i%13)},
			corev1.Container{Name: "c"})
		p.Obj.(*corev1.Pod).Status.PodIP = ip.String()
		objs = append(objs, p)
	}
	objs = append(objs, manyPolicies("m", policies, []string{"bench"})...)
	store, err := datastore.Open(dsDir)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	rev, err := store.Apply(objs)
	if err != nil {
		return 0, 0, 0, 0, err
	}

	logf, err := os.Create(filepath.Join(base, "agent.log"))
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer logf.Close()
	args := []string{"--node", "bench-node", "--datastore", dsDir, "--bpffs", filepath.Join(bpffs, "agent"), "--api-socket", sock}
	if extra := os.Getenv("MEMBRANE_BENCH_AGENT_ARGS"); extra != "" {
		args = append(args, strings.Fields(extra)...)
	}
	cmd := exec.Command(b.agent, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	if err := netns.Do(nsName, cmd.Start); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("start agent: %w", err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	c := api.NewClient(sock)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(base, "agent.log"))
			return 0, 0, 0, 0, fmt.Errorf("agent not ready with %d endpoints after 3 minutes; log tail: %s", endpoints, tail(string(log), 800))
		}
		eps, err := c.Endpoints(context.Background())
		s, serr := c.Status(context.Background())
		if err == nil && serr == nil && s.AppliedRevision >= rev {
			n := 0
			for _, e := range eps {
				if e.State == api.EndpointReady {
					n++
				}
			}
			if n == endpoints {
				ready = time.Since(start)
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Debugging aids: MEMBRANE_BENCH_AGENT_ARGS="--pprof" with
	// MEMBRANE_BENCH_HEAP_PROFILE=FILE saves the agent's heap profile.
	if path := os.Getenv("MEMBRANE_BENCH_HEAP_PROFILE"); path != "" {
		if err := saveHeapProfile(sock, path); err != nil {
			fmt.Fprintln(os.Stderr, "bench: heap profile:", err)
		}
	}
	if os.Getenv("MEMBRANE_BENCH_SMAPS") != "" {
		// Anonymous vs file-backed (binary) memory, for debugging.
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", cmd.Process.Pid))
		fmt.Fprintf(os.Stderr, "%s\n", b)
	}
	// Start-up: the 2 s after the last endpoint became ready. Running:
	// 6 to 10 s after, once the agent has handed back its start-up heap
	// and released the executable pages only start-up touched.
	readyAt := time.Now()
	for time.Since(readyAt) < 10*time.Second {
		v, err := vmRSS(cmd.Process.Pid, "VmRSS")
		if err != nil {
			return 0, 0, 0, 0, err
		}
		switch since := time.Since(readyAt); {
		case since < 2*time.Second:
			peak = max(peak, v)
		case since >= 6*time.Second:
			settled = max(settled, v)
			if a, err := vmRSS(cmd.Process.Pid, "RssAnon"); err == nil {
				anon = max(anon, a)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return peak, settled, anon, ready, nil
}

// vmRSS reads a memory field of /proc/PID/status (VmRSS, RssAnon…) in MB.
func vmRSS(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l)
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no %s for pid %d", field, pid)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func saveHeapProfile(sock, path string) error {
	hc := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://agent/debug/pprof/heap")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s (start the agent with --pprof)", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}
