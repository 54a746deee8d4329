package cluster

import (
	"encoding/binary"
	"time"
)

// Suspicion. memberlist keeps its own suspect state private (v0.7 reports only join, update and
// leave), so /cluster/status derives one the SRE way: a member that memberlist still counts as
// alive but that this node has not heard from for suspectAfter is "suspect". Every node sends a
// tiny heartbeat to every other alive member each heartbeat interval (heartbeatEvery, longer
// beyond 8 peers: heartbeatInterval), at most 8 packets of ~20 bytes a second per node. memberlist's
// failure detector still decides "dead"; a suspect member keeps getting usage deltas.
const (
	heartbeatEvery    = time.Second
	suspectAfterBeats = 3
	// resyncAfterHalfBeats is the silence, in half heartbeat intervals, after which a member
	// that is heard again has this node resend its own counts since (resync, join.go): one
	// heartbeat missed. A partition too short for memberlist to declare anyone dead (7 s at 50
	// nodes) leaves no other trace, and what it cut off would otherwise wait for the repeats
	// five and ten seconds on (state/crdt).
	resyncAfterHalfBeats = 3
)

// msgHeartbeat starts a cluster-internal message; the state backend's messages start with
// their own version byte (state/crdt: 1), and a message with this one never reaches it.
//
//	heartbeat = 0xFF 0x01 sent:8 name   sent: the sender's clock (Config.Now), Unix ns, big-endian
//	          | 0xFF name               before clock offsets (names never start with 0x01)
const (
	msgHeartbeat   = 0xFF
	heartbeatTimed = 0x01
)

// Clock offsets. A heartbeat carries its send time, so a receiver sees the peer's clock minus
// its own plus the one-way delay. The delay only adds, so the largest of the last few samples
// (offsetSamples) is the best estimate: on a LAN it is within a millisecond or two of the true
// offset, and a queued or delayed heartbeat cannot make a peer look further off than it is.
const (
	offsetSamples  = 5
	offsetWarnOver = time.Second     // a peer this far off gets a WARN
	offsetWarnGap  = 5 * time.Minute // at most once per peer per this
)

// heartbeatsPerBeat is how many members a node heartbeats each interval at most: in a larger
// cluster the interval grows with it (heartbeatInterval), so a node sends at most this many
// heartbeats a second, not one to each of 49 peers, whatever the cluster's size.
const heartbeatsPerBeat = 8

// heartbeatInterval is how often a node heartbeats each member: heartbeatEvery up to
// heartbeatsPerBeat peers, and proportionally longer beyond (7 s at 50 nodes), so suspicion
// and resyncs after a silence take longer in a large cluster; memberlist still declares a
// node dead as fast as before. Every node derives it from the members it sees, alike.
func (n *Node) heartbeatInterval() time.Duration {
	peers := int(n.alivePeers.Load())
	return n.cfg.heartbeat * time.Duration(max(1, (peers+heartbeatsPerBeat-1)/heartbeatsPerBeat))
}

// heartbeat sends this node's name to every other alive member until the node stops.
func (n *Node) heartbeat() {
	defer n.wg.Done()
	msg := append(make([]byte, 10), n.cfg.NodeName...)
	msg[0], msg[1] = msgHeartbeat, heartbeatTimed
	t := time.NewTimer(n.heartbeatInterval())
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			binary.BigEndian.PutUint64(msg[2:], uint64(n.cfg.Now().UnixNano()))
			n.SendToAll(msg)
			t.Reset(n.heartbeatInterval())
		}
	}
}

// handleHeartbeat records when a member was last heard from. It reports whether msg was one.
func (n *Node) handleHeartbeat(msg []byte) bool {
	if len(msg) == 0 || msg[0] != msgHeartbeat {
		return false
	}
	name, sent := msg[1:], int64(0)
	if len(msg) >= 10 && msg[1] == heartbeatTimed {
		name, sent = msg[10:], int64(binary.BigEndian.Uint64(msg[2:]))
	}
	now := time.Now()
	beat := n.heartbeatInterval()
	n.mu.Lock()
	m := n.members[string(name)] // the conversion in a map index does not allocate
	var warn bool
	var back string
	var silentSince time.Time
	if m != nil {
		if !m.heard.IsZero() && now.Sub(m.heard) > resyncAfterHalfBeats*beat/2 {
			back, silentSince = m.Addr, m.heard // a partition that healed, or a node that woke
		}
		m.heard = now
		if sent != 0 {
			warn = m.observeOffset(time.Duration(sent-n.cfg.Now().UnixNano()), now)
		}
	} else if string(name) != n.cfg.NodeName {
		n.strangerHeard.Store(true) // a member that knows us, whom we do not know (repairView)
	}
	var offset time.Duration
	if warn {
		offset = m.offset
	}
	n.mu.Unlock()
	if back != "" {
		n.resync(back, n.silenceBegan(string(name), silentSince))
	}
	if warn {
		n.log.Warn("a peer's clock is off: limits shared with it are counted in the wrong seconds; run NTP on every node",
			"peer", string(name), "offset", offset.Round(time.Millisecond).String())
	}
	return true
}

// observeOffset records one sample of m's clock minus ours (delay included) and reports
// whether the estimate now calls for a WARN.
func (m *memberState) observeOffset(d time.Duration, now time.Time) bool {
	m.samples[m.nSamples%offsetSamples] = d
	m.nSamples++
	best := m.samples[0]
	for _, s := range m.samples[1:min(m.nSamples, offsetSamples)] {
		best = max(best, s)
	}
	m.offset, m.offsetKnown = best, true
	if best.Abs() > offsetWarnOver && now.Sub(m.offsetWarned) > offsetWarnGap {
		m.offsetWarned = now
		return true
	}
	return false
}

// ClockOffset returns member name's clock minus this node's, as estimated from its heartbeats
// (see observeOffset: within the network delay, never above the truth), and whether there is an
// estimate. The usage counters align that member's buckets by it (state/crdt Options.Offset).
// A member that died or left keeps its last estimate until it is forgotten.
func (n *Node) ClockOffset(name string) (time.Duration, bool) {
	if name == n.cfg.NodeName {
		return 0, true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	m := n.members[name]
	if m == nil {
		return 0, false
	}
	return m.offset, m.offsetKnown
}

// statusLocked is m's status as /cluster/status shows it: alive members this node has not
// heard from lately are suspect.
// beat is heartbeatInterval().
func (n *Node) statusLocked(m *memberState, now time.Time, beat time.Duration) string {
	if m.Status != StatusAlive || m.Name == n.cfg.NodeName {
		return m.Status
	}
	last := m.since
	if m.heard.After(last) {
		last = m.heard
	}
	if now.Sub(last) > suspectAfterBeats*beat {
		return StatusSuspect
	}
	return StatusAlive
}

// pauseLog is a StateSync that knows when each origin's deltas last paused (state/crdt's
// Backend does).
type pauseLog interface {
	LastPause(node string) (began time.Duration, ok bool)
}

// silenceBegan is when member name most likely fell silent, last heard at heard: the start of
// the latest pause in its deltas, if that came later. Heartbeats come every few seconds (7 s
// at 50 nodes), a busy member's deltas every few tens of milliseconds, so a silence measured
// from the last heartbeat seems to begin up to a heartbeat interval before the partition did,
// and the resend from there carried twice what was missed. No delta can arrive while the
// sides are apart, so a pause that began later began when they parted, or before.
func (n *Node) silenceBegan(name string, heard time.Time) time.Time {
	p, ok := n.sync.(pauseLog)
	if !ok {
		return heard
	}
	began, ok := p.LastPause(name)
	if !ok {
		return heard
	}
	if at := time.Now().Add(-began); at.After(heard) {
		return at
	}
	return heard
}
