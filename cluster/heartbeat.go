package cluster

import "time"

// Suspicion. memberlist keeps its own suspect state private (v0.7 reports only join, update and
// leave), so /cluster/status derives one the SRE way: a member that memberlist still counts as
// alive but that this node has not heard from for suspectAfter is "suspect". Every node sends a
// tiny heartbeat to every other alive member each heartbeatEvery; at 3–50 nodes that is at most
// 49 packets of ~20 bytes a second per node, far below the usage deltas under load. memberlist's
// failure detector still decides "dead"; a suspect member keeps getting usage deltas.
const (
	heartbeatEvery    = time.Second
	suspectAfterBeats = 3
)

// msgHeartbeat starts a cluster-internal message; the state backend's messages start with
// their own version byte (state/crdt: 1), and a message with this one never reaches it.
const msgHeartbeat = 0xFF

func (n *Node) heartbeatInterval() time.Duration { return n.cfg.heartbeat }

// heartbeat sends this node's name to every other alive member until the node stops.
func (n *Node) heartbeat() {
	defer n.wg.Done()
	msg := append([]byte{msgHeartbeat}, n.cfg.NodeName...)
	t := time.NewTicker(n.heartbeatInterval())
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			n.SendToAll(msg)
		}
	}
}

// handleHeartbeat records when a member was last heard from. It reports whether msg was one.
func (n *Node) handleHeartbeat(msg []byte) bool {
	if len(msg) == 0 || msg[0] != msgHeartbeat {
		return false
	}
	name := msg[1:]
	now := time.Now()
	n.mu.Lock()
	if m := n.members[string(name)]; m != nil { // the conversion in a map index does not allocate
		m.heard = now
	}
	n.mu.Unlock()
	return true
}

// statusLocked is m's status as /cluster/status shows it: alive members this node has not
// heard from lately are suspect.
func (n *Node) statusLocked(m *memberState, now time.Time) string {
	if m.Status != StatusAlive || m.Name == n.cfg.NodeName {
		return m.Status
	}
	last := m.since
	if m.heard.After(last) {
		last = m.heard
	}
	if now.Sub(last) > suspectAfterBeats*n.heartbeatInterval() {
		return StatusSuspect
	}
	return StatusAlive
}
