package proxy

import (
	"context"
	"log/slog"
	"time"

	"github.com/membrane-mesh/membrane/l7/accesslog"
	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/l7/http1"
)

// response_code_details values (Envoy's where one fits).
const (
	detailsUpstream        = "via_upstream"
	detailsDenied          = "membrane_policy_denied"
	detailsBadRequest      = "downstream_protocol_error"
	detailsInvalidPath     = "invalid_path"
	detailsConnectFailed   = "upstream_connect_failed"
	detailsUpstreamReset   = "upstream_reset_before_response_started"
	detailsUpstreamTimeout = "upstream_response_timeout"
	detailsUpstreamProto   = "upstream_protocol_error"
	detailsUpstreamAfter   = "upstream_reset_after_response_started"
	detailsDownstreamReset = "downstream_remote_disconnect"
	detailsStreamIdle      = "stream_idle_timeout"
	detailsHeadersTimeout  = "request_headers_timeout"
	detailsMutation        = "invalid_header_after_policy_mutation"
	detailsUpgradeFailed   = "upgrade_failed"
)

// record starts an access log record for a request on c.
func (c *conn) record(lc *config.Listener, start time.Time, proto accesslog.Protocol) accesslog.Record {
	ids := c.identities()
	return accesslog.Record{
		Start:               start,
		Source:              c.src,
		Destination:         c.dst,
		Protocol:            proto,
		Direction:           lc.DirectionName(),
		SourceIdentity:      ids.src.Identity,
		DestinationIdentity: ids.dst.Identity,
	}
}

// finish counts a request and sends its record.
func (p *Proxy) finish(lc *config.Listener, r *accesslog.Record) {
	r.Duration = time.Since(r.Start)
	switch r.Verdict {
	case accesslog.Forwarded:
		p.stats.allowed.Add(1)
	case accesslog.Denied:
		p.stats.denied.Add(1)
	default:
		r.Verdict = accesslog.Error
		p.stats.errored.Add(1)
	}
	if lc.AccessLog != nil && p.opts.AccessLog != nil {
		p.opts.AccessLog.Log(r)
	}
	if p.log.Enabled(context.Background(), slog.LevelDebug) {
		p.log.Debug("request", "verdict", r.Verdict, "method", r.Method, "path", r.Path,
			"authority", r.Authority, "status", r.Status, "src", r.Source, "dst", r.Destination,
			"src_id", r.SourceIdentity, "dst_id", r.DestinationIdentity, "reason", r.Reason,
			"duration", r.Duration)
	}
}

func fail(r *accesslog.Record, status int, details, reason string) {
	r.Verdict = accesslog.Error
	r.Status = uint32(status)
	r.StatusDetails = details
	r.Reason = reason
}

// headBytes estimates the size of a request head as received.
func headBytes(req *http1.Request) uint64 {
	n := len(req.Method) + 1 + len(req.Target) + len(" HTTP/1.1\r\n") + 2
	if req.AbsoluteForm {
		n += len("http://") + len(req.Host)
	}
	for _, f := range req.Header {
		n += len(f.Name) + len(f.Value) + 4
	}
	return uint64(n)
}
