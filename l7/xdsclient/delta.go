package xdsclient

import (
	"context"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// deltaStream is a DeltaAggregatedResources stream.
type deltaStream struct {
	c        *Client
	s        discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	sentNode bool
}

func (c *Client) runDelta(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (bool, error) {
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	s := &deltaStream{c: c, s: st}
	if err := c.subscribeAll(s); err != nil {
		return false, err
	}
	return c.serveStream(ctx, s, Delta, func() (*update, error) {
		resp, err := st.Recv()
		if err != nil {
			return nil, err
		}
		u := &update{
			typeURL: resp.GetTypeUrl(),
			version: resp.GetSystemVersionInfo(),
			nonce:   resp.GetNonce(),
			removed: resp.GetRemovedResources(),
		}
		for _, r := range resp.GetResources() {
			u.items = append(u.items, item{name: r.GetName(), version: r.GetVersion(), res: r.GetResource()})
		}
		return u, nil
	})
}

func (s *deltaStream) send(req *discoveryv3.DeltaDiscoveryRequest) error {
	if !s.sentNode {
		req.Node = s.c.node()
		s.sentNode = true
	}
	return s.s.Send(req)
}

func (s *deltaStream) request(t *typeState, first bool) error {
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.url}
	switch {
	case t.wildcard && first:
		req.ResourceNamesSubscribe = []string{"*"}
	case !t.wildcard && first:
		req.ResourceNamesSubscribe = t.names
	case !t.wildcard:
		for _, n := range t.names {
			if !contains(t.prevNames, n) {
				req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
			}
		}
		for _, n := range t.prevNames {
			if !contains(t.names, n) {
				req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
			}
		}
	}
	if first {
		req.InitialResourceVersions = t.versions()
	}
	t.prevNames = t.names
	return s.send(req)
}

func (s *deltaStream) ack(t *typeState, nonce, version string) error {
	return s.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.url, ResponseNonce: nonce})
}

func (s *deltaStream) nack(t *typeState, nonce string, err error) error {
	return s.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.url, ResponseNonce: nonce, ErrorDetail: nackStatus(err)})
}
