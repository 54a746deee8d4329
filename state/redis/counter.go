package redis

import (
	"context"
	"errors"
	"fmt"
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
	b     *Backend
	keys  []string // window, in-flight ZSET: one hash tag
	local state.Counter

	mu sync.Mutex
	// The cached window and in-flight count, from the newest reply (by head, then version).
	ring              window.Ring
	inFlight          int64
	seenHead, seenVer int64
	seen              bool
	tickets           map[uint64]struct{} // this node's Redis tickets in flight: their leases are renewed
	lastUse           int64               // Backend.ticks at the last use; keeps the counter in the background refresh
	latency           window.Samples
	ttft              window.Samples
}

var _ state.Counter = (*counter)(nil)

func newCounter(b *Backend, id string) *counter {
	tag := b.prefix + "{" + id + "}"
	c := &counter{
		b:       b,
		keys:    []string{tag + ":w", tag + ":f"},
		local:   b.local.Counter(id),
		tickets: make(map[uint64]struct{}),
		lastUse: b.ticks.Load(),
	}
	c.ring.Reset(window.BucketOf(b.now().UnixNano()))
	return c
}

// member is ticket id's member in the in-flight ZSET: node-qualified, so nodes never collide.
func (c *counter) member(id uint64) string {
	return c.b.node + ":" + strconv.FormatUint(id, 36)
}

// leaseArgs are the wall-clock now and a lease expiry from now, in Unix milliseconds.
func (c *counter) leaseArgs(wall time.Time) (now, until int64) {
	return wall.UnixMilli(), wall.Add(c.b.leaseTTL).UnixMilli()
}

// Admit checks r against lim and reserves it: in Redis while it answers, else locally at a
// fair share of lim.
func (c *counter) Admit(lim state.Limits, r state.Reservation) (state.Ticket, error) {
	b := c.b
	if b.open.Load() {
		return c.admitLocal(lim, r)
	}
	now := b.now().UnixNano()
	bucket := window.BucketOf(now)
	id := b.seq.Add(1)
	wall := time.Now()
	wallMs, until := c.leaseArgs(wall)
	ctx, cancel := b.ctx()
	res, err := admitScript.Run(ctx, b.client, c.keys,
		bucket, wallMs, until, c.member(id),
		lim.RPM, lim.TPM, lim.MaxParallel, r.Requests, r.Tokens,
		windowTTL.Milliseconds(), 2*b.leaseTTL.Milliseconds()).Slice()
	cancel()
	var admitted, inFlight int64
	var blob string
	if err == nil {
		err = parseReply(res, &admitted, &inFlight, &blob)
	}
	if err != nil {
		// The script may have run: its reservation then counts until it ages out, and its
		// lease, which nobody renews, frees the slot within LeaseTTL.
		b.failed(err)
		return c.admitLocal(lim, r)
	}
	b.succeeded()
	var w snapshot
	if err := w.decode(blob); err != nil {
		b.failed(err)
		return c.admitLocal(lim, r)
	}
	c.mu.Lock()
	c.lastUse = b.ticks.Load()
	c.applyLocked(inFlight, &w)
	if admitted == 1 {
		c.tickets[id] = struct{}{}
	}
	c.mu.Unlock()
	if admitted != 1 {
		// From the reply's own window, not the cache: the cache may already hold a newer
		// reply, and the wait must be the one the refusal was made on.
		w.ring.Advance(bucket)
		return state.Ticket{}, &state.NoCapacityError{RetryAfter: w.ring.RetryAfter(now, inFlight, lim, r)}
	}
	return state.Ticket{Reserved: r, Bucket: w.ring.Head(), ID: id}, nil
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
	ns := now.UnixNano()
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
	c.end(t, 0, u.Total()-t.Reserved.Tokens, func() { c.local.Settle(t, u) })
}

// Release gives t's reservation back, if its bucket is still in the window.
func (c *counter) Release(t state.Ticket) {
	c.end(t, -t.Reserved.Requests, -t.Reserved.Tokens, func() { c.local.Release(t) })
}

// end settles or releases t where it was issued. A Redis ticket's end is best effort: when it
// fails, the reservation stays as reserved and the lease frees the in-flight slot.
func (c *counter) end(t state.Ticket, requests, tokens int64, locally func()) {
	if t.ID == 0 {
		locally()
		return
	}
	b := c.b
	wall := time.Now()
	c.mu.Lock()
	c.lastUse = b.ticks.Load()
	delete(c.tickets, t.ID) // renewed no more, whether or not Redis hears of the end
	c.mu.Unlock()
	if b.open.Load() {
		b.stats.droppedEnds.Add(1)
		return
	}
	ctx, cancel := b.ctx()
	res, err := endScript.Run(ctx, b.client, c.keys,
		t.Bucket, wall.UnixMilli(), c.member(t.ID), requests, tokens, windowTTL.Milliseconds()).Slice()
	cancel()
	var inFlight int64
	var blob string
	if err == nil {
		err = parseReply(res, &inFlight, &blob)
	}
	if err != nil {
		b.failed(err)
		b.stats.droppedEnds.Add(1)
		b.log.Debug("redis state backend: settle not recorded; the lease frees its slot",
			"key", c.keys[0], "err", err)
		return
	}
	b.succeeded()
	c.apply(inFlight, blob)
}

// Load returns the window's counts as of now, in-flight calls and mean recent latencies.
func (c *counter) Load() state.Load { return c.LoadAt(c.b.now()) }

// LoadAt is Load as of t from the cache, without a round trip. While degraded it is the local
// fallback's counts times the node count: an estimate of the cluster's use that makes
// routing's check against the whole limit agree with admission's check against the share.
func (c *counter) LoadAt(t time.Time) state.Load {
	if c.b.open.Load() {
		l := c.local.LoadAt(t)
		n := c.b.nodes.Load()
		l.Requests, l.Tokens, l.InFlight = l.Requests*n, l.Tokens*n, l.InFlight*n
		c.mu.Lock()
		l.Latency, l.TTFT = c.latencies(t.UnixNano())
		c.mu.Unlock()
		return l
	}
	now := t.UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastUse = c.b.ticks.Load() // not the clock: routing calls LoadAt for every deployment
	c.ring.Advance(window.BucketOf(now))
	req, tok := c.ring.Sums()
	l := state.Load{Requests: req, Tokens: tok, InFlight: c.inFlight}
	l.Latency, l.TTFT = c.latencies(now)
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
	now := b.now().UnixNano()
	wall := time.Now()
	ctx, cancel := b.ctx()
	pipe := b.client.Pipeline()
	rc := c.queueRead(ctx, pipe, wall)
	cmds, _ := pipe.Exec(ctx)
	cancel()
	var inFlight int64
	var blob string
	err := pipelineErr(cmds)
	if err == nil {
		inFlight, blob, err = rc.result()
	}
	if err != nil {
		b.failed(err)
	} else {
		b.succeeded()
		c.apply(inFlight, blob)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ring.Advance(window.BucketOf(now))
	return c.ring.RetryAfter(now, c.inFlight, lim, r)
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

// apply decodes a reply's window into the cache, unless the cache holds a newer one.
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
	if w.none { // the key expired: everything it counted had left the window
		c.ring.Reset(c.ring.Head())
		c.inFlight = inFlight
		return
	}
	head := w.ring.Head()
	if c.seen && (head < c.seenHead || head == c.seenHead && w.ver < c.seenVer) {
		return
	}
	c.seen, c.seenHead, c.seenVer = true, head, w.ver
	cached := c.ring.Head()
	c.ring = w.ring
	c.ring.Advance(cached) // the cache may have aged past the stored head; it never moves back
	c.inFlight = inFlight
}

// activeSince reports whether the counter was used at or after loop tick t.
func (c *counter) activeSince(t int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastUse >= t
}

// renew queues the extension of this node's leases on the counter's calls in flight. XX never
// re-adds a ticket that ended meanwhile.
func (c *counter) renew(ctx context.Context, pipe goredis.Pipeliner, wall time.Time) {
	c.mu.Lock()
	if len(c.tickets) == 0 {
		c.mu.Unlock()
		return
	}
	_, until := c.leaseArgs(wall)
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
	w *goredis.StringCmd
	f *goredis.IntCmd
}

func (c *counter) queueRead(ctx context.Context, pipe goredis.Pipeliner, wall time.Time) readCmds {
	return readCmds{
		w: pipe.Get(ctx, c.keys[0]),
		f: pipe.ZCount(ctx, c.keys[1], "("+strconv.FormatInt(wall.UnixMilli(), 10), "+inf"),
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

// parseReply unpacks a script's reply into integers and strings, in order.
func parseReply(res []any, into ...any) error {
	if len(res) != len(into) {
		return fmt.Errorf("script reply has %d values, want %d", len(res), len(into))
	}
	for i, v := range res {
		var ok bool
		switch p := into[i].(type) {
		case *int64:
			*p, ok = v.(int64)
		case *string:
			*p, ok = v.(string)
		}
		if !ok {
			return fmt.Errorf("script reply value %d is %T", i, v)
		}
	}
	return nil
}

// Window encoding, as lua/window.lua: head, version, request sum, token sum, then requests and
// tokens per ring slot, each a little-endian int64.
const (
	ringFields = 4 + 2*window.RingSize
	ringBytes  = int(8 * ringFields)
)

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
	field := func(i int64) int64 {
		b := blob[8*i : 8*i+8]
		return int64(uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56)
	}
	head := field(0)
	s.ring.Reset(head)
	for x := head - window.RingSize + 1; x <= head; x++ {
		i := window.Slot(x)
		s.ring.Add(x, field(4+i), field(4+window.RingSize+i))
	}
	if req, tok := s.ring.Sums(); req != field(2) || tok != field(3) {
		return fmt.Errorf("window sums %d, %d disagree with its buckets (%d, %d)", field(2), field(3), req, tok)
	}
	s.ver, s.none = field(1), false
	return nil
}
