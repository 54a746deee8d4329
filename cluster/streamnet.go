package cluster

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The raft port carries two protocols; the first byte of every connection says which, as on
// Consul's RPC port.
const (
	muxRaft    byte = 0x52 // 'R': raft's NetworkTransport
	muxForward byte = 0x46 // 'F': forwarded writes and peer status (forward.go)
)

// muxHeaderTimeout bounds how long an accepted connection may take to send its first byte.
const muxHeaderTimeout = 5 * time.Second

var errMuxClosed = errors.New("cluster: raft port closed")

// streamNet opens the raft port and dials peers: real TCP, or a Network's in-memory streams.
type streamNet interface {
	listen(addr string) (net.Listener, error)
	dial(addr string, timeout time.Duration) (net.Conn, error)
}

type tcpStreams struct{}

func (tcpStreams) listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

func (tcpStreams) dial(addr string, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, timeout)
}

// strAddr is a net.Addr that is just the advertised HOST:PORT, which raft uses as its own
// address.
type strAddr string

func (a strAddr) Network() string { return "tcp" }
func (a strAddr) String() string  { return string(a) }

// mux accepts connections on the raft port and hands each to raft or to the forwarding
// server by its first byte. It tracks every connection, both accepted and dialed, so Close
// ends them all: raft's transport leaves its inbound handlers blocked on reads otherwise.
type mux struct {
	ln        net.Listener
	streams   streamNet
	advertise strAddr
	log       *slog.Logger

	raftCh  chan net.Conn
	handler func(net.Conn) // forwarded connections; set by serve

	mu     sync.Mutex
	conns  map[*muxConn]struct{}
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup
}

func newMux(ln net.Listener, streams streamNet, advertise string, log *slog.Logger) *mux {
	return &mux{
		ln:        ln,
		streams:   streams,
		advertise: strAddr(advertise),
		log:       log,
		raftCh:    make(chan net.Conn),
		conns:     map[*muxConn]struct{}{},
		done:      make(chan struct{}),
	}
}

// serve starts accepting; handler serves forwarding connections, each on its own goroutine.
func (m *mux) serve(handler func(net.Conn)) {
	m.handler = handler
	m.wg.Add(1)
	go m.acceptLoop()
}

func (m *mux) acceptLoop() {
	defer m.wg.Done()
	var backoff time.Duration
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			// A listener error that is not our Close: back off rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			m.log.Warn("raft port accept failed", "err", err)
			select {
			case <-m.done:
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		tc, ok := m.track(c)
		if !ok {
			return
		}
		m.wg.Add(1)
		go m.dispatch(tc)
	}
}

func (m *mux) dispatch(c *muxConn) {
	defer m.wg.Done()
	var b [1]byte
	_ = c.SetReadDeadline(time.Now().Add(muxHeaderTimeout))
	if _, err := io.ReadFull(c, b[:]); err != nil {
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	switch b[0] {
	case muxRaft:
		select {
		case m.raftCh <- c:
		case <-m.done:
			_ = c.Close()
		}
	case muxForward:
		m.handler(c)
		_ = c.Close()
	default:
		m.log.Debug("raft port: unknown protocol byte", "byte", b[0], "from", c.RemoteAddr())
		_ = c.Close()
	}
}

// dial connects to a peer's raft port and selects kind.
func (m *mux) dial(addr string, kind byte, timeout time.Duration) (net.Conn, error) {
	c, err := m.streams.dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	tc, ok := m.track(c)
	if !ok {
		return nil, errMuxClosed
	}
	_ = tc.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := tc.Write([]byte{kind}); err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("cluster: raft port %s: %w", addr, err)
	}
	_ = tc.SetWriteDeadline(time.Time{})
	return tc, nil
}

func (m *mux) track(c net.Conn) (*muxConn, bool) {
	tc := &muxConn{Conn: c, m: m}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		_ = c.Close()
		return nil, false
	}
	m.conns[tc] = struct{}{}
	return tc, true
}

// close stops accepting, closes every connection and waits for the forwarding handlers.
func (m *mux) close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	conns := m.conns
	m.conns = nil
	m.mu.Unlock()
	err := m.ln.Close()
	for c := range conns {
		_ = c.Conn.Close()
	}
	m.wg.Wait()
	return err
}

type muxConn struct {
	net.Conn
	m    *mux
	once sync.Once
}

func (c *muxConn) Close() error {
	var err error
	c.once.Do(func() {
		c.m.mu.Lock()
		delete(c.m.conns, c)
		c.m.mu.Unlock()
		err = c.Conn.Close()
	})
	return err
}

// raftLayer is raft's view of the mux: the connections that chose raft, and dials that do.
type raftLayer struct{ m *mux }

var _ raft.StreamLayer = (*raftLayer)(nil)

func (l *raftLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.m.raftCh:
		return c, nil
	case <-l.m.done:
		return nil, errMuxClosed
	}
}

// Close closes the whole raft port: raft's transport calls it when raft shuts down, and the
// forwarding server must stop with it.
func (l *raftLayer) Close() error { return l.m.close() }

// Addr is the advertised address, which raft reports as its own.
func (l *raftLayer) Addr() net.Addr { return l.m.advertise }

func (l *raftLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return l.m.dial(string(addr), muxRaft, timeout)
}
