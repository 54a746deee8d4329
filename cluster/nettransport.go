package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"
)

// netTransport is memberlist's transport on real sockets: UDP for packets, TCP for streams
// (push-pull, joins), on one address and port. It does what memberlist.NetTransport does,
// except that it reads packets into one buffer and hands memberlist a copy of each packet's
// size: NetTransport allocates a fresh 64 KiB buffer for every datagram, which at a few
// hundred small gossip packets a second made a 9-node cluster's nodes spend more on clearing
// and collecting those buffers than on the messages in them. Sending parses the address
// without resolving it (memberlist passes IP:PORT).
type netTransport struct {
	traffic
	log      *slog.Logger
	tcp      *net.TCPListener
	udp      *net.UDPConn
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	shutdown atomic.Bool
	done     chan struct{} // closed by Shutdown
	wg       sync.WaitGroup
}

var _ countedTransport = (*netTransport)(nil)

func (t *netTransport) counts() *traffic { return &t.traffic }

const (
	// maxDatagram is the largest UDP payload: no packet is cut short.
	maxDatagram = 65535
	// udpRecvBuf is the socket receive buffer asked for, as memberlist asks: room for a burst
	// of packets while the reader is busy. The kernel may grant less.
	udpRecvBuf = 2 << 20
)

// listenTransport binds TCP and then UDP on ip:port; with port 0 the kernel picks the TCP port
// and UDP takes the same one.
func listenTransport(ip net.IP, port int, log *slog.Logger) (*netTransport, error) {
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
	if err != nil {
		return nil, err
	}
	port = tcp.Addr().(*net.TCPAddr).Port
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		_ = tcp.Close()
		return nil, err
	}
	for size := udpRecvBuf; size >= 64<<10; size /= 2 {
		if udp.SetReadBuffer(size) == nil {
			break
		}
	}
	t := &netTransport{
		log:      log,
		tcp:      tcp,
		udp:      udp,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		done:     make(chan struct{}),
	}
	t.wg.Add(2)
	go t.acceptLoop()
	go t.readLoop()
	return t, nil
}

// port is the port bound, TCP and UDP alike.
func (t *netTransport) port() int { return t.tcp.Addr().(*net.TCPAddr).Port }

// FinalAdvertiseAddr is memberlist.NetTransport's: the address given, else the one bound,
// else (bound to every interface) a private address of this host.
func (t *netTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip != "" {
		addr := net.ParseIP(ip)
		if addr == nil {
			return nil, 0, fmt.Errorf("cluster: advertise address %q is not an IP address", ip)
		}
		if v4 := addr.To4(); v4 != nil {
			addr = v4
		}
		return addr, port, nil
	}
	addr := t.tcp.Addr().(*net.TCPAddr).IP
	if addr.IsUnspecified() {
		private, err := sockaddr.GetPrivateIP()
		if err != nil {
			return nil, 0, fmt.Errorf("cluster: find this host's address: %w", err)
		}
		if addr = net.ParseIP(private); addr == nil {
			return nil, 0, errors.New("cluster: no private IP address to advertise; set an advertise address")
		}
	}
	return addr, t.port(), nil
}

func (t *netTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	to, err := netip.ParseAddrPort(addr)
	if err != nil {
		// A name, not IP:PORT (memberlist resolves names before it sends; be lenient).
		ua, rerr := net.ResolveUDPAddr("udp", addr)
		if rerr != nil {
			return time.Time{}, rerr
		}
		to = ua.AddrPort()
	}
	_, err = t.udp.WriteToUDPAddrPort(b, to)
	t.sent.Add(uint64(len(b)))
	t.packetsSent.Add(1)
	return time.Now(), err
}

func (t *netTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

func (t *netTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }
func (t *netTransport) StreamCh() <-chan net.Conn           { return t.streamCh }

func (t *netTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, t: &t.traffic}, nil
}

func (t *netTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

// Shutdown closes both sockets and waits for the loops; one blocked handing over a packet or
// connection that nobody takes any more drops it.
func (t *netTransport) Shutdown() error {
	if t.shutdown.Swap(true) {
		return nil
	}
	close(t.done)
	err := errors.Join(t.tcp.Close(), t.udp.Close())
	t.wg.Wait()
	return err
}

// readLoop hands memberlist every datagram, copied out of the one read buffer.
func (t *netTransport) readLoop() {
	defer t.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := t.udp.ReadFromUDPAddrPort(buf)
		ts := time.Now()
		if err != nil {
			if t.shutdown.Load() {
				return
			}
			t.log.Warn("gossip: read a UDP packet", "err", err)
			continue
		}
		if n < 1 {
			continue // memberlist needs a message type byte
		}
		t.received.Add(uint64(n))
		t.packetsReceived.Add(1)
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		select {
		case t.packetCh <- &memberlist.Packet{Buf: bytes.Clone(buf[:n]), From: net.UDPAddrFromAddrPort(from), Timestamp: ts}:
		case <-t.done: // nobody reads any more (memberlist never started)
			return
		}
	}
}

// acceptLoop hands memberlist every TCP connection, backing off while accepting fails (out of
// file descriptors, say).
func (t *netTransport) acceptLoop() {
	defer t.wg.Done()
	var delay time.Duration
	for {
		conn, err := t.tcp.AcceptTCP()
		if err != nil {
			if t.shutdown.Load() {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t.log.Warn("gossip: accept a TCP connection", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-t.done:
			}
			continue
		}
		delay = 0
		select {
		case t.streamCh <- &countingConn{Conn: conn, t: &t.traffic}:
		case <-t.done:
			_ = conn.Close()
			return
		}
	}
}
