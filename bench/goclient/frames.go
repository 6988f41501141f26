package main

import (
	"net"
	"sync"
)

// frameCounter reads the HTTP/2 frame headers of one direction of a connection as the bytes
// pass (-frames): how many frames of each type, DATA payload bytes, and the read or write
// calls that carried them. Cheap (a few comparisons per buffer), but off by default.
type frameCounter struct {
	skip     int // bytes left of the current frame's payload (or of the client preface)
	hdr      [9]byte
	have     int // bytes of hdr collected
	calls    int // Read or Write calls (syscalls on the socket)
	bytes    int
	byType   [10]int
	dataSize int
}

var frameNames = [10]string{"DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING",
	"GOAWAY", "WINDOW_UPDATE", "CONTINUATION"}

func (f *frameCounter) feed(p []byte) {
	f.calls++
	f.bytes += len(p)
	for len(p) > 0 {
		if f.skip > 0 {
			n := f.skip
			if n > len(p) {
				n = len(p)
			}
			f.skip -= n
			p = p[n:]
			continue
		}
		n := copy(f.hdr[f.have:], p)
		f.have += n
		p = p[n:]
		if f.have < 9 {
			return
		}
		f.have = 0
		length := int(f.hdr[0])<<16 | int(f.hdr[1])<<8 | int(f.hdr[2])
		if t := int(f.hdr[3]); t < len(f.byType) {
			f.byType[t]++
			if t == 0 {
				f.dataSize += length
			}
		}
		f.skip = length
	}
}

func (f *frameCounter) report() map[string]int {
	out := map[string]int{"calls": f.calls, "bytes": f.bytes, "data_bytes": f.dataSize}
	for i, n := range f.byType {
		if n > 0 {
			out[frameNames[i]] = n
		}
	}
	return out
}

type countingConn struct {
	net.Conn
	mu      sync.Mutex
	in, out frameCounter
}

func newCountingConn(c net.Conn) *countingConn {
	cc := &countingConn{Conn: c}
	cc.out.skip = 24 // the client preface, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", precedes the client's frames
	return cc
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.mu.Lock()
		c.in.feed(p[:n])
		c.mu.Unlock()
	}
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.mu.Lock()
		c.out.feed(p[:n])
		c.mu.Unlock()
	}
	return n, err
}
