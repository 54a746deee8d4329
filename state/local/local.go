// Package local is the in-process state backend: each deployment's usage in this process's
// memory, over sliding windows. It is the single-node backend and the cluster backend's building block.
package local

import (
	"sync"
	"time"

	"github.com/herd-proxy/herd/state"
)

// Options configures a Backend. The zero value is ready to use.
type Options struct {
	Now        func() time.Time // clock every counter reads; nil means time.Now
	LatencyTTL time.Duration    // latency samples older than this are ignored; 0 means 1h (LiteLLM's default ttl)
}

const (
	defaultLatencyTTL = time.Hour
	// latencySamples is how many recent latencies (and, separately, TTFTs) a counter averages.
	latencySamples = 10
	// parallelRetry is RetryAfter when only MaxParallel refuses: in-flight calls end at times
	// the window cannot know, so this is a polling hint, not a promise.
	parallelRetry = time.Second
)

// Backend keeps every deployment's usage in memory. Memory is fixed per deployment ID: the
// window and latency rings do not grow with uptime or traffic.
type Backend struct {
	now func() time.Time
	ttl int64 // LatencyTTL in nanoseconds

	mu       sync.RWMutex
	counters map[string]*counter
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
	return &Backend{now: opts.Now, ttl: int64(opts.LatencyTTL), counters: make(map[string]*counter)}
}

// Counter returns deployment id's usage, creating it on first use. The same id always yields
// the same Counter, so a config change never resets counts.
func (b *Backend) Counter(id string) state.Counter {
	b.mu.RLock()
	c := b.counters[id]
	b.mu.RUnlock()
	if c != nil {
		return c
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if c = b.counters[id]; c == nil {
		c = &counter{now: b.now, ttl: b.ttl}
		c.w.head = bucketOf(b.now().UnixNano())
		b.counters[id] = c
	}
	return c
}

// counter is one deployment's usage. One mutex guards everything: every operation is a few
// integer updates, so a finer split would cost more than it saves, and it makes Admit's check
// and reservation one atomic step.
type counter struct {
	now func() time.Time
	ttl int64

	mu       sync.Mutex
	inFlight int64
	w        window
	latency  samples
	ttft     samples
}

// tick reads the clock and advances the window to it. The clock is read under c.mu so that the
// times this counter sees are ordered like the operations themselves.
func (c *counter) tick() int64 {
	now := c.now().UnixNano()
	c.w.advance(bucketOf(now))
	return now
}

func (c *counter) load() state.Load {
	return state.Load{Requests: c.w.reqSum, Tokens: c.w.tokSum, InFlight: c.inFlight}
}

// Admit checks r against lim and, if it fits, reserves it in the newest bucket.
func (c *counter) Admit(lim state.Limits, r state.Reservation) (state.Ticket, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.tick()
	if !c.load().Fits(lim, r) {
		return state.Ticket{}, &state.NoCapacityError{RetryAfter: c.retryAfter(now, lim, r)}
	}
	// The newest bucket, not now's: after a clock step back the reservation must not land in a
	// bucket that leaves the window sooner than the head's.
	c.w.add(c.w.head, r.Requests, r.Tokens)
	c.inFlight++
	return state.Ticket{Reserved: r, Bucket: c.w.head}, nil
}

// Settle replaces t's reserved tokens with the real usage, in the bucket they were reserved in.
// Once that bucket has left the window the correction is dropped with it.
//
// Settle and Release do not read the clock (half the cost of Admit+Settle is time.Now): the
// ring always matches its head, so a correction to a bucket the head still holds but now no
// longer would is dropped, with its bucket, by the advance every read makes first.
func (c *counter) Settle(t state.Ticket, u state.Usage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.w.add(t.Bucket, 0, u.Total()-t.Reserved.Tokens)
	c.end()
}

// Release gives t's reservation back, if its bucket is still in the window.
func (c *counter) Release(t state.Ticket) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.w.add(t.Bucket, -t.Reserved.Requests, -t.Reserved.Tokens)
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
	c.w.advance(bucketOf(now))
	l := c.load()
	l.Latency = c.latency.mean(now, c.ttl)
	l.TTFT = c.ttft.mean(now, c.ttl)
	return l
}

// RetryAfter returns how long until r could fit under lim if nothing else changed.
func (c *counter) RetryAfter(lim state.Limits, r state.Reservation) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retryAfter(c.tick(), lim, r)
}

// retryAfter is RetryAfter on a window already advanced to now: the longest of the waits for
// rpm and tpm, each until the oldest buckets holding the excess have left the window; one
// second when only MaxParallel refuses; state.Window when r exceeds a limit by itself.
func (c *counter) retryAfter(now int64, lim state.Limits, r state.Reservation) time.Duration {
	if c.load().Fits(lim, r) {
		return 0
	}
	if (lim.RPM > 0 && r.Requests > lim.RPM) || (lim.TPM > 0 && r.Tokens > lim.TPM) {
		return state.Window
	}
	var wait int64
	if lim.RPM > 0 {
		if excess := c.w.reqSum + r.Requests - lim.RPM; excess > 0 {
			d, ok := c.w.wait(now, &c.w.req, excess)
			if !ok { // only when r exceeds the limit by itself, handled above
				return state.Window
			}
			wait = max(wait, d)
		}
	}
	if lim.TPM > 0 {
		if excess := c.w.tokSum + r.Tokens - lim.TPM; excess > 0 {
			d, ok := c.w.wait(now, &c.w.tok, excess)
			if !ok {
				return state.Window
			}
			wait = max(wait, d)
		}
	}
	if lim.MaxParallel > 0 && c.inFlight >= lim.MaxParallel {
		wait = max(wait, int64(parallelRetry))
	}
	// Fits said no, so some wait is due; never tell a caller to retry at once.
	return time.Duration(max(wait, 1))
}

// ObserveLatency records a finished call's latency, and a stream's time to first token.
func (c *counter) ObserveLatency(latency, ttft time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now().UnixNano()
	c.latency.add(now, max(latency, 0))
	if ttft > 0 {
		c.ttft.add(now, ttft)
	}
}

// samples is a ring of the last latencySamples durations with the time each was observed.
type samples struct {
	at   [latencySamples]int64 // Unix nanoseconds
	d    [latencySamples]time.Duration
	n    int // samples held, at most latencySamples
	next int // slot the next sample overwrites
}

func (s *samples) add(at int64, d time.Duration) {
	s.at[s.next], s.d[s.next] = at, d
	s.next = (s.next + 1) % latencySamples
	s.n = min(s.n+1, latencySamples)
}

// mean averages the samples younger than ttl at now; 0 when there are none.
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
