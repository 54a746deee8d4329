package redis

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/herd-proxy/herd/state/internal/window"
)

// What a node admits on its own while Redis is unreachable (see "When Redis fails" in the
// package comment) is counted in Redis once Redis answers again, in the seconds it was admitted
// in, so the window in Redis never leaves it out.
//
// Each local admission is counted in the counter's outage ring, per second of the outage clock:
// this process's monotonic clock (a wall-clock step moves no count), or in tests the clock that
// stands in for the server's. Before the breaker closes, and before any later admission of the
// deployment through Redis, the node pushes the ring to Redis (lua/push.lua): each second goes to
// the latest second of the server's clock it can have been (serverClock.at: the estimate from
// the latest reply, an upper bound), so a count never leaves Redis's window earlier than it left
// this node's, and at most a second and a round trip later. A push is applied once, remembered
// by a tombstone, so go-redis may retry it.
//
// A local ticket remembers its second. Its end corrects the ring while its admission is not
// pushed, and the pushed second in Redis afterwards, as an adjustment (see block.go), once; an
// end while Redis is unreachable again keeps only the increase of a settle, in the ring.

// localTicket marks the ids of tickets admitted locally: they end in the local fallback.
const localTicket = uint64(1) << 62

// localAdmission is a local ticket in flight: its second of the outage clock, and the count of
// snapshots taken before it (gen): it is pushed once a push of a later snapshot succeeded, to
// bucket in Redis (0: its second had left the window).
type localAdmission struct {
	second, bucket int64
	gen            uint64
}

// correction is a local ticket's end that waits for the push on its way.
type correction struct {
	a                localAdmission
	requests, tokens int64
}

// pushOp is one second of a push: its second of the outage clock, its bucket in Redis, and what
// was admitted in it.
type pushOp struct {
	second, bucket   int64
	requests, tokens int64
}

// outageNow is the outage clock (ns): this process's monotonic clock, or the test's clock.
func (b *Backend) outageNow() int64 {
	if b.override != nil {
		return b.override().UnixNano()
	}
	return b.srv.mono()
}

// serverBucket is the latest bucket of the server's clock a count made in second x of the
// outage clock can have been made in.
func (c *counter) serverBucket(x int64) int64 {
	if c.b.override != nil {
		return x
	}
	return window.BucketOf(c.srv.at((x+1)*window.BucketNanos - 1))
}

// countLocalLocked counts a local admission of requests and tokens in the outage ring and
// returns the id of its ticket.
func (c *counter) countLocalLocked(requests, tokens int64) uint64 {
	x := window.BucketOf(c.b.outageNow())
	c.outage.Advance(x)
	c.outage.Count(x, requests, tokens)
	id := localTicket | c.b.seq.Add(1)
	c.localTix[id] = localAdmission{second: x, gen: c.gen}
	return id
}

// endLocal corrects what a push takes, or took, of local ticket id: requests and tokens are the
// change its end made to the local fallback's count.
func (c *counter) endLocal(id uint64, requests, tokens int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.localTix[id]
	if !ok {
		return
	}
	delete(c.localTix, id)
	if requests == 0 && tokens == 0 {
		return
	}
	switch {
	case a.gen < c.pushedGen:
		c.correctPushedLocked(a, requests, tokens, !c.b.open.Load())
	case c.pushing != nil && a.gen < c.gen:
		c.pushFix = append(c.pushFix, correction{a, requests, tokens})
	default:
		c.outage.Count(a.second, requests, tokens)
	}
}

// correctPushedLocked sends a correction of pushed admission a to its bucket in Redis, once (as
// an adjustment). While Redis is unreachable (again) only an increase is kept, in the ring, for
// the next push; a decrease is dropped, and Redis keeps counting what was reserved until it
// ages out.
func (c *counter) correctPushedLocked(a localAdmission, requests, tokens int64, reachable bool) {
	if a.bucket == 0 {
		return // its second had left the window
	}
	if !reachable {
		if requests > 0 || tokens > 0 {
			c.outage.Advance(window.BucketOf(c.b.outageNow()))
			c.outage.Count(c.outage.Head(), max(requests, 0), max(tokens, 0))
			c.unpushed.Store(true)
		}
		c.b.stats.droppedEnds.Add(1)
		return
	}
	c.queueEndLocked(endOp{id: c.b.seq.Add(1), bucket: a.bucket, requests: requests, tokens: tokens, adjust: true})
}

// snapshotLocked takes the outage ring's counts for a push, which finishPushLocked ends; nil when
// there is nothing to push or a push is on its way.
func (c *counter) snapshotLocked() []pushOp {
	if c.pushing != nil {
		return nil
	}
	c.outage.Advance(window.BucketOf(c.b.outageNow()))
	if req, tok := c.outage.Sums(); req == 0 && tok == 0 {
		return nil
	}
	var ops []pushOp
	head := c.outage.Head()
	for x := head - window.RingSize + 1; x <= head; x++ {
		req, tok := c.outage.At(x)
		if req == 0 && tok == 0 {
			continue
		}
		ops = append(ops, pushOp{second: x, bucket: c.serverBucket(x), requests: req, tokens: tok})
	}
	c.outage.Reset(head)
	c.gen++
	c.pushing = make(chan struct{})
	return ops
}

// finishPushLocked ends the push of ops, numbered trip: on success it records where each second
// went, sends the corrections that waited for it and counts what Redis now counts in the cache;
// on failure the counts go back to the ring for the next push.
func (c *counter) finishPushLocked(trip uint64, ops []pushOp, rep *reply, w *snapshot, err error) {
	if i := slices.Index(c.trips, trip); i >= 0 {
		c.trips = slices.Delete(c.trips, i, i+1)
	}
	fixes := c.pushFix
	c.pushFix = c.pushFix[:0]
	if err != nil {
		for _, op := range ops {
			c.outage.Count(op.second, op.requests, op.tokens)
		}
		for _, f := range fixes {
			c.outage.Count(f.a.second, f.requests, f.tokens)
		}
		c.unpushed.Store(true)
	} else {
		// Where each second went, as Redis counted it: never after the window's head.
		for i := range ops {
			if rep.kind != noWindow {
				ops[i].bucket = min(ops[i].bucket, rep.head)
			}
		}
		pushedTo := func(a localAdmission) localAdmission {
			if i := slices.IndexFunc(ops, func(op pushOp) bool { return op.second == a.second }); i >= 0 {
				a.bucket = ops[i].bucket
			}
			return a
		}
		for id, a := range c.localTix {
			if a.gen >= c.pushedGen && a.gen < c.gen {
				c.localTix[id] = pushedTo(a)
			}
		}
		c.pushedGen = c.gen
		c.countPushLocked(ops, rep, w)
		for _, f := range fixes {
			// Redis has just answered: the breaker closes once every deployment is pushed.
			c.correctPushedLocked(pushedTo(f.a), f.requests, f.tokens, true)
		}
	}
	close(c.pushing)
	c.pushing = nil
	c.releaseHeldLocked()
}

// countPushLocked counts a push Redis applied in the cache: the reply's whole window, or, when
// that cannot be the cache's state (see readReplyLocked), the pushed counts where Redis put them.
func (c *counter) countPushLocked(ops []pushOp, rep *reply, w *snapshot) {
	if rep.kind == noWindow || c.olderLocked(rep.head, rep.ver) {
		return // a later state counts it
	}
	if len(c.trips) == 0 && c.applyLocked(rep.inFlight, w) || rep.status != 1 {
		return // or applied before (a retry whose first reply was lost): the window may say so
	}
	e := effect{head: rep.head, ver: rep.ver}
	c.ring.Advance(rep.head)
	for _, op := range ops {
		c.ring.Add(op.bucket, op.requests, op.tokens)
		e.requests += op.requests
		e.tokens += op.tokens
	}
	c.late = append(c.late, e)
}

// push is one counter's push on its way.
type push struct {
	c     *counter
	trip  uint64
	ops   []pushOp
	args  []any
	cmd   *goredis.Cmd
	floor int64
}

// startPushLocked snapshots the counter's outage counts into a push; nil when there is nothing to
// push or a push is on its way.
func (c *counter) startPushLocked() *push {
	ops := c.snapshotLocked()
	if ops == nil {
		return nil
	}
	c.ring.Advance(window.BucketOf(c.windowLow().UnixNano()))
	return &push{c: c, trip: c.newTripLocked(), ops: ops, floor: c.ring.Head()}
}

// command builds the call of push.lua.
func (p *push) command(ctx context.Context) *goredis.Cmd {
	if p.args == nil {
		b := p.c.b
		ints := make([]byte, 0, 8*(2+3*len(p.ops)))
		ints = binary.LittleEndian.AppendUint64(ints, uint64(b.overrideMs()))
		ints = binary.LittleEndian.AppendUint64(ints, uint64(p.floor))
		for _, op := range p.ops {
			ints = binary.LittleEndian.AppendUint64(ints, uint64(op.bucket))
			ints = binary.LittleEndian.AppendUint64(ints, uint64(clampCount(op.requests)))
			ints = binary.LittleEndian.AppendUint64(ints, uint64(clampCount(op.tokens)))
		}
		member := "+" + b.node + ":" + strconv.FormatUint(b.seq.Add(1), 36)
		p.args = []any{"evalsha", pushScript.sha, 2, p.c.keyArgs[0], p.c.keyArgs[1], ints, b.endArgs[0], member}
	}
	return scriptCmd(ctx, p.args)
}

// runPushes sends ps in one round trip and folds the replies into their counters. It returns
// the first failure: the pushes that failed are tried again by the next.
func (b *Backend) runPushes(ps []*push) error {
	ctx, cancel := b.ctx()
	defer cancel()
	for _, p := range ps {
		p.cmd = p.command(ctx)
	}
	sent := time.Now()
	for retried := false; ; retried = true {
		pipe := b.client.Pipeline()
		for _, p := range ps {
			_ = pipe.Process(ctx, p.cmd)
		}
		_, _ = pipe.Exec(ctx)
		noScript := slices.ContainsFunc(ps, func(p *push) bool {
			return p.cmd.Err() != nil && goredis.HasErrorPrefix(p.cmd.Err(), "NOSCRIPT")
		})
		if !noScript || retried || b.loadScripts(ctx) != nil {
			break
		}
		for _, p := range ps {
			p.cmd = p.command(ctx) // applied once whatever ran: the push's id is the same
		}
	}
	var first error
	for _, p := range ps {
		rep, err := parseCmd(p.cmd)
		var w snapshot
		if err == nil {
			p.c.sawServer(sent, rep.serverUs)
			if rep.kind == whole {
				err = w.decode(rep.whole)
			}
		}
		if err != nil && first == nil {
			first = err
		}
		p.c.mu.Lock()
		p.c.finishPushLocked(p.trip, p.ops, &rep, &w, err)
		p.c.mu.Unlock()
	}
	return first
}

// parseCmd is a script command's parsed reply, or its error.
func parseCmd(cmd *goredis.Cmd) (reply, error) {
	raw, err := cmd.Text()
	if err != nil {
		return reply{}, err
	}
	return parseReply(raw)
}

// pushAll pushes the outage counts of every deployment, in one round trip: the probe calls it
// before it closes the breaker, so the node admits through Redis only once Redis counts what it
// admitted alone. It reports whether every push made it, and how many requests Redis now counts.
func (b *Backend) pushAll() (requests int64, err error) {
	var ps []*push
	for _, c := range b.counters.Append(nil) {
		if !c.unpushed.Load() {
			continue
		}
		c.mu.Lock()
		if p := c.startPushLocked(); p != nil {
			ps = append(ps, p)
			for _, op := range p.ops {
				requests += op.requests
			}
		} else if c.pushing == nil && c.outageEmptyLocked() {
			c.unpushed.Store(false)
		}
		c.mu.Unlock()
	}
	if len(ps) == 0 {
		return 0, nil
	}
	if err := b.runPushes(ps); err != nil {
		return 0, err
	}
	return requests, nil
}

// outageEmptyLocked reports whether the outage ring holds nothing to push.
func (c *counter) outageEmptyLocked() bool {
	req, tok := c.outage.Sums()
	return req == 0 && tok == 0
}

// errPushWait: another goroutine's push of the deployment did not end within the call timeout.
var errPushWait = errors.New("push of local admissions still on its way")

// pushPending pushes the deployment's outage counts before an admission through Redis: counts
// of calls that fell back locally after a failed call, and of admissions that raced the
// breaker's closing. It is one atomic load when there are none.
func (c *counter) pushPending() error {
	if !c.unpushed.Load() {
		return nil
	}
	for range 2 {
		c.mu.Lock()
		if ch := c.pushing; ch != nil {
			c.mu.Unlock()
			t := time.NewTimer(c.b.timeout)
			select {
			case <-ch:
				t.Stop()
			case <-t.C:
				return errPushWait
			}
			continue
		}
		p := c.startPushLocked()
		if p == nil {
			c.unpushed.Store(false) // nothing to push, none on its way
			c.mu.Unlock()
			return nil
		}
		c.mu.Unlock()
		return c.b.runPushes([]*push{p})
	}
	return nil
}
