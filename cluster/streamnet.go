package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// The raft port carries two protocols; the first byte of every connection says which, as on
// Consul's RPC port.
const (
	muxRaft    byte = 0x52 // 'R': raft's NetworkTransport
	muxForward byte = 0x46 // 'F': forwarded writes and peer status (forward.go)
)

const (
	// muxHeaderTimeout bounds how long an accepted connection may take to authenticate (the
	// TLS handshake) and send its protocol byte.
	muxHeaderTimeout = 5 * time.Second
	// maxPendingConns bounds the accepted connections still in that phase: a peer needs one
	// per dial, so this only sheds floods of unauthenticated connections.
	maxPendingConns = 64
	// maxInboundConns bounds the accepted connections open at once. Raft pools up to 3
	// connections per peer and each forwarded write or status call opens one, so a 50-node
	// cluster needs a few hundred.
	maxInboundConns = 1024
	// rejectLogEvery rate-limits the WARN about refused connections.
	rejectLogEvery = 10 * time.Second
)

var errMuxClosed = errors.New("cluster: raft port closed")

// streamNet opens the raft port and dials peers: real TCP, or in tests an in-memory network's
// streams (memnet_test.go).
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
// server by its first byte. With a cluster key, every connection must first complete a mutual
// TLS handshake (peertls): nothing of herd's protocols, not even the protocol byte, is read
// from a peer that has not proved it holds a cluster key. It tracks every connection, both
// accepted and dialed, so Close ends them all: raft's transport leaves its inbound handlers
// blocked on reads otherwise.
type mux struct {
	ln        net.Listener
	streams   streamNet
	advertise strAddr
	log       *slog.Logger

	serverTLS, clientTLS *tls.Config         // nil: plain TCP (no cluster key; cmd/herd keeps the port on loopback)
	onReject             func(reason string) // never nil
	pending              chan struct{}       // semaphore over connections not yet authenticated
	inbound              atomic.Int64        // accepted connections open

	rejectMu    sync.Mutex
	rejectLast  time.Time
	rejectQuiet int // refusals not logged since rejectLast

	raftCh  chan net.Conn
	handler func(net.Conn) // forwarded connections; set by serve

	mu     sync.Mutex
	conns  map[*muxConn]struct{}
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup
}

func newMux(ln net.Listener, streams streamNet, advertise string, log *slog.Logger, serverTLS, clientTLS *tls.Config, onReject func(string)) *mux {
	if onReject == nil {
		onReject = func(string) {}
	}
	return &mux{
		ln:        ln,
		streams:   streams,
		advertise: strAddr(advertise),
		log:       log,
		serverTLS: serverTLS,
		clientTLS: clientTLS,
		onReject:  onReject,
		pending:   make(chan struct{}, maxPendingConns),
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
		if m.inbound.Load() >= maxInboundConns {
			m.reject(RejectTooManyConns, c.RemoteAddr(), nil)
			_ = c.Close()
			continue
		}
		select {
		case m.pending <- struct{}{}:
		default:
			m.reject(RejectTooManyConns, c.RemoteAddr(), nil)
			_ = c.Close()
			continue
		}
		tc, ok := m.track(c, true)
		if !ok {
			<-m.pending
			return
		}
		m.wg.Add(1)
		go m.dispatch(tc)
	}
}

// dispatch authenticates an accepted connection, reads its protocol byte and hands it on.
func (m *mux) dispatch(tc *muxConn) {
	defer m.wg.Done()
	c, kind, err := m.open(tc)
	<-m.pending
	if err != nil {
		_ = tc.Close()
		return
	}
	switch kind {
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
		m.reject(RejectUnknownProtocol, tc.RemoteAddr(), fmt.Errorf("protocol byte %#x", kind))
		_ = tc.Close()
	}
}

// open runs the server side of the TLS handshake (with a cluster key) and reads the protocol
// byte, all within muxHeaderTimeout.
func (m *mux) open(tc *muxConn) (net.Conn, byte, error) {
	_ = tc.SetDeadline(time.Now().Add(muxHeaderTimeout))
	var c net.Conn = tc
	if m.serverTLS != nil {
		sc := tls.Server(tc, m.serverTLS)
		if err := sc.Handshake(); err != nil {
			m.reject(RejectUnauthenticated, tc.RemoteAddr(), err)
			return nil, 0, err
		}
		c = sc
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		if m.serverTLS != nil && isTLSAlert(err) {
			m.reject(RejectUnauthenticated, tc.RemoteAddr(), err)
		}
		return nil, 0, err
	}
	_ = tc.SetDeadline(time.Time{})
	return c, b[0], nil
}

// isTLSAlert reports a TLS-level failure (as opposed to a peer that just went away).
func isTLSAlert(err error) bool {
	var alert tls.AlertError
	var rec tls.RecordHeaderError
	var cv *tls.CertificateVerificationError
	return errors.As(err, &alert) || errors.As(err, &rec) || errors.As(err, &cv)
}

// reject counts a refused connection and logs it, at most once per rejectLogEvery.
func (m *mux) reject(reason string, from net.Addr, err error) {
	m.onReject(reason)
	m.rejectMu.Lock()
	now := time.Now()
	if now.Sub(m.rejectLast) < rejectLogEvery {
		m.rejectQuiet++
		m.rejectMu.Unlock()
		return
	}
	quiet := m.rejectQuiet
	m.rejectLast, m.rejectQuiet = now, 0
	m.rejectMu.Unlock()
	attrs := []any{"reason", reason, "from", from.String(), "earlier_refusals_not_logged", quiet}
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	m.log.Warn("raft port: refused a connection", attrs...)
}

// dial connects to a peer's raft port, authenticates (with a cluster key) and selects kind.
func (m *mux) dial(addr string, kind byte, timeout time.Duration) (net.Conn, error) {
	raw, err := m.streams.dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	tc, ok := m.track(raw, false)
	if !ok {
		return nil, errMuxClosed
	}
	_ = tc.SetDeadline(time.Now().Add(timeout))
	var c net.Conn = tc
	if m.clientTLS != nil {
		cc := tls.Client(tc, m.clientTLS)
		if err := cc.Handshake(); err != nil {
			_ = tc.Close()
			return nil, fmt.Errorf("cluster: raft port %s: TLS: %w", addr, err)
		}
		c = cc
	}
	if _, err := c.Write([]byte{kind}); err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("cluster: raft port %s: %w", addr, err)
	}
	_ = tc.SetDeadline(time.Time{})
	return c, nil
}

func (m *mux) track(c net.Conn, inbound bool) (*muxConn, bool) {
	tc := &muxConn{Conn: c, m: m, inbound: inbound}
	if inbound {
		m.inbound.Add(1)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		if inbound {
			m.inbound.Add(-1)
		}
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
	m       *mux
	inbound bool
	once    sync.Once
}

func (c *muxConn) Close() error {
	var err error
	c.once.Do(func() {
		c.m.mu.Lock()
		delete(c.m.conns, c)
		c.m.mu.Unlock()
		if c.inbound {
			c.m.inbound.Add(-1)
		}
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
