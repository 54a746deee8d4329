package crdt

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
)

// Near a limit every node admits against a view that lacks what the others admitted during the
// last propagation delay, so in a burst each of n nodes used to see the same free slots and
// take all of them: up to n times the remaining. The share check splits the remaining instead.
//
// The base is what every node has known for a while: the merged window minus what this node
// admitted, and what peers' deltas brought, within the last horizon (H: twice the longest
// recent propagation delay, and at least 2 s). Remaining-at-base = limit - base. A node admits only while its own
// admissions of the last horizon, the new one included, stay within its share of that:
//
//	own recent + r <= share x (limit - (merged - own recent - peers' recent))
//
// The shares of all nodes add up to 1, so while the nodes agree on the base (every admission
// older than H has reached everyone) what they admit together within a horizon stays within
// what remained. Admissions move into the base after H, and the share applies again to what is
// left, so the remaining fills geometrically within a few horizons, never stalls for longer.
// The usual check against the merged window still applies first: the share check only ever
// refuses more, never less, so every other bound (k x limit under a k-way partition) stands.
//
// A node's share is a quarter split evenly over the n live nodes and three quarters in
// proportion to each incarnation's admissions in the window's buckets that ended at least a
// horizon ago, which every node knows alike: a hot node gets most of what remains, and a node
// whose demand is new still gets 1/(4n).
//
// One at a time: a share of less than one request would leave the last units of a limit to
// nobody (with rpm 6 on three nodes, a node without history could never admit). So a node that
// has seen no admission within the last horizon, neither its own nor in a peer's delta, and
// refused none, admits one request on the merged window alone: sparse demand, where requests
// are spaced wider than the horizon, uses the whole limit. A node that was refused lately has
// demand that the others may have too, and waits for its share, or for the window to slide:
// under contention up to n-1 units (4n-1 if the demand sits on a node without history) stay
// unused until then, rather than every node taking one at once. The price of the exception:
// nodes that each get a first request at the same quiet moment, while fewer units remain than
// there are nodes, take one each, so a burst that meets a nearly full window can go up to n-1
// over.
//
// Push-pull merges are not "recent": they bring old counts that were never admitted within a
// share, so they go straight into the base (which can only make the check stricter).

const (
	// shareHorizonMin and shareHorizonMax bound the horizon H. Below: a LAN delta takes 1-5 ms,
	// but the first burst after a quiet spell meets a horizon sized by quiet deltas while the
	// burst itself slows delivery a hundredfold on a busy host: herdbench cluster, 3 nodes and
	// its load on 2 CPUs, measured a p99 of 0.9 s in a burst of 1500, and with a 50 ms minimum
	// the nodes' first admissions left their recent counts before the others had them (21 %
	// over). A long horizon costs little: balanced demand never meets its share before the
	// last few units, and it delays only what a node beyond its share would take. Above:
	// deltas slower than that mean the cluster is not healthy; the share check would only
	// slow admissions more.
	shareHorizonMin = 2 * time.Second
	shareHorizonMax = 5 * time.Second
	// delayMemory is how long the largest delta delay seen keeps the horizon up: the horizon
	// is twice the largest delay of the last one to two of these.
	delayMemory = 30 * time.Second
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

// recent counts what was admitted within the last horizon: this node's admissions and what
// peers' deltas added. Two slots of at least H each, so a count stays between H and 3H; tot is
// both slots, so that Admit reads each count once. Counts saturate at window.MaxCount, so that
// sums of a few stay far from overflow.
type recent struct {
	start    int64 // Unix ns when cur began
	cur, tot [numRecent]int64
}

// roll starts a new slot once the current one is H old, at ns.
func (r *recent) roll(ns, h int64) {
	switch d := ns - r.start; {
	case d < 0:
		r.start = ns // the clock stepped back: keep the counts, for at least H from now
	case d >= 2*h:
		r.cur, r.tot, r.start = [numRecent]int64{}, [numRecent]int64{}, ns
	case d >= h:
		r.tot, r.cur, r.start = r.cur, [numRecent]int64{}, ns
	}
}

// add counts n (at most window.MaxCount; less than 0 counts nothing) in count i.
func (r *recent) add(i int, n int64) {
	n = max(n, 0)
	r.cur[i] = min(r.cur[i]+n, window.MaxCount)
	r.tot[i] = min(r.tot[i]+n, window.MaxCount)
}

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
func (c *counter) withinShare(ns, h int64, lim state.Limits, r state.Reservation) bool {
	if c.shareFits(h, lim, r) {
		return true
	}
	t := &c.recent.tot
	quiet := t[ownReq]|t[ownTok]|t[peerReq]|t[peerTok] == 0
	return quiet && (c.refusedAt == 0 || ns-c.refusedAt >= h || ns < c.refusedAt)
}

// shareFits reports whether r stays within this node's share of what remains.
func (c *counter) shareFits(h int64, lim state.Limits, r state.Reservation) bool {
	n := c.nodes()
	if n <= 1 {
		return true // nobody else admits: the merged window is exact
	}
	req, tok := c.w.Sums()
	return c.dimFits(n, h, lim.RPM, req, r.Requests, ownReq) && c.dimFits(n, h, lim.TPM, tok, r.Tokens, ownTok)
}

// dimFits is shareFits for one limit: requests (own is ownReq) or tokens (ownTok).
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
// the requests every incarnation counted in the window's buckets that ended at least a horizon
// h ago (1/n when there are none). Those are what every node knows alike: in a burst across a
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
		for b := inc.newest - ringSize + 1; b <= inc.newest; b++ {
			cl := &inc.cells[window.Slot(b)]
			if x := b - inc.shift; cl.bucket == b && x <= last && c.w.Holds(x) {
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

// horizon is H: twice the largest delta delay seen in the last one to two delayMemory
// periods, within [shareHorizonMin, shareHorizonMax]. Admit reads it without a lock.
type horizon struct {
	h   atomic.Int64 // ns
	min int64        // shareHorizonMin, but for tests

	mu        sync.Mutex
	start     int64 // Unix ns when cur began
	cur, prev int64 // largest delay in this and the previous period
}

func newHorizon(min time.Duration) *horizon {
	h := &horizon{min: int64(min)}
	h.h.Store(h.min)
	return h
}

func (h *horizon) get() int64 { return h.h.Load() }

// observe records a delta's delay d, received at ns. A zero d only rolls the periods.
func (h *horizon) observe(d, ns int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch e := ns - h.start; {
	case e < 0:
		h.start = ns
	case e >= 2*int64(delayMemory):
		h.cur, h.prev, h.start = 0, 0, ns
	case e >= int64(delayMemory):
		h.prev, h.cur, h.start = h.cur, 0, ns
	}
	h.cur = max(h.cur, d)
	h.h.Store(min(max(2*max(h.cur, h.prev), h.min), int64(shareHorizonMax)))
}
