package crdt

import (
	"iter"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
)

// ringSize is the window's bucket count (state/internal/window): cells are kept per bucket.
const ringSize = window.RingSize

// incKey names one incarnation of one node: the key of its cells.
type incKey struct {
	node  string
	epoch uint64
}

// cell is one incarnation's counts in one bucket. Each field only grows.
type cell struct {
	bucket                 int64
	reqP, reqN, tokP, tokN int64
}

func (c *cell) requests() int64 { return c.reqP - c.reqN }
func (c *cell) tokens() int64   { return c.tokP - c.tokN }

// incState is what a counter knows of one incarnation: a ring of cells under the
// incarnation's own bucket numbers (its clock), and its in-flight count. Its cell for bucket b
// counts in this node's bucket b-shift (see "# Clocks" in the package doc), or in the head while
// that is still ahead of the head.
type incState struct {
	key      incKey
	cells    [ringSize]cell
	occ      uint64 // slots whose cell was written since it was last found stale (held)
	newest   int64  // newest bucket ever stored, its numbering; gone once that leaves the window
	shift    int64  // its bucket numbers minus ours, in buckets: 0 for this node's own
	inFlight int64  // calls in flight on that incarnation
	ifVer    uint64 // version of inFlight; 0 means never heard
	ifSeen   int64  // our bucket when ifVer last grew; a count not refreshed for a window expires

	// What this node relays of it at the next flush (relay.go): the slots of the cells that
	// came in relayed deltas, and whether the in-flight count did, the largest span they asked
	// for and the origin's oldest send time among them.
	fwd      uint64
	fwdIf    bool
	fwdSpan  int
	fwdStamp int64
}

// held yields inc's cells in the window of its newest bucket (newest-ringSize+1 .. newest),
// oldest first, with their buckets. It visits only the slots occ marks, and unmarks a slot whose
// cell has left that window: a peer that touched a deployment once costs one cell's visit, not
// the ring's, in every scan (a full state at 50 nodes x 500 deployments scanned 62 slots of
// each of 25,000 incarnations). Callers hold the counter's mutex.
func (inc *incState) held() iter.Seq2[int64, *cell] {
	return func(yield func(int64, *cell) bool) {
		lo := inc.newest - ringSize + 1
		start := window.Slot(lo)
		// Slots start..ringSize-1 hold buckets lo.., then slots 0..start-1 the rest.
		below := uint64(1)<<uint(start) - 1
		for _, mask := range [2]uint64{inc.occ &^ below, inc.occ & below} {
			for m := mask; m != 0; m &= m - 1 {
				s := int64(bits.TrailingZeros64(m))
				b := lo + (s-start+ringSize)%ringSize
				cl := &inc.cells[s]
				if cl.bucket != b {
					inc.occ &^= 1 << uint(s)
					continue
				}
				if !yield(b, cl) {
					return
				}
			}
		}
	}
}

// lateRepeat is how many buckets after a change its cell is sent a last time. The repeats one
// and two buckets on heal a packet lost on the way; those lateRepeat/2 and lateRepeat buckets
// on heal what a short partition cut off, or a relay that died before membership noticed
// (about 7 s at 50 nodes), within a few seconds of its end: heartbeats, which trigger a
// full-state exchange after a silence, come only every few seconds in a large cluster. A
// partition that lasts longer makes memberlist declare the other side dead, and its end
// triggers one (cluster's resync).
const lateRepeat = 10

// sentMark is what changed of a counter's own in one bucket.
type sentMark struct {
	bucket   int64
	cells    uint64 // slots
	inFlight bool
}

// relay is what a delta asks of a record's receiver: forward it to span ring successors under
// the origin's send time sent (0: the delta had none). span 0 asks nothing.
type relay struct {
	sent int64
	span int
}

// counter is one deployment's merged usage. One mutex guards everything, so Admit's check
// against the merged view and its reservation are one atomic step.
type counter struct {
	b  *Backend
	id string

	mu    sync.Mutex
	w     window.Ring // merged requests and tokens per bucket, every incarnation summed
	ifSum int64       // merged in flight, own included

	own   *incState
	incs  map[incKey]*incState // every incarnation, own included
	gcAt  int64                // head at the last garbage collection
	dirty uint64               // slots of own cells changed since the last flush
	ifDue bool                 // own in-flight changed since the last flush
	ifAt  int64                // bucket of the last in-flight announcement
	// ahead is the latest of our buckets a peer's cell maps to that was ahead of the head when
	// it merged: such cells count in the head until the head reaches them (advance).
	ahead int64
	// sent holds, for each of the last few buckets, the own cells' slots and whether the
	// in-flight count changed in it; takeDelta sends them again (repeats) one, two, lateRepeat/2
	// and lateRepeat buckets later. resentAt is the bucket it last did.
	sent     [lateRepeat + 1]sentMark
	resentAt int64
	// resendCells is the own cells' slots Backend.Resend marked, for the next flush; once sent
	// they go once more in the bucket after (again), not on the repeats' whole schedule: a
	// resend follows a silence that ended, and only a view of the cluster that still lagged
	// then misses it.
	resendCells uint64
	resendIf    bool // and the in-flight count
	again       sentMark
	relaying    []*incState // the incarnations with something to relay (incState.fwd), each once

	recent    recent    // own and peers' admissions of the last horizon (share.go)
	refusedAt int64     // Unix ns of this node's last refusal; 0 for none (share.go)
	share     shareMemo // this node's share of the remaining, memoised per bucket (share.go)
	names     int64     // node names among incs (share.go); namesOf != len(incs) means recount
	namesOf   int

	latency, ttft window.Samples

	// used is the deployment set's generation when this node last handed the counter out
	// (Backend.Counter); 0 if only peers' counts made it. See Backend.wanted. Last, so the
	// request path's fields keep their cache lines.
	used atomic.Uint64

	queued bool // in Backend.pending: the next flush visits it (queue); guarded by mu
}

func newCounter(b *Backend, id string) *counter {
	own := &incState{key: b.self}
	c := &counter{b: b, id: id, own: own, incs: map[incKey]*incState{b.self: own}}
	c.w.Reset(window.BucketOf(b.now().UnixNano()))
	c.gcAt = c.w.Head()
	c.ahead = c.w.Head()
	return c
}

func (c *counter) tick() int64 {
	now := c.b.now().UnixNano()
	c.advance(window.BucketOf(now))
	return now
}

// advance makes bucket x the head. Peers' cells that were ahead of the old head move from it
// to their own bucket, or to the new head while that is still behind them.
func (c *counter) advance(x int64) {
	old := c.w.Head()
	if x <= old {
		return
	}
	c.w.Advance(x)
	if c.ahead > old {
		c.moveAhead(old)
	}
}

// moveAhead re-places every peer cell that counted in bucket old (the head before an advance)
// because it mapped beyond it. Once per bucket, and only while some peer is ahead.
func (c *counter) moveAhead(old int64) {
	head := c.w.Head()
	for _, inc := range c.incs {
		if inc == c.own || inc.newest-inc.shift <= old {
			continue
		}
		for b, cl := range inc.held() {
			if b <= old+inc.shift {
				continue
			}
			if c.w.Holds(old) {
				c.w.Add(old, -cl.requests(), -cl.tokens())
			}
			c.w.Add(min(b-inc.shift, head), cl.requests(), cl.tokens())
		}
	}
}

// pos is where a cell of inc for its bucket b counts in the merged window: its bucket in our
// numbering, or the head while that is behind it. ok is false once it left the window.
func (c *counter) pos(inc *incState, b int64) (x int64, ok bool) {
	x = min(b-inc.shift, c.w.Head())
	return x, c.w.Holds(x)
}

// live reports whether inc still has a bucket in the window.
func (c *counter) live(inc *incState) bool {
	_, ok := c.pos(inc, inc.newest)
	return ok
}

// cellAt returns this node's own cell for bucket x, emptied if it held an older bucket (which
// has left the window: own buckets are the head's). x must be held.
func (c *counter) cellAt(inc *incState, x int64) *cell {
	cl := &inc.cells[window.Slot(x)]
	if cl.bucket != x {
		*cl = cell{bucket: x}
	}
	inc.occ |= 1 << uint(window.Slot(x))
	if x > inc.newest {
		inc.newest = x
	}
	return cl
}

// peerCellAt returns peer incarnation inc's cell for its bucket b, which must not be older than
// its newest bucket minus the window. An incarnation's cells are those of its newest bucket and
// the ringSize-1 before it: a newer bucket first uncounts the cells it pushes out of that range,
// which with a clock ahead of ours may still be in our window.
func (c *counter) peerCellAt(inc *incState, b int64) *cell {
	if b > inc.newest {
		for x, cl := range inc.held() {
			if x > b-ringSize {
				break
			}
			c.count(inc, cl, -1)
		}
		inc.newest = b
	}
	cl := &inc.cells[window.Slot(b)]
	if cl.bucket != b {
		*cl = cell{bucket: b}
	}
	inc.occ |= 1 << uint(window.Slot(b))
	return cl
}

// count adds (sign 1) or removes (-1) peer cell cl of inc in the merged window, where pos puts it.
func (c *counter) count(inc *incState, cl *cell, sign int64) {
	if x, ok := c.pos(inc, cl.bucket); ok {
		c.w.Add(x, sign*cl.requests(), sign*cl.tokens())
		if cl.bucket-inc.shift > c.w.Head() {
			c.ahead = max(c.ahead, cl.bucket-inc.shift)
		}
	}
}

// reshift moves every cell of peer incarnation inc in the merged window to where shift (a new
// estimate of its clock offset) puts it.
func (c *counter) reshift(inc *incState, shift int64) {
	if shift == inc.shift {
		return
	}
	for _, cl := range inc.held() {
		c.count(inc, cl, -1)
	}
	inc.shift = shift
	for _, cl := range inc.held() {
		c.count(inc, cl, 1)
	}
}

// addOwn counts a change of this node's requests and tokens in bucket x, if still held. The
// cell stays one peers accept (check.go): P within its bound, N within P, whatever the change,
// so a huge usage from an upstream cannot hide this node's counts from its peers, and a
// ticket ended twice cannot give back what others reserved. The merged window follows what
// the cell really changed by.
func (c *counter) addOwn(x, requests, tokens int64) {
	if !c.w.Holds(x) {
		return
	}
	cl := c.cellAt(c.own, x)
	r0, t0 := cl.requests(), cl.tokens()
	cl.reqP, cl.reqN = ownAdd(cl.reqP, cl.reqN, requests, maxCellRequests)
	cl.tokP, cl.tokN = ownAdd(cl.tokP, cl.tokN, tokens, maxCellTokens)
	c.w.Count(x, cl.requests()-r0, cl.tokens()-t0)
	c.dirty |= 1 << uint(window.Slot(x))
	c.changed()
}

// ownAdd adds d to a P/N pair with 0 <= n <= p <= bound: a gain to P up to bound, a loss to N
// up to P. Overflow-free for any d, given the invariant.
func ownAdd(p, n, d, bound int64) (int64, int64) {
	if d >= 0 {
		return p + min(d, bound-p), n
	}
	return p, n + min(-max(d, -bound), p-n)
}

func (c *counter) setOwnInFlight(n int64) {
	c.ifSum += n - c.own.inFlight
	c.own.inFlight = n
	c.own.ifVer++
	c.ifDue = true
	c.changed()
}

func (c *counter) load() state.Load {
	req, tok := c.w.Sums()
	return state.Load{Requests: req, Tokens: tok, InFlight: c.ifSum}
}

// Admit checks r against the merged view and, if it fits and is within this node's share of
// what remains (share.go), reserves it in the newest bucket.
func (c *counter) Admit(lim state.Limits, r state.Reservation) (state.Ticket, error) {
	r = window.Sane(r)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.tick()
	if !c.load().Fits(lim, r) {
		c.refusedAt = now
		return state.Ticket{}, &state.NoCapacityError{RetryAfter: c.retryAfter(now, lim, r)}
	}
	g := c.b.slotOf(now)
	c.recent.advance(g)
	if (lim.RPM > 0 || lim.TPM > 0) && !c.withinShare(now, lim, r) {
		// Room comes back as this node's recent admissions leave the horizon, a slot at a time.
		c.refusedAt = now
		return state.Ticket{}, &state.NoCapacityError{RetryAfter: time.Duration((g+1)<<c.b.slotShift - now)}
	}
	c.recent.add(g, ownReq, r.Requests, r.Tokens)
	c.addOwn(c.w.Head(), r.Requests, r.Tokens)
	c.setOwnInFlight(c.own.inFlight + 1)
	return state.Ticket{Reserved: r, Bucket: c.w.Head()}, nil
}

// Confirm moves t's reservation to the bucket its request leaves in, when that is a later one
// than it was admitted in: an upstream counts a request when it arrives, and one that waited
// after admission (a burst queued on the node) would otherwise leave this window before the
// upstream's, letting the next window's requests in while the upstream still counts it. The
// proxy calls it on the transport's first read of the body.
func (c *counter) Confirm(t *state.Ticket) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tick()
	if head := c.w.Head(); t.Bucket != head {
		r := window.Sane(t.Reserved)
		c.addOwn(t.Bucket, -r.Requests, -r.Tokens)
		c.addOwn(head, r.Requests, r.Tokens)
		t.Bucket = head
	}
	return nil
}

// Settle replaces t's reserved tokens with the real usage in t's bucket, if still held.
func (c *counter) Settle(t state.Ticket, u state.Usage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Usage is an upstream's word: below 0 it counts as 0 (it would give back more than was
	// reserved, a cell peers reject), and addOwn keeps any size within the cell's bound.
	c.addOwn(t.Bucket, 0, window.Clamp(u.Total())-window.Clamp(t.Reserved.Tokens))
	c.end()
}

// Release gives t's reservation back, if its bucket is still held.
func (c *counter) Release(t state.Ticket) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addOwn(t.Bucket, -window.Clamp(t.Reserved.Requests), -window.Clamp(t.Reserved.Tokens))
	c.end()
}

// end takes a call out of InFlight; a ticket ended twice must not go below zero.
func (c *counter) end() {
	if c.own.inFlight > 0 {
		c.setOwnInFlight(c.own.inFlight - 1)
	}
}

// Load returns the merged window's counts as of now.
func (c *counter) Load() state.Load { return c.LoadAt(c.b.now()) }

// LoadAt is Load as of now, a clock reading the caller already holds.
func (c *counter) LoadAt(t time.Time) state.Load {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := t.UnixNano()
	c.advance(window.BucketOf(now))
	l := c.load()
	l.Latency = c.latency.Mean(now, c.b.ttl)
	l.TTFT = c.ttft.Mean(now, c.b.ttl)
	return l
}

// RetryAfter returns how long until r could fit under lim if nothing else changed.
func (c *counter) RetryAfter(lim state.Limits, r state.Reservation) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retryAfter(c.tick(), lim, r)
}

// retryAfter is RetryAfter on the merged window, already advanced to now.
func (c *counter) retryAfter(now int64, lim state.Limits, r state.Reservation) time.Duration {
	return c.w.RetryAfter(now, c.ifSum, lim, r)
}

// ObserveLatency records a finished call's latency, and a stream's time to first token.
// Latencies stay local: each node routes on what it measured itself.
func (c *counter) ObserveLatency(latency, ttft time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.b.now().UnixNano()
	c.latency.Add(now, max(latency, 0))
	if ttft > 0 {
		c.ttft.Add(now, ttft)
	}
}

// housekeep advances to bucket now and, once per bucket, moves peers' cells to the latest
// estimate of their clock offsets, forgets incarnations whose cells all left the window and
// expires in-flight counts not refreshed for a window, so memory follows the live cluster, not
// uptime or churn.
func (c *counter) housekeep(now int64) {
	c.advance(now)
	if c.w.Head() == c.gcAt {
		return
	}
	c.gcAt = c.w.Head()
	for k, inc := range c.incs {
		if inc == c.own {
			continue
		}
		if shift, ok := c.b.offsets.cached(k.node); ok {
			c.reshift(inc, shift)
		}
		if inc.ifVer != 0 && c.w.Head()-inc.ifSeen >= ringSize {
			c.ifSum -= inc.inFlight
			inc.inFlight, inc.ifVer = 0, 0
		}
		if inc.ifVer == 0 && !c.live(inc) {
			delete(c.incs, k)
			c.namesOf = -1
		}
	}
}

// resend marks this node's own cells from bucket from on, and its in-flight count once it has
// one, as changed (Backend.Resend).
func (c *counter) resend(from int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for x := range c.own.held() {
		if x >= from {
			c.resendCells |= 1 << uint(window.Slot(x))
		}
	}
	c.resendIf = c.resendIf || c.own.ifVer != 0
	if c.resendCells != 0 || c.resendIf {
		c.changed()
	}
}

// changed notes a change of this node's own counts: the counter is queued for the next flush,
// which the backend arms (Backend.changed). Called under c.mu.
func (c *counter) changed() {
	c.queue()
	c.b.changed()
}

// queue has the next flush visit c (Backend.pending), once. Called under c.mu.
func (c *counter) queue() {
	if c.queued {
		return
	}
	c.queued = true
	c.b.pendMu.Lock()
	c.b.pending = append(c.b.pending, c)
	c.b.pendMu.Unlock()
}

// takeDelta puts in out this node's cells changed since the last call, and its in-flight
// count if it changed or is due for a refresh, stamped sent, and what it has to relay; then it
// forgets them. Once per bucket it repeats what changed in the two buckets before. cells is
// scratch space.
func (c *counter) takeDelta(now, sent int64, cells []cell, out *outbox) []cell {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queued = false
	c.housekeep(now)
	if c.own.ifVer != 0 && c.w.Head()-c.ifAt >= inFlightRefresh {
		c.own.ifVer++ // a refresh: peers count a grown version as fresh
		c.ifDue = true
	}
	changed, ifChanged := c.dirty, c.ifDue
	head := c.w.Head()
	if head != c.resentAt {
		// Once per bucket, what changed in the two buckets before goes again: a delta lost
		// (a peer's receive queue overflows in a burst, and drops the newest) heals within a
		// second or two instead of at the next push-pull, before the next burst meets a view
		// short of it; and what changed lateRepeat buckets before, a last time. Cells carry
		// totals, so a repeat changes nothing where nothing was lost.
		c.resentAt = head
		for _, back := range [...]int64{1, 2, lateRepeat / 2, lateRepeat} {
			if m := &c.sent[(head-back)%int64(len(c.sent))]; m.bucket == head-back {
				c.dirty |= m.cells
				c.ifDue = c.ifDue || m.inFlight
			}
		}
		if c.again.bucket == head-1 {
			c.dirty |= c.again.cells
			c.ifDue = c.ifDue || c.again.inFlight
		}
	}
	if m := &c.sent[head%int64(len(c.sent))]; m.bucket != head {
		*m = sentMark{bucket: head, cells: changed, inFlight: ifChanged}
	} else {
		m.cells |= changed
		m.inFlight = m.inFlight || ifChanged
	}
	if c.resendCells != 0 || c.resendIf {
		c.dirty |= c.resendCells
		c.ifDue = c.ifDue || c.resendIf
		if c.again.bucket != head {
			c.again = sentMark{bucket: head}
		}
		c.again.cells |= c.resendCells
		c.again.inFlight = c.again.inFlight || c.resendIf
		c.resendCells, c.resendIf = 0, false
	}
	if len(c.relaying) > 0 {
		cells = c.takeRelay(sent, cells, out)
	}
	if c.dirty == 0 && !c.ifDue {
		return cells
	}
	cells = cells[:0]
	for x := c.w.Head() - ringSize + 1; x <= c.w.Head(); x++ {
		if c.dirty&(1<<uint(window.Slot(x))) != 0 && c.own.cells[window.Slot(x)].bucket == x {
			cells = append(cells, c.own.cells[window.Slot(x)])
		}
	}
	var ifVer uint64
	if c.ifDue {
		ifVer = c.own.ifVer
		c.ifAt = c.w.Head()
	}
	if len(cells) > 0 || ifVer != 0 {
		out.add(c.own.key, c.id, ifVer, c.own.inFlight, sent, spanAll, cells)
	}
	c.dirty, c.ifDue = 0, false
	return cells
}

// takeRelay puts in out what peers' relayed deltas brought (relay.go): each incarnation's
// cells in the slots marked, as merged now, and its in-flight count if one came; then it
// forgets the marks. now is the flush's time, the send time of a record that came without one.
func (c *counter) takeRelay(now int64, cells []cell, out *outbox) []cell {
	for i, inc := range c.relaying {
		c.relaying[i] = nil
		if c.incs[inc.key] != inc {
			continue // forgotten since (housekeep): nothing of it is in the window
		}
		cells = cells[:0]
		for b, cl := range inc.held() {
			if inc.fwd&(1<<uint(window.Slot(b))) != 0 {
				cells = append(cells, *cl)
			}
		}
		var ifVer uint64
		if inc.fwdIf {
			ifVer = inc.ifVer
		}
		sent := inc.fwdStamp
		if sent == 0 {
			sent = now
		}
		if len(cells) > 0 || ifVer != 0 {
			out.add(inc.key, c.id, ifVer, inc.inFlight, sent, inc.fwdSpan, cells)
		}
		inc.fwd, inc.fwdIf, inc.fwdSpan, inc.fwdStamp = 0, false, 0, 0
	}
	c.relaying = c.relaying[:0]
	return cells
}

// encodeAll encodes every incarnation's cells in the window (this node's only, if own), and
// this node's in-flight count.
// Peers' in-flight counts are not relayed: only their owner refreshes them, so the count of a
// node that died expires a window after its last word, instead of two survivors handing it
// back and forth forever. (Cells cannot come back that way: they age out by bucket number.)
func (c *counter) encodeAll(now int64, own bool, cells []cell, enc *encoder) []cell {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.housekeep(now)
	for _, inc := range c.incs {
		if own && inc != c.own {
			continue
		}
		cells = cells[:0]
		// Under the incarnation's own bucket numbers: each receiver aligns them by its own
		// estimate of that node's clock.
		for b, cl := range inc.held() {
			if _, ok := c.pos(inc, b); ok {
				cells = append(cells, *cl)
			}
		}
		var ifVer uint64
		if inc == c.own {
			ifVer = inc.ifVer
		}
		if len(cells) > 0 || ifVer != 0 {
			enc.record(inc.key, c.id, ifVer, inc.inFlight, cells)
		}
	}
	return cells
}

// merge takes the per-counter maximum of a peer's view of incarnation k, which is not this
// node's own and whose record passed checkRecord. a is the node's clock alignment (see
// "# Clocks"): without an estimate its cells stay where they are. sent is, for a record that
// came in a delta, the delta's send time in this node's time (else < 0): what it adds counts as
// the peers' recent admissions (share.go) as of then; ns is now. It refuses a new incarnation
// when the counter already holds maxIncs peers' (a fuse behind Backend.incs, which may lag a
// bucket).
func (c *counter) merge(now, ns, sent int64, k incKey, a alignment, ifVer uint64, inFlight int64, cells []cell, maxIncs int, fw relay) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance(now)
	inc := c.incs[k]
	if inc == nil && len(c.incs) > maxIncs {
		return false
	}
	if inc == nil {
		inc = &incState{key: k, shift: a.shift, newest: c.w.Head() + a.shift - ringSize}
		c.incs[k] = inc
		c.namesOf = -1
	}
	if a.known {
		c.reshift(inc, a.shift)
	}
	relaying := inc.fwd != 0 || inc.fwdIf // already in c.relaying
	c.recent.advance(c.b.slotOf(ns))
	g := int64(-1 << 62) // full state: nothing is recent
	if sent >= 0 {
		g = c.b.slotOf(sent)
	}
	for i := range cells {
		in := &cells[i]
		x, ok := c.pos(inc, in.bucket)
		if !ok || in.bucket <= inc.newest-ringSize {
			continue // left our window, or older than what the incarnation still holds
		}
		cl := c.peerCellAt(inc, in.bucket)
		was := *cl
		r0, t0 := cl.requests(), cl.tokens()
		cl.reqP, cl.reqN = max(cl.reqP, in.reqP), max(cl.reqN, in.reqN)
		cl.tokP, cl.tokN = max(cl.tokP, in.tokP), max(cl.tokN, in.tokN)
		dr, dt := cl.requests()-r0, cl.tokens()-t0
		c.w.Add(x, dr, dt)
		if in.bucket-inc.shift > c.w.Head() {
			c.ahead = max(c.ahead, in.bucket-inc.shift)
		}
		c.recent.add(g, peerReq, dr, dt)
		if sent < 0 && *cl != was {
			c.b.news.Add(1) // a full state taught something (StateNews)
		}
		if fw.span > 0 {
			inc.fwd |= 1 << uint(window.Slot(in.bucket))
		}
	}
	if ifVer > inc.ifVer {
		c.ifSum += inFlight - inc.inFlight
		inc.inFlight, inc.ifVer, inc.ifSeen = inFlight, ifVer, c.w.Head()
		inc.fwdIf = inc.fwdIf || fw.span > 0
	}
	if fw.span > 0 && (inc.fwd != 0 || inc.fwdIf) {
		inc.fwdSpan = max(inc.fwdSpan, fw.span)
		if inc.fwdStamp == 0 || (fw.sent != 0 && fw.sent < inc.fwdStamp) {
			inc.fwdStamp = fw.sent
		}
		if !relaying {
			c.relaying = append(c.relaying, inc)
		}
		c.queue()
		c.b.relayed()
	}
	if inc.ifVer == 0 && !c.live(inc) {
		delete(c.incs, k) // nothing in the window: do not keep it
		c.namesOf = -1
	}
	return true
}

// idle reports, as of bucket now, whether the counter holds nothing: no cell in the window,
// no call in flight, nothing of its own waiting to be flushed. Such a counter, once its
// deployment is no longer configured, can go without losing a count.
func (c *counter) idle(now int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.housekeep(now)
	return len(c.incs) == 1 && c.own.inFlight == 0 && !c.w.Holds(c.own.newest) && c.dirty == 0 && !c.ifDue
}
