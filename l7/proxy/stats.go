package proxy

import (
	"sync/atomic"
)

// counters are the proxy's counters; all atomic.
type counters struct {
	connsTotal, connsRejected, acceptErrors atomic.Uint64
	http1Conns, http2Conns                  atomic.Uint64
	allowed, denied, errored                atomic.Uint64
	identityErrors, h2Errors                atomic.Uint64
	dials, dialErrors, reused, retries      atomic.Uint64
}

// Stats is a copy of the proxy's counters and state, for the admin
// endpoint.
type Stats struct {
	Ready       bool `json:"ready"`
	Connections struct {
		Active   int64  `json:"active"`
		Total    uint64 `json:"total"`
		Rejected uint64 `json:"rejected"`
		HTTP1    uint64 `json:"http1"`
		HTTP2    uint64 `json:"http2"`
	} `json:"connections"`
	Requests struct {
		Allowed uint64 `json:"allowed"`
		Denied  uint64 `json:"denied"`
		Errors  uint64 `json:"errors"`
	} `json:"requests"`
	Upstream struct {
		Dials        uint64 `json:"dials"`
		DialErrors   uint64 `json:"dial_errors"`
		Reused       uint64 `json:"reused"`
		Retries      uint64 `json:"retries"`
		Idle         int    `json:"idle"`
		H2Transports int    `json:"h2_transports"`
	} `json:"upstream"`
	IdentityErrors uint64              `json:"identity_errors"`
	HTTP2Errors    uint64              `json:"http2_protocol_errors"`
	AcceptErrors   uint64              `json:"accept_errors"`
	Listeners      map[string][]string `json:"listeners"`
	ConfigVersion  string              `json:"config_version"`
	Endpoints      int                 `json:"endpoints"`
}

// Stats returns the proxy's counters and state.
func (p *Proxy) Stats() Stats {
	var s Stats
	s.Ready = p.Ready()
	c := &p.stats
	s.Connections.Active = p.conns.active()
	s.Connections.Total = c.connsTotal.Load()
	s.Connections.Rejected = c.connsRejected.Load()
	s.Connections.HTTP1 = c.http1Conns.Load()
	s.Connections.HTTP2 = c.http2Conns.Load()
	s.Requests.Allowed = c.allowed.Load()
	s.Requests.Denied = c.denied.Load()
	s.Requests.Errors = c.errored.Load()
	s.Upstream.Dials = c.dials.Load()
	s.Upstream.DialErrors = c.dialErrors.Load()
	s.Upstream.Reused = c.reused.Load()
	s.Upstream.Retries = c.retries.Load()
	s.Upstream.Idle = p.pool.idleCount()
	s.Upstream.H2Transports = p.h2up.count()
	s.IdentityErrors = c.identityErrors.Load()
	s.HTTP2Errors = c.h2Errors.Load()
	s.AcceptErrors = c.acceptErrors.Load()
	s.Listeners = p.ListenerAddrs()
	if snap := p.cfg.Load(); snap != nil {
		s.ConfigVersion = snap.Version
		s.Endpoints = snap.Policy.Len()
	}
	return s
}
