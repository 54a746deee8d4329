package crdt

import (
	"slices"
	"sync"
)

// memNet is an in-memory cluster network for tests: nodes by name, messages delivered at once
// (sync) or queued until Deliver, with partitions and drops. Deterministic: no goroutines.
type memNet struct {
	mu       sync.Mutex
	nodes    map[string]*Backend
	order    []string
	side     map[string]int // partition side; nodes on different sides cannot talk
	queue    bool           // queue messages until Deliver instead of delivering at once
	pending  []packet
	dropAll  bool // drop every message (lost packets)
	sent     int
	maxSize  int
	dropped  int
	echoFull bool // after delivering, push the receiver's full state back to the sender
}

type packet struct {
	from, to string
	msg      []byte
}

func newMemNet() *memNet {
	return &memNet{nodes: map[string]*Backend{}, side: map[string]int{}}
}

// endpoint is one node's view of the network.
type endpoint struct {
	n    *memNet
	name string
}

var _ Network = endpoint{}

func (e endpoint) SendToAll(msg []byte) {
	e.n.send(e.name, "", msg)
}

func (e endpoint) SendTo(name string, msg []byte) bool {
	return e.n.send(e.name, name, msg) > 0
}

// add registers (or replaces, for a restart) node name's backend.
func (n *memNet) add(name string, b *Backend) {
	n.mu.Lock()
	if _, ok := n.nodes[name]; !ok {
		n.order = append(n.order, name)
	}
	n.nodes[name] = b
	n.mu.Unlock()
	b.SetNetwork(endpoint{n: n, name: name})
}

// remove takes node name off the network, as a crash would.
func (n *memNet) remove(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.nodes, name)
	n.order = slices.DeleteFunc(n.order, func(s string) bool { return s == name })
}

func (n *memNet) partition(sides map[string]int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.side = sides
}

func (n *memNet) heal() { n.partition(map[string]int{}) }

func (n *memNet) reachable(a, b string) bool { return n.side[a] == n.side[b] }

// send sends msg from node from to node to, or to every other node when to is "", and
// returns how many it went to.
func (n *memNet) send(from, to string, msg []byte) int {
	n.mu.Lock()
	n.sent++
	n.maxSize = max(n.maxSize, len(msg))
	var out []packet
	for _, name := range n.order {
		if name == from || (to != "" && name != to) {
			continue
		}
		to := name
		if n.dropAll || !n.reachable(from, to) {
			n.dropped++
			continue
		}
		out = append(out, packet{from: from, to: to, msg: slices.Clone(msg)}) // SendToAll may not keep msg
	}
	sent := len(out)
	if n.queue {
		n.pending = append(n.pending, out...)
		out = nil
	}
	n.mu.Unlock()
	n.deliver(out)
	return sent
}

func (n *memNet) deliver(ps []packet) {
	for _, p := range ps {
		n.mu.Lock()
		to, from := n.nodes[p.to], n.nodes[p.from]
		echo := n.echoFull
		n.mu.Unlock()
		if to == nil {
			continue
		}
		to.HandleMessage(p.msg)
		if echo && from != nil {
			// Uncompressed, as an older node sends it: compressing the whole state after every
			// delivery made the echoing tests 20 times slower under -race, and compression has
			// tests of its own.
			from.MergeRemoteState(to.fullState(false))
		}
	}
}

// Deliver delivers every queued message.
func (n *memNet) Deliver() {
	n.mu.Lock()
	ps := n.pending
	n.pending = nil
	n.mu.Unlock()
	n.deliver(ps)
}

// pushPull runs a full-state exchange between every pair of reachable nodes, as memberlist's
// periodic push-pull does.
func (n *memNet) pushPull() {
	n.mu.Lock()
	names := slices.Clone(n.order)
	n.mu.Unlock()
	for i, a := range names {
		for _, b := range names[i+1:] {
			n.mu.Lock()
			na, nb, ok := n.nodes[a], n.nodes[b], n.reachable(a, b)
			n.mu.Unlock()
			if ok {
				sa, sb := na.LocalState(true), nb.LocalState(true)
				nb.MergeRemoteState(sa)
				na.MergeRemoteState(sb)
			}
		}
	}
}

// flushAll flushes every node's pending deltas.
func (n *memNet) flushAll() {
	n.mu.Lock()
	bs := make([]*Backend, 0, len(n.order))
	for _, name := range n.order {
		bs = append(bs, n.nodes[name])
	}
	n.mu.Unlock()
	for _, b := range bs {
		b.Flush()
	}
}
