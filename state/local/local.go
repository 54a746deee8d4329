// Package local is the in-process state backend: each deployment's usage in this process's
// memory, over sliding windows. It is the single-node backend and the cluster backend's building block.
package local

import (
	"sync"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/registry"
	"github.com/herd-proxy/herd/state/internal/window"
)

// Options configures a Backend. The zero value is ready to use.
type Options struct {
	Now        func() time.Time // clock every counter reads; nil means time.Now
	LatencyTTL time.Duration    // latency samples older than this are ignored; 0 means 1h (LiteLLM's default ttl)
}

const defaultLatencyTTL = state.DefaultLatencyTTL

// Backend keeps every deployment's usage in memory. Memory is fixed per deployment ID: the
// window and latency rings do not grow with uptime or traffic.
type Backend struct {
	now func() time.Time
	ttl int64 // LatencyTTL in nanoseconds

	counters registry.Map[counter]
}

var (
	_ state.Backend = (*Backend)(nil)
	_ state.Counter = (*counter)(nil)
)

// New returns an empty backend.
func New(opts Options) *Backend {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.LatencyTTL <= 0 {
		opts.LatencyTTL = defaultLatencyTTL
	}
	return &Backend{now: opts.Now, ttl: int64(opts.LatencyTTL)}
}

// Counter returns deployment id's usage, creating it on first use. The same id always yields
// the same Counter, so a config change never resets counts.
func (b *Backend) Counter(id string) state.Counter {
	return b.counters.Get(id, func() *counter {
		c := &counter{now: b.now, ttl: b.ttl}
		c.w.Reset(window.BucketOf(b.now().UnixNano()))
		return c
	})
}

// counter is one deployment's usage. One mutex guards everything: every operation is a few
// integer updates, so a finer split would cost more than it saves, and it makes Admit's check
// and reservation one atomic step.
type counter struct {
	now func() time.Time
	ttl int64

	mu       sync.Mutex
	inFlight int64
	w        window.Ring
	latency  window.Samples
	ttft     window.Samples
}

// tick reads the clock and advances the window to it. The clock is read under c.mu so that the
// times this counter sees are ordered like the operations themselves.
func (c *counter) tick() int64 {
	now := c.now().UnixNano()
	c.w.Advance(window.BucketOf(now))
	return now
}

func (c *counter) load() state.Load {
	req, tok := c.w.Sums()
	return state.Load{Requests: req, Tokens: tok, InFlight: c.inFlight}
}

// Admit checks r against lim and, if it fits, reserves it in the newest bucket.
func (c *counter) Admit(lim state.Limits, r state.Reservation) (state.Ticket, error) {
	r = window.Sane(r)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.tick()
	if !c.load().Fits(lim, r) {
		return state.Ticket{}, &state.NoCapacityError{RetryAfter: c.retryAfter(now, lim, r)}
	}
	// The newest bucket, not now's: after a clock step back the reservation must not land in a
	// bucket that leaves the window sooner than the head's.
	c.w.Count(c.w.Head(), r.Requests, r.Tokens)
	c.inFlight++
	return state.Ticket{Reserved: r, Bucket: c.w.Head()}, nil
}

// Settle replaces t's reserved tokens with the real usage, in the bucket they were reserved in.
// Once that bucket has left the window the correction is dropped with it. Every count is
// clamped (window.Clamp), so neither an upstream's usage nor a ticket can wrap one.
//
// Settle and Release do not read the clock (half the cost of Admit+Settle is time.Now): the
// ring always matches its head, so a correction to a bucket the head still holds but now no
// longer would is dropped, with its bucket, by the advance every read makes first.
func (c *counter) Settle(t state.Ticket, u state.Usage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.w.Count(t.Bucket, 0, window.Clamp(u.Total())-window.Clamp(t.Reserved.Tokens))
	c.end()
}

// Release gives t's reservation back, if its bucket is still in the window.
func (c *counter) Release(t state.Ticket) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.w.Count(t.Bucket, -window.Clamp(t.Reserved.Requests), -window.Clamp(t.Reserved.Tokens))
	c.end()
}

// end takes a call out of InFlight. A ticket ended twice is a caller bug; it must not let more
// calls in than MaxParallel, so the count stops at zero.
func (c *counter) end() {
	if c.inFlight > 0 {
		c.inFlight--
	}
}

// Load returns the window's counts as of now, in-flight calls and mean recent latencies.
func (c *counter) Load() state.Load { return c.LoadAt(c.now()) }

// LoadAt is Load as of now, a clock reading the caller already holds. A now behind the
// window's head reads the head: the window never moves back.
func (c *counter) LoadAt(t time.Time) state.Load {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := t.UnixNano()
	c.w.Advance(window.BucketOf(now))
	l := c.load()
	l.Latency = c.latency.Mean(now, c.ttl)
	l.TTFT = c.ttft.Mean(now, c.ttl)
	return l
}

// RetryAfter returns how long until r could fit under lim if nothing else changed.
func (c *counter) RetryAfter(lim state.Limits, r state.Reservation) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retryAfter(c.tick(), lim, r)
}

// retryAfter is RetryAfter on a window already advanced to now.
func (c *counter) retryAfter(now int64, lim state.Limits, r state.Reservation) time.Duration {
	return c.w.RetryAfter(now, c.inFlight, lim, r)
}

// ObserveLatency records a finished call's latency, and a stream's time to first token.
func (c *counter) ObserveLatency(latency, ttft time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now().UnixNano()
	c.latency.Add(now, max(latency, 0))
	if ttft > 0 {
		c.ttft.Add(now, ttft)
	}
}
