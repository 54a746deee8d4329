package cluster

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// traffic counts the bytes every packet and stream carries, in both directions, and the
// packets (UDP datagrams: probes, gossip, usage deltas; not streams), for the metrics getters.
type traffic struct {
	sent, received               atomic.Uint64
	packetsSent, packetsReceived atomic.Uint64
}

// countedTransport is a transport that counts its own traffic: netTransport does, and
// countingTransport counts any other's.
type countedTransport interface {
	memberlist.NodeAwareTransport
	counts() *traffic
}

// counted returns t if it counts its own traffic, else t wrapped in a countingTransport.
func counted(t memberlist.Transport) countedTransport {
	if c, ok := t.(countedTransport); ok {
		return c
	}
	return newCountingTransport(t)
}

// countingTransport counts another transport's traffic (the in-memory one of tests). It
// forwards the inbound channels through goroutines so it can count without the inner
// transport's help; netTransport, which carries real traffic, counts itself instead, and
// spares every packet that extra hand-off.
type countingTransport struct {
	inner memberlist.NodeAwareTransport
	traffic
	packetCh  chan *memberlist.Packet
	streamCh  chan net.Conn
	done      chan struct{} // closed when memberlist shuts us down
	innerDone chan struct{} // closed once inner has shut down; until then keep draining it
	once      sync.Once
	wg        sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*countingTransport)(nil)

func newCountingTransport(inner memberlist.Transport) *countingTransport {
	na, ok := inner.(memberlist.NodeAwareTransport)
	if !ok {
		na = nodeAwareShim{inner}
	}
	t := &countingTransport{
		inner:     na,
		packetCh:  make(chan *memberlist.Packet),
		streamCh:  make(chan net.Conn),
		done:      make(chan struct{}),
		innerDone: make(chan struct{}),
	}
	t.wg.Add(2)
	go t.forwardPackets()
	go t.forwardStreams()
	return t
}

func (t *countingTransport) forwardPackets() {
	defer t.wg.Done()
	in := t.inner.PacketCh()
	for {
		select {
		case p := <-in:
			t.received.Add(uint64(len(p.Buf)))
			t.packetsReceived.Add(1)
			select {
			case t.packetCh <- p:
			case <-t.done: // memberlist stopped reading: drop
			}
		case <-t.innerDone:
			return
		}
	}
}

func (t *countingTransport) forwardStreams() {
	defer t.wg.Done()
	in := t.inner.StreamCh()
	for {
		select {
		case c := <-in:
			select {
			case t.streamCh <- t.wrap(c):
			case <-t.done:
				_ = c.Close()
			}
		case <-t.innerDone:
			return
		}
	}
}

func (t *countingTransport) wrap(c net.Conn) net.Conn { return &countingConn{Conn: c, t: &t.traffic} }

func (t *countingTransport) counts() *traffic { return &t.traffic }

func (t *countingTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	t.sent.Add(uint64(len(b)))
	t.packetsSent.Add(1)
	return t.inner.WriteTo(b, addr)
}

func (t *countingTransport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	t.sent.Add(uint64(len(b)))
	t.packetsSent.Add(1)
	return t.inner.WriteToAddress(b, addr)
}

func (t *countingTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }
func (t *countingTransport) StreamCh() <-chan net.Conn           { return t.streamCh }

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := t.inner.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return t.wrap(c), nil
}

func (t *countingTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	c, err := t.inner.DialAddressTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return t.wrap(c), nil
}

// Shutdown keeps draining the inner transport while it stops: memberlist's NetTransport
// waits for its listeners, which may be blocked handing us a packet.
func (t *countingTransport) Shutdown() error {
	var err error
	t.once.Do(func() {
		close(t.done)
		err = t.inner.Shutdown()
		close(t.innerDone)
		t.wg.Wait()
	})
	return err
}

type countingConn struct {
	net.Conn
	t *traffic
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.t.received.Add(uint64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.t.sent.Add(uint64(n))
	return n, err
}

// nodeAwareShim lets a plain Transport sit under countingTransport, as memberlist's own shim
// does.
type nodeAwareShim struct{ memberlist.Transport }

func (s nodeAwareShim) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return s.WriteTo(b, a.Addr)
}

func (s nodeAwareShim) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return s.DialTimeout(a.Addr, timeout)
}
