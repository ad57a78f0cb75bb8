package proxy

import (
	"bufio"
	"io"
	"sync"
)

// Buffer sizes of connections' bufio readers and writers. A request head
// may be larger than the reader's buffer (http1 reads it in pieces).
const (
	readBufSize  = 8 << 10
	writeBufSize = 8 << 10
	copyBufSize  = 16 << 10
)

// bufPools recycle bufio readers and writers and copy buffers between
// connections.
type bufPools struct {
	readers, writers, copies sync.Pool
}

func (b *bufPools) init() {
	b.readers.New = func() any { return bufio.NewReaderSize(nil, readBufSize) }
	b.writers.New = func() any { return bufio.NewWriterSize(nil, writeBufSize) }
	b.copies.New = func() any { s := make([]byte, copyBufSize); return &s }
}

func (b *bufPools) reader(r io.Reader) *bufio.Reader {
	br := b.readers.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func (b *bufPools) putReader(br *bufio.Reader) {
	br.Reset(nil)
	b.readers.Put(br)
}

func (b *bufPools) writer(w io.Writer) *bufio.Writer {
	bw := b.writers.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func (b *bufPools) putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	b.writers.Put(bw)
}

func (b *bufPools) copyBuf() *[]byte     { return b.copies.Get().(*[]byte) }
func (b *bufPools) putCopyBuf(p *[]byte) { b.copies.Put(p) }
