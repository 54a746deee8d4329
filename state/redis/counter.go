package redis

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
)

// counter is one deployment's usage: Redis keys, the cached window, the local fallback, and
// this node's latency samples (routing reads its own view of latency; nothing to share).
type counter struct {
	b       *Backend
	keys    []string     // window, in-flight ZSET: one hash tag
	keyArgs [2]any       // keys, boxed once for the scripts' arguments
	srv     *serverClock // the clock of the server the keys live on (see clock.go)
	local   state.Counter

	mu sync.Mutex
	// The cached window and in-flight count: the newest reply taken as the cache's state (by
	// head, then version), plus what this node's later scripts did (late) and its ends that
	// Redis has not confirmed yet (ends). A whole window (refresh, refusal, RetryAfter) replaces
	// the ring; a header (every other reply) corrects its sums, the difference counted in the
	// head bucket: see the package comment and readReplyLocked.
	ring              window.Ring
	reported          int64 // calls in flight, as of that reply, plus the late leases
	seenHead, seenVer int64
	seen              bool
	ends              []endOp      // settles and releases not yet confirmed by Redis, oldest first
	inTransit         int          // ends sent whose replies are not read yet
	endsSent          uint64       // round trips that carried ends, ever: see applyRead
	trips             []uint64     // those of them whose replies are not read yet, by number (endsSent)
	late              []effect     // replies read but not yet taken as the state: what their scripts did
	held              []heldHeader // headers waiting for the round trips on their way when they came
	flushTimer        *time.Timer
	flushArmed        bool                // flushTimer runs: unsent ends wait for an Admit until it fires
	tickets           map[uint64]struct{} // this node's Redis tickets in flight: their leases are renewed
	lastUse           int64               // Backend.ticks at the last use; keeps the counter in the background refresh
	adjusts           int                 // adjustments among ends (they free no in-flight slot)
	// Block remainders this node gave back (giveBack ends) whose round trips have replied, ever,
	// and a channel closed (and replaced) at each such reply: see recheck.
	backs     uint64
	backsDone chan struct{}

	// Local admissions (outage.go): what this node admitted while Redis was unreachable and Redis
	// does not count yet (outage, per second of the outage clock; unpushed is set whenever it may
	// hold anything), the local tickets in flight, snapshots taken (gen) and pushed (pushedGen),
	// and the push on its way and the ends that wait for it.
	outage         window.Ring
	unpushed       atomic.Bool
	localTix       map[uint64]localAdmission
	gen, pushedGen uint64
	pushing        chan struct{}
	pushFix        []correction

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

var (
	_ state.Counter   = (*counter)(nil)
	_ state.Confirmer = (*counter)(nil)
)

func newCounter(b *Backend, id string) *counter {
	tag := b.prefix + hashTag(id)
	c := &counter{
		b:         b,
		keys:      []string{tag + windowKey, tag + ":f"},
		keyArgs:   [2]any{tag + windowKey, tag + ":f"},
		local:     b.local.Counter(id),
		tickets:   make(map[uint64]struct{}),
		localTix:  make(map[uint64]localAdmission),
		lastUse:   b.ticks.Load(),
		backsDone: make(chan struct{}),
	}
	c.srv = b.masterClock(c.keys[0]).fork()
	c.ring.Reset(window.BucketOf(c.windowLow().UnixNano()))
	c.outage.Reset(window.BucketOf(b.outageNow()))
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
	now := c.windowNow().UnixNano()
	if lim.MaxParallel == 0 {
		if t, ok := c.takeBlock(lim, r, now, time.Now().UnixNano()); ok {
			return t, nil
		}
	}
	if b.open.Load() {
		if t, err := c.admitLocal(lim, r, false); err != errBreakerClosed {
			return t, err
		}
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
		return c.admitOne(lim, r)
	}
	t, err := c.admitRedis(lim, r, k, tokens)
	c.fetched(fetch)
	if err == errBlockRefused {
		// The block did not fit (other nodes used the room the cache showed): r alone may.
		return c.admitOne(lim, r)
	}
	return t, err
}

// admitOne admits r alone in Redis. A refusal stands only once this node has no room of its
// own left for r: see recheck.
func (c *counter) admitOne(lim state.Limits, r state.Reservation) (state.Ticket, error) {
	backs := c.backsNow()
	t, local, err := c.admitRedisOrLocal(lim, r, r.Requests, r.Tokens)
	if err == nil || local || lim.MaxParallel != 0 || !errors.Is(err, state.ErrNoCapacity) {
		return t, err // a local refusal (Redis failed) is the fair share's, not Redis's
	}
	return c.recheck(lim, r, backs, t, err)
}

// maxRechecks bounds the round trips recheck adds to one admission.
const maxRechecks = 3

// recheck is a refused admission's look at the room this node holds itself. Redis refused
// because the window was full as its script ran, but part of what fills it may be this
// node's own escrow: a block reservation on its way or just made (its reply came before the
// refusal's), or a block's remainder this node gives back (the block's second ended, or the
// block came back too late to use) that Redis had not counted when it refused, because the
// give-back had not been sent yet or went in another round trip. That room is for this node's
// admissions, and the node's callers, refused, may not ask again: nobody would use it. So the
// caller waits for the block reservation and takes from the block, and while a remainder
// given back may not have been counted when backs was read (see backsNow) asks Redis again,
// the give-back riding in that call or its round trip awaited first. Then the refusal stands.
// backs was read before the refused call was sent.
func (c *counter) recheck(lim state.Limits, r state.Reservation, backs uint64, t state.Ticket, err error) (state.Ticket, error) {
	for range maxRechecks {
		c.waitFetch()
		if bt, ok := c.takeBlock(lim, r, c.windowNow().UnixNano(), 0); ok {
			return bt, nil
		}
		now, again := c.waitGiveBacks(backs)
		if !again {
			break
		}
		backs = now
		var local bool
		if t, local, err = c.admitRedisOrLocal(lim, r, r.Requests, r.Tokens); err == nil || local || !errors.Is(err, state.ErrNoCapacity) {
			return t, err
		}
	}
	return t, err
}

// backsNow is how many of this node's block give-backs Redis has confirmed (or failed) so far.
func (c *counter) backsNow() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.backs
}

// waitGiveBacks reports whether a block remainder this node gave back may be missing from a
// refusal whose call was sent when backsNow was backs: one is still to be sent (the next call
// carries it), or one's round trip replied since. One on its way in another round trip is
// waited for (at most the call timeout). It also returns backsNow.
func (c *counter) waitGiveBacks(backs uint64) (uint64, bool) {
	c.mu.Lock()
	unsent, sent := false, false
	for _, e := range c.ends {
		if e.giveBack {
			unsent = unsent || !e.sent
			sent = sent || e.sent
		}
	}
	n, done := c.backs, c.backsDone
	c.mu.Unlock()
	if unsent || n != backs {
		return n, true
	}
	if !sent {
		return n, false
	}
	timer := time.NewTimer(c.b.timeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	}
	n = c.backsNow()
	return n, n != backs
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
// reserves a block of them instead, r admitted from it. When the call fails, the local fallback
// decides.
func (c *counter) admitRedis(lim state.Limits, r state.Reservation, k, tokens int64) (state.Ticket, error) {
	t, _, err := c.admitRedisOrLocal(lim, r, k, tokens)
	return t, err
}

// admitRedisOrLocal is admitRedis, and reports whether the local fallback decided.
func (c *counter) admitRedisOrLocal(lim state.Limits, r state.Reservation, k, tokens int64) (_ state.Ticket, local bool, _ error) {
	b := c.b
	isBlock := k != r.Requests || tokens != r.Tokens
	if err := c.pushPending(); err != nil {
		b.failed(err)
		t, err := c.admitLocal(lim, r, true)
		return t, true, err
	}
	id := b.seq.Add(1)
	ctx, cancel := b.ctx()
	defer cancel()
	// This node's pending ends of the deployment are finished first, in the same script: the
	// decision counts them, as the caller expects of a Settle that returned, and they cost no
	// round trip of their own.
	var opsBuf [maxEndsPerCall]endOp
	ops, floor, trip := c.takeEndsFloor(opsBuf[:0], maxEndsPerCall, isBlock)
	kc := c.admitCall(ctx, id, ops,
		b.overrideMs(), floor, b.leaseTTL.Milliseconds(), lim.RPM, lim.TPM, lim.MaxParallel, k, tokens)
	defer kc.release()
	ks := [1]*call{kc}
	sent := time.Now()
	b.runCalls(ctx, ks[:])
	rep, err := kc.reply()
	if err == nil {
		c.sawServer(sent, rep.serverUs)
	}
	var w *snapshot
	if err == nil && rep.status != 1 {
		// A refusal carries the whole window: the wait is computed from it.
		w = new(snapshot)
		err = w.decode(rep.whole)
	}
	c.mu.Lock()
	c.lastUse = b.ticks.Load()
	if err != nil {
		c.readReplyLocked(trip, ops, 0, 0, false, &rep, err, nil)
		c.mu.Unlock()
		// The script may have run: its reservation then counts until it ages out, and its
		// lease, which nobody renews, frees the slot within LeaseTTL.
		b.failed(err)
		t, err := c.admitLocal(lim, r, true)
		return t, true, err
	}
	var t state.Ticket
	if w != nil {
		c.readReplyLocked(trip, ops, 0, 0, false, &rep, nil, w)
	} else {
		c.tickets[id] = struct{}{}
		c.readReplyLocked(trip, ops, k, tokens, true, &rep, nil, nil)
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
		now := c.windowNow().UnixNano()
		w.ring.Advance(window.BucketOf(now))
		if isBlock {
			return state.Ticket{}, false, errBlockRefused
		}
		return state.Ticket{}, false, &state.NoCapacityError{RetryAfter: retryAfter(&w.ring, now, rep.inFlight, lim, r)}
	}
	return t, false, nil
}

// admitLocal admits against the local backend at this node's fair share of lim, and only while
// the usage Redis last reported (aging out of the cached window) plus what this node admitted
// locally leaves room: the fleet must not get a fresh window the moment Redis fails. What it
// admits is counted for the push to Redis (outage.go). fallback is set when a Redis call just
// failed; otherwise the breaker was open when the caller looked, and if it has closed since,
// admitLocal returns errBreakerClosed and the caller goes to Redis.
func (c *counter) admitLocal(lim state.Limits, r state.Reservation, fallback bool) (state.Ticket, error) {
	now := c.b.now()
	c.mu.Lock() // makes the cache check, the local reservation and its count for the push one step
	defer c.mu.Unlock()
	// Set before the breaker is read, and read by the Redis path after it: an admission through
	// Redis either sees this one's count, and pushes it first, or this one sees the breaker closed.
	c.unpushed.Store(true)
	if !fallback && !c.b.open.Load() {
		return state.Ticket{}, errBreakerClosed
	}
	c.b.stats.localAdmits.Add(1)
	if wait := c.cachedWaitLocked(now, lim, r); wait > 0 {
		return state.Ticket{}, &state.NoCapacityError{RetryAfter: wait}
	}
	t, err := c.local.Admit(c.b.fairShare(lim), r)
	if err == nil {
		t.ID = c.countLocalLocked(t.Reserved.Requests, t.Reserved.Tokens)
	}
	return t, err
}

// errBreakerClosed is admitLocal's answer when Redis answers again: admit through it.
var errBreakerClosed = errors.New("breaker closed")

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
	ns := c.windowLow().UnixNano()
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

// ErrAdmissionLapsed is Confirm's error when a call's count has left Redis's window, or is about
// to, before its request could leave (the node was paused, or the call stalled, for a minute):
// sent now, it would reach the upstream beside requests admitted on the room it held.
var ErrAdmissionLapsed = errors.New("redis limit: the call's admission left the window before its request was sent")

// Confirm moves t's count to the bucket its request leaves in, when that is later than the
// bucket Redis counted it in: an upstream counts a request when it arrives, and one that waited
// after its admission (queued behind a burst, or on a node paused between admission and send)
// would otherwise leave Redis's window while the upstream still counts it, and the room it held
// would go to the next requests on top of it. The move is two adjustments that ride the next
// script call, no round trip on the request path: plus in the new bucket, minus in the old (in
// that order, so a split between calls over-counts for a moment, never under). The new bucket
// is the latest this node knows the server's clock has reached, which a script never runs
// behind. The proxy calls Confirm on the transport's first read of the body. A local ticket
// (admitted while Redis was down) is counted in the local fallback, and pushed as admitted.
func (c *counter) Confirm(t *state.Ticket) error {
	if t.ID&localTicket != 0 {
		return nil
	}
	if window.BucketOf(c.windowNow().UnixNano())-t.Bucket >= window.RingSize-1 {
		return ErrAdmissionLapsed
	}
	low := window.BucketOf(c.windowLow().UnixNano())
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ring.Advance(low)
	to := c.ring.Head()
	r := window.Sane(t.Reserved)
	if to <= t.Bucket || r == (state.Reservation{}) || c.b.open.Load() {
		return nil
	}
	c.queueEndLocked(endOp{id: c.b.seq.Add(1), bucket: to, requests: r.Requests, tokens: r.Tokens, adjust: true})
	c.queueEndLocked(endOp{id: c.b.seq.Add(1), bucket: t.Bucket, requests: -r.Requests, tokens: -r.Tokens, adjust: true})
	t.Bucket = to
	return nil
}

// end settles or releases t where it was issued. A Redis ticket's end is counted in the cache at
// once and sent to Redis without waiting: in this node's next Admit of the deployment, or on its
// own (flush) when none comes within endDelay. It is best effort: when it fails, the
// reservation stays as reserved and the lease frees the in-flight slot. A local ticket ends in
// the local fallback, and corrects what the push to Redis takes, or took, of it.
func (c *counter) end(t state.Ticket, requests, tokens int64, locally func()) {
	if t.ID&localTicket != 0 {
		locally()
		c.endLocal(t.ID, requests, tokens)
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
	e := endOp{id: t.ID, bucket: t.Bucket, requests: requests, tokens: tokens}
	e.cachedReq, e.cachedTok = c.addEndLocked(e.bucket, requests, tokens)
	c.ends = append(c.ends, e)
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
	// cachedReq and cachedTok are what the cached ring counted of the correction (addEndLocked),
	// and what undoing it takes off.
	cachedReq, cachedTok int64
	sent                 bool // in a round trip whose reply is not read yet
	adjust               bool // an adjustment (escrow), not the end of a lease: frees no in-flight slot
	giveBack             bool // a block's unused remainder going back (see recheck)
}

// takeEndsFloor is takeEndsLocked, and the floor for a script call: the latest bucket of the server's
// clock this node has seen (its cached window's head, aged by the lower bound). With block, the
// call reserves an escrow block, and its round trip is numbered even without ends: until its
// reply has made the block, a reply whose script ran after it would show the whole block as
// admitted (see readReplyLocked).
func (c *counter) takeEndsFloor(dst []endOp, limit int, block bool) (ops []endOp, floor int64, trip uint64) {
	low := window.BucketOf(c.windowLow().UnixNano())
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ring.Advance(low)
	ops, trip = c.takeEndsLocked(dst, limit)
	if block && trip == 0 {
		trip = c.newTripLocked()
	}
	return ops, c.ring.Head(), trip
}

// newTripLocked numbers a round trip readReplyLocked must know to be on its way.
func (c *counter) newTripLocked() uint64 {
	c.endsSent++
	c.trips = append(c.trips, c.endsSent)
	return c.endsSent
}

// takeEndsLocked marks up to limit unsent ends as sent and appends them to dst, oldest first.
// When it takes any, the round trip that carries them is numbered (trip, else 0): its reply must
// say so to readReplyLocked. When none is left unsent, the flush timer has nothing to wait for:
// it stops.
func (c *counter) takeEndsLocked(dst []endOp, limit int) (_ []endOp, trip uint64) {
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
		trip = c.newTripLocked()
	}
	if !left && c.flushArmed {
		c.flushArmed = false
		c.flushTimer.Stop() // if it fires anyway, flush finds nothing to send
	}
	return dst, trip
}

// flush sends the unsent ends in a round trip of their own: flushTimer runs it when no Admit of
// the deployment came within endDelay to carry them. While the breaker is open they are dropped
// (the leases free the slots).
func (c *counter) flush() {
	b := c.b
	b.flushMu.RLock()
	defer b.flushMu.RUnlock()
	if !b.closed.Load() { // Close sends what is left itself
		c.flushNow()
	}
}

// flushNow is flush, and reports whether it sent anything and Redis took it.
func (c *counter) flushNow() bool {
	b := c.b
	c.mu.Lock()
	c.flushArmed = false
	c.mu.Unlock()
	if b.open.Load() {
		c.dropEnds()
		return false
	}
	ops, floor, trip := c.takeEndsFloor(nil, maxFlush, false)
	if len(ops) == 0 {
		return false
	}
	ctx, cancel := b.ctx()
	defer cancel()
	ks := c.endCalls(ctx, ops, floor)
	defer releaseCalls(ks)
	sent := time.Now()
	b.runCalls(ctx, ks)
	err := ks[0].cmd.Err()
	if err != nil {
		b.failed(err)
	} else {
		b.succeeded()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, k := range ks {
		chunk := ops[i*maxEndsPerCall : min((i+1)*maxEndsPerCall, len(ops))]
		rep, err := k.reply()
		if err == nil {
			c.sawServer(sent, rep.serverUs)
		}
		c.readReplyLocked(trip, chunk, 0, 0, false, &rep, err, nil)
	}
	if !c.flushArmed && !b.closed.Load() && c.unsentLocked() {
		c.flushArmed = true // more than maxFlush were waiting
		c.flushTimer.Reset(0)
	}
	return err == nil
}

// unsentLocked reports whether ends wait to be sent.
func (c *counter) unsentLocked() bool {
	return slices.ContainsFunc(c.ends, func(e endOp) bool { return !e.sent })
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

// readReplyLocked folds the reply of one of this node's round trips into the cache: trip is the
// number takeEndsFloor gave it (0: none), ops the ends it carried, requests and tokens what it
// reserved and leased whether that took a lease (an admission, a block); rep is its reply, or
// err its failure; w the whole window a refusal carries, when decoded (else the reply's header
// serves).
//
// The cache counts this node's ends from the moment they are made until a reply counts them. A
// reply shows the window as its own script left it, and ends whose round trips have not replied
// yet may or may not be in it: their scripts ran on other connections, before or after. Taken
// as the cache's state then, such a reply would count those ends twice, in its sums and as
// unconfirmed ends, and Load would show calls in flight that ended and tokens never used (or,
// for a block reservation on its way, the whole block as admitted). So a reply that comes while
// other numbered round trips are on their way is only counted for what its own script did (an
// effect, kept in late) and held back until those round trips have replied; it is then taken as
// the state, with the effects of every later script of this node on top. Versions tell later
// from earlier: every script that finishes an end or reserves moves the window's version. Round
// trips reply within the call timeout, so under steady concurrency the cache still follows
// Redis within a round trip or two.
func (c *counter) readReplyLocked(trip uint64, ops []endOp, requests, tokens int64, leased bool, rep *reply, err error, w *snapshot) {
	if i := slices.Index(c.trips, trip); trip != 0 && i >= 0 {
		c.trips = slices.Delete(c.trips, i, i+1)
	}
	var e effect
	c.inTransit -= len(ops)
	if slices.ContainsFunc(ops, func(op endOp) bool { return op.giveBack }) {
		c.backedLocked()
	}
	for i, op := range ops {
		// The cached amounts as they are now: a whole window read meanwhile counted them anew.
		ops[i] = c.forgetEndLocked(op.id)
		e.requests += ops[i].cachedReq
		e.tokens += ops[i].cachedTok
		if !op.adjust {
			e.leases--
		}
	}
	switch {
	case err != nil:
		if len(ops) > 0 {
			// Redis may not have counted them (the breaker hears of the failure from the caller).
			b := c.b
			b.stats.droppedEnds.Add(int64(len(ops)))
			b.log.Debug("redis state backend: settles not recorded; the leases free their slots",
				"key", c.keys[0], "ends", len(ops), "err", err)
			c.uncountLocked(ops)
		}
	case rep.kind == noWindow:
		c.noWindowLocked(rep.inFlight)
	case c.olderLocked(rep.head, rep.ver):
		// A later state is the cache's: it counted them, and so did the ring on top.
		c.uncountLocked(ops)
	case len(c.trips) > 0:
		e.head, e.ver = rep.head, rep.ver
		e.requests += requests
		e.tokens += tokens
		if leased {
			e.leases++
		}
		c.ring.Advance(rep.head)
		c.ring.Add(rep.head, requests, tokens)
		c.reported += e.leases
		c.late = append(c.late, e)
		if w == nil { // a whole window would wait for nothing: the next reply or read serves as well
			c.held = append(c.held, heldHeader{head: rep.head, ver: rep.ver, requests: rep.requests,
				tokens: rep.tokens, inFlight: rep.inFlight, after: slices.Max(c.trips)})
		}
	case w != nil:
		c.applyLocked(rep.inFlight, w)
	default:
		if c.baseLocked(rep.head, rep.ver, rep.requests, rep.tokens, rep.inFlight) {
			// The cache is ahead of the reply's head: what the call reserved is counted where
			// Redis counted it (a later reply brings the other nodes' changes).
			c.ring.Add(rep.head, requests, tokens)
		}
	}
	c.releaseHeldLocked()
}

// backedLocked records that a round trip carrying block give-backs has replied (or failed),
// and wakes the admissions that wait for it (waitGiveBacks).
func (c *counter) backedLocked() {
	c.backs++
	close(c.backsDone)
	c.backsDone = make(chan struct{})
}

// effect is what one of this node's scripts changed, as the cache counted it: the requests and
// tokens it reserved and the corrections of the ends it finished, and the leases it took less
// those it ended. head and ver are the window it left.
type effect struct {
	head, ver        int64
	requests, tokens int64
	leases           int64
}

// heldHeader is a reply's header held back by readReplyLocked until every round trip with ends
// that was on its way when it came (numbered up to after) has replied.
type heldHeader struct {
	head, ver, requests, tokens, inFlight int64
	after                                 uint64
}

// uncountLocked takes ops's corrections out of the ring.
func (c *counter) uncountLocked(ops []endOp) {
	for _, op := range ops {
		c.ring.Add(op.bucket, -op.cachedReq, -op.cachedTok)
	}
}

// releaseHeldLocked takes as the cache's state the held headers whose round trips have all
// replied, oldest first (a newer one makes the older ones moot).
func (c *counter) releaseHeldLocked() {
	for len(c.held) > 0 {
		first := uint64(math.MaxUint64) // the oldest round trip still on its way
		for _, t := range c.trips {
			first = min(first, t)
		}
		i := -1
		for j, h := range c.held {
			if h.after < first && (i < 0 || after(c.held[i].head, c.held[i].ver, h.head, h.ver)) {
				i = j
			}
		}
		if i < 0 {
			return
		}
		h := c.held[i]
		c.held = slices.Delete(c.held, i, i+1)
		// What its own call reserved was counted when it came, behind or not.
		_ = c.baseLocked(h.head, h.ver, h.requests, h.tokens, h.inFlight)
	}
}

// after reports whether a window at (head, ver) is later than one at (h0, v0).
func after(head, ver, h0, v0 int64) bool { return head > h0 || head == h0 && ver > v0 }

// lateLocked forgets the effects and held headers a window at (head, ver) includes, and returns
// the sum of the others': scripts of this node that ran after it.
func (c *counter) lateLocked(head, ver int64) (requests, tokens, leases int64) {
	c.late = slices.DeleteFunc(c.late, func(e effect) bool { return !after(e.head, e.ver, head, ver) })
	c.held = slices.DeleteFunc(c.held, func(h heldHeader) bool { return !after(h.head, h.ver, head, ver) })
	for _, e := range c.late {
		requests += e.requests
		tokens += e.tokens
		leases += e.leases
	}
	return requests, tokens, leases
}

// forgetEndLocked removes end id from the unconfirmed ends and returns it.
func (c *counter) forgetEndLocked(id uint64) endOp {
	for i := range c.ends {
		if e := c.ends[i]; e.id == id {
			if e.adjust {
				c.adjusts--
			}
			c.ends = slices.Delete(c.ends, i, i+1)
			return e
		}
	}
	return endOp{id: id}
}

// addEndLocked counts a correction of this node's in the cached ring as Redis will count it
// (lua/window.lua's add(): a bucket never above maxCount), and returns what the ring counted.
// Counted in full instead, the part Redis drops would stay in the ring's bucket while the next
// reply's sums, which lack it, put the difference in the head bucket: when the corrected bucket
// left the window, the cache would count the difference for up to a minute, more than was
// ever admitted (TestProperties's hostile half found it).
func (c *counter) addEndLocked(bucket, requests, tokens int64) (cachedReq, cachedTok int64) {
	return c.ring.AddBelow(bucket, requests, tokens, maxCount)
}

// dropEnds forgets the ends not sent yet, while Redis is unreachable.
func (c *counter) dropEnds() {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, backs := 0, false
	c.ends = slices.DeleteFunc(c.ends, func(e endOp) bool {
		if e.sent {
			return false
		}
		backs = backs || e.giveBack
		c.ring.Add(e.bucket, -e.cachedReq, -e.cachedTok)
		if e.adjust {
			c.adjusts--
		}
		n++
		return true
	})
	c.b.stats.droppedEnds.Add(int64(n))
	if backs {
		c.backedLocked() // nobody waits for them any more
	}
}

// endSumsLocked are the corrections of the unconfirmed ends that the cached ring still holds.
func (c *counter) endSumsLocked() (requests, tokens int64) {
	for _, e := range c.ends {
		if c.ring.Holds(e.bucket) {
			requests += e.cachedReq
			tokens += e.cachedTok
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
func (c *counter) Load() state.Load { return c.loadAt(c.b.now(), c.windowLow()) }

// LoadAt is Load as of t (on this node's clock) from the cache, without a round trip. While
// degraded it is the local fallback's counts times the node count: an estimate of the cluster's
// use that makes routing's check against the whole limit agree with admission's check against
// the share.
func (c *counter) LoadAt(t time.Time) state.Load { return c.loadAt(t, c.windowAt(t)) }

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
	low := window.BucketOf(c.windowLow().UnixNano())
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastUse = c.b.ticks.Load() // not the clock: routing calls LoadAt for every deployment
	bucket := window.BucketOf(now)
	if c.blk != nil && c.blockBucketLocked(now) > c.blk.bucket {
		c.retireBlockLocked()
	}
	// The cache moves on no further than the server's clock has surely reached: its head is the
	// floor the scripts count at (takeEndsFloor), and a head in the future would move Redis's
	// window on for every node. A t ahead of that (a caller on another clock than this node's
	// Options.Now, e.g. time.Now beside a clock 22 s behind it) ages the counts it reads only:
	// the chaos suite's clock nemesis at 30 s let 899 through rpm 600 that way.
	c.ring.Advance(min(bucket, max(low, c.ring.Head())))
	req, tok := c.ring.Sums()
	for x := c.ring.Head() - window.RingSize + 1; x <= min(bucket-window.RingSize, c.ring.Head()); x++ {
		r, k := c.ring.At(x)
		req, tok = req-r, tok-k
	}
	if blk := c.blk; blk != nil && c.ring.Holds(blk.bucket) {
		// Redis counts whole blocks; the part not admitted yet is no one's use.
		req, tok = req-blk.reqLeft, tok-blk.tokLeft
	}
	// A difference counted in the head bucket for a bucket that has left (see baseLocked) never
	// reads below zero.
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
	ops, floor, trip := c.takeEndsFloor(opsBuf[:0], maxEndsPerCall, false)
	pipe := b.client.Pipeline()
	var k *call
	if len(ops) > 0 {
		k = c.endCall(ctx, ops, floor)
		defer k.release()
		_ = pipe.Process(ctx, k.cmd)
	}
	sent := time.Now()
	tc := pipe.Time(ctx) // any server's, in a Redis Cluster: the backend's estimate only
	rc := c.queueRead(ctx, pipe, c.leaseNow())
	cmds, _ := pipe.Exec(ctx)
	if st, err := tc.Result(); err == nil {
		b.srv.seen(sent, st.UnixMicro())
	}
	now := c.windowNow().UnixNano()
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
		if kerr == nil {
			c.sawServer(sent, rep.serverUs)
		}
		c.readReplyLocked(trip, ops, 0, 0, false, &rep, kerr, nil)
	}
	if err != nil {
		b.failed(err)
		c.ring.Advance(window.BucketOf(c.windowLow().UnixNano()))
		return c.ring.RetryAfter(now, c.inFlightLocked(), lim, r)
	}
	b.succeeded()
	if len(c.trips) == 0 { // else it may count ends on their way, or not (see readReplyLocked)
		c.applyLocked(inFlight, &w)
	}
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
// state: a reply that raced a newer one must not take the cache back. It reports whether it did.
func (c *counter) applyLocked(inFlight int64, w *snapshot) bool {
	if w.none {
		c.noWindowLocked(inFlight)
		return true
	}
	head := w.ring.Head()
	if c.olderLocked(head, w.ver) {
		return false
	}
	if slices.ContainsFunc(c.late, func(e effect) bool { return after(e.head, e.ver, head, w.ver) }) {
		// Later scripts of this node changed what the window shows, in buckets the cache does
		// not keep apart: the held header that comes with them serves instead.
		return false
	}
	c.lateLocked(head, w.ver)
	c.seen, c.seenHead, c.seenVer = true, head, w.ver
	cached := c.ring.Head()
	c.ring = w.ring
	c.ring.Advance(cached) // the cache may have aged past the stored head; it never moves back
	for i := range c.ends {
		e := &c.ends[i]
		e.cachedReq, e.cachedTok = c.addEndLocked(e.bucket, e.requests, e.tokens)
	}
	c.reported = inFlight
	return true
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

// baseLocked takes a reply's header as the cache's state, unless the cache already holds a later
// one. The sums become the reply's plus what this node's later scripts did (late) and its
// unconfirmed ends; the difference from the ring's, other nodes' work and buckets that left, is
// counted in the head bucket, where most of it belongs (new admissions), until the next whole
// window replaces the ring.
//
// It reports whether the cache had aged past the reply's head (the server's clock moved on while
// the reply was on its way, or stepped back, or Load ran ahead of the last script): the reply's
// sums then still count buckets the cache has dropped, and the cache keeps its own sums until the
// next reply. What the reply's own call reserved is then the caller's to count.
func (c *counter) baseLocked(head, ver, requests, tokens, inFlight int64) (behind bool) {
	if c.olderLocked(head, ver) {
		return false
	}
	c.seen, c.seenHead, c.seenVer = true, head, ver
	lateReq, lateTok, lateLeases := c.lateLocked(head, ver)
	c.reported = inFlight + lateLeases
	if head < c.ring.Head() {
		return true
	}
	c.ring.Advance(head)
	req, tok := c.ring.Sums()
	endReq, endTok := c.endSumsLocked()
	c.ring.Add(head, requests+lateReq+endReq-req, tokens+lateTok+endTok-tok)
	return false
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
