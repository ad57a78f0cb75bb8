package proxy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPerfWrk measures the membrane-proxy binary in the test bed with wrk:
// latency through the proxy against direct, the proxy's CPU per request
// and its RSS, with 1 and 64 connections and paced at about 1,000
// requests/s. It runs only with MP_PERF=1 (it takes about a minute).
// Knobs: MP_PERF_PACED_ONLY=1 runs the paced measurement alone;
// MP_PROXY_ENV="GOGC=100 GOMAXPROCS=2" sets the proxy's environment;
// MP_PERF_PROFILE=FILE saves a pprof CPU profile per run, MP_PERF_RECORD=FILE
// a perf record and MP_PERF_STRACE=FILE an strace -c of the paced run.
func TestPerfWrk(t *testing.T) {
	if os.Getenv("MP_PERF") == "" {
		t.Skip("skipping: set MP_PERF=1 to measure with wrk")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Skip("skipping: wrk not found")
	}
	requireLab(t)
	dir := socketDir(t)
	bin := buildProxy(t, dir)
	l := newNetLab(t)
	l.startServers()
	// A second server port that is not redirected: the direct baseline.
	startEcho(t, l.listen(l.s, fmt.Sprintf("%s:%d", labServerIP, 8081)))
	lo := labListener()
	lo.NoAccessLog = os.Getenv("MP_PERF_NOALS") != ""
	e := newEnv(t, newFakeIdentities(), lo, labPolicy())
	_ = e
	pins := pinnedIPCache(t, map[string]uint32{labClientIP: clientIdentity, labServerIP: serverIdentity})
	admin := filepath.Join(dir, "admin.sock")
	if env := os.Getenv("MP_PROXY_ENV"); env != "" {
		// e.g. "GOMAXPROCS=1 GOGC=50"
		envBin := filepath.Join(dir, "proxy-env.sh")
		os.WriteFile(envBin, []byte("#!/bin/sh\nexport "+env+"\nexec "+bin+" \"$@\"\n"), 0o755)
		bin = envBin
	}
	p := l.runProxy(t, bin, "--node", "node-1", "--xds", e.sock, "--bpffs", pins, "--admin-socket", admin, "--log-level", "warn")
	waitFor(t, 10*time.Second, "/ready", func() bool { code, _, _ := adminGet(admin, "/ready"); return code == 200 })
	pid := proxyPid(t, p)
	_, stats, _ := adminGet(admin, "/stats")
	i := strings.Index(string(stats), `"runtime"`)
	t.Logf("idle: RSS %s; %s", rss(t, pid), strings.Join(strings.Fields(string(stats[i:])), " "))

	wrk := func(conns int, url string, extra ...string) string {
		args := append([]string{"netns", "exec", l.c, "wrk", "-t1", fmt.Sprintf("-c%d", conns), "-d10s", "--latency"}, extra...)
		out, err := exec.Command("ip", append(args, url)...).CombinedOutput()
		if err != nil {
			t.Fatalf("wrk: %v\n%s", err, out)
		}
		return string(out)
	}
	paced := filepath.Join(dir, "paced.lua")
	os.WriteFile(paced, []byte("function delay() return 1 end\n"), 0o644)
	runs := []int{1, 64, -1}
	if os.Getenv("MP_PERF_PACED_ONLY") != "" {
		runs = []int{-1}
	}
	for _, conns := range runs {
		var extra []string
		if conns < 0 {
			// About 1,000 requests/s: one connection, 1ms between requests.
			conns, extra = 1, []string{"-s", paced}
		}
		self0 := cpuTicks(t, os.Getpid())
		direct := wrk(conns, fmt.Sprintf("http://%s:8081/public/bench", labServerIP), extra...)
		self1 := cpuTicks(t, os.Getpid())
		t.Logf("reference: the upstream (a Go net/http server, in the test process) used %.1f µs CPU per request served directly",
			float64(self1-self0)*1e4/float64(wrkRequests(direct)))
		cpu0 := cpuTicks(t, pid)
		u0, s0 := cpuSplit(t, pid)
		prof := make(chan []byte, 1)
		if out := os.Getenv("MP_PERF_STRACE"); out != "" && len(extra) > 0 {
			go func() {
				exec.Command("timeout", "-s", "INT", "6", "strace", "-f", "-c", "-o", out, "-p", strconv.Itoa(pid)).Run()
				prof <- nil
			}()
		} else if out := os.Getenv("MP_PERF_RECORD"); out != "" && len(extra) > 0 {
			go func() {
				exec.Command("perf", "record", "-F", "2000", "-g", "-o", out, "-p", strconv.Itoa(pid), "--", "sleep", "8").Run()
				prof <- nil
			}()
		} else if out := os.Getenv("MP_PERF_PROFILE"); out != "" {
			go func() {
				_, b, _ := adminGetTimeout(admin, "/debug/pprof/profile?seconds=8", 15*time.Second)
				os.WriteFile(fmt.Sprintf("%s.%d", out, conns), b, 0o644)
				prof <- b
			}()
		} else {
			prof <- nil
		}
		proxied := wrk(conns, fmt.Sprintf("http://%s:%d/public/bench", labServerIP, labHTTPPort), extra...)
		cpu1 := cpuTicks(t, pid)
		u1, s1 := cpuSplit(t, pid)
		t.Logf("proxy user %d ticks, system %d ticks", u1-u0, s1-s0)
		<-prof
		reqs := wrkRequests(proxied)
		t.Logf("%d connection(s)\n--- direct\n%s--- through the proxy\n%s", conns, direct, proxied)
		_, stats, _ := adminGet(admin, "/stats")
		i := strings.Index(string(stats), `"runtime"`)
		t.Logf("proxy CPU: %.1f µs per request (%d requests, %.2fs CPU) = %.3f vCPU per 1000 req/s; RSS %s; %s",
			float64(cpu1-cpu0)*1e4/float64(reqs), reqs, float64(cpu1-cpu0)/100, float64(cpu1-cpu0)*10/float64(reqs), rss(t, pid), strings.Join(strings.Fields(string(stats[i:])), " "))
	}
}

func proxyPid(t *testing.T, p *proc) int {
	// "ip netns exec" execs the proxy: same pid.
	return p.cmd.Process.Pid
}

// cpuSplit returns utime and stime of pid in clock ticks (100 Hz).
func cpuSplit(t *testing.T, pid int) (int64, int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u, s
}

// cpuTicks returns utime+stime of pid in clock ticks (100 Hz).
func cpuTicks(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

func rss(t *testing.T, pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		for _, k := range []string{"VmRSS:", "VmHWM:", "RssAnon:", "RssFile:"} {
			if strings.HasPrefix(line, k) {
				out = append(out, k+strings.Join(strings.Fields(line)[1:], ""))
			}
		}
	}
	return strings.Join(out, " ")
}

func wrkRequests(out string) int64 {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[1] == "requests" {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			return n
		}
	}
	return 1
}
