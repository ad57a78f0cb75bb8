package e2e

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/lab"
)

// Live change: within one second of an apply, a delete or a relabel,
// traffic follows the new policy — long-lived TCP streams included.

const liveLimit = time.Second

var servePorts = []corev1.ContainerPort{
	{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
	{Name: "dns", ContainerPort: 80, Protocol: corev1.ProtocolUDP},
}

func liveObjects(clientNS string) []datastore.Object {
	return []datastore.Object{
		labObject("live",
			datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"},
			datastore.LabNode{Name: "node2", PodCIDR: "10.244.2.0/24"}),
		namespace("srv", nil),
		namespace(clientNS, map[string]string{"team": "blue"}),
		pod("srv", "server", "node1", map[string]string{"app": "server"}, servePorts...),
		pod(clientNS, "client", "node2", map[string]string{"app": "client"}, servePorts...),
		pod(clientNS, "local", "node1", map[string]string{"app": "client"}, servePorts...),
	}
}

// stream is a long-lived TCP connection through which a byte sequence is
// echoed every 10 ms; it records when the last echo came back.
type stream struct {
	conn   net.Conn
	mu     sync.Mutex
	last   time.Time
	echoes int
	gaps   time.Duration // longest time between two echoes
	done   chan struct{}
	wg     sync.WaitGroup
}

func openStream(t *testing.T, l *lab.Lab, from, to string, port int) *stream {
	t.Helper()
	conn, err := dial(t, l, from, "tcp4", podAddr(t, l, to, port), 2*time.Second)
	if err != nil {
		t.Fatalf("stream %s -> %s: %v", from, to, err)
	}
	if _, err := io.WriteString(conn, "membrane-echo\n"); err != nil {
		t.Fatal(err)
	}
	s := &stream{conn: conn, last: time.Now(), done: make(chan struct{})}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		var buf [8]byte
		for n := uint64(0); ; n++ {
			select {
			case <-s.done:
				return
			case <-tick.C:
			}
			binary.BigEndian.PutUint64(buf[:], n)
			conn.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			conn.Write(buf[:]) // blocks or fails once the path is cut: fine
		}
	}()
	go func() {
		defer s.wg.Done()
		var buf [8]byte
		for {
			if _, err := io.ReadFull(conn, buf[:]); err != nil {
				return
			}
			now := time.Now()
			s.mu.Lock()
			if gap := now.Sub(s.last); gap > s.gaps {
				s.gaps = gap
			}
			s.last = now
			s.echoes++
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.close)
	// Wait for the first echoes.
	eventually(t, 2*time.Second, "stream echoes", func() bool { return s.count() > 3 })
	return s
}

func (s *stream) lastEcho() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func (s *stream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.echoes
}

func (s *stream) maxGap() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := time.Since(s.last); g > s.gaps {
		return g
	}
	return s.gaps
}

func (s *stream) close() {
	select {
	case <-s.done:
		return
	default:
	}
	close(s.done)
	s.conn.Close()
	s.wg.Wait()
}

// expectCut checks that the stream stopped echoing within liveLimit of
// start and stays silent.
func expectCut(t *testing.T, s *stream, start time.Time, what string) {
	t.Helper()
	time.Sleep(liveLimit + 300*time.Millisecond)
	last := s.lastEcho()
	after := last.Sub(start)
	if after > liveLimit {
		t.Fatalf("%s: the stream still echoed %s after the change (limit %s)", what, after.Round(time.Millisecond), liveLimit)
	}
	t.Logf("%s: stream cut %s after the change started", what, max(after, 0).Round(time.Millisecond))
}

// expectOpen checks that new connections from -> to succeed within
// liveLimit of start.
func expectOpen(t *testing.T, l *lab.Lab, from, to string, start time.Time, what string) {
	t.Helper()
	for {
		if probe(t, l, from, to, 80, "tcp", 200*time.Millisecond) {
			took := time.Since(start)
			if took > liveLimit {
				t.Fatalf("%s: new connections allowed only %s after the change (limit %s)", what, took.Round(time.Millisecond), liveLimit)
			}
			t.Logf("%s: new connections allowed %s after the change started", what, took.Round(time.Millisecond))
			return
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%s: new connections still denied after 5s", what)
		}
	}
}

func TestLiveApplyAndDelete(t *testing.T) {
	l := startLab(t, liveObjects("cli"))
	ctx := context.Background()
	for _, path := range []struct{ name, from string }{{"cross-node", "cli/client"}, {"same-node", "cli/local"}} {
		s := openStream(t, l, path.from, "srv/server", 80)
		deny := netpolObj(policy("srv", "deny").selecting(all).types(ingressT).build())
		start := time.Now()
		if _, err := l.Apply(ctx, []datastore.Object{deny}); err != nil {
			t.Fatal(err)
		}
		expectCut(t, s, start, path.name+": apply default deny")
		if probe(t, l, path.from, "srv/server", 80, "tcp", 300*time.Millisecond) {
			t.Fatalf("%s: new connection allowed under default deny", path.name)
		}

		start = time.Now()
		if _, err := l.Delete(ctx, []datastore.Key{deny.Key}, datastore.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		expectOpen(t, l, path.from, "srv/server", start, path.name+": delete default deny")
		s.close()
	}

	// Egress: the client's own policy cuts its stream too.
	s := openStream(t, l, "cli/client", "srv/server", 80)
	start := time.Now()
	if _, err := l.Apply(ctx, []datastore.Object{netpolObj(policy("cli", "no-egress").selecting(all).types(egressT).build())}); err != nil {
		t.Fatal(err)
	}
	expectCut(t, s, start, "apply default deny egress")
}

var serverSel = metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}

func TestLiveRelabelPod(t *testing.T) {
	// Only pods labelled app=client, from any namespace, may connect.
	fromClients := policy("srv", "from-clients").selecting(serverSel).
		ingress(peers(bothPeer(metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}, &metav1.LabelSelector{}))).build()
	l := startLab(t, append(liveObjects("cli"), netpolObj(fromClients)))
	ctx := context.Background()
	s := openStream(t, l, "cli/client", "srv/server", 80)

	relabel := func(app string) datastore.Object {
		return pod("cli", "client", "node2", map[string]string{"app": app}, servePorts...)
	}
	start := time.Now()
	if _, err := l.Apply(ctx, []datastore.Object{relabel("stranger")}); err != nil {
		t.Fatal(err)
	}
	expectCut(t, s, start, "relabel client to app=stranger")

	start = time.Now()
	if _, err := l.Apply(ctx, []datastore.Object{relabel("client")}); err != nil {
		t.Fatal(err)
	}
	expectOpen(t, l, "cli/client", "srv/server", start, "relabel client back to app=client")
}

func TestLiveRelabelNamespace(t *testing.T) {
	fromBlue := policy("srv", "from-blue").selecting(serverSel).
		ingress(peers(nsPeer(&metav1.LabelSelector{MatchLabels: map[string]string{"team": "blue"}}))).build()
	l := startLab(t, append(liveObjects("cli"), netpolObj(fromBlue)))
	ctx := context.Background()
	s := openStream(t, l, "cli/client", "srv/server", 80)

	start := time.Now()
	if _, err := l.Apply(ctx, []datastore.Object{namespace("cli", map[string]string{"team": "red"})}); err != nil {
		t.Fatal(err)
	}
	expectCut(t, s, start, "relabel namespace team=blue -> red")

	start = time.Now()
	if _, err := l.Apply(ctx, []datastore.Object{namespace("cli", map[string]string{"team": "blue"})}); err != nil {
		t.Fatal(err)
	}
	expectOpen(t, l, "cli/client", "srv/server", start, "relabel namespace back to team=blue")
}
