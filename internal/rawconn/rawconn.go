// Package rawconn gives herd's request path TCP connections whose reads and writes are raw
// system calls: outside the Go scheduler's syscall bookkeeping.
//
// Every socket the net package opens is non-blocking: a read or write returns at once, with
// bytes or with EAGAIN, after which the netpoller parks the goroutine as for any connection.
// The net package still makes each such call through syscall.Syscall, which tells the
// scheduler it may block: the processor is marked as in a system call, the monitor thread
// (sysmon) watches it and hands it to another thread when the call lasts, and the goroutine
// must take a processor back afterwards. A proxy relaying streams makes three such calls per
// event (the read, the read that finds nothing more, the write to the client) and blocks in
// none of them. Made raw, the calls cost only the kernel's work, and with no processor ever
// in a system call sysmon backs off instead of waking every 20 µs
// (docs/architecture.md, "Raw socket calls"; docs/BENCHMARKS.md, "Streams").
//
// Only reads and writes change. Deadlines, Close and every other method are the
// *net.TCPConn's own, and errors have the shapes the net package gives them.
package rawconn

import (
	"context"
	"net"
)

// DialFunc dials as net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Dial returns dial with each TCP connection it makes wrapped (Wrap).
func Dial(dial DialFunc) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return Wrap(c), nil
	}
}

// Listen returns ln with each TCP connection it accepts wrapped (Wrap).
func Listen(ln net.Listener) net.Listener { return listener{ln} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c), nil
}
