package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
)

// counter is one deployment's usage: Redis keys, the cached window, the local fallback, and
// this node's latency samples (routing reads its own view of latency; nothing to share).
type counter struct {
	b       *Backend
	keys    []string // window, in-flight ZSET: one hash tag
	keyArgs [2]any   // keys, boxed once for the scripts' arguments
	local   state.Counter

	mu sync.Mutex
	// The cached window and in-flight count: the newest reply (by head, then version) plus this
	// node's ends that Redis has not confirmed yet (ends). A whole window (refresh, refusal,
	// RetryAfter) replaces the ring; a header (every other reply) corrects its sums, the
	// difference counted in the head bucket: see the package comment.
	ring              window.Ring
	reported          int64 // calls in flight, as of the newest reply
	seenHead, seenVer int64
	seen              bool
	ends              []endOp // settles and releases not yet confirmed by Redis, oldest first
	inTransit         int     // ends sent whose replies are not read yet
	endsSent          uint64  // round trips that carried ends, ever: see applyRead
	flushTimer        *time.Timer
	flushArmed        bool                // flushTimer runs: unsent ends wait for an Admit until it fires
	tickets           map[uint64]struct{} // this node's Redis tickets in flight: their leases are renewed
	lastUse           int64               // Backend.ticks at the last use; keeps the counter in the background refresh
	adjusts           int                 // adjustments among ends (they free no in-flight slot)

	// Escrow (see block.go): the block admissions are taken from, the calls admitted from
	// blocks still in flight, the block reservation on its way (nil: none), and what sizes
	// blocks: admission attempts in the current and previous wall-clock rateSlot, and the mean
	// token reservation.
	blk                         *block
	blkInFlight                 int64
	fetching                    chan struct{}
	fetchSeq                    uint64 // block reservations started, ever: see applyRead
	rateSlot, rateCur, ratePrev int64
	meanTok                     int64
	latency                     window.Samples
	ttft                        window.Samples
}

var _ state.Counter = (*counter)(nil)

func newCounter(b *Backend, id string) *counter {
	tag := b.prefix + "{" + id + "}"
	c := &counter{
		b:       b,
		keys:    []string{tag + ":w", tag + ":f"},
		keyArgs: [2]any{tag + ":w", tag + ":f"},
		local:   b.local.Counter(id),
		tickets: make(map[uint64]struct{}),
		lastUse: b.ticks.Load(),
	}
	c.ring.Reset(window.BucketOf(b.windowLow().UnixNano()))
	c.flushTimer = time.AfterFunc(time.Hour, c.flush)
	c.flushTimer.Stop()
	return c
}

// member is ticket id's member in the in-flight ZSET, as the scripts get it (ticketMember).
func (c *counter) member(id uint64) string {
	var m ticketMember
	m.set(c.b.node, id)
	return string(m.b[:m.n])
}

// Admit checks r against lim and reserves it: in Redis while it answers, else locally at a
// fair share of lim.
func (c *counter) Admit(lim state.Limits, r state.Reservation) (state.Ticket, error) {
	// A negative reservation would give back room nobody used; every backend counts it as 0.
	// Redis counts in Lua's doubles, exact only below maxCount.
	r.Requests, r.Tokens = clampCount(r.Requests), clampCount(r.Tokens)
	b := c.b
	now := b.windowNow().UnixNano()
	if lim.MaxParallel == 0 {
		if t, ok := c.takeBlock(lim, r, now, time.Now().UnixNano()); ok {
			return t, nil
		}
	}
	if b.open.Load() {
		return c.admitLocal(lim, r)
	}
	// A block is reserved instead of r alone when traffic makes one worth it and no other
	// block reservation is on its way.
	var k, tokens int64
	var fetch chan struct{}
	if lim.MaxParallel == 0 {
		c.mu.Lock()
		if c.fetching == nil {
			if k, tokens = c.blockSizeLocked(lim, r, now); k > 1 {
				fetch = c.startFetchLocked()
			}
		}
		c.mu.Unlock()
	}
	if fetch == nil {
		t, err := c.admitRedis(lim, r, r.Requests, r.Tokens)
		if err != nil && errors.Is(err, state.ErrNoCapacity) && lim.MaxParallel == 0 && c.waitFetch() {
			// A block reserved meanwhile may hold what Redis refused.
			if t, ok := c.takeBlock(lim, r, b.windowNow().UnixNano(), 0); ok {
				return t, nil
			}
		}
		return t, err
	}
	t, err := c.admitRedis(lim, r, k, tokens)
	c.fetched(fetch)
	if err == errBlockRefused {
		// The block did not fit (other nodes used the room the cache showed): r alone may.
		return c.admitRedis(lim, r, r.Requests, r.Tokens)
	}
	return t, err
}

// startFetchLocked marks a block reservation as on its way; fetched ends it.
func (c *counter) startFetchLocked() chan struct{} {
	fetch := make(chan struct{})
	c.fetching = fetch
	c.fetchSeq++
	return fetch
}

// errBlockRefused is admitRedis's refusal of a block: the caller tries r alone.
var errBlockRefused = errors.New("block refused")

// admitRedis admits r in one round trip. With k requests and tokens larger than r's, it
// reserves a block of them instead, r admitted from it.
func (c *counter) admitRedis(lim state.Limits, r state.Reservation, k, tokens int64) (state.Ticket, error) {
	b := c.b
	isBlock := k != r.Requests || tokens != r.Tokens
	id := b.seq.Add(1)
	ctx, cancel := b.ctx()
	defer cancel()
	// This node's pending ends of the deployment are finished first, in the same script: the
	// decision counts them, as the caller expects of a Settle that returned, and they cost no
	// round trip of their own.
	var opsBuf [maxEndsPerCall]endOp
	ops, floor := c.takeEndsFloor(opsBuf[:0], maxEndsPerCall)
	kc := c.admitCall(ctx, id, ops,
		b.overrideMs(), floor, b.leaseTTL.Milliseconds(), lim.RPM, lim.TPM, lim.MaxParallel, k, tokens)
	defer kc.release()
	ks := [1]*call{kc}
	sent := time.Now()
	b.runCalls(ctx, ks[:])
	rep, err := kc.reply()
	if err == nil {
		b.srv.seen(sent, rep.serverUs)
	}
	var w *snapshot
	if err == nil && rep.status != 1 {
		// A refusal carries the whole window: the wait is computed from it.
		w = new(snapshot)
		err = w.decode(rep.whole)
	}
	c.mu.Lock()
	c.lastUse = b.ticks.Load()
	c.confirmEndsLocked(ops, &rep, err)
	if err != nil {
		c.mu.Unlock()
		// The script may have run: its reservation then counts until it ages out, and its
		// lease, which nobody renews, frees the slot within LeaseTTL.
		b.failed(err)
		return c.admitLocal(lim, r)
	}
	var t state.Ticket
	if w != nil {
		c.applyLocked(rep.inFlight, w)
	} else {
		c.tickets[id] = struct{}{}
		c.admitCountedLocked(&rep, k, tokens)
		t = state.Ticket{Reserved: r, Bucket: rep.head, ID: id}
		if isBlock {
			// r is the block's first admission; the rest is the block (given back at once if
			// the clock left the bucket meanwhile).
			b.stats.blockReserves.Add(1)
			c.addBlockLocked(lim, rep.head, id, k-r.Requests, tokens-r.Tokens)
			c.blkInFlight++
			t.ID = blockTicket | b.seq.Add(1)
		}
	}
	c.mu.Unlock()
	b.succeeded()
	if w != nil {
		// From the reply's own window, not the cache: the cache may already hold a newer
		// reply, and the wait must be the one the refusal was made on. The refusal was made at
		// the window's head, the server's bucket then (or later, if its clock stepped back).
		now := b.windowNow().UnixNano()
		w.ring.Advance(window.BucketOf(now))
		if isBlock {
			return state.Ticket{}, errBlockRefused
		}
		return state.Ticket{}, &state.NoCapacityError{RetryAfter: retryAfter(&w.ring, now, rep.inFlight, lim, r)}
	}
	return t, nil
}

// admitLocal admits against the local backend at this node's fair share of lim, and only while
// the usage Redis last reported (aging out of the cached window) plus what this node admitted
// locally leaves room: the fleet must not get a fresh window the moment Redis fails.
func (c *counter) admitLocal(lim state.Limits, r state.Reservation) (state.Ticket, error) {
	c.b.stats.localAdmits.Add(1)
	now := c.b.now()
	c.mu.Lock() // makes the cache check and the local reservation one step
	defer c.mu.Unlock()
	if wait := c.cachedWaitLocked(now, lim, r); wait > 0 {
		return state.Ticket{}, &state.NoCapacityError{RetryAfter: wait}
	}
	t, err := c.local.Admit(c.b.fairShare(lim), r)
	t.ID = 0 // ends locally
	return t, err
}

// localRetryAfter is RetryAfter while Redis is unreachable: the later of the local fair
// share's wait and the cached window's.
func (c *counter) localRetryAfter(lim state.Limits, r state.Reservation) time.Duration {
	now := c.b.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(c.cachedWaitLocked(now, lim, r), c.local.RetryAfter(c.b.fairShare(lim), r))
}

// cachedWaitLocked is how long until r fits under lim's rpm and tpm on top of the cached Redis
// window and this node's local counts; 0 when it fits now. In-flight calls are left out: the
// cached count includes this node's Redis calls, whose ends Redis may never hear of.
func (c *counter) cachedWaitLocked(now time.Time, lim state.Limits, r state.Reservation) time.Duration {
	ns := c.b.windowLow().UnixNano()
	c.ring.Advance(window.BucketOf(ns))
	local := c.local.LoadAt(now)
	room := state.Limits{RPM: lim.RPM, TPM: lim.TPM}
	// The local counts come off the limit (they leave the window no sooner than the cached ones);
	// a limit they use up entirely is the fair share's to refuse.
	if room.RPM > 0 {
		if room.RPM -= local.Requests; room.RPM < r.Requests || room.RPM <= 0 {
			room.RPM = 0
		}
	}
	if room.TPM > 0 {
		if room.TPM -= local.Tokens; room.TPM < r.Tokens || room.TPM <= 0 {
			room.TPM = 0
		}
	}
	return c.ring.RetryAfter(ns, 0, room, r)
}

// fairShare is this node's part of lim while every node admits on its own: each limit divided
// by the node count, rounded down, but never 0 (unlimited) for a set limit.
func (b *Backend) fairShare(lim state.Limits) state.Limits {
	n := b.nodes.Load()
	share := func(v int64) int64 {
		if v <= 0 {
			return v
		}
		return max(v/n, 1)
	}
	return state.Limits{RPM: share(lim.RPM), TPM: share(lim.TPM), MaxParallel: share(lim.MaxParallel)}
}

// Settle replaces t's reserved tokens with the real usage, in the bucket they were reserved in.
func (c *counter) Settle(t state.Ticket, u state.Usage) {
	if t.ID&blockTicket != 0 {
		c.endBlockTicket(t, 0, clampCount(u.Total())-t.Reserved.Tokens, false)
		return
	}
	c.end(t, 0, clampCount(u.Total())-t.Reserved.Tokens, func() { c.local.Settle(t, u) })
}

// Release gives t's reservation back, if its bucket is still in the window.
func (c *counter) Release(t state.Ticket) {
	if t.ID&blockTicket != 0 {
		c.endBlockTicket(t, -t.Reserved.Requests, -t.Reserved.Tokens, true)
		return
	}
	c.end(t, -t.Reserved.Requests, -t.Reserved.Tokens, func() { c.local.Release(t) })
}

// end settles or releases t where it was issued. A Redis ticket's end is counted in the cache at
// once and sent to Redis without waiting: in this node's next Admit of the deployment, or on its
// own (flush) when none comes within endDelay. It is best effort: when it fails, the
// reservation stays as reserved and the lease frees the in-flight slot.
func (c *counter) end(t state.Ticket, requests, tokens int64, locally func()) {
	if t.ID == 0 {
		locally()
		return
	}
	b := c.b
	c.mu.Lock()
	c.lastUse = b.ticks.Load()
	delete(c.tickets, t.ID) // renewed no more, whether or not Redis hears of the end
	if b.open.Load() {
		c.mu.Unlock()
		b.stats.droppedEnds.Add(1)
		return
	}
	c.ends = append(c.ends, endOp{id: t.ID, bucket: t.Bucket, requests: requests, tokens: tokens})
	c.ring.Add(t.Bucket, requests, tokens)
	if !c.flushArmed { // counted from the oldest unsent end, not reset by later ones
		c.flushArmed = true
		c.flushTimer.Reset(endDelay)
	}
	c.mu.Unlock()
}

// endOp is a settle or release on its way to Redis.
type endOp struct {
	id               uint64
	bucket           int64 // the ticket's bucket
	requests, tokens int64 // the correction to it
	sent             bool  // in a round trip whose reply is not read yet
	adjust           bool  // an adjustment (escrow), not the end of a lease: frees no in-flight slot
}

// takeEndsFloor is takeEndsLocked, and the floor for a script call: the latest bucket of the server's
// clock this node has seen (its cached window's head, aged by the lower bound).
func (c *counter) takeEndsFloor(dst []endOp, limit int) ([]endOp, int64) {
	low := window.BucketOf(c.b.windowLow().UnixNano())
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ring.Advance(low)
	return c.takeEndsLocked(dst, limit), c.ring.Head()
}

// takeEndsLocked marks up to limit unsent ends as sent and appends them to dst, oldest first.
// When none is left unsent, the flush timer has nothing to wait for: it stops.
func (c *counter) takeEndsLocked(dst []endOp, limit int) []endOp {
	n := len(dst)
	left := false
	for i := range c.ends {
		if e := &c.ends[i]; !e.sent {
			if len(dst) == limit {
				left = true
				break
			}
			e.sent = true
			dst = append(dst, *e)
		}
	}
	if taken := len(dst) - n; taken > 0 {
		c.inTransit += taken
		c.endsSent++
	}
	if !left && c.flushArmed {
		c.flushArmed = false
		c.flushTimer.Stop() // if it fires anyway, flush finds nothing to send
	}
	return dst
}

// flush sends the unsent ends in a round trip of their own: flushTimer runs it when no Admit of
// the deployment came within endDelay to carry them. While the breaker is open they are dropped
// (the leases free the slots).
func (c *counter) flush() {
	b := c.b
	c.mu.Lock()
	c.flushArmed = false
	c.mu.Unlock()
	if b.open.Load() {
		c.dropEnds()
		return
	}
	ops, floor := c.takeEndsFloor(nil, maxFlush)
	if len(ops) == 0 {
		return
	}
	ctx, cancel := b.ctx()
	defer cancel()
	ks := c.endCalls(ctx, ops, floor)
	defer releaseCalls(ks)
	sent := time.Now()
	b.runCalls(ctx, ks)
	if err := ks[0].cmd.Err(); err != nil {
		b.failed(err)
	} else {
		b.succeeded()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, k := range ks {
		chunk := ops[i*maxEndsPerCall : min((i+1)*maxEndsPerCall, len(ops))]
		rep, err := k.reply()
		c.confirmEndsLocked(chunk, &rep, err)
		if err == nil {
			b.srv.seen(sent, rep.serverUs)
			c.applyReplyLocked(&rep)
		}
	}
	if !c.flushArmed && slices.ContainsFunc(c.ends, func(e endOp) bool { return !e.sent }) {
		c.flushArmed = true // more than maxFlush were waiting
		c.flushTimer.Reset(0)
	}
}

// endCalls builds the calls of end.lua that finish ops, maxEndsPerCall in each.
func (c *counter) endCalls(ctx context.Context, ops []endOp, floor int64) []*call {
	ks := make([]*call, 0, (len(ops)+maxEndsPerCall-1)/maxEndsPerCall)
	for len(ops) > 0 {
		n := min(len(ops), maxEndsPerCall)
		ks = append(ks, c.endCall(ctx, ops[:n], floor))
		ops = ops[n:]
	}
	return ks
}

// confirmEndsLocked forgets ops, which the call that got rep (or failed with err) carried. The
// caller applies rep itself, after this: the ring counted ops's corrections while they were on
// their way, and the reply's sums count them now.
func (c *counter) confirmEndsLocked(ops []endOp, rep *reply, err error) {
	if len(ops) == 0 {
		return
	}
	c.inTransit -= len(ops)
	for _, op := range ops {
		c.forgetEndLocked(op.id)
	}
	switch {
	case err != nil:
		// Redis may not have counted them (the breaker hears of the failure from the caller).
		b := c.b
		b.stats.droppedEnds.Add(int64(len(ops)))
		b.log.Debug("redis state backend: settles not recorded; the leases free their slots",
			"key", c.keys[0], "ends", len(ops), "err", err)
		fallthrough
	case rep.kind != noWindow && c.olderLocked(rep.head, rep.ver):
		// Or a newer reply is in the cache: it counted them, and so did the ring on top.
		for _, op := range ops {
			c.ring.Add(op.bucket, -op.requests, -op.tokens)
		}
	}
}

// applyReplyLocked folds a header reply, or one that found no window, into the cache.
func (c *counter) applyReplyLocked(rep *reply) {
	if rep.kind == noWindow {
		c.noWindowLocked(rep.inFlight)
		return
	}
	_ = c.applyHeaderLocked(rep) // this node's ends are in the cache already
}

func (c *counter) forgetEndLocked(id uint64) {
	for i := range c.ends {
		if c.ends[i].id == id {
			if c.ends[i].adjust {
				c.adjusts--
			}
			c.ends = slices.Delete(c.ends, i, i+1)
			return
		}
	}
}

// dropEnds forgets the ends not sent yet, while Redis is unreachable.
func (c *counter) dropEnds() {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	c.ends = slices.DeleteFunc(c.ends, func(e endOp) bool {
		if e.sent {
			return false
		}
		c.ring.Add(e.bucket, -e.requests, -e.tokens)
		if e.adjust {
			c.adjusts--
		}
		n++
		return true
	})
	c.b.stats.droppedEnds.Add(int64(n))
}

// endSumsLocked are the corrections of the unconfirmed ends that the cached ring still holds.
func (c *counter) endSumsLocked() (requests, tokens int64) {
	for _, e := range c.ends {
		if c.ring.Holds(e.bucket) {
			requests += e.requests
			tokens += e.tokens
		}
	}
	return requests, tokens
}

// inFlightLocked is the calls in flight: the newest reply's count less this node's calls that
// ended since.
// Calls admitted from blocks hold no lease: they are this node's own count, and the block's
// leases, which Redis counts, are not calls.
func (c *counter) inFlightLocked() int64 {
	n := c.reported - int64(len(c.ends)-c.adjusts)
	if c.blk != nil {
		n -= int64(len(c.blk.ids))
	}
	return max(n, 0) + c.blkInFlight
}

// Load returns the window's counts as of now, in-flight calls and mean recent latencies.
func (c *counter) Load() state.Load { return c.loadAt(c.b.now(), c.b.windowLow()) }

// LoadAt is Load as of t (on this node's clock) from the cache, without a round trip. While
// degraded it is the local fallback's counts times the node count: an estimate of the cluster's
// use that makes routing's check against the whole limit agree with admission's check against
// the share.
func (c *counter) LoadAt(t time.Time) state.Load { return c.loadAt(t, c.b.windowAt(t)) }

// loadAt is LoadAt with t's time on the window's clock too (the server's).
func (c *counter) loadAt(t, wt time.Time) state.Load {
	if c.b.open.Load() {
		l := c.local.LoadAt(t)
		n := c.b.nodes.Load()
		l.Requests, l.Tokens, l.InFlight = l.Requests*n, l.Tokens*n, l.InFlight*n
		c.mu.Lock()
		l.Latency, l.TTFT = c.latencies(t.UnixNano())
		c.mu.Unlock()
		return l
	}
	now := wt.UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastUse = c.b.ticks.Load() // not the clock: routing calls LoadAt for every deployment
	bucket := window.BucketOf(now)
	if c.blk != nil && bucket > c.blk.bucket {
		c.retireBlockLocked()
	}
	c.ring.Advance(bucket)
	req, tok := c.ring.Sums()
	if blk := c.blk; blk != nil && c.ring.Holds(blk.bucket) {
		// Redis counts whole blocks; the part not admitted yet is no one's use.
		req, tok = req-blk.reqLeft, tok-blk.tokLeft
	}
	// A correction counted twice for a moment (see applyHeaderLocked) never reads below zero.
	l := state.Load{Requests: max(req, 0), Tokens: max(tok, 0), InFlight: c.inFlightLocked()}
	l.Latency, l.TTFT = c.latencies(t.UnixNano())
	return l
}

func (c *counter) latencies(now int64) (latency, ttft time.Duration) {
	return c.latency.Mean(now, c.b.latencyTTL), c.ttft.Mean(now, c.b.latencyTTL)
}

// RetryAfter returns how long until r could fit under lim, from a fresh read of the window (one
// round trip: it is asked only after a refusal), or from the cache when Redis fails.
func (c *counter) RetryAfter(lim state.Limits, r state.Reservation) time.Duration {
	b := c.b
	if b.open.Load() {
		return c.localRetryAfter(lim, r)
	}
	ctx, cancel := b.ctx()
	defer cancel()
	// Pending ends go first, as in Admit: the wait counts them.
	var opsBuf [maxEndsPerCall]endOp
	ops, floor := c.takeEndsFloor(opsBuf[:0], maxEndsPerCall)
	pipe := b.client.Pipeline()
	var k *call
	if len(ops) > 0 {
		k = c.endCall(ctx, ops, floor)
		defer k.release()
		_ = pipe.Process(ctx, k.cmd)
	}
	sent := time.Now()
	tc := pipe.Time(ctx)
	rc := c.queueRead(ctx, pipe, b.leaseNow())
	cmds, _ := pipe.Exec(ctx)
	if st, err := tc.Result(); err == nil {
		b.srv.seen(sent, st.UnixMicro())
	}
	now := b.windowNow().UnixNano()
	var inFlight int64
	var blob string
	err := pipelineErr(cmds)
	if err == nil {
		inFlight, blob, err = rc.result()
	}
	var w snapshot
	if err == nil {
		err = w.decode(blob)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if k != nil {
		rep, kerr := k.reply()
		c.confirmEndsLocked(ops, &rep, kerr)
	}
	if err != nil {
		b.failed(err)
		c.ring.Advance(window.BucketOf(b.windowLow().UnixNano()))
		return c.ring.RetryAfter(now, c.inFlightLocked(), lim, r)
	}
	b.succeeded()
	c.applyLocked(inFlight, &w)
	// From the window just read, not the cache, which a concurrent reply may have corrected
	// only in its sums: the wait must be exact, as Admit's.
	w.ring.Advance(window.BucketOf(now))
	return w.ring.RetryAfter(now, inFlight, lim, r)
}

// retryAfter is w's RetryAfter, but for a refusal no limit explains (the head bucket could not
// hold r: see lua/admit.lua's MAX), which may be retried in the next bucket.
func retryAfter(w *window.Ring, now, inFlight int64, lim state.Limits, r state.Reservation) time.Duration {
	if d := w.RetryAfter(now, inFlight, lim, r); d > 0 {
		return d
	}
	return time.Duration(window.BucketNanos - (now - window.BucketOf(now)*window.BucketNanos))
}

// ObserveLatency records a finished call's latency, and a stream's time to first token.
func (c *counter) ObserveLatency(latency, ttft time.Duration) {
	now := c.b.now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.latency.Add(now, max(latency, 0))
	if ttft > 0 {
		c.ttft.Add(now, ttft)
	}
}

// applyRead is apply for the background refresh's read, unless ends of this node were on their
// way to Redis at any time during the read: the window may or may not count them, and the
// cache, which counts them until their replies confirm them, would count them twice until then.
// Their replies bring the cache up to date anyway.
//
// Likewise while a block reservation was on its way: the window may count the block before its
// reply has made it the block, and Load would show the whole block as admitted until then.
func (c *counter) applyRead(r readCmds, inFlight int64, blob string) {
	c.mu.Lock()
	raced := r.busy || c.inTransit > 0 || c.endsSent != r.endsSent ||
		c.fetching != nil || c.fetchSeq != r.fetchSeq
	c.mu.Unlock()
	if !raced {
		c.apply(inFlight, blob)
	}
}

// apply decodes a read window into the cache, unless the cache holds a newer one.
func (c *counter) apply(inFlight int64, blob string) {
	var w snapshot
	if err := w.decode(blob); err != nil {
		c.b.log.Debug("redis state backend: unreadable window ignored", "key", c.keys[0], "err", err)
		return
	}
	c.mu.Lock()
	c.applyLocked(inFlight, &w)
	c.mu.Unlock()
}

// applyLocked replaces the cache with w and inFlight, unless the cache already holds a later
// state: a reply that raced a newer one must not take the cache back.
func (c *counter) applyLocked(inFlight int64, w *snapshot) {
	if w.none {
		c.noWindowLocked(inFlight)
		return
	}
	head := w.ring.Head()
	if c.olderLocked(head, w.ver) {
		return
	}
	c.seen, c.seenHead, c.seenVer = true, head, w.ver
	cached := c.ring.Head()
	c.ring = w.ring
	c.ring.Advance(cached) // the cache may have aged past the stored head; it never moves back
	for _, e := range c.ends {
		c.ring.Add(e.bucket, e.requests, e.tokens)
	}
	c.reported = inFlight
}

// noWindowLocked applies a reply that found no window: the key expired, so everything it counted
// had left the window.
func (c *counter) noWindowLocked(inFlight int64) {
	c.ring.Reset(c.ring.Head())
	c.reported = inFlight
}

// olderLocked reports whether a window at (head, ver) is older than the cache's.
func (c *counter) olderLocked(head, ver int64) bool {
	return c.seen && (head < c.seenHead || head == c.seenHead && ver < c.seenVer)
}

// applyHeaderLocked folds a reply's header into the cache, unless the cache already holds a later
// state (which counted this reply's change too). The sums become the reply's plus this node's
// unconfirmed ends; the difference from the ring's, other nodes' work and buckets that left, is
// counted in the head bucket, where most of it belongs (new admissions), until the next whole
// window replaces the ring. The sums, which Load reads, are exact as of the reply, but for one
// race: a reply from a script that ran after an end whose own reply is not read yet (another
// goroutine's round trip) counts that end twice, for the moment until confirmEndsLocked takes it
// out again.
//
// It reports whether the cache had aged past the reply's head (the server's clock moved on while
// the reply was on its way, or stepped back, or Load ran ahead of the last script): the reply's
// sums then still count buckets the cache has dropped, and the cache keeps its own sums until the
// next reply. What the reply's own call reserved is then the caller's to count (admitCounted).
func (c *counter) applyHeaderLocked(r *reply) (behind bool) {
	if c.olderLocked(r.head, r.ver) {
		return false
	}
	c.seen, c.seenHead, c.seenVer = true, r.head, r.ver
	c.reported = r.inFlight
	if r.head < c.ring.Head() {
		return true
	}
	c.ring.Advance(r.head)
	req, tok := c.ring.Sums()
	endReq, endTok := c.endSumsLocked()
	c.ring.Add(r.head, r.requests+endReq-req, r.tokens+endTok-tok)
	return false
}

// admitCountedLocked folds the reply to this node's admission of requests and tokens into the
// cache: the header as applyHeaderLocked does, or, when the cache is ahead of the reply's head,
// the admission itself, in the bucket Redis counted it in (a newer reply then brings the other
// nodes' changes). Without that the cache missed it until the next refresh.
func (c *counter) admitCountedLocked(r *reply, requests, tokens int64) {
	if c.applyHeaderLocked(r) {
		c.ring.Add(r.head, requests, tokens)
	}
}

// activeSince reports whether the counter was used at or after loop tick t.
func (c *counter) activeSince(t int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastUse >= t
}

// renew queues the extension of this node's leases on the counter's calls in flight to
// LeaseTTL after wall, the server's time. XX never re-adds a ticket that ended meanwhile.
func (c *counter) renew(ctx context.Context, pipe goredis.Pipeliner, wall time.Time) {
	c.mu.Lock()
	if len(c.tickets) == 0 {
		c.mu.Unlock()
		return
	}
	until := wall.Add(c.b.leaseTTL).UnixMilli()
	members := make([]goredis.Z, 0, len(c.tickets))
	for id := range c.tickets {
		members = append(members, goredis.Z{Score: float64(until), Member: c.member(id)})
	}
	c.mu.Unlock()
	pipe.ZAddXX(ctx, c.keys[1], members...)
	pipe.PExpire(ctx, c.keys[1], 2*c.b.leaseTTL)
}

// readCmds are a queued read of one counter's window and live in-flight count.
type readCmds struct {
	w        *goredis.StringCmd
	f        *goredis.IntCmd
	busy     bool   // ends or a block reservation were on their way to Redis when the read was queued
	endsSent uint64 // the counter's endsSent then
	fetchSeq uint64 // and its fetchSeq
}

func (c *counter) queueRead(ctx context.Context, pipe goredis.Pipeliner, wall time.Time) readCmds {
	c.mu.Lock()
	busy, sent, fetches := c.inTransit > 0 || c.fetching != nil, c.endsSent, c.fetchSeq
	c.mu.Unlock()
	return readCmds{
		w:        pipe.Get(ctx, c.keys[0]),
		f:        pipe.ZCount(ctx, c.keys[1], "("+strconv.FormatInt(wall.UnixMilli(), 10), "+inf"),
		busy:     busy,
		endsSent: sent,
		fetchSeq: fetches,
	}
}

func (r readCmds) result() (inFlight int64, blob string, err error) {
	blob, err = r.w.Result()
	if errors.Is(err, goredis.Nil) {
		blob, err = "", nil
	}
	if err != nil {
		return 0, "", err
	}
	inFlight, err = r.f.Result()
	return inFlight, blob, err
}

// snapshot is a window as a reply carried it.
type snapshot struct {
	ring window.Ring
	ver  int64 // bumped by every write; orders replies that share a head
	none bool  // no window in Redis: nothing is counted
}

// decode fills s from a stored window; "" means there is none.
func (s *snapshot) decode(blob string) error {
	if blob == "" {
		s.ring.Reset(0)
		s.ver, s.none = 0, true
		return nil
	}
	if len(blob) != ringBytes {
		return fmt.Errorf("window is %d bytes, want %d", len(blob), ringBytes)
	}
	head := le(blob, 0)
	s.ring.Reset(head)
	for x := head - window.RingSize + 1; x < head; x++ {
		off := headerBytes + 16*int(window.Slot(x))
		s.ring.Add(x, le(blob, off), le(blob, off+8))
	}
	s.ring.Add(head, le(blob, 32), le(blob, 40))
	if req, tok := s.ring.Sums(); req != le(blob, 16) || tok != le(blob, 24) {
		return fmt.Errorf("window sums %d, %d disagree with its buckets (%d, %d)", le(blob, 16), le(blob, 24), req, tok)
	}
	s.ver, s.none = le(blob, 8), false
	return nil
}
