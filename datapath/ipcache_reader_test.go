package datapath

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// TestIPCacheReader reads a pinned ipcache the way the node proxy does.
func TestIPCacheReader(t *testing.T) {
	dir := pinDir(t)
	d, err := Load(Options{PinDir: dir})
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("skipping: kernel lacks a BPF feature the datapath needs: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, e := range []IPCacheEntry{
		{Prefix: netip.MustParsePrefix("10.0.0.5/32"), Identity: 300, Selset: 1},
		{Prefix: netip.MustParsePrefix("fd00::5/128"), Identity: 301, Selset: 2},
		{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Identity: 2, Selset: 3},
		{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Identity: 7, Selset: 0},
	} {
		if err := d.IPCachePut(e); err != nil {
			t.Fatal(err)
		}
	}

	r, err := OpenIPCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, tc := range []struct {
		addr  string
		id    uint32
		exact bool
	}{
		{"10.0.0.5", 300, true},
		{"::ffff:10.0.0.5", 300, true},
		{"fd00::5", 301, true},
		{"10.1.2.3", 7, false},
		{"203.0.113.9", 2, false},
		{"198.51.100.1", 2, false},
		{"2001:db8::1", 2, false},
	} {
		id, exact, err := r.Lookup(netip.MustParseAddr(tc.addr))
		if err != nil || id != tc.id || exact != tc.exact {
			t.Errorf("Lookup(%s) = %d, %v, %v; want %d, %v", tc.addr, id, exact, err, tc.id, tc.exact)
		}
	}
	if _, err := OpenIPCache(t.TempDir()); err == nil {
		t.Error("OpenIPCache of a directory without pins succeeded")
	}
}
