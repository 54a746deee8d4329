package cluster

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// In-memory streams for the raft port. A stream endpoint belongs to a node's gossip address
// (its owner), so one Partition cuts a node's gossip and raft traffic together, and also
// closes the streams already open across the cut, as a real partition would break TCP
// connections (eventually).

// memStreams is the streamNet of one node on a Network.
type memStreams struct {
	net   *Network
	owner string // the node's gossip address, as given to Network.Node
}

func (s memStreams) listen(addr string) (net.Listener, error) {
	return s.net.listenStream(addr, s.owner)
}

func (s memStreams) dial(addr string, timeout time.Duration) (net.Conn, error) {
	return s.net.dialStream(s.owner, addr, timeout)
}

type memStreamListener struct {
	net   *Network
	addr  memAddr
	owner string
	ch    chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (n *Network) listenStream(addr, owner string) (*memStreamListener, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("cluster: memnet stream address %q: %w", addr, err)
	}
	l := &memStreamListener{
		net: n, addr: memAddr(addr), owner: owner,
		ch: make(chan net.Conn), done: make(chan struct{}),
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.streams == nil {
		n.streams = map[string]*memStreamListener{}
	}
	if old := n.streams[addr]; old != nil && !old.isClosed() {
		return nil, fmt.Errorf("cluster: memnet: stream address %s already in use", addr)
	}
	n.streams[addr] = l
	return l, nil
}

func (n *Network) dialStream(owner, addr string, timeout time.Duration) (net.Conn, error) {
	n.mu.Lock()
	l := n.streams[addr]
	if l == nil || l.isClosed() || n.blocked[pairKey(owner, l.owner)] {
		n.mu.Unlock()
		return nil, fmt.Errorf("%s -> %s: %w", owner, addr, errNoRoute)
	}
	delay := n.delay
	n.mu.Unlock()

	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-deadline.C:
			return nil, fmt.Errorf("cluster: memnet: dial %s: timeout", addr)
		}
	}
	a, b := net.Pipe()
	local := &memStreamConn{Conn: a, net: n, ends: [2]string{owner, l.owner}, local: memAddr(owner), remote: l.addr}
	remote := &memStreamConn{Conn: b, net: n, ends: [2]string{owner, l.owner}, local: l.addr, remote: memAddr(owner)}
	local.peer, remote.peer = remote, local
	// Register before handing over, so a Partition racing with the dial still cuts it.
	n.mu.Lock()
	if n.blocked[pairKey(owner, l.owner)] {
		n.mu.Unlock()
		_ = a.Close()
		_ = b.Close()
		return nil, fmt.Errorf("%s -> %s: %w", owner, addr, errNoRoute)
	}
	if n.streamConns == nil {
		n.streamConns = map[*memStreamConn]struct{}{}
	}
	n.streamConns[local] = struct{}{}
	n.mu.Unlock()
	select {
	case l.ch <- remote:
		return local, nil
	case <-l.done:
		_ = local.Close()
		return nil, fmt.Errorf("%s -> %s: %w", owner, addr, errNoRoute)
	case <-deadline.C:
		_ = local.Close()
		return nil, fmt.Errorf("cluster: memnet: dial %s: timeout", addr)
	}
}

// cutStreamsLocked closes the open streams between nodes that can no longer talk.
func (n *Network) cutStreamsLocked() {
	for c := range n.streamConns {
		if n.blocked[pairKey(c.ends[0], c.ends[1])] {
			delete(n.streamConns, c)
			// Close outside the lock's critical work would be nicer, but pipe Close never
			// blocks.
			_ = c.Conn.Close()
			_ = c.peer.Conn.Close()
		}
	}
}

func (l *memStreamListener) isClosed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *memStreamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, errors.New("cluster: memnet: listener closed")
	}
}

func (l *memStreamListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *memStreamListener) Addr() net.Addr { return l.addr }

// memStreamConn is one end of an in-memory stream; the dialing end is registered with the
// Network so partitions can cut it.
type memStreamConn struct {
	net.Conn
	net           *Network
	ends          [2]string // owners (gossip addresses) of both ends
	local, remote memAddr
	peer          *memStreamConn
}

func (c *memStreamConn) LocalAddr() net.Addr  { return c.local }
func (c *memStreamConn) RemoteAddr() net.Addr { return c.remote }

func (c *memStreamConn) Close() error {
	c.net.mu.Lock()
	delete(c.net.streamConns, c)
	delete(c.net.streamConns, c.peer)
	c.net.mu.Unlock()
	return c.Conn.Close()
}
