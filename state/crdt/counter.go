package crdt

import (
	"sync"
	"time"

	"github.com/herd-proxy/herd/state"
)

// Window geometry, as state/local: a count made in bucket b counts until bucket b+ringSize
// begins, so for at least state.Window and at most one bucket more.
const (
	bucketNanos = int64(state.BucketWidth)
	ringSize    = int64(state.Window/state.BucketWidth) + 1
	// maxAhead is how many buckets ahead of this node's newest a peer's cell may be and still
	// move the window forward (clock skew tolerated). Further ahead, it waits for push-pull.
	maxAhead = 2
	// parallelRetry is RetryAfter when only MaxParallel refuses, as state/local.
	parallelRetry = state.DefaultParallelWait
)

// bucketOf is the bucket number of a Unix time in nanoseconds, rounded down also before 1970.
func bucketOf(ns int64) int64 {
	b := ns / bucketNanos
	if ns%bucketNanos < 0 {
		b--
	}
	return b
}

func slot(b int64) int64 {
	i := b % ringSize
	if i < 0 {
		i += ringSize
	}
	return i
}

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

// incState is what a counter knows of one incarnation: a ring of cells (a cell whose bucket
// has left the window is empty) and its in-flight count.
type incState struct {
	key      incKey
	cells    [ringSize]cell
	newest   int64  // newest bucket ever stored; the incarnation is gone once it leaves the window
	inFlight int64  // calls in flight on that incarnation
	ifVer    uint64 // version of inFlight; 0 means never heard
	ifSeen   int64  // our bucket when ifVer last grew; a count not refreshed for a window expires
}

// counter is one deployment's merged usage. One mutex guards everything, so Admit's check
// against the merged view and its reservation are one atomic step.
type counter struct {
	b  *Backend
	id string

	mu     sync.Mutex
	head   int64 // newest bucket; never moves backwards
	reqSum int64 // merged requests over the window
	tokSum int64
	ifSum  int64           // merged in flight, own included
	req    [ringSize]int64 // merged requests per bucket slot
	tok    [ringSize]int64

	own   *incState
	incs  map[incKey]*incState // every incarnation, own included
	gcAt  int64                // head at the last garbage collection
	dirty uint64               // slots of own cells changed since the last flush
	ifDue bool                 // own in-flight changed since the last flush
	ifAt  int64                // bucket of the last in-flight announcement

	latency, ttft samples
}

func newCounter(b *Backend, id string) *counter {
	own := &incState{key: b.self}
	c := &counter{b: b, id: id, own: own, incs: map[incKey]*incState{b.self: own}}
	c.head = bucketOf(b.now().UnixNano())
	c.gcAt = c.head
	return c
}

// advance makes bucket x the newest, dropping buckets that left the window from the merged
// sums. Cells are not touched: a cell whose bucket left the window reads as empty.
func (c *counter) advance(x int64) {
	if x <= c.head {
		return
	}
	if x-c.head >= ringSize {
		c.req, c.tok = [ringSize]int64{}, [ringSize]int64{}
		c.reqSum, c.tokSum = 0, 0
	} else {
		for y := c.head + 1; y <= x; y++ {
			i := slot(y)
			c.reqSum -= c.req[i]
			c.tokSum -= c.tok[i]
			c.req[i], c.tok[i] = 0, 0
		}
	}
	c.head = x
}

func (c *counter) tick() int64 {
	now := c.b.now().UnixNano()
	c.advance(bucketOf(now))
	return now
}

func (c *counter) holds(x int64) bool { return x <= c.head && c.head-x < ringSize }

// cellAt returns inc's cell for bucket x, emptied if it held an older bucket. x must be held.
func (c *counter) cellAt(inc *incState, x int64) *cell {
	cl := &inc.cells[slot(x)]
	if cl.bucket != x {
		*cl = cell{bucket: x}
	}
	if x > inc.newest {
		inc.newest = x
	}
	return cl
}

// addOwn counts a change of this node's requests and tokens in bucket x, if still held.
func (c *counter) addOwn(x, requests, tokens int64) {
	if !c.holds(x) {
		return
	}
	cl := c.cellAt(c.own, x)
	if requests >= 0 {
		cl.reqP += requests
	} else {
		cl.reqN -= requests
	}
	if tokens >= 0 {
		cl.tokP += tokens
	} else {
		cl.tokN -= tokens
	}
	i := slot(x)
	c.req[i] += requests
	c.tok[i] += tokens
	c.reqSum += requests
	c.tokSum += tokens
	c.dirty |= 1 << uint(i)
	c.b.changed()
}

func (c *counter) setOwnInFlight(n int64) {
	c.ifSum += n - c.own.inFlight
	c.own.inFlight = n
	c.own.ifVer++
	c.ifDue = true
	c.b.changed()
}

func (c *counter) load() state.Load {
	return state.Load{Requests: c.reqSum, Tokens: c.tokSum, InFlight: c.ifSum}
}

// Admit checks r against the merged view and, if it fits, reserves it in the newest bucket.
func (c *counter) Admit(lim state.Limits, r state.Reservation) (state.Ticket, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.tick()
	if !c.load().Fits(lim, r) {
		return state.Ticket{}, &state.NoCapacityError{RetryAfter: c.retryAfter(now, lim, r)}
	}
	c.addOwn(c.head, r.Requests, r.Tokens)
	c.setOwnInFlight(c.own.inFlight + 1)
	return state.Ticket{Reserved: r, Bucket: c.head}, nil
}

// Settle replaces t's reserved tokens with the real usage in t's bucket, if still held.
func (c *counter) Settle(t state.Ticket, u state.Usage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addOwn(t.Bucket, 0, u.Total()-t.Reserved.Tokens)
	c.end()
}

// Release gives t's reservation back, if its bucket is still held.
func (c *counter) Release(t state.Ticket) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addOwn(t.Bucket, -t.Reserved.Requests, -t.Reserved.Tokens)
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
	c.advance(bucketOf(now))
	l := c.load()
	l.Latency = c.latency.mean(now, c.b.ttl)
	l.TTFT = c.ttft.mean(now, c.b.ttl)
	return l
}

// RetryAfter returns how long until r could fit under lim if nothing else changed.
func (c *counter) RetryAfter(lim state.Limits, r state.Reservation) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retryAfter(c.tick(), lim, r)
}

// retryAfter is state/local's, on the merged per-bucket sums.
func (c *counter) retryAfter(now int64, lim state.Limits, r state.Reservation) time.Duration {
	if c.load().Fits(lim, r) {
		return 0
	}
	if (lim.RPM > 0 && r.Requests > lim.RPM) || (lim.TPM > 0 && r.Tokens > lim.TPM) {
		return state.Window
	}
	var wait int64
	if lim.RPM > 0 {
		if excess := c.reqSum + r.Requests - lim.RPM; excess > 0 {
			d, ok := c.wait(now, &c.req, excess)
			if !ok {
				return state.Window
			}
			wait = max(wait, d)
		}
	}
	if lim.TPM > 0 {
		if excess := c.tokSum + r.Tokens - lim.TPM; excess > 0 {
			d, ok := c.wait(now, &c.tok, excess)
			if !ok {
				return state.Window
			}
			wait = max(wait, d)
		}
	}
	if lim.MaxParallel > 0 && c.ifSum >= lim.MaxParallel {
		wait = max(wait, int64(parallelRetry))
	}
	return time.Duration(max(wait, 1))
}

// wait returns how long after now the oldest buckets holding at least excess leave the window.
func (c *counter) wait(now int64, counts *[ringSize]int64, excess int64) (int64, bool) {
	var acc int64
	for x := c.head - ringSize + 1; x <= c.head; x++ {
		acc += counts[slot(x)]
		if acc >= excess {
			return (x+ringSize)*bucketNanos - now, true
		}
	}
	return 0, false
}

// ObserveLatency records a finished call's latency, and a stream's time to first token.
// Latencies stay local: each node routes on what it measured itself.
func (c *counter) ObserveLatency(latency, ttft time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.b.now().UnixNano()
	c.latency.add(now, max(latency, 0))
	if ttft > 0 {
		c.ttft.add(now, ttft)
	}
}

// housekeep advances to bucket now and, once per bucket, forgets incarnations whose cells all
// left the window and expires in-flight counts not refreshed for a window, so memory follows
// the live cluster, not uptime or churn.
func (c *counter) housekeep(now int64) {
	c.advance(now)
	if c.head == c.gcAt {
		return
	}
	c.gcAt = c.head
	for k, inc := range c.incs {
		if inc == c.own {
			continue
		}
		if inc.ifVer != 0 && c.head-inc.ifSeen >= ringSize {
			c.ifSum -= inc.inFlight
			inc.inFlight, inc.ifVer = 0, 0
		}
		if inc.ifVer == 0 && !c.holds(inc.newest) {
			delete(c.incs, k)
		}
	}
}

// takeDelta encodes this node's cells changed since the last call, and its in-flight count if
// it changed or is due for a refresh, then forgets them. cells is scratch space.
func (c *counter) takeDelta(now int64, cells []cell, enc *encoder) []cell {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.housekeep(now)
	if c.own.ifVer != 0 && c.head-c.ifAt >= inFlightRefresh {
		c.own.ifVer++ // a refresh: peers count a grown version as fresh
		c.ifDue = true
	}
	if c.dirty == 0 && !c.ifDue {
		return cells
	}
	for x := c.head - ringSize + 1; x <= c.head; x++ {
		if c.dirty&(1<<uint(slot(x))) != 0 && c.own.cells[slot(x)].bucket == x {
			cells = append(cells, c.own.cells[slot(x)])
		}
	}
	var ifVer uint64
	if c.ifDue {
		ifVer = c.own.ifVer
		c.ifAt = c.head
	}
	if len(cells) > 0 || ifVer != 0 {
		enc.record(c.own.key, c.id, ifVer, c.own.inFlight, cells)
	}
	c.dirty, c.ifDue = 0, false
	return cells
}

// encodeAll encodes every incarnation's cells in the window, and this node's in-flight count.
// Peers' in-flight counts are not relayed: only their owner refreshes them, so the count of a
// node that died expires a window after its last word, instead of two survivors handing it
// back and forth forever. (Cells cannot come back that way: they age out by bucket number.)
func (c *counter) encodeAll(now int64, cells []cell, enc *encoder) []cell {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.housekeep(now)
	for _, inc := range c.incs {
		cells = cells[:0]
		for x := c.head - ringSize + 1; x <= c.head; x++ {
			if cl := inc.cells[slot(x)]; cl.bucket == x {
				cells = append(cells, cl)
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

// merge takes the per-counter maximum of a peer's view of incarnation k.
func (c *counter) merge(now int64, k incKey, ifVer uint64, inFlight int64, cells []cell) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance(now)
	for i := range cells {
		if x := cells[i].bucket; x > c.head && x-c.head <= maxAhead {
			c.advance(x)
		}
	}
	inc := c.incs[k]
	if inc == nil {
		inc = &incState{key: k, newest: c.head - ringSize}
		c.incs[k] = inc
	}
	for i := range cells {
		in := &cells[i]
		if !c.holds(in.bucket) {
			continue
		}
		cl := c.cellAt(inc, in.bucket)
		r0, t0 := cl.requests(), cl.tokens()
		cl.reqP, cl.reqN = max(cl.reqP, in.reqP), max(cl.reqN, in.reqN)
		cl.tokP, cl.tokN = max(cl.tokP, in.tokP), max(cl.tokN, in.tokN)
		dr, dt := cl.requests()-r0, cl.tokens()-t0
		s := slot(in.bucket)
		c.req[s] += dr
		c.tok[s] += dt
		c.reqSum += dr
		c.tokSum += dt
	}
	// Our own in-flight count is ours alone: an echo of it is always stale.
	if inc != c.own && ifVer > inc.ifVer {
		c.ifSum += inFlight - inc.inFlight
		inc.inFlight, inc.ifVer, inc.ifSeen = inFlight, ifVer, c.head
	}
	if inc != c.own && inc.ifVer == 0 && !c.holds(inc.newest) {
		delete(c.incs, k) // nothing in the window: do not keep it
	}
}

// samples is a ring of the last latencySamples durations with the time each was observed.
type samples struct {
	at   [latencySamples]int64
	d    [latencySamples]time.Duration
	n    int
	next int
}

const latencySamples = 10

func (s *samples) add(at int64, d time.Duration) {
	s.at[s.next], s.d[s.next] = at, d
	s.next = (s.next + 1) % latencySamples
	s.n = min(s.n+1, latencySamples)
}

func (s *samples) mean(now, ttl int64) time.Duration {
	var sum time.Duration
	var k int
	for i := range s.n {
		if now-s.at[i] < ttl {
			sum += s.d[i]
			k++
		}
	}
	if k == 0 {
		return 0
	}
	return sum / time.Duration(k)
}
