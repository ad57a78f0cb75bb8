package netns

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"testing"
)

func testName(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "mbrtest-netns-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		if err := Delete(name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return name
}

func threadNetns(t *testing.T) string {
	t.Helper()
	l, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestCreateDoDelete(t *testing.T) {
	name := testName(t)
	hostNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if err := Create(name); err != nil {
		t.Fatal(err)
	}
	if err := Create(name); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second Create: got %v, want 'exists' error", err)
	}
	if !Exists(name) {
		t.Fatal("Exists = false after Create")
	}
	ino, err := Inode(name)
	if err != nil {
		t.Fatal(err)
	}
	var inside string
	if err := Do(name, func() error { inside = threadNetns(t); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := "net:[" + itoa(ino) + "]"; inside != want {
		t.Fatalf("inside Do: netns %s, want %s", inside, want)
	}
	if inside == hostNS {
		t.Fatal("Do ran in the host netns")
	}
	if got, _ := os.Readlink("/proc/self/ns/net"); got != hostNS {
		t.Fatalf("process netns changed: %s -> %s", hostNS, got)
	}
	names, err := List("mbrtest-netns-")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, n := range names {
		found = found || n == name
	}
	if !found {
		t.Fatalf("List = %v, missing %s", names, name)
	}
	if err := Delete(name); err != nil {
		t.Fatal(err)
	}
	if Exists(name) {
		t.Fatal("Exists after Delete")
	}
	if err := Delete(name); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
}

func TestSysctlAndNetlinkAreIsolated(t *testing.T) {
	name := testName(t)
	if err := Create(name); err != nil {
		t.Fatal(err)
	}
	hostFwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	want := "1"
	if strings.TrimSpace(string(hostFwd)) == "1" {
		want = "0"
	}
	if err := SetSysctls(name, [2]string{"net.ipv4.ip_forward", want}); err != nil {
		t.Fatal(err)
	}
	if got, err := Sysctl(name, "net.ipv4.ip_forward"); err != nil || got != want {
		t.Fatalf("Sysctl = %q, %v; want %q", got, err, want)
	}
	if after, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(after) != string(hostFwd) {
		t.Fatalf("host ip_forward changed: %q -> %q", hostFwd, after)
	}
	h, err := Netlink(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Fatalf("links in new netns: %v, want only lo", links)
	}
}

func TestBadNames(t *testing.T) {
	for _, n := range []string{"", ".", "..", "a/b", strings.Repeat("x", 300)} {
		if err := Create(n); err == nil {
			t.Errorf("Create(%q) succeeded", n)
		}
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }
