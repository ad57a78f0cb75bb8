package proxy

import (
	"testing"

	"github.com/membrane-mesh/membrane/l7/config"
)

// TestH2ServerWindows: the listener's HTTP/2 windows reach net/http's
// server as configured, a connection window below HTTP/2's initial one is
// raised to it, and windows beyond what http.HTTP2Config documents are
// capped rather than silently replaced by its defaults.
func TestH2ServerWindows(t *testing.T) {
	for _, c := range []struct {
		stream, conn         int32
		wantStream, wantConn int
	}{
		{0, 0, 0, 0}, // net/http's defaults
		{1 << 20, 1 << 20, 1 << 20, 1 << 20},
		{1000, 1000, 1000, 65535},
		{256 << 20, 1<<31 - 1, maxH2Window, maxH2Window},
	} {
		lc := &config.Listener{}
		lc.HTTP.InitialStreamWindow, lc.HTTP.InitialConnWindow = c.stream, c.conn
		lc.HTTP.MaxConcurrentStreams = 7
		h2 := newH2Server(&Proxy{}, lc).srv.HTTP2
		if h2.MaxReceiveBufferPerStream != c.wantStream || h2.MaxReceiveBufferPerConnection != c.wantConn || h2.MaxConcurrentStreams != 7 {
			t.Errorf("windows %d/%d: server has stream %d, connection %d, streams %d; want %d, %d, 7",
				c.stream, c.conn, h2.MaxReceiveBufferPerStream, h2.MaxReceiveBufferPerConnection, h2.MaxConcurrentStreams, c.wantStream, c.wantConn)
		}
	}
}
