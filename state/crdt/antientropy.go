package crdt

import (
	"encoding/binary"
	"iter"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-proxy/herd/state/internal/window"
)

// # Anti-entropy
//
// An origin's changes reach a peer in its deltas, their repeats and, after a silence, its
// resends: each sent once along some path, and a view can miss all of them. While membership
// settles after a partition, each relay forwards along its own ring and the rings differ, so
// both sendings of a resend can pass a node by; a receive queue that overflows in a heal's
// burst drops what it holds. Push-pull repaired that, but only every 30 s to a minute. So every
// origin has its peers check their views of its counts against its own, pair by pair:
//
//   - Every digest interval (one housekeeping tick per digestsPerTick peers, as heartbeats:
//     at most 8 packets a second per node, whatever the cluster's size), a node sends every
//     peer a digest of its own cells: for each group of digestGroup buckets of the last
//     digestGroups x digestGroup, the sum of every counter of every cell in it (msgDigest).
//   - A peer checks it checkAfter later, by when every delta the origin sent before the
//     digest has arrived unless it was lost: it sums its view of that incarnation the same way.
//     Only the origin writes its cells and each counter only grows, so a view's sum is below
//     the digest's exactly when it lacks something the origin had counted when it sent it; a
//     change made since (a stream settling in an old bucket) only raises the view.
//   - For the groups short, it asks the origin (msgAsk), which sends its cells in them to the
//     asker alone (msgRepair), at most once per repairGap per asker and repairsPerGap in all.
//     A repair merges as a full state does: nothing in it counts as recent (share.go), and
//     nothing is relayed.
//
// A view short of an origin is therefore whole within a digest interval plus checkAfter of
// losing the counts (7-10 s at 50 nodes), whatever path lost them. In a cluster whose deltas
// arrive it costs the digests only: one packet per peer per interval, and one pass over the
// counters per digest sent or checked.
//
// Wire (after wire.go's; older decoders reject these as malformed, and nothing else changes):
//
//	digest = 0x02 node:str epoch:uv hi:sv n:byte sum:uv*n   sum i: buckets hi-10i-9 .. hi-10i
//	ask    = 0x03 asker:str epoch:uv hi:sv groups:uv        a bit per group of that digest
//	repair = 0x04 message                                   a version-1 message, or compressed
const (
	msgDigest = 0x02
	msgAsk    = 0x03
	msgRepair = 0x04

	// digestGroup is the buckets one sum of a digest covers, and digestGroups how many sums
	// a digest holds: 50 of the window's 61 buckets, the oldest 11 left to clocks and delays
	// (a group is checked only while a view still holds all of it).
	digestGroup  = 10
	digestGroups = 5
	// digestsPerTick is how many peers one housekeeping tick's worth of digest interval
	// covers: every node sends its digest every ceil(peers/8) ticks.
	digestsPerTick = 8
	// checkAfter is how long a peer waits before checking a digest: deltas and relays take
	// a few hundred ms even at 50 nodes on a loaded machine, and a check made too early only
	// costs a needless repair.
	checkAfter = 2 * time.Second
	// repairGap is the least time between two repairs for one asker: a peer that asks again
	// and again costs at most one repair a second.
	repairGap = time.Second
	// repairsPerGap bounds the repairs a node sends within repairGap, whoever asks: asks
	// naming many askers (a peer holding the cluster key can write any name) cost at most
	// this many. A heal's asks beyond it wait for the next digest.
	repairsPerGap = 8
)

// antiEntropy is a Backend's side of the checks.
type antiEntropy struct {
	mu     sync.Mutex
	ticks  int64             // housekeeping ticks since the last digest sent
	checks map[string]digest // per origin: the digest waiting to be checked
	served map[string]int64  // per asker: when this node last repaired it (ns)
	gapAt  int64             // when the current repairGap of repairs began (ns)
	inGap  int               // repairs sent since gapAt
	packed [][]byte          // scratch for repairs (sendPacked), under mu
	enc    encoder

	digests, asks, repairs atomic.Uint64 // sent, for tests and the simulation
}

// digest is an origin's digest as received: due is when to check it, in this node's time (ns).
type digest struct {
	epoch uint64
	hi    int64
	n     int
	sums  [digestGroups]uint64
	due   int64
}

// weight is what a cell adds to a digest's sum: every counter of it, each bounded (check.go).
func (c *cell) weight() uint64 {
	return uint64(max(c.reqP, 0)) + uint64(max(c.reqN, 0)) + uint64(max(c.tokP, 0)) + uint64(max(c.tokN, 0))
}

// sumAdd adds saturating: a sum pinned at the top compares equal, never wraps below.
func sumAdd(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint64
}

// group returns the group of a digest up to bucket hi that bucket x falls in, and whether one does.
func group(hi, x int64) (int, bool) {
	if x > hi || x <= hi-digestGroup*digestGroups {
		return 0, false
	}
	return int((hi - x) / digestGroup), true
}

// grouped yields the cells inc holds in the groups of a digest up to bucket hi, with their
// group. Callers hold the counter's mutex.
func (inc *incState) grouped(hi int64) iter.Seq2[int, *cell] {
	return func(yield func(int, *cell) bool) {
		for x, cl := range inc.held() {
			if g, ok := group(hi, x); ok && !yield(g, cl) {
				return
			}
		}
	}
}

// checked yields the counters of the deployments in the config, each locked while the loop
// body runs: what the digests sum, the checks compare and the repairs send.
func (b *Backend) checked() iter.Seq[*counter] {
	return func(yield func(*counter) bool) {
		deps := b.deps.Load()
		for _, c := range b.all(nil) {
			if !deps.accepts(c.id) {
				continue
			}
			c.mu.Lock()
			more := yield(c)
			c.mu.Unlock()
			if !more {
				return
			}
		}
	}
}

// AntiEntropy counts the digests this node sent, the asks for a repair it sent, and the
// repairs it sent.
func (b *Backend) AntiEntropy() (digests, asks, repairs uint64) {
	return b.ae.digests.Load(), b.ae.asks.Load(), b.ae.repairs.Load()
}

// antiEntropyTick runs once per housekeeping tick (loop): it sends this node's digest when
// one is due, and checks the peers' digests that are due.
func (b *Backend) antiEntropyTick(ns int64) {
	box := b.net.Load()
	peers := b.peers.Load()
	if box == nil || peers == 0 {
		return
	}
	b.ae.mu.Lock()
	b.ae.ticks++
	send := b.ae.ticks >= max(1, (peers+digestsPerTick-1)/digestsPerTick)
	if send {
		b.ae.ticks = 0
	}
	b.ae.mu.Unlock()
	if send {
		if msg := b.digest(ns); msg != nil {
			box.n.SendToAll(msg)
			b.ae.digests.Add(1)
		}
	}
	b.check(box.n, ns)
}

// digest returns this node's digest as of ns, or nil while it has no count to check.
func (b *Backend) digest(ns int64) []byte {
	hi := window.BucketOf(ns)
	var sums [digestGroups]uint64
	var any bool
	for c := range b.checked() {
		for g, cl := range c.own.grouped(hi) {
			sums[g] = sumAdd(sums[g], cl.weight())
			any = true
		}
	}
	if !any {
		return nil
	}
	msg := []byte{msgDigest}
	msg = appendString(msg, b.self.node)
	msg = binary.AppendUvarint(msg, b.self.epoch)
	msg = binary.AppendVarint(msg, hi)
	msg = append(msg, digestGroups)
	for _, s := range sums {
		msg = binary.AppendUvarint(msg, s)
	}
	return msg
}

// member reports whether name is an alive member other than this node, as membership last
// said (any other name before it said anything).
func (b *Backend) member(name string) bool {
	if name == b.self.node {
		return false
	}
	r := b.ring.Load()
	if r == nil {
		return true
	}
	_, ok := slices.BinarySearch(r.names, name)
	return ok
}

// takeDigest reads a peer's digest (msgDigest), reporting whether it was well-formed, and, unless one of that origin's is waiting
// already, has it checked checkAfter from now.
func (b *Backend) takeDigest(msg []byte) bool {
	d := decoder{buf: msg[1:]}
	node := d.bytes()
	dg := digest{epoch: d.uvarint(), hi: d.varint(), n: int(d.byte())}
	if d.err != nil || dg.n == 0 || dg.n > digestGroups || dg.hi > maxBucket || dg.hi < -maxBucket {
		return false
	}
	for i := range dg.n {
		dg.sums[i] = d.uvarint()
	}
	if d.err != nil || len(d.buf) != 0 {
		return false
	}
	if !b.member(string(node)) {
		return true // nobody to ask
	}
	dg.due = b.now().UnixNano() + int64(checkAfter)
	b.ae.mu.Lock()
	defer b.ae.mu.Unlock()
	if b.ae.checks == nil {
		b.ae.checks = map[string]digest{}
	}
	if _, ok := b.ae.checks[string(node)]; !ok && len(b.ae.checks) < b.maxNodes {
		b.ae.checks[string(node)] = dg
	}
	return true
}

// dueCheck is a digest being checked, and this node's view of its origin.
type dueCheck struct {
	k    incKey
	d    digest
	view [digestGroups]uint64
}

// check compares this node's views with the digests due by ns, and asks each origin whose
// digest a view falls short of for the groups short.
func (b *Backend) check(n Network, ns int64) {
	var due []dueCheck
	b.ae.mu.Lock()
	for name, d := range b.ae.checks {
		if d.due <= ns {
			due = append(due, dueCheck{k: incKey{node: name, epoch: d.epoch}, d: d})
			delete(b.ae.checks, name)
		}
	}
	b.ae.mu.Unlock()
	if len(due) == 0 {
		return
	}
	for c := range b.checked() {
		for i := range due {
			if inc := c.incs[due[i].k]; inc != nil {
				for g, cl := range inc.grouped(due[i].d.hi) {
					due[i].view[g] = sumAdd(due[i].view[g], cl.weight())
				}
			}
		}
	}
	head := window.BucketOf(ns)
	for i := range due {
		dc := &due[i]
		a := b.offsets.of(dc.k.node, head)
		var groups uint64
		for g := range dc.d.n {
			// A group reaching where this view may have let cells go (clocks apart, a late
			// check) is not compared: its sum could only look short.
			if lo := dc.d.hi - int64(g+1)*digestGroup + 1; lo-a.shift <= head-ringSize+1 {
				continue
			}
			if dc.view[g] < dc.d.sums[g] {
				groups |= 1 << g
			}
		}
		if groups == 0 {
			continue
		}
		msg := []byte{msgAsk}
		msg = appendString(msg, b.self.node)
		msg = binary.AppendUvarint(msg, dc.k.epoch)
		msg = binary.AppendVarint(msg, dc.d.hi)
		msg = binary.AppendUvarint(msg, groups)
		if n.SendTo(dc.k.node, msg) {
			b.ae.asks.Add(1)
		}
	}
}

// takeAsk reads a peer's ask for a repair (msgAsk), reporting whether it was well-formed, and sends it this node's cells in the
// groups asked, unless the ask is for an earlier incarnation, a digest no longer in the
// window, or within repairGap of the last repair for that peer.
func (b *Backend) takeAsk(msg []byte) bool {
	d := decoder{buf: msg[1:]}
	asker := d.bytes()
	epoch, hi, groups := d.uvarint(), d.varint(), d.uvarint()
	if d.err != nil || len(d.buf) != 0 || groups == 0 || groups >= 1<<digestGroups {
		return false
	}
	ns := b.now().UnixNano()
	head := window.BucketOf(ns)
	if epoch != b.self.epoch || hi > head || hi < head-ringSize || !b.member(string(asker)) {
		return true
	}
	box := b.net.Load()
	if box == nil {
		return true
	}
	b.ae.mu.Lock()
	defer b.ae.mu.Unlock()
	if last, ok := b.ae.served[string(asker)]; ok && ns-last < int64(repairGap) {
		return true
	}
	if ns-b.ae.gapAt >= int64(repairGap) {
		b.ae.gapAt, b.ae.inGap = ns, 0
	}
	if b.ae.inGap >= repairsPerGap {
		return true
	}
	b.ae.inGap++
	if b.ae.served == nil || len(b.ae.served) >= b.maxNodes {
		b.ae.served = map[string]int64{} // the entries that matter are under repairGap old
	}
	b.ae.served[string(asker)] = ns
	var cells []cell
	sendPacked(box.n, string(asker), msgRepair, &b.ae.enc, &b.ae.packed, func(enc *encoder) {
		for c := range b.checked() {
			cells = cells[:0]
			for g, cl := range c.own.grouped(hi) {
				if groups&(1<<g) != 0 {
					cells = append(cells, *cl)
				}
			}
			if len(cells) > 0 {
				enc.record(b.self, c.id, c.own.ifVer, c.own.inFlight, cells)
			}
		}
	})
	b.ae.repairs.Add(1)
	return true
}
