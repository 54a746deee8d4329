package cluster

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Network is an in-memory network for running many nodes in one process. It can drop packets,
// delay traffic and partition nodes, so tests exercise failure detection without real sockets
// or sleeps. The zero value is not usable; call NewNetwork.
type Network struct {
	mu       sync.Mutex
	nodes    map[string]*memTransport
	blocked  map[[2]string]bool // unordered pairs of addresses that cannot talk
	dropRate float64            // probability that a packet (not a stream) is lost
	delay    time.Duration      // one-way latency for packets and stream dials

	// raft ports (streamnet_mem.go): listeners by address, and open streams so a partition
	// can cut them
	streams     map[string]*memStreamListener
	streamConns map[*memStreamConn]struct{}
}

// NewNetwork returns an empty, fully connected network without loss or delay.
func NewNetwork() *Network {
	return &Network{nodes: map[string]*memTransport{}, blocked: map[[2]string]bool{}}
}

// Node attaches a transport at addr ("IP:PORT", e.g. "127.0.0.1:7946") and returns it for
// Config.Transport. Attaching an address whose previous transport was shut down models a
// restart; attaching over a live one replaces it.
func (n *Network) Node(addr string) memberlist.Transport {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		panic(fmt.Sprintf("cluster: memnet address %q: %v", addr, err))
	}
	ip := net.ParseIP(host)
	p, err := strconv.Atoi(port)
	if ip == nil || err != nil {
		panic(fmt.Sprintf("cluster: memnet address %q must be IP:PORT", addr))
	}
	t := &memTransport{
		net:      n,
		addr:     memAddr(addr),
		ip:       ip,
		port:     p,
		packetCh: make(chan *memberlist.Packet, 4096),
		streamCh: make(chan net.Conn),
		done:     make(chan struct{}),
	}
	n.mu.Lock()
	old := n.nodes[addr]
	n.nodes[addr] = t
	n.mu.Unlock()
	if old != nil {
		_ = old.Shutdown()
	}
	return t
}

// Partition cuts every node in groupA off from every node in groupB (addresses as given to
// Node), their raft streams included. Partitions accumulate until Heal.
func (n *Network) Partition(groupA, groupB []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, a := range groupA {
		for _, b := range groupB {
			n.blocked[pairKey(a, b)] = true
		}
	}
	n.cutStreamsLocked()
}

// Heal removes every partition.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.blocked)
}

// SetDropRate makes each packet get lost with probability p (0..1). Streams are reliable, as
// TCP is.
func (n *Network) SetDropRate(p float64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dropRate = p
}

// SetDelay adds one-way latency d to every packet and stream dial.
func (n *Network) SetDelay(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.delay = d
}

func pairKey(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

var errNoRoute = errors.New("cluster: memnet: no route to host")

// route returns the live transport at to if from can reach it, plus the current delay and
// whether a packet should be dropped.
func (n *Network) route(from, to string) (dst *memTransport, delay time.Duration, drop bool, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	dst = n.nodes[to]
	if dst == nil || dst.isShutdown() || n.blocked[pairKey(from, to)] {
		return nil, 0, false, fmt.Errorf("%s -> %s: %w", from, to, errNoRoute)
	}
	return dst, n.delay, n.dropRate > 0 && rand.Float64() < n.dropRate, nil
}

type memAddr string

func (a memAddr) Network() string { return "memnet" }
func (a memAddr) String() string  { return string(a) }

// memTransport implements memberlist.Transport over a Network.
type memTransport struct {
	net      *Network
	addr     memAddr
	ip       net.IP
	port     int
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn

	closeOnce sync.Once
	done      chan struct{}
}

var (
	_ memberlist.Transport = (*memTransport)(nil)
)

func (t *memTransport) isShutdown() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// FinalAdvertiseAddr ignores the configured advertise address: in memory a node is reachable
// only at the address it was attached with.
func (t *memTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return t.ip, t.port, nil
}

// WriteTo behaves like UDP: an unreachable or dropped packet is lost silently.
func (t *memTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	now := time.Now()
	if t.isShutdown() {
		return now, errors.New("cluster: memnet: transport shut down")
	}
	dst, delay, drop, err := t.net.route(string(t.addr), addr)
	if err != nil || drop {
		return now, nil
	}
	buf := append([]byte(nil), b...)
	if delay <= 0 {
		dst.deliver(buf, t.addr, now)
		return now, nil
	}
	time.AfterFunc(delay, func() {
		// The network may have been partitioned while the packet was in flight.
		if dst, _, _, err := t.net.route(string(t.addr), addr); err == nil {
			dst.deliver(buf, t.addr, time.Now())
		}
	})
	return now, nil
}

func (t *memTransport) deliver(buf []byte, from memAddr, ts time.Time) {
	select {
	case t.packetCh <- &memberlist.Packet{Buf: buf, From: from, Timestamp: ts}:
	case <-t.done:
	default: // receive buffer full: lost, as with UDP
	}
}

func (t *memTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *memTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	dst, delay, _, err := t.net.route(string(t.addr), addr)
	if err != nil {
		return nil, err
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-deadline.C:
			return nil, fmt.Errorf("cluster: memnet: dial %s: timeout", addr)
		}
	}
	local, remote := net.Pipe()
	select {
	case dst.streamCh <- &memConn{Conn: remote, local: memAddr(addr), remote: t.addr}:
		return &memConn{Conn: local, local: t.addr, remote: memAddr(addr)}, nil
	case <-dst.done:
		err = fmt.Errorf("%s -> %s: %w", t.addr, addr, errNoRoute)
	case <-t.done:
		err = errors.New("cluster: memnet: transport shut down")
	case <-deadline.C:
		err = fmt.Errorf("cluster: memnet: dial %s: timeout", addr)
	}
	_ = local.Close()
	_ = remote.Close()
	return nil, err
}

func (t *memTransport) StreamCh() <-chan net.Conn { return t.streamCh }

func (t *memTransport) Shutdown() error {
	t.closeOnce.Do(func() { close(t.done) })
	return nil
}

// memConn gives a pipe end the addresses memberlist logs and checks.
type memConn struct {
	net.Conn
	local, remote memAddr
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }
