package crdt

import (
	"math/bits"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
)

// Near a limit every node admits against a view that lacks what the others admitted during the
// last propagation delay, so in a burst each of n nodes used to see the same free slots and
// take all of them: up to n times the remaining. The share check splits the remaining instead.
//
// Time is cut into slots of 2^28 ns (268 ms) on the Unix time grid, the same on every node, and
// a count is recent while its slot is one of the last nine: H (eight slots, 2.15 s) to H plus a
// slot after it was made. Recent are this node's admissions, by when it made them, and what
// peers' deltas add, by the send time the delta carries (in this node's time, by the sender's
// clock offset). The base is the merged window less the recent counts: what was admitted
// before the current horizon began, which every node knows alike as long as deltas arrive
// within H. A node admits only while its recent admissions, the new one included, stay within
// its share of what the base leaves:
//
//	own recent + r <= share x (limit - (merged - own recent - peers' recent))
//
// The shares of all nodes add up to 1 and every node starts its horizon at the same moment, so
// all the admissions within a horizon, everyone's, stay within limit - base: no overshoot, not
// in a burst and not in a steady stream, while deltas arrive within H. When a slot leaves the
// horizon its admissions join the base and the share applies again to what is left, so the
// remaining fills within a few horizons. The usual check against the merged window applies
// first: the share check only ever refuses more, so every other bound (k x limit under a
// k-way partition) stands.
//
// H is fixed, not measured, because the argument needs every node to draw the line at the same
// moment. 2.15 s covers what herdbench cluster measured on a loaded host (a p99 of 0.9 s in a
// burst), and a long horizon costs little: a node beyond its share waits for the horizon, one
// within it never notices. Deltas slower than H let the nodes' bases drift apart, and the
// excess grows towards what it was without the check; clocks that differ draw the lines up to
// a slot apart, which loosens the check by what the cluster admits in a slot.
//
// A node's share is a quarter split evenly over the n live nodes and three quarters in
// proportion to each incarnation's admissions in the window's buckets that ended at least H
// ago, which every node knows alike: a hot node gets most of what remains, and a node whose
// demand is new still gets 1/(4n).
//
// One at a time: a share of less than one request would leave the last units of a limit to
// nobody (with rpm 6 on three nodes, a node without history could never admit). So a node that
// has seen no admission within the horizon, neither its own nor in a peer's delta, and refused
// none, admits one request on the merged window alone: sparse demand, where requests are
// spaced wider than the horizon, uses the whole limit. A node that was refused lately has
// demand that the others may have too, and waits for its share, or for the window to slide:
// under contention up to n-1 units (4n-1 if the demand sits on a node without history) stay
// unused until then, rather than every node taking one at once. The price of the exception:
// nodes that each get a first request at the same quiet moment, while fewer units remain than
// there are nodes, take one each, so a burst that meets a nearly full window can go up to n-1
// over.
//
// Push-pull merges are not recent: they bring old counts that were never admitted within a
// share, so they go straight into the base (which can only make the check stricter). Nor are
// delta counts sent before the horizon began (a delta held up longer than H).

const (
	// slotShift makes a slot 2^slotShift ns: a shift, not a division, on every admission.
	slotShift = 28
	// recentSlots is how many slots the horizon holds, the current one included; H is one
	// fewer. More slots, and a count leaves the horizon closer to H after it was made.
	recentSlots = 9
	// shareHorizon is H. See above for why it is fixed, and why about 2 s.
	shareHorizon = (recentSlots - 1) << slotShift * time.Nanosecond
	// evenShareDiv is 1/alpha: the part of the remaining split evenly over the live nodes.
	evenShareDiv = 4
)

// Indexes into recent's counts: own, then peers' (own+peerOff), of requests and of tokens.
const (
	ownReq = iota
	ownTok
	peerReq
	peerTok
	numRecent
	peerOff = peerReq - ownReq
)

// recent counts, per slot of the time grid, what this node admitted and what peers' deltas
// added within the horizon; tot is the sum over the slots, so that Admit reads each count once.
// A slot's counts saturate at window.MaxCount, so that the sums stay far from overflow.
type recent struct {
	head int64 // grid index of the newest slot
	tot  [numRecent]int64
	slot [recentSlots][numRecent]int64
}

// advance makes g the newest slot, dropping the slots that left the horizon. A g older than
// the newest (the clock stepped back) changes nothing: counts never leave early.
func (r *recent) advance(g int64) {
	if g <= r.head {
		return
	}
	if g-r.head >= recentSlots {
		*r = recent{head: g}
		return
	}
	for x := r.head + 1; x <= g; x++ {
		s := &r.slot[x%recentSlots]
		for i := range s {
			r.tot[i] -= s[i]
		}
		*s = [numRecent]int64{}
	}
	r.head = g
}

// add counts requests and tokens (less than 0 counts nothing) in counts i and i+1 (ownReq or
// peerReq) of slot g: in the newest slot if g is ahead of it, not at all if g has left the
// horizon (then they belong to the base).
func (r *recent) add(g int64, i int, requests, tokens int64) {
	if g <= r.head-recentSlots {
		return
	}
	s := &r.slot[min(g, r.head)%recentSlots]
	for j, n := range [2]int64{requests, tokens} {
		if n > 0 {
			old := s[i+j]
			s[i+j] = min(old+min(n, window.MaxCount), window.MaxCount)
			r.tot[i+j] += s[i+j] - old
		}
	}
}

// slotOf is the grid index of the slot holding Unix time ns (ns >= 0 for any real clock).
func (b *Backend) slotOf(ns int64) int64 { return max(ns, 0) >> b.slotShift }

// shareMemo is this node's share, num/den, for the head, node count and newest bucket it was
// computed at.
type shareMemo struct {
	head, nodes, last int64
	num, den          uint64
}

// nodes is how many nodes may admit: the live members when membership said (SetPeers), else
// the node names this counter knows (a restarted node's incarnations are one node).
func (c *counter) nodes() int64 {
	if p := c.b.peers.Load(); p >= 0 {
		return p + 1
	}
	if c.namesOf != len(c.incs) {
		c.namesOf, c.names = len(c.incs), 0
		for k := range c.incs {
			first := true
			for k2 := range c.incs {
				if k2.node == k.node && k2.epoch < k.epoch {
					first = false
					break
				}
			}
			if first {
				c.names++
			}
		}
	}
	return c.names
}

// withinShare reports whether r stays within this node's share of what remains of every limit
// r takes from, or may go one at a time (see above). r already fits the merged window. The
// common case is a handful of integer operations: the share is computed only when the even part
// alone would refuse.
func (c *counter) withinShare(ns int64, lim state.Limits, r state.Reservation) bool {
	n := c.nodes()
	if n <= 1 {
		return true // nobody else admits: the merged window is exact
	}
	h := c.b.horizon
	req, tok := c.w.Sums()
	if c.dimFits(n, h, lim.RPM, req, r.Requests, ownReq) && c.dimFits(n, h, lim.TPM, tok, r.Tokens, ownTok) {
		return true
	}
	t := &c.recent.tot
	quiet := t[ownReq]|t[ownTok]|t[peerReq]|t[peerTok] == 0
	return quiet && (c.refusedAt == 0 || ns-c.refusedAt >= h || ns < c.refusedAt)
}

// dimFits reports whether r stays within this node's share of what remains of one limit:
// requests (own is ownReq) or tokens (ownTok).
func (c *counter) dimFits(n, h, limit, used, take int64, own int) bool {
	if limit == 0 || take == 0 {
		return true // unlimited, or a reservation that takes nothing of this limit
	}
	// used <= limit-take, as the merged window fits r, so the room is >= 0; the recent counts
	// are at most window.MaxCount each: no sum below wraps a uint64.
	mine := uint64(c.recent.tot[own])
	base := uint64(limit-used) + mine + uint64(c.recent.tot[own+peerOff])
	want := mine + uint64(take)
	if leq(want, uint64(evenShareDiv*n), 1, base) {
		return true // within the even part, which every share holds
	}
	num, den := c.shareOf(n, h)
	return leq(want, den, num, base)
}

// leq reports whether a*b <= c*d, in 128 bits.
func leq(a, b, c, d uint64) bool {
	h1, l1 := bits.Mul64(a, b)
	h2, l2 := bits.Mul64(c, d)
	return h1 < h2 || (h1 == h2 && l1 <= l2)
}

// shareOf is this node's share of the remaining as num/den: 1/(4n) plus 3/4 of its part of
// the requests every incarnation counted in the window's buckets that ended at least the
// horizon h ago (1/n when there are none). Those are what every node knows alike: in a burst across a
// bucket boundary each node knows its own count of the bucket just completed at once and the
// others' only later, and taking it would give each node most of the remaining. A node's part
// includes what its earlier incarnations counted, so a restart keeps it. Computed once per
// bucket: the buckets it reads change only by late deltas.
func (c *counter) shareOf(n, h int64) (num, den uint64) {
	head := c.w.Head()
	last := head - 1 - (h+window.BucketNanos-1)/window.BucketNanos // newest bucket that ended h ago
	if m := &c.share; m.den != 0 && m.head == head && m.nodes == n && m.last == last {
		return m.num, m.den
	}
	var own, all int64
	for _, inc := range c.incs {
		var sum int64
		for b, cl := range inc.held() {
			if x := b - inc.shift; x <= last && c.w.Holds(x) {
				sum += max(cl.requests(), 0)
			}
		}
		all += sum
		if inc.key.node == c.own.key.node {
			own += sum
		}
	}
	if all == 0 {
		num, den = 1, uint64(n)
	} else {
		num = uint64(all) + (evenShareDiv-1)*uint64(n)*uint64(own)
		den = evenShareDiv * uint64(n) * uint64(all)
	}
	c.share = shareMemo{head: head, nodes: n, last: last, num: num, den: den}
	return num, den
}
