package xdsclient

import (
	"context"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// sotwStream is a StreamAggregatedResources stream.
type sotwStream struct {
	c        *Client
	s        discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	sentNode bool
}

func (c *Client) runSotW(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (bool, error) {
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	s := &sotwStream{c: c, s: st}
	if err := c.subscribeAll(s); err != nil {
		return false, err
	}
	return c.serveStream(ctx, s, SotW, func() (*update, error) {
		resp, err := st.Recv()
		if err != nil {
			return nil, err
		}
		t := c.types[resp.GetTypeUrl()]
		u := &update{typeURL: resp.GetTypeUrl(), version: resp.GetVersionInfo(), nonce: resp.GetNonce()}
		if t != nil {
			u.full = t.fullState // read-only after New
		}
		for _, r := range resp.GetResources() {
			u.items = append(u.items, item{version: resp.GetVersionInfo(), res: r})
		}
		return u, nil
	})
}

func (s *sotwStream) send(req *discoveryv3.DiscoveryRequest) error {
	if !s.sentNode {
		req.Node = s.c.node()
		s.sentNode = true
	}
	return s.s.Send(req)
}

func (s *sotwStream) request(t *typeState, first bool) error {
	req := &discoveryv3.DiscoveryRequest{TypeUrl: t.url, VersionInfo: t.acked, ResponseNonce: t.nonce}
	if !t.wildcard {
		req.ResourceNames = t.names
	}
	return s.send(req)
}

func (s *sotwStream) ack(t *typeState, nonce, version string) error {
	req := &discoveryv3.DiscoveryRequest{TypeUrl: t.url, VersionInfo: version, ResponseNonce: nonce}
	if !t.wildcard {
		req.ResourceNames = t.names
	}
	return s.send(req)
}

func (s *sotwStream) nack(t *typeState, nonce string, err error) error {
	req := &discoveryv3.DiscoveryRequest{TypeUrl: t.url, VersionInfo: t.acked, ResponseNonce: nonce, ErrorDetail: nackStatus(err)}
	if !t.wildcard {
		req.ResourceNames = t.names
	}
	return s.send(req)
}
