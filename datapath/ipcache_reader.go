package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/membrane-mesh/membrane/bpf"
)

// worldIdentity is the identity of an address no ipcache entry covers
// (identity.World; not imported to keep this package free of it).
const worldIdentity = 2

// IPCacheReader reads an agent's pinned ipcache from another process: the
// node proxy learns a connection's remote identity from it. It only reads.
type IPCacheReader struct {
	host, lpm *ebpf.Map
}

// OpenIPCache opens the ipcache maps pinned under an agent's bpffs
// directory, read-only.
func OpenIPCache(pinDir string) (*IPCacheReader, error) {
	ro := &ebpf.LoadPinOptions{ReadOnly: true}
	host, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpf.DatapathMapIpcacheHost), ro)
	if err != nil {
		return nil, fmt.Errorf("open pinned ipcache under %s (is the agent running with --bpffs %s?): %w", pinDir, pinDir, err)
	}
	lpm, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpf.DatapathMapIpcacheLpm), ro)
	if err != nil {
		host.Close()
		return nil, fmt.Errorf("open pinned ipcache under %s: %w", pinDir, err)
	}
	return &IPCacheReader{host: host, lpm: lpm}, nil
}

// Lookup returns the identity of an address, as the datapath would find it:
// its own entry, else the longest covering prefix, else the world. exact
// reports whether the address has an entry of its own.
func (r *IPCacheReader) Lookup(a netip.Addr) (identity uint32, exact bool, err error) {
	a = a.Unmap()
	var v bpf.DatapathIpcacheValue
	k := toAddr(a)
	switch err := r.host.Lookup(&k, &v); {
	case err == nil:
		return v.Identity, true, nil
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return 0, false, fmt.Errorf("look up %s in ipcache: %w", a, err)
	}
	lk := bpf.DatapathIpcacheLpmKey{Prefixlen: prefixBits(netip.PrefixFrom(a, a.BitLen())), Addr: k}
	switch err := r.lpm.Lookup(&lk, &v); {
	case err == nil:
		return v.Identity, false, nil
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return 0, false, fmt.Errorf("look up %s in ipcache: %w", a, err)
	}
	return worldIdentity, false, nil
}

// Close releases the maps.
func (r *IPCacheReader) Close() error {
	return errors.Join(r.host.Close(), r.lpm.Close())
}
