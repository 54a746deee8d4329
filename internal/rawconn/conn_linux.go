package rawconn

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxRW caps one read as the net package does: a stream socket's reads and writes are
// short anyway, and a count must fit the kernel's ssize_t.
const maxRW = 1 << 30

// Wrap returns c reading and writing through raw system calls when it is a *net.TCPConn,
// and c itself otherwise (or when its descriptor cannot be reached).
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	x := &conn{TCPConn: tc, rc: rc}
	// Method values made once: passing x.read itself would allocate a closure per call.
	x.rd.fn, x.wr.fn = x.read, x.write
	return x
}

// conn is a *net.TCPConn whose Read and Write call read(2) and write(2) raw, inside
// syscall.RawConn's Read and Write: those hold the descriptor's read or write lock, check
// deadlines and, when the callback reports EAGAIN, park the goroutine until the socket is
// ready, as net's own Read and Write do.
type conn struct {
	*net.TCPConn
	rc syscall.RawConn
	rd op // Read's state: the callback is a method value and cannot take arguments
	wr op // Write's
}

// op carries one call's buffer, count and error to and from its callback. Its mutex makes
// concurrent Reads (or Writes) take turns, as the descriptor's lock would.
type op struct {
	mu  sync.Mutex
	p   []byte
	n   int
	err error
	fn  func(fd uintptr) bool
}

// read is RawConn.Read's callback: true when done (bytes, end of stream or an error), false
// to wait until the socket is readable.
func (c *conn) read(fd uintptr) bool {
	for {
		n, e := sysRead(fd, c.rd.p)
		switch e {
		case 0:
			c.rd.n = int(n)
			if n == 0 {
				c.rd.err = io.EOF
			}
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		c.rd.err = os.NewSyscallError("read", e)
		return true
	}
}

func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) > maxRW {
		p = p[:maxRW]
	}
	c.rd.mu.Lock()
	c.rd.p, c.rd.n, c.rd.err = p, 0, nil
	err := c.rc.Read(c.rd.fn)
	n := c.rd.n
	if err == nil {
		err = c.rd.err
	}
	c.rd.p = nil // not kept past the call
	c.rd.mu.Unlock()
	if err != nil && err != io.EOF {
		return n, c.opError("read", err)
	}
	return n, err
}

// write is RawConn.Write's callback: it writes until all of the buffer is written (true), an
// error (true) or the socket is full (false: wait until it is writable, then go on).
func (c *conn) write(fd uintptr) bool {
	for c.wr.n < len(c.wr.p) {
		rest := c.wr.p[c.wr.n:]
		if len(rest) > maxRW {
			rest = rest[:maxRW]
		}
		n, e := sysWrite(fd, rest)
		switch e {
		case 0:
			if n == 0 {
				c.wr.err = io.ErrUnexpectedEOF // as the net package reports a write of nothing
				return true
			}
			c.wr.n += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.wr.err = os.NewSyscallError("write", e)
			return true
		}
	}
	return true
}

func (c *conn) Write(p []byte) (int, error) {
	c.wr.mu.Lock()
	c.wr.p, c.wr.n, c.wr.err = p, 0, nil
	err := c.rc.Write(c.wr.fn)
	n := c.wr.n
	if err == nil {
		err = c.wr.err
	}
	c.wr.p = nil
	c.wr.mu.Unlock()
	if err != nil {
		return n, c.opError("write", err)
	}
	return n, nil
}

// ReadFrom copies r to the connection through Write. Without it the *net.TCPConn's own
// ReadFrom, which io.Copy prefers, would write with plain system calls, each one waking the
// scheduler's monitor again: net/http's transport writes a request body it cannot see into
// (one that is not a bytes or strings reader) that way, once per upstream call. What is lost
// is splice and sendfile, for sources that are sockets or files, which herd never copies
// to a connection.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(writerOnly{c}, r)
}

// WriteTo copies the connection to w through Read, for the same reason.
func (c *conn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, readerOnly{c})
}

// writerOnly and readerOnly hide every method but Write and Read, so that io.Copy does not
// come back to ReadFrom or WriteTo.
type (
	writerOnly struct{ io.Writer }
	readerOnly struct{ io.Reader }
)

// opError shapes err as net's Read and Write do. RawConn wraps the descriptor's own errors
// (a deadline, a closed connection) as a "raw-read" or "raw-write" *net.OpError: its Err is
// what net would have wrapped.
func (c *conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
