package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/membrane-mesh/membrane/bpf"
)

// Config is the datapath's global configuration.
type Config struct {
	// AllowHost lets traffic from the local node into every workload, as
	// Kubernetes requires for kubelet probes.
	AllowHost bool
	// VerdictEvents emits an event for every new connection.
	VerdictEvents bool
	// DropEvents emits an event for every dropped packet.
	DropEvents bool
	// TraceSample emits one event for every N forwarded packets (0: none).
	TraceSample uint32
	// Connection tracking lifetimes.
	CTTCPEstablished time.Duration
	CTTCPSyn         time.Duration
	CTTCPClosing     time.Duration
	CTOther          time.Duration
	// ProxyAddr is the IPv4 address of the proxy's transparent listeners
	// (default 127.0.0.1).
	ProxyAddr netip.Addr
	// Proxy: the node proxy may run (L7 policy). Ingress hooks then look
	// for replies to its transparent upstream connections.
	Proxy bool
}

// DefaultConfig is what an agent starts with.
var DefaultConfig = Config{
	AllowHost:        true,
	VerdictEvents:    true,
	DropEvents:       true,
	CTTCPEstablished: 6 * time.Hour,
	CTTCPSyn:         60 * time.Second,
	CTTCPClosing:     10 * time.Second,
	CTOther:          60 * time.Second,
	ProxyAddr:        netip.AddrFrom4([4]byte{127, 0, 0, 1}),
}

func (d *Datapath) readConfig() (bpf.DatapathConfig, error) {
	var c bpf.DatapathConfig
	if err := d.objs.GlobalCfg.Lookup(uint32(0), &c); err != nil {
		return c, fmt.Errorf("read global_cfg: %w", err)
	}
	return c, nil
}

// SetConfig writes c, keeping the policy revision.
func (d *Datapath) SetConfig(c Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	raw, err := d.readConfig()
	if err != nil {
		return err
	}
	raw.Flags &= configIPCacheIncomplete // the agent's, not the config's
	if c.AllowHost {
		raw.Flags |= configAllowHost
	}
	if c.VerdictEvents {
		raw.Flags |= configVerdictEvents
	}
	if c.DropEvents {
		raw.Flags |= configDropEvents
	}
	if c.Proxy {
		raw.Flags |= configProxy
	}
	raw.TraceSample = c.TraceSample
	raw.CtTcpEstablished = uint32(c.CTTCPEstablished / time.Second)
	raw.CtTcpSyn = uint32(c.CTTCPSyn / time.Second)
	raw.CtTcpClosing = uint32(c.CTTCPClosing / time.Second)
	raw.CtOther = uint32(c.CTOther / time.Second)
	raw.Hz = d.hz
	raw.ProxyAddr4 = 0
	if c.ProxyAddr.Is4() {
		b := c.ProxyAddr.As4()
		raw.ProxyAddr4 = binary.NativeEndian.Uint32(b[:])
	}
	if err := d.objs.GlobalCfg.Put(uint32(0), &raw); err != nil {
		return fmt.Errorf("write global_cfg: %w", err)
	}
	return nil
}

// BumpPolicyRevision tells the datapath that policy or ipcache changed:
// every tracked connection is checked against policy again on its next
// packet. Returns the new revision.
func (d *Datapath) BumpPolicyRevision() (uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	raw, err := d.readConfig()
	if err != nil {
		return 0, err
	}
	raw.PolicyRev++
	if err := d.objs.GlobalCfg.Put(uint32(0), &raw); err != nil {
		return 0, fmt.Errorf("write global_cfg: %w", err)
	}
	return raw.PolicyRev, nil
}

// SetIPCacheIncomplete tells the datapath whether the ipcache lacks
// addresses it should hold (it was full): while set, new connections whose
// peer has no entry of its own are dropped (fail closed) instead of being
// taken for the world.
func (d *Datapath) SetIPCacheIncomplete(incomplete bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	raw, err := d.readConfig()
	if err != nil {
		return err
	}
	was := raw.Flags&configIPCacheIncomplete != 0
	if was == incomplete {
		return nil
	}
	raw.Flags &^= configIPCacheIncomplete
	if incomplete {
		raw.Flags |= configIPCacheIncomplete
	}
	if err := d.objs.GlobalCfg.Put(uint32(0), &raw); err != nil {
		return fmt.Errorf("write global_cfg: %w", err)
	}
	return nil
}

// PolicyRevision returns the current revision.
func (d *Datapath) PolicyRevision() (uint32, error) {
	raw, err := d.readConfig()
	return raw.PolicyRev, err
}
