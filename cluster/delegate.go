package cluster

import "github.com/hashicorp/memberlist"

// metaLeaving is the node metadata of a node that has started a graceful leave.
const metaLeaving = 'L'

// delegate adapts memberlist's Delegate to StateSync: user messages and push-pull state.
type delegate struct{ n *Node }

// eventDelegate turns memberlist's join/leave/update events into Member statuses.
type eventDelegate struct{ n *Node }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*eventDelegate)(nil)
)

// NodeMeta marks a node that is leaving, so peers can tell its dead message means "left":
// memberlist v0.7 never fills Node.State in its event callbacks. Once raft runs, the raft
// address and bootstrap state follow the flag byte (raft_gossip.go).
func (d *delegate) NodeMeta(limit int) []byte {
	return d.n.raftGossip.encode(d.n.leaving.Load(), limit)
}

func (d *delegate) NotifyMsg(msg []byte) { d.n.handleMessage(msg) }

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

func (d *delegate) LocalState(join bool) []byte {
	if d.n.sync == nil {
		return nil
	}
	return d.n.sync.LocalState(join)
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	if d.n.sync == nil || len(buf) == 0 {
		return
	}
	d.n.sync.MergeRemoteState(buf)
}

// memberlist calls these under its node lock with a pointer into its state: copy, never keep.

func (e *eventDelegate) NotifyJoin(m *memberlist.Node) {
	e.n.raftGossip.observe(m.Name, m.Meta, StatusAlive)
	e.n.setMember(m.Name, m.Addr, m.Port, StatusAlive)
}

func (e *eventDelegate) NotifyUpdate(m *memberlist.Node) {
	e.n.raftGossip.observe(m.Name, m.Meta, StatusAlive)
	e.n.setMember(m.Name, m.Addr, m.Port, StatusAlive)
}

func (e *eventDelegate) NotifyLeave(m *memberlist.Node) {
	status := StatusDead
	if len(m.Meta) > 0 && m.Meta[0] == metaLeaving {
		status = StatusLeft
	}
	e.n.raftGossip.observe(m.Name, m.Meta, status)
	e.n.setMember(m.Name, m.Addr, m.Port, status)
}
