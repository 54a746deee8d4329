package redis

import (
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
)

// Escrow blocks: see "Escrow blocks" in the package comment.

const (
	// blockTicket marks the ids of tickets admitted from a block: they hold no lease of their
	// own, and their ends are adjustments (or go back to the block).
	blockTicket = uint64(1) << 63
	// blockHorizon is how far ahead a block is sized: the admissions expected in it.
	blockHorizon = 100 * time.Millisecond
	// rateSlot is the wall-clock slot the admission rate is counted in.
	rateSlot = int64(blockHorizon)
	// adjustDelay is endDelay for adjustments: they free no in-flight slot, only correct
	// tokens (or give back room), so they may wait longer for company and cost fewer calls.
	adjustDelay = 10 * time.Millisecond
)

// block is capacity this node reserved in Redis, in one bucket, for admissions it makes alone.
type block struct {
	bucket           int64        // the head bucket the reservations were counted in
	lim              state.Limits // the limits they were checked against
	ids              []uint64     // their Redis tickets (leases), the first also names the give-back
	size             int64        // requests reserved in all
	reqLeft, tokLeft int64        // not yet admitted
}

// noteLocked counts an admission attempt for the rate, and its tokens for the mean reservation.
func (c *counter) noteLocked(wall int64, tokens int64) {
	if s := wall / rateSlot; s != c.rateSlot {
		if s == c.rateSlot+1 {
			c.ratePrev = c.rateCur
		} else {
			c.ratePrev = 0
		}
		c.rateSlot, c.rateCur = s, 0
	}
	c.rateCur++
	if c.meanTok == 0 {
		c.meanTok = tokens
	} else {
		c.meanTok += (tokens - c.meanTok) / 8
	}
}

// blockSizeLocked is the block a synchronous admission of r at now (the backend's clock, in
// ns) should reserve instead: k requests and t tokens, r's own included. k <= 1 means none.
func (c *counter) blockSizeLocked(lim state.Limits, r state.Reservation, now int64) (k, t int64) {
	if lim.MaxParallel != 0 || r.Requests != 1 || c.b.noBlocks {
		return 0, 0
	}
	k = c.ratePrev // admissions in the last whole slot: a burst in this one is not yet a rate
	bucket := window.BucketOf(now)
	left := (bucket+1)*int64(state.BucketWidth) - now // of this bucket
	if left < int64(blockHorizon) {
		k = k * left / int64(blockHorizon)
	}
	c.ring.Advance(window.BucketOf(c.windowLow().UnixNano()))
	req, tok := c.ring.Sums()
	nodes := 2 * c.b.nodes.Load()
	if lim.RPM > 0 {
		k = min(k, (lim.RPM-req)/nodes)
	}
	mean := max(c.meanTok, 0)
	if lim.TPM > 0 && mean > 0 {
		k = min(k, (lim.TPM-tok-r.Tokens)/nodes/mean+1)
	}
	if k <= 1 {
		return 0, 0
	}
	t = (k-1)*mean + r.Tokens
	if lim.TPM > 0 && t > (lim.TPM-tok)/nodes {
		return 0, 0
	}
	return k, t
}

// takeBlock admits r from this node's block, without a round trip, when the block is of the
// current bucket, was reserved under lim and has room for r. It prefetches the next block when
// this one is three quarters used.
// wall (ns) counts the attempt for the rate; 0 for a retry, which was counted.
func (c *counter) takeBlock(lim state.Limits, r state.Reservation, now, wall int64) (state.Ticket, bool) {
	b := c.b
	c.mu.Lock()
	bucket := c.blockBucketLocked(now)
	if wall != 0 {
		c.noteLocked(wall, r.Tokens)
	}
	blk := c.blk
	if blk != nil && (bucket > blk.bucket || blk.lim != lim) {
		c.retireBlockLocked()
		blk = nil
	}
	if blk == nil || blk.reqLeft < r.Requests || blk.tokLeft < r.Tokens {
		c.mu.Unlock()
		return state.Ticket{}, false
	}
	blk.reqLeft -= r.Requests
	blk.tokLeft -= r.Tokens
	c.blkInFlight++
	c.lastUse = b.ticks.Load()
	var fetch chan struct{}
	if c.fetching == nil && blk.reqLeft*4 <= blk.size && !b.open.Load() {
		fetch = c.startFetchLocked()
	}
	t := state.Ticket{Reserved: r, Bucket: blk.bucket, ID: blockTicket | b.seq.Add(1)}
	if blk.reqLeft == 0 && fetch == nil && c.fetching == nil {
		// Used up: its leases, which other nodes count as calls in flight, end now.
		c.retireBlockLocked()
	}
	c.mu.Unlock()
	b.stats.blockAdmits.Add(1)
	if fetch != nil {
		b.fetchMu.Lock()
		if b.closed.Load() {
			b.fetchMu.Unlock()
			c.fetched(fetch)
		} else {
			b.fetches.Add(1)
			b.fetchMu.Unlock()
			go func() {
				defer b.fetches.Done()
				c.prefetch(lim, fetch)
			}()
		}
	}
	return t, true
}

// prefetch reserves the next block of the current bucket in the background.
func (c *counter) prefetch(lim state.Limits, done chan struct{}) {
	b := c.b
	defer c.fetched(done)
	now := c.windowNow().UnixNano()
	c.mu.Lock()
	k, t := c.blockSizeLocked(lim, state.Reservation{Requests: 1, Tokens: c.meanTok}, now)
	c.mu.Unlock()
	if k <= 1 {
		return
	}
	if err := c.pushPending(); err != nil {
		b.failed(err)
		return
	}
	id := b.seq.Add(1)
	ctx, cancel := b.ctx()
	defer cancel()
	var opsBuf [maxEndsPerCall]endOp
	ops, floor, trip := c.takeEndsFloor(opsBuf[:0], maxEndsPerCall, true)
	kc := c.admitCall(ctx, id, ops, b.overrideMs(), floor, b.leaseTTL.Milliseconds(), lim.RPM, lim.TPM, 0, k, t)
	defer kc.release()
	ks := [1]*call{kc}
	sent := time.Now()
	b.runCalls(ctx, ks[:])
	rep, err := kc.reply()
	if err == nil {
		c.sawServer(sent, rep.serverUs)
	}
	c.mu.Lock()
	if err != nil {
		c.readReplyLocked(trip, ops, 0, 0, false, &rep, err, nil)
		c.mu.Unlock()
		b.failed(err)
		return
	}
	b.stats.blockReserves.Add(1)
	if rep.status == 1 {
		c.tickets[id] = struct{}{}
		c.readReplyLocked(trip, ops, k, t, true, &rep, nil, nil)
		c.addBlockLocked(lim, rep.head, id, k, t)
	} else {
		c.readReplyLocked(trip, ops, 0, 0, false, &rep, nil, nil) // its header serves
	}
	c.mu.Unlock()
	b.succeeded()
}

// fetched ends a block reservation: the next one may start, and admissions waiting for it go on.
func (c *counter) fetched(done chan struct{}) {
	c.mu.Lock()
	if c.fetching == done {
		c.fetching = nil
	}
	if c.blk != nil && c.blk.reqLeft == 0 {
		c.retireBlockLocked() // used up while this reservation was on its way (see takeBlock)
	}
	c.mu.Unlock()
	close(done)
}

// waitFetch waits (at most the call timeout) for a block reservation in flight, and reports
// whether there was one.
func (c *counter) waitFetch() bool {
	c.mu.Lock()
	ch := c.fetching
	c.mu.Unlock()
	if ch == nil {
		return false
	}
	t := time.NewTimer(c.b.timeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
	return true
}

// addBlockLocked makes the k requests and t tokens reserved under ticket id in bucket the
// node's block, or adds them to it. A reservation that cannot join the current block (another
// bucket, other limits) is given back at once.
func (c *counter) addBlockLocked(lim state.Limits, bucket int64, id uint64, k, t int64) {
	now := c.blockBucketLocked(c.windowNow().UnixNano())
	if c.blk != nil && (c.blk.bucket < now || c.blk.lim != lim) {
		c.retireBlockLocked()
	}
	switch {
	case c.blk == nil && now <= bucket:
		c.blk = &block{bucket: bucket, lim: lim, ids: []uint64{id}, size: k, reqLeft: k, tokLeft: t}
	case c.blk != nil && c.blk.bucket == bucket:
		c.blk.ids = append(c.blk.ids, id)
		c.blk.size += k
		c.blk.reqLeft += k
		c.blk.tokLeft += t
	default:
		c.giveBackLocked(id, bucket, k, t)
	}
}

// retireBlockLocked ends the node's block: its unused requests and tokens go back to Redis, as
// ends of its leases, in the next round trip (the breaker open: dropped; Redis keeps counting
// them until they age out).
func (c *counter) retireBlockLocked() {
	blk := c.blk
	if blk == nil {
		return
	}
	c.blk = nil
	for i, id := range blk.ids {
		if i == 0 {
			c.giveBackLocked(id, blk.bucket, blk.reqLeft, blk.tokLeft)
		} else {
			c.giveBackLocked(id, blk.bucket, 0, 0)
		}
	}
}

// giveBackLocked ends block lease id, giving back k requests and t tokens of bucket.
func (c *counter) giveBackLocked(id uint64, bucket, k, t int64) {
	delete(c.tickets, id)
	if c.b.open.Load() {
		c.b.stats.droppedEnds.Add(1)
		return
	}
	c.queueEndLocked(endOp{id: id, bucket: bucket, requests: -k, tokens: -t, giveBack: k > 0 || t > 0})
}

// endBlockTicket ends a ticket admitted from a block. A release while the block is still of the
// ticket's bucket gives the room back to the block; every other end is an adjustment of the
// bucket, sent (summed per bucket) like the ends of Redis tickets.
func (c *counter) endBlockTicket(t state.Ticket, requests, tokens int64, release bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastUse = c.b.ticks.Load()
	c.blkInFlight--
	if blk := c.blk; release && blk != nil && blk.bucket == t.Bucket {
		blk.reqLeft += t.Reserved.Requests
		blk.tokLeft += t.Reserved.Tokens
		return
	}
	if requests == 0 && tokens == 0 {
		return
	}
	if c.b.open.Load() {
		c.b.stats.droppedEnds.Add(1)
		return
	}
	e := endOp{id: c.b.seq.Add(1), bucket: t.Bucket, requests: requests, tokens: tokens, adjust: true}
	e.cachedReq, e.cachedTok = c.addEndLocked(e.bucket, requests, tokens)
	for i := range c.ends {
		// Summed with an adjustment of the same bucket still waiting, unless Redis would count
		// the sum otherwise than the parts, as the cache did: when the bucket's cap cut either.
		if a := &c.ends[i]; a.adjust && !a.sent && a.bucket == e.bucket && uncut(*a) && uncut(e) &&
			fits(a.requests, e.requests) && fits(a.tokens, e.tokens) {
			a.requests += e.requests
			a.tokens += e.tokens
			a.cachedReq += e.cachedReq
			a.cachedTok += e.cachedTok
			return
		}
	}
	c.appendEndLocked(e)
}

// uncut reports whether the cache counted all of e's correction (the bucket's cap cut none).
func uncut(e endOp) bool { return e.cachedReq == e.requests && e.cachedTok == e.tokens }

// fits reports whether a+b, for a and b within ±maxCount, is too.
func fits(a, b int64) bool { return a+b >= -maxCount && a+b <= maxCount }

// queueEndLocked counts e in the cache at once and queues it for Redis.
func (c *counter) queueEndLocked(e endOp) {
	e.cachedReq, e.cachedTok = c.addEndLocked(e.bucket, e.requests, e.tokens)
	c.appendEndLocked(e)
}

// appendEndLocked queues e, already counted in the cache, for Redis.
func (c *counter) appendEndLocked(e endOp) {
	c.ends = append(c.ends, e)
	if e.adjust {
		c.adjusts++
	}
	if !c.flushArmed {
		c.flushArmed = true
		if e.adjust {
			c.flushTimer.Reset(adjustDelay)
		} else {
			c.flushTimer.Reset(endDelay)
		}
	}
}

// blockBucketLocked is the bucket a block must be of to be used at now (the window's clock, ns):
// now's, or the cached window's head if that is later. When the clock seems to step back (the
// server's was stepped back, or a test's), Redis counts every admission at least in the latest
// bucket anyone saw (see lua/window.lua's clock()); a block of an earlier bucket would count its
// admissions where they leave the window sooner.
func (c *counter) blockBucketLocked(now int64) int64 {
	return max(window.BucketOf(now), c.ring.Head())
}

// expireBlock retires the block once the clock has left its bucket (the background loop).
func (c *counter) expireBlock(now int64) {
	c.mu.Lock()
	if c.blk != nil && c.blockBucketLocked(now) > c.blk.bucket {
		c.retireBlockLocked()
	}
	c.mu.Unlock()
}
