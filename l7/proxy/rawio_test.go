package proxy

import (
	"errors"
	"io"
	"net"
	"testing"
)

// TestRawIONoAllocs: a read or write through rawIO allocates nothing, and
// moves the bytes.
func TestRawIONoAllocs(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	a, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer b.Close()
	wa, rb := newRawIO(a), newRawIO(b)
	if wa == nil || rb == nil {
		t.Fatal("no raw access to a TCP connection")
	}

	out, in := []byte("ping"), make([]byte, 4)
	exchange := func() {
		if n, err := wa.write(out); n != len(out) || err != nil {
			t.Fatalf("write: %d, %v", n, err)
		}
		for got := 0; got < len(in); {
			n, err := rb.read(in[got:])
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			got += n
		}
		if string(in) != "ping" {
			t.Fatalf("read %q", in)
		}
	}
	exchange()
	if allocs := testing.AllocsPerRun(200, exchange); allocs != 0 {
		t.Errorf("%.1f allocations per write and read, want 0", allocs)
	}

	// The end of the stream is io.EOF, as from a net.Conn.
	a.Close()
	if n, err := rb.read(in); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("read after the peer closed: %d, %v; want 0, EOF", n, err)
	}
}
