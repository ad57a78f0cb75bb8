package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/xds"
)

// proxyAckTimeout bounds how long a datastore revision waits for the node
// proxy to accept its L7 policy before the agent reports it applied anyway
// (and says so in its problems).
const proxyAckTimeout = 5 * time.Second

// startXDS starts the xDS server that configures the node's L7 proxy.
func (a *Agent) startXDS(ctx context.Context, wg *sync.WaitGroup) error {
	if !a.cfg.L7 || a.cfg.XDSSocket == "" {
		return nil
	}
	o := a.cfg.XDS
	o.Node = a.cfg.Node
	o.Socket = a.cfg.XDSSocket
	ports := a.proxyPorts()
	o.IngressPort, o.EgressPort = ports[0], ports[1]
	o.Logger = a.log
	o.OnAccessLog = a.onAccessLog
	srv, err := xds.NewServer(o)
	if err != nil {
		return fmt.Errorf("xds server: %w", err)
	}
	a.xds = srv
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("xds server stopped", "err", err)
		}
	}()
	a.log.Info("xds server listening", "socket", o.Socket, "ingressProxyPort", o.IngressPort, "egressProxyPort", o.EgressPort)
	return nil
}

// publishL7 hands a new snapshot's L7 policy to the proxy, with a.mu held.
// It reports whether datastore revision rev must wait for the proxy to
// accept it before it counts as applied.
func (a *Agent) publishL7(rev int64) (wait bool) {
	if a.xds == nil {
		return false
	}
	ver, err := a.xds.Update(a.snap)
	if ver != a.l7Published.version {
		a.l7Published = l7Publication{version: ver, at: time.Now()}
	}
	a.l7Problem = ""
	if err != nil {
		a.l7Problem = "L7 policy: " + err.Error()
		a.log.Warn("L7 policy not fully published; the proxy keeps the last good version of what failed", "err", err)
	}
	if rev < 0 || !a.xds.Status().ProxyConnected {
		// No proxy to wait for: what it would enforce fails closed at the
		// datapath until it connects and takes the current version.
		return false
	}
	go a.waitProxyAck(ver, rev)
	return true
}

// waitProxyAck marks rev applied once the proxy has accepted policy
// version ver, or after proxyAckTimeout. Whether the proxy lags is
// status's to say, from the xDS server's state when it is asked
// (l7Problems): a problem noted here would outlive the proxy catching up,
// or be cleared by a later regeneration that changed nothing.
func (a *Agent) waitProxyAck(ver string, rev int64) {
	ctx, cancel := context.WithTimeout(context.Background(), proxyAckTimeout)
	err := a.xds.WaitPolicyAcked(ctx, ver)
	cancel()
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.log.Warn("the node proxy has not accepted the L7 policy in time; reporting the revision applied anyway", "version", ver, "revision", rev, "err", err)
	}
	if rev > a.applied {
		a.applied = rev
	}
}

// l7Publication is a published L7 policy version and when it was.
type l7Publication struct {
	version string
	at      time.Time
}

// l7Problems are the L7 problems status reports, with a.mu held, from
// the xDS server's state st (nil without L7): the last publishing's, and
// a connected proxy that has not accepted the current policy
// proxyAckTimeout after it was published.
func (a *Agent) l7Problems(now time.Time, st *xds.Status) []string {
	if st == nil {
		return nil
	}
	var out []string
	if a.l7Problem != "" {
		out = append(out, a.l7Problem)
	}
	if pub := a.l7Published; st.ProxyConnected && !st.ProxyAckedPolicy && pub.version != "" {
		if late := now.Sub(pub.at); late > proxyAckTimeout {
			out = append(out, fmt.Sprintf("the node proxy has not accepted L7 policy version %s, published %s ago", pub.version, late.Round(time.Second)))
		}
	}
	return out
}

// xdsState is the xDS server's state, nil without L7.
func (a *Agent) xdsState() *xds.Status {
	if a.xds == nil {
		return nil
	}
	st := a.xds.Status()
	return &st
}

// xdsStatus is the xDS server's state st for the API.
func xdsStatus(st *xds.Status) *api.XDSStatus {
	if st == nil {
		return nil
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil
	}
	var s api.XDSStatus
	if err := json.Unmarshal(b, &s); err != nil {
		return nil
	}
	return &s
}
