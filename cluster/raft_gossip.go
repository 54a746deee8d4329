package cluster

import (
	"encoding/json"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Node metadata layout: one flag byte, then (when raft runs) this node's raftMeta as JSON.
// The flag is metaLeaving once Leave has begun, so NotifyLeave can still tell left from dead.
const metaRaft = 'R'

// raftMeta is what a node publishes about its raft server through gossip; the bootstrap and
// the leader's membership checks read it.
type raftMeta struct {
	Addr     string `json:"a"`           // raft port, HOST:PORT
	HasState bool   `json:"s,omitempty"` // the node has raft state: it must never bootstrap
	Expect   int    `json:"e,omitempty"` // its bootstrap_expect
	Boot     string `json:"b,omitempty"` // hash of the configuration it bootstrapped, "" if it did not (this run)
	Proto    int    `json:"p,omitempty"` // the command formats its FSM applies (raftProto); 0: a herd from before they were numbered
	Epoch    uint64 `json:"i,omitempty"` // its incarnation (Config.Epoch), which the leader records in a Home; 0: a herd from before homes
	Served   uint64 `json:"v,omitempty"` // the config version it serves (0: its file's), for /cluster/status
}

// raftProto is what this build's FSM applies: every format up to protoHomes. Writers use a
// newer format only once every server publishes it (serversSpeak), so a rolling upgrade never
// hands a server an entry it cannot apply.
const raftProto = protoHomes

// Command formats, in the order they appeared.
const (
	protoConfigOps = 1 // config changes as single operations (configOp), not whole configs
	protoHomes     = 2 // the homes table (homesCommand)
)

// raftPeer is one gossip member as the raft layer sees it.
type raftPeer struct {
	meta   *raftMeta // nil: the node runs no raft
	status string    // StatusAlive, StatusDead or StatusLeft
	since  time.Time // last status change
}

// gossipRaft links gossip and raft: it holds the metadata this node publishes and what
// every peer published, and signals the raft loop on each change. The zero value is ready.
type gossipRaft struct {
	mu     sync.Mutex
	local  *raftMeta
	served uint64 // published with local (setServed)
	peers  map[string]*raftPeer
	notify chan struct{} // cap 1
}

func (g *gossipRaft) changes() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.notifyLocked()
}

func (g *gossipRaft) notifyLocked() chan struct{} {
	if g.notify == nil {
		g.notify = make(chan struct{}, 1)
	}
	return g.notify
}

func (g *gossipRaft) signalLocked() {
	select {
	case g.notifyLocked() <- struct{}{}:
	default:
	}
}

// setLocal replaces what this node publishes; the caller then asks memberlist to gossip it.
func (g *gossipRaft) setLocal(m *raftMeta) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if m != nil {
		c := *m
		m = &c
	}
	g.local = m
}

// setServed records the config version this node serves, which its metadata carries from now
// on; it reports whether that changed (the caller then asks memberlist to gossip it). It is kept
// apart from setLocal, which raft calls with fresh metadata at start, after the log replay
// may already have served a version.
func (g *gossipRaft) setServed(v uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	changed := g.served != v
	g.served = v
	return changed && g.local != nil
}

// servedVersions is the config version every node publishes that it serves, this one included;
// a node that runs no raft (or publishes no metadata yet) is missing.
func (g *gossipRaft) servedVersions(self string) map[string]uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]uint64, len(g.peers)+1)
	for name, p := range g.peers {
		if p.meta != nil {
			out[name] = p.meta.Served
		}
	}
	if g.local != nil {
		out[self] = g.served
	}
	return out
}

func (g *gossipRaft) localMeta() *raftMeta {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.local == nil {
		return nil
	}
	c := *g.local
	return &c
}

// encode builds this node's metadata. Without raft it is what it always was: nothing, or
// just the leaving flag.
func (g *gossipRaft) encode(leaving bool, limit int) []byte {
	flag := byte(metaRaft)
	if leaving {
		flag = metaLeaving
	}
	g.mu.Lock()
	local := g.local
	if local != nil {
		c := *local
		c.Served, local = g.served, &c
	}
	g.mu.Unlock()
	if local == nil {
		if leaving {
			return []byte{metaLeaving}
		}
		return nil
	}
	body, err := json.Marshal(local)
	if err != nil || 1+len(body) > limit {
		return []byte{flag} // cannot happen with sane addresses; peers then see no raft
	}
	return append([]byte{flag}, body...)
}

// decodeRaftMeta reads a peer's metadata; anything malformed or out of range means "no raft".
// memberlist caps metadata at 512 bytes.
func decodeRaftMeta(meta []byte) *raftMeta {
	if len(meta) < 2 || (meta[0] != metaRaft && meta[0] != metaLeaving) {
		return nil
	}
	var m raftMeta
	if err := json.Unmarshal(meta[1:], &m); err != nil {
		return nil
	}
	host, port, err := net.SplitHostPort(m.Addr)
	if err != nil || net.ParseIP(host) == nil || m.Expect < 0 || m.Expect > maxBootstrapExpect || len(m.Boot) > 16 {
		return nil
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return nil
	}
	return &m
}

// maxBootstrapExpect bounds a peer's bootstrap_expect as gossiped: far above any real cluster.
const maxBootstrapExpect = 1000

// observe records a memberlist event. It runs under memberlist's node lock: meta is only
// read here, never kept.
func (g *gossipRaft) observe(name string, meta []byte, status string) {
	m := decodeRaftMeta(meta)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.peers == nil {
		g.peers = map[string]*raftPeer{}
	}
	p := g.peers[name]
	if p == nil {
		p = &raftPeer{}
		g.peers[name] = p
	}
	if p.status != status {
		p.status = status
		p.since = time.Now()
	}
	if m != nil || status == StatusAlive {
		p.meta = m // a dead node's last metadata stays known
	}
	g.signalLocked()
}

// snapshot copies every peer, forgetting those gone for longer than gossip remembers them.
func (g *gossipRaft) snapshot() map[string]raftPeer {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]raftPeer, len(g.peers))
	for name, p := range g.peers {
		if p.status != StatusAlive && time.Since(p.since) > forgetDeadAfter {
			delete(g.peers, name)
			continue
		}
		c := *p
		if p.meta != nil {
			m := *p.meta
			c.meta = &m
		}
		out[name] = c
	}
	return out
}

// addrOf is the raft address name currently publishes, "" if unknown.
func (g *gossipRaft) addrOf(name string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p := g.peers[name]; p != nil && p.meta != nil {
		return p.meta.Addr
	}
	return ""
}

// gossipAddrs lets raft's transport dial a server at the address it gossips now, so a node
// that restarts on another IP stays reachable before the leader updates the configuration.
type gossipAddrs struct{ g *gossipRaft }

var _ raft.ServerAddressProvider = gossipAddrs{}

func (p gossipAddrs) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	if a := p.g.addrOf(string(id)); a != "" {
		return raft.ServerAddress(a), nil
	}
	return "", errNoGossipAddr
}
