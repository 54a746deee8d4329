// Package cluster keeps the set of herd nodes (gossip membership over hashicorp/memberlist),
// carries the shared-state backend's messages between them, and orders config changes through
// raft (hashicorp/raft): ConfigStore is the replicated runtime config.
package cluster

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// StateSync is what the cluster carries for the shared-state backend (state/crdt).
type StateSync interface {
	HandleMessage(msg []byte)    // a peer's message arrived
	LocalState(join bool) []byte // state for push-pull: with a joining node (join), or periodic
	MergeRemoteState(buf []byte) // a peer's full state from push-pull
}

// Member statuses.
const (
	StatusAlive   = "alive"
	StatusSuspect = "suspect" // alive to memberlist, but silent for a few heartbeats (heartbeat.go)
	StatusDead    = "dead"
	StatusLeft    = "left"
)

// Member is one node as this node sees it.
type Member struct {
	Name, Addr string
	Status     string // StatusAlive, StatusSuspect, StatusDead or StatusLeft
	// ClockOffset is its clock minus this node's, estimated from heartbeats (0 for this node);
	// OffsetKnown is false until a heartbeat with a send time arrived.
	ClockOffset time.Duration
	OffsetKnown bool
	// Self marks this node. LastHeard is when its last heartbeat arrived (zero for this node
	// and for a member not heard from yet).
	Self      bool
	LastHeard time.Time
	// ServedConfig is the config version it publishes that it serves (0: its file's);
	// ServedKnown is false for a node that runs no raft or has not published it yet.
	ServedConfig uint64
	ServedKnown  bool
}

const (
	forgetLeftAfter = 10 * time.Minute
	forgetDeadAfter = 24 * time.Hour // dead members are retried (reconnect) until then
)

type memberState struct {
	Member
	ip    net.IP
	port  uint16
	since time.Time // last status change
	heard time.Time // last heartbeat from it

	// Its clock minus ours, from heartbeats (heartbeat.go).
	samples      [offsetSamples]time.Duration
	nSamples     int
	offset       time.Duration
	offsetKnown  bool
	offsetWarned time.Time
}

// Node is this process's membership in the cluster.
type Node struct {
	cfg  Config
	log  *slog.Logger
	ml   *memberlist.Memberlist
	tr   countedTransport
	sync StateSync
	addr string // advertised HOST:PORT

	mu       sync.Mutex
	members  map[string]*memberState
	onChange func(alive []Member)

	changed chan struct{} // cap 1: coalesces membership changes for the callback
	stop    chan struct{}
	wg      sync.WaitGroup

	alivePeers   atomic.Int64 // other members alive, as setMember last counted (heartbeatInterval)
	leaving      atomic.Bool
	joinAttempts atomic.Uint64 // seed joins tried, for tests

	// Resyncs with members that came back (resync, join.go): their addresses, waiting.
	resyncMu   sync.Mutex
	resyncWait map[string]struct{}
	resyncKick chan struct{} // cap 1: wakes maintain
	resyncs    atomic.Uint64 // push-pulls run by resync, for tests
	resendFrom time.Time     // the earliest silence start the next resend covers (zero: none due)
	resentFrom time.Time     // what the last resend covered from, at resentAt
	resentAt   time.Time
	// Full-state exchanges owed to members back from dead, this node being the next member
	// after them (exchangeWith, join.go): their addresses, and when each is due.
	exchangeWait map[string]exchangeDue
	exchanges    atomic.Uint64 // exchanges run, for tests
	// strangerHeard is set by a heartbeat from a name that is not a member (repairView).
	strangerHeard atomic.Bool
	stopOnce      sync.Once
	lifeMu        sync.Mutex // serialises Leave and Shutdown
	shutdown      bool

	raftGossip gossipRaft // raft addresses in gossip metadata (raft_gossip.go)

	// The raft port's mutual TLS (peertls), nil for both without a cluster key.
	tlsServer, tlsClient *tls.Config
}

// New starts gossip and joins the seeds. Seeds that cannot be reached now (or names that do
// not resolve yet) are retried in the background, so a node can start before its peers. The
// first join attempt is synchronous and bounded by memberlist's TCP timeout.
func New(cfg Config, sync StateSync) (*Node, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mc := cfg.memberlistConfig()
	tlsServer, tlsClient, err := cfg.peerTLS()
	if err != nil {
		return nil, err
	}
	var inner memberlist.Transport
	if cfg.transport != nil {
		inner = cfg.transport
	} else {
		inner, err = newNetTransport(mc, cfg.Logger)
		if err != nil {
			return nil, fmt.Errorf("cluster: listen on %s: %w", cfg.BindAddr, err)
		}
	}
	n := &Node{
		cfg:        cfg,
		log:        cfg.Logger.With("node", cfg.NodeName),
		tr:         counted(inner),
		sync:       sync,
		members:    map[string]*memberState{},
		changed:    make(chan struct{}, 1),
		stop:       make(chan struct{}),
		resyncWait: map[string]struct{}{},
		resyncKick: make(chan struct{}, 1),

		exchangeWait: map[string]exchangeDue{},

		tlsServer: tlsServer,
		tlsClient: tlsClient,
	}
	mc.Transport = n.tr
	mc.Delegate = &delegate{n: n}
	mc.Events = &eventDelegate{n: n}
	n.ml, err = memberlist.Create(mc)
	if err != nil {
		_ = n.tr.Shutdown()
		return nil, fmt.Errorf("cluster: start gossip: %w", err)
	}
	// Read once, before any peer can change our own entry.
	local := n.ml.LocalNode()
	n.addr = net.JoinHostPort(local.Addr.String(), fmt.Sprint(local.Port))
	n.log.Info("gossip started", "addr", n.addr, "encrypted", len(cfg.Key) > 0, "raft_port_tls", tlsServer != nil, "label", cfg.Label)

	n.wg.Add(3)
	go n.notifyLoop()
	go n.heartbeat()
	pending := n.joinSeeds()
	go n.maintain(pending)
	return n, nil
}

// newNetTransport binds real UDP and TCP sockets (nettransport.go); with port 0 it retries a
// few times because the free TCP port may be taken for UDP.
func newNetTransport(mc *memberlist.Config, log *slog.Logger) (memberlist.Transport, error) {
	ip := net.ParseIP(mc.BindAddr)
	if ip == nil {
		return nil, fmt.Errorf("bind address %q is not an IP address", mc.BindAddr)
	}
	tries := 1
	if mc.BindPort == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var t *netTransport
		t, err = listenTransport(ip, mc.BindPort, log)
		if err == nil {
			if mc.BindPort == 0 && mc.AdvertiseAddr == "" {
				mc.AdvertisePort = t.port()
			}
			return t, nil
		}
	}
	return nil, err
}

// Name is this node's name.
func (n *Node) Name() string { return n.cfg.NodeName }

// Addr is the HOST:PORT peers use to reach this node; with BindAddr port 0 it holds the port
// actually bound.
func (n *Node) Addr() string { return n.addr }

// Members returns every node known, including this one and nodes that died or left recently,
// sorted by name. An alive member not heard from lately shows as suspect (see heartbeat.go).
func (n *Node) Members() []Member {
	served := n.raftGossip.servedVersions(n.cfg.NodeName)
	beat := n.heartbeatInterval()
	n.mu.Lock()
	defer n.mu.Unlock()
	out := n.snapshotLocked(false)
	now := time.Now()
	for i := range out {
		m := n.members[out[i].Name]
		out[i].Status = n.statusLocked(m, now, beat)
		out[i].Self = m.Name == n.cfg.NodeName
		if !out[i].Self {
			out[i].LastHeard = m.heard
		}
		out[i].ServedConfig, out[i].ServedKnown = served[m.Name]
	}
	return out
}

func (n *Node) snapshotLocked(aliveOnly bool) []Member {
	out := make([]Member, 0, len(n.members))
	for _, m := range n.members {
		if !aliveOnly || m.Status == StatusAlive {
			mm := m.Member
			mm.ClockOffset, mm.OffsetKnown = m.offset, m.offsetKnown
			if m.Name == n.cfg.NodeName {
				mm.ClockOffset, mm.OffsetKnown = 0, true
			}
			out = append(out, mm)
		}
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// NumAlive counts alive (and suspected) members, this node included.
func (n *Node) NumAlive() int { return n.ml.NumMembers() }

// BytesSent counts gossip bytes written to the network (packets and streams, after
// encryption).
func (n *Node) BytesSent() uint64 { return n.tr.counts().sent.Load() }

// BytesReceived counts gossip bytes read from the network.
func (n *Node) BytesReceived() uint64 { return n.tr.counts().received.Load() }

// PacketsSent counts the datagrams this node sent: memberlist's probes and gossip, and every
// usage delta, once per peer it went to.
func (n *Node) PacketsSent() uint64 { return n.tr.counts().packetsSent.Load() }

// PacketsReceived counts the datagrams this node received.
func (n *Node) PacketsReceived() uint64 { return n.tr.counts().packetsReceived.Load() }

// OnMembersChanged sets the one callback that receives the alive members (this node
// included, sorted by name) after every change. It is called once right away, never
// concurrently with itself, and coalesces bursts: only the latest snapshot is delivered.
func (n *Node) OnMembersChanged(fn func(alive []Member)) {
	n.mu.Lock()
	n.onChange = fn
	n.mu.Unlock()
	n.signalChange()
}

func (n *Node) signalChange() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// notifyLoop calls the callback outside memberlist's locks (event delegates run under them).
func (n *Node) notifyLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case <-n.changed:
		}
		n.mu.Lock()
		fn := n.onChange
		alive := n.snapshotLocked(true)
		n.mu.Unlock()
		if fn != nil {
			fn(alive)
		}
	}
}

// SendToAll sends msg as one best-effort packet to every other alive member. It does not
// block on slow peers and does not keep msg. It implements state/crdt.Network.
func (n *Node) SendToAll(msg []byte) {
	n.mu.Lock()
	targets := make([]memberlist.Node, 0, len(n.members))
	for _, m := range n.members {
		if m.Status == StatusAlive && m.Name != n.cfg.NodeName {
			targets = append(targets, memberlist.Node{Name: m.Name, Addr: m.ip, Port: m.port})
		}
	}
	n.mu.Unlock()
	for i := range targets {
		if err := n.ml.SendBestEffort(&targets[i], msg); err != nil {
			n.log.Debug("gossip send failed", "to", targets[i].Name, "err", err)
		}
	}
}

// SendTo sends msg as one best-effort packet to the alive member named name, and reports
// whether it went out: false when name is not an alive member (this node is none), or the send
// failed. Like SendToAll it does not keep msg, and the message reaches name's StateSync.
func (n *Node) SendTo(name string, msg []byte) bool {
	n.mu.Lock()
	m := n.members[name]
	if m == nil || m.Status != StatusAlive || name == n.cfg.NodeName {
		n.mu.Unlock()
		return false
	}
	target := memberlist.Node{Name: m.Name, Addr: m.ip, Port: m.port}
	n.mu.Unlock()
	if err := n.ml.SendBestEffort(&target, msg); err != nil {
		n.log.Debug("gossip send failed", "to", name, "err", err)
		return false
	}
	return true
}

// Leave tells the cluster this node is going away (peers see it as "left", not "dead"), waits
// up to timeout for that to be gossiped, then shuts down. Call it on SIGTERM.
func (n *Node) Leave(timeout time.Duration) error {
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	if n.shutdown {
		return nil
	}
	n.stopBackground() // no seed retries while leaving
	// First gossip that we are leaving (node metadata), then the dead message itself.
	start := time.Now()
	n.leaving.Store(true)
	err := errors.Join(
		n.ml.UpdateNode(timeout/2),
		n.ml.Leave(max(timeout-time.Since(start), time.Millisecond)),
	)
	if err != nil {
		n.log.Warn("leave not confirmed", "err", err)
	} else {
		n.log.Info("left the cluster")
	}
	return errors.Join(err, n.shutdownLocked())
}

// Shutdown stops gossip without telling peers; they will declare this node dead.
func (n *Node) Shutdown() error {
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	if n.shutdown {
		return nil
	}
	return n.shutdownLocked()
}

func (n *Node) shutdownLocked() error {
	n.shutdown = true
	n.stopBackground()
	return n.ml.Shutdown()
}

func (n *Node) stopBackground() {
	n.stopOnce.Do(func() { close(n.stop) })
	n.wg.Wait()
}

// setMember records a status change from memberlist's event delegate. It runs under
// memberlist's node lock, so it only copies and signals.
func (n *Node) setMember(name string, ip net.IP, port uint16, status string) {
	n.mu.Lock()
	m := n.members[name]
	if m == nil {
		m = &memberState{}
		n.members[name] = m
	}
	m.Name = name
	m.ip = slices.Clone(ip)
	m.port = port
	m.Addr = net.JoinHostPort(ip.String(), fmt.Sprint(port))
	changed := m.Status != status
	back := changed && status == StatusAlive && m.Status != "" // it was dead or had left
	silentSince := m.since                                     // when it was declared so
	if !m.heard.IsZero() && m.heard.Before(silentSince) {
		silentSince = m.heard // or its last heartbeat, if that came before
	}
	if changed {
		m.since = time.Now()
	}
	m.Status = status
	addr := m.Addr
	peers := 0
	for _, o := range n.members {
		if o.Status == StatusAlive && o.Name != n.cfg.NodeName {
			peers++
		}
	}
	n.alivePeers.Store(int64(peers))
	next := back && name != n.cfg.NodeName && n.nextAfterLocked(name) == n.cfg.NodeName
	n.mu.Unlock()
	if back && name != n.cfg.NodeName {
		n.resync(addr, silentSince)
	}
	if next {
		n.exchangeWith(addr)
	}
	if changed && name != n.cfg.NodeName {
		switch status {
		case StatusAlive:
			n.log.Info("member alive", "member", name, "addr", addr)
		case StatusLeft:
			n.log.Info("member left", "member", name)
		default:
			n.log.Warn("member failed", "member", name, "addr", addr)
		}
	}
	n.signalChange()
}

func (n *Node) handleMessage(msg []byte) {
	if n.handleHeartbeat(msg) {
		return
	}
	if n.sync != nil {
		n.sync.HandleMessage(bytes.Clone(msg))
	}
}
