package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Client talks to one agent over its unix socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 10 * time.Second,
	}
	return &Client{Socket: socket, hc: &http.Client{Transport: tr}}
}

// CloseIdleConnections releases cached connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

func (c *Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("agent at %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("agent at %s: read %s: %w", c.Socket, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agent at %s: %s: %s: %s", c.Socket, path, resp.Status, body)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("agent at %s: decode %s: %w", c.Socket, path, err)
	}
	return nil
}

// Healthy reports whether the agent answers /healthz with 200.
func (c *Client) Healthy(ctx context.Context) error { return c.get(ctx, "/healthz", nil) }

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.get(ctx, "/v1/status", &s)
}

// Endpoints lists the agent's endpoints.
func (c *Client) Endpoints(ctx context.Context) ([]Endpoint, error) {
	var eps []Endpoint
	return eps, c.get(ctx, "/v1/endpoints", &eps)
}

// Policy returns the computed policy of the endpoint namespace/pod.
func (c *Client) Policy(ctx context.Context, namespace, pod string) (*EndpointPolicy, error) {
	var p EndpointPolicy
	path := "/v1/endpoints/" + url.PathEscape(namespace) + "/" + url.PathEscape(pod) + "/policy"
	return &p, c.get(ctx, path, &p)
}

// WaitRevision waits until the agent has applied datastore revision rev.
func (c *Client) WaitRevision(ctx context.Context, rev int64) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		s, err := c.Status(ctx)
		if err == nil && s.AppliedRevision >= rev {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil && last != nil {
				// The deadline cut this request short: report what the
				// agent said before, not the deadline twice.
				return fmt.Errorf("%w (%v)", ctx.Err(), last)
			}
			last = err
		} else {
			last = fmt.Errorf("agent %s has applied revision %d, waiting for %d", s.Node, s.AppliedRevision, rev)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%v)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}
