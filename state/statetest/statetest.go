// Package statetest is the conformance suite every state backend must pass: admission, sliding
// windows, settles, RetryAfter, latencies and concurrency, all on a fake clock.
package statetest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
)

// LatencyTTL is the latency-sample lifetime the backends under test must use: LiteLLM's default
// ttl, and every backend's default.
const LatencyTTL = time.Hour

// start is deliberately not on a bucket edge, so bucket-aligned bugs show.
var start = time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC)

// Clock is a fake clock tests move by hand. Safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock that reads start until moved.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock by d; a negative d steps it back, as a wall-clock correction would.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Run runs the whole suite. newBackend returns a fresh, empty backend reading time from clock,
// with a latency TTL of LatencyTTL.
func Run(t *testing.T, newBackend func(t *testing.T, clock *Clock) state.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"AdmitUpToRPMThenRefuse", testAdmitUpToRPM},
		{"SlidingWindow", testSlidingWindow},
		{"RetryAfterEdge", testRetryAfterEdge},
		{"SettleTokens", testSettleTokens},
		{"ReleaseGivesBack", testRelease},
		{"MaxParallel", testMaxParallel},
		{"Unlimited", testUnlimited},
		{"LargerThanLimit", testLargerThanLimit},
		{"SettleAfterBucketAgedOut", testSettleAgedOut},
		{"ClockBackwards", testClockBackwards},
		{"CountersPerID", testCountersPerID},
		{"Latency", testLatency},
		{"IdleReadsZero", testIdleReadsZero},
		{"ConcurrentLastSlot", testConcurrentLastSlot},
		{"ConcurrentMaxParallel", testConcurrentMaxParallel},
		{"ConcurrentRPM", testConcurrentRPM},
		{"ConcurrentTPMWithSettles", testConcurrentTPM},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := NewClock(start)
			tc.fn(t, &env{clock: clock, b: newBackend(t, clock)})
		})
	}
}

// env is one subtest's backend and clock.
type env struct {
	clock *Clock
	b     state.Backend
}

// full is a span's worth of time (a window and the arrival margin) plus the one bucket a backend
// may keep counting for: after it, anything counted before has left.
const full = state.Span + state.BucketWidth

var one = state.Reservation{Requests: 1}

func mustAdmit(t *testing.T, c state.Counter, lim state.Limits, r state.Reservation) state.Ticket {
	t.Helper()
	tk, err := c.Admit(lim, r)
	if err != nil {
		t.Fatalf("Admit(%+v, %+v) with load %+v: %v", lim, r, c.Load(), err)
	}
	if tk.Reserved != r {
		t.Fatalf("ticket reserves %+v, want %+v", tk.Reserved, r)
	}
	return tk
}

// mustRefuse checks that r is refused with a *NoCapacityError whose RetryAfter is positive and
// agrees with RetryAfter, and returns that wait.
func mustRefuse(t *testing.T, c state.Counter, lim state.Limits, r state.Reservation) time.Duration {
	t.Helper()
	_, err := c.Admit(lim, r)
	if err == nil {
		t.Fatalf("Admit(%+v, %+v) admitted; want refusal", lim, r)
	}
	var nc *state.NoCapacityError
	if !errors.Is(err, state.ErrNoCapacity) || !errors.As(err, &nc) {
		t.Fatalf("Admit error %v (%T), want a *NoCapacityError matching ErrNoCapacity", err, err)
	}
	if nc.RetryAfter <= 0 {
		t.Fatalf("RetryAfter = %v on refusal, want > 0", nc.RetryAfter)
	}
	if ra := c.RetryAfter(lim, r); ra != nc.RetryAfter {
		t.Fatalf("RetryAfter() = %v, but the refusal said %v", ra, nc.RetryAfter)
	}
	return nc.RetryAfter
}

func wantLoad(t *testing.T, c state.Counter, requests, tokens, inFlight int64) {
	t.Helper()
	l := c.Load()
	if l.Requests != requests || l.Tokens != tokens || l.InFlight != inFlight {
		t.Fatalf("load = %d requests, %d tokens, %d in flight; want %d, %d, %d",
			l.Requests, l.Tokens, l.InFlight, requests, tokens, inFlight)
	}
}

func testAdmitUpToRPM(t *testing.T, e *env) {
	c := e.b.Counter("d")
	lim := state.Limits{RPM: 5}
	if ra := c.RetryAfter(lim, one); ra != 0 {
		t.Fatalf("RetryAfter on an empty window = %v, want 0", ra)
	}
	for range 5 {
		mustAdmit(t, c, lim, one)
		e.clock.Advance(1500 * time.Millisecond)
	}
	ra := mustRefuse(t, c, lim, one)
	if ra > full {
		t.Fatalf("RetryAfter = %v, want at most %v", ra, full)
	}
	wantLoad(t, c, 5, 0, 5)
}

// testSlidingWindow admits at irregular times, retries each refusal exactly RetryAfter later,
// and checks by brute force that no 60-second interval, however aligned, holds more than rpm.
func testSlidingWindow(t *testing.T, e *env) {
	c := e.b.Counter("d")
	const rpm = 10
	lim := state.Limits{RPM: rpm}
	rng := newRand(t)
	var times []time.Time
	refused := 0
	for range 600 {
		e.clock.Advance(time.Duration(rng.Int64N(int64(4 * time.Second))))
		tk, err := c.Admit(lim, one)
		if err != nil {
			refused++
			ra := mustRefuse(t, c, lim, one)
			if ra > full {
				t.Fatalf("RetryAfter = %v, want at most %v", ra, full)
			}
			e.clock.Advance(ra)
			tk = mustAdmit(t, c, lim, one)
		}
		times = append(times, e.clock.Now())
		c.Settle(tk, state.Usage{})
	}
	spans := make([]span, len(times))
	for i, at := range times {
		spans[i] = span{from: at, to: at, n: 1}
	}
	if worst, at := busiestWindow(spans); worst > rpm {
		t.Fatalf("%d requests admitted in the 60 s from %v; rpm is %d", worst, at, rpm)
	}
	// Arrivals (one per 2 s on average) outrun rpm, and each refusal is retried the moment
	// RetryAfter says: the window should stay close to full.
	elapsed := e.clock.Now().Sub(start)
	if ideal := float64(rpm) * float64(elapsed) / float64(full); float64(len(times)) < 0.9*ideal {
		t.Fatalf("admitted %d in %v; a full window would admit about %.0f", len(times), elapsed, ideal)
	}
	if refused == 0 {
		t.Fatal("no request was refused: the test did not reach the limit")
	}
}

// checkEdge checks RetryAfter is exact: one nanosecond before it r still does not fit (and
// RetryAfter says 1ns), at it r fits.
func checkEdge(t *testing.T, e *env, c state.Counter, lim state.Limits, r state.Reservation) {
	t.Helper()
	ra := mustRefuse(t, c, lim, r)
	e.clock.Advance(ra - 1)
	if ra2 := mustRefuse(t, c, lim, r); ra2 != 1 {
		t.Fatalf("1ns before RetryAfter (%v), RetryAfter = %v, want 1ns", ra, ra2)
	}
	e.clock.Advance(1)
	mustAdmit(t, c, lim, r)
}

func testRetryAfterEdge(t *testing.T, e *env) {
	t.Run("rpm", func(t *testing.T) {
		c := e.b.Counter("rpm")
		lim := state.Limits{RPM: 3}
		mustAdmit(t, c, lim, one)
		e.clock.Advance(20300 * time.Millisecond)
		mustAdmit(t, c, lim, one)
		e.clock.Advance(15900 * time.Millisecond)
		mustAdmit(t, c, lim, one)
		checkEdge(t, e, c, lim, one) // the first admission leaves
		checkEdge(t, e, c, lim, one) // then the second
	})
	t.Run("excess spans buckets", func(t *testing.T) {
		c := e.b.Counter("span")
		lim := state.Limits{RPM: 4}
		mustAdmit(t, c, lim, state.Reservation{Requests: 2})
		e.clock.Advance(5 * time.Second)
		mustAdmit(t, c, lim, one)
		e.clock.Advance(4200 * time.Millisecond)
		mustAdmit(t, c, lim, one)
		// 3 more need the oldest 3 gone: the first two buckets.
		checkEdge(t, e, c, lim, state.Reservation{Requests: 3})
	})
	t.Run("tpm", func(t *testing.T) {
		c := e.b.Counter("tpm")
		lim := state.Limits{TPM: 100}
		mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 60})
		e.clock.Advance(10500 * time.Millisecond)
		mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 30})
		checkEdge(t, e, c, lim, state.Reservation{Requests: 1, Tokens: 50})
	})
	t.Run("rpm and tpm", func(t *testing.T) {
		// rpm frees up first, tpm later: the answer is the later of the two.
		c := e.b.Counter("both")
		lim := state.Limits{RPM: 2, TPM: 100}
		mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 10})
		e.clock.Advance(7 * time.Second)
		mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 90})
		ra := mustRefuse(t, c, lim, state.Reservation{Requests: 1, Tokens: 50})
		e.clock.Advance(ra - 1)
		mustRefuse(t, c, lim, state.Reservation{Requests: 1, Tokens: 50})
		if got := c.RetryAfter(lim, one); got != 0 {
			t.Fatalf("a request without tokens should fit once the first request left; RetryAfter = %v", got)
		}
		e.clock.Advance(1)
		mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 50})
	})
}

func testSettleTokens(t *testing.T, e *env) {
	c := e.b.Counter("d")
	lim := state.Limits{TPM: 1000}
	r := state.Reservation{Requests: 1, Tokens: 400}
	t1 := mustAdmit(t, c, lim, r)
	e.clock.Advance(2 * time.Second)
	t2 := mustAdmit(t, c, lim, r)
	wantLoad(t, c, 2, 800, 2)
	mustRefuse(t, c, lim, r)

	c.Settle(t1, state.Usage{PromptTokens: 70, CompletionTokens: 30}) // less than reserved frees room
	wantLoad(t, c, 2, 500, 1)
	t3 := mustAdmit(t, c, lim, r)
	wantLoad(t, c, 3, 900, 2)

	c.Settle(t2, state.Usage{PromptTokens: 500, CompletionTokens: 400}) // more than reserved blocks
	wantLoad(t, c, 3, 1400, 1)
	mustRefuse(t, c, lim, state.Reservation{Requests: 1, Tokens: 1})
	c.Settle(t3, state.Usage{PromptTokens: 400})
	wantLoad(t, c, 3, 1400, 0)
	// t1's bucket holds 100, t2's and t3's 1300: room for 1 token again only once the later
	// bucket has left, not the earlier; checkEdge finds that moment exactly.
	checkEdge(t, e, c, lim, state.Reservation{Requests: 1, Tokens: 1})
}

func testRelease(t *testing.T, e *env) {
	c := e.b.Counter("d")
	lim := state.Limits{RPM: 2, TPM: 100}
	r := state.Reservation{Requests: 1, Tokens: 40}
	t1 := mustAdmit(t, c, lim, r)
	e.clock.Advance(3 * time.Second)
	mustAdmit(t, c, lim, r)
	mustRefuse(t, c, lim, r)
	c.Release(t1)
	wantLoad(t, c, 1, 40, 1)
	mustAdmit(t, c, lim, r)
	wantLoad(t, c, 2, 80, 2)
	mustRefuse(t, c, lim, r)
}

func testMaxParallel(t *testing.T, e *env) {
	c := e.b.Counter("d")
	lim := state.Limits{MaxParallel: 2}
	t1 := mustAdmit(t, c, lim, one)
	t2 := mustAdmit(t, c, lim, one)
	wantLoad(t, c, 2, 0, 2)
	mustRefuse(t, c, lim, one)
	e.clock.Advance(10 * time.Minute) // in-flight calls stay in flight however long they take
	wantLoad(t, c, 0, 0, 2)
	mustRefuse(t, c, lim, one)
	c.Settle(t1, state.Usage{PromptTokens: 5}) // its bucket left long ago: only InFlight changes
	wantLoad(t, c, 0, 0, 1)
	t3 := mustAdmit(t, c, lim, one)
	mustRefuse(t, c, lim, one)
	c.Release(t2)
	c.Release(t3)
	wantLoad(t, c, 0, 0, 0)
}

func testUnlimited(t *testing.T, e *env) {
	c := e.b.Counter("d")
	var lim state.Limits
	r := state.Reservation{Requests: 1, Tokens: 1 << 20}
	for range 1000 {
		mustAdmit(t, c, lim, r)
	}
	if ra := c.RetryAfter(lim, r); ra != 0 {
		t.Fatalf("RetryAfter with no limits = %v, want 0", ra)
	}
	wantLoad(t, c, 1000, 1000<<20, 1000)
}

func testLargerThanLimit(t *testing.T, e *env) {
	c := e.b.Counter("d")
	for _, tc := range []struct {
		lim state.Limits
		r   state.Reservation
	}{
		{state.Limits{TPM: 100}, state.Reservation{Requests: 1, Tokens: 101}},
		{state.Limits{RPM: 1}, state.Reservation{Requests: 2}},
		{state.Limits{RPM: 10, TPM: 100, MaxParallel: 1}, state.Reservation{Requests: 1, Tokens: 1000}},
	} {
		if ra := mustRefuse(t, c, tc.lim, tc.r); ra != state.Window {
			t.Fatalf("%+v under %+v on an empty window: RetryAfter = %v, want %v", tc.r, tc.lim, ra, state.Window)
		}
	}
	// Also with usage already in the window.
	lim := state.Limits{TPM: 100}
	mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 90})
	if ra := mustRefuse(t, c, lim, state.Reservation{Requests: 1, Tokens: 101}); ra != state.Window {
		t.Fatalf("RetryAfter = %v, want %v", ra, state.Window)
	}
}

func testSettleAgedOut(t *testing.T, e *env) {
	c := e.b.Counter("d")
	lim := state.Limits{RPM: 10, TPM: 1000}
	old := mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 500})
	gone := mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 300})
	e.clock.Advance(full)
	wantLoad(t, c, 0, 0, 2)
	fresh := mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 100})
	// Neither correction may land on the bucket that now holds fresh.
	c.Settle(old, state.Usage{PromptTokens: 0})
	c.Release(gone)
	wantLoad(t, c, 1, 100, 1)
	c.Settle(fresh, state.Usage{CompletionTokens: 100})
	wantLoad(t, c, 1, 100, 0)
	// Exactly the limits are left: 9 more requests, 900 more tokens.
	for range 9 {
		mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 100})
	}
	mustRefuse(t, c, lim, one)
	e.clock.Advance(full)
	old = mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 10})
	e.clock.Advance(full)
	c.Settle(old, state.Usage{PromptTokens: 5000}) // a late, large settle changes nothing now
	wantLoad(t, c, 0, 0, 9)
	mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 1000})
}

func testClockBackwards(t *testing.T, e *env) {
	c := e.b.Counter("d")
	lim := state.Limits{RPM: 3, TPM: 300}
	r := state.Reservation{Requests: 1, Tokens: 100}
	mustAdmit(t, c, lim, r)
	e.clock.Advance(5 * time.Second)
	mustAdmit(t, c, lim, r)
	e.clock.Advance(-10 * time.Minute)
	wantLoad(t, c, 2, 200, 2)
	mustAdmit(t, c, lim, r)
	wantLoad(t, c, 3, 300, 3)
	mustRefuse(t, c, lim, r)
	e.clock.Advance(-time.Hour)
	mustRefuse(t, c, lim, r)
	e.clock.Advance(time.Hour + 10*time.Minute) // back to the latest time seen
	wantLoad(t, c, 3, 300, 3)
	mustRefuse(t, c, lim, r)
	e.clock.Advance(full)
	wantLoad(t, c, 0, 0, 3)
	mustAdmit(t, c, lim, state.Reservation{Requests: 3, Tokens: 300})
}

func testCountersPerID(t *testing.T, e *env) {
	lim := state.Limits{RPM: 2}
	a := e.b.Counter("a")
	mustAdmit(t, a, lim, one)
	mustAdmit(t, e.b.Counter("a"), lim, one) // a second handle counts on the same deployment
	mustRefuse(t, a, lim, one)
	wantLoad(t, e.b.Counter("a"), 2, 0, 2)
	bc := e.b.Counter("b")
	wantLoad(t, bc, 0, 0, 0)
	mustAdmit(t, bc, lim, one)
	mustAdmit(t, bc, lim, one)
	a.ObserveLatency(time.Second, 0)
	if l := bc.Load(); l.Latency != 0 {
		t.Fatalf("b sees a's latency: %+v", l)
	}
	if l := e.b.Counter("a").Load(); l.Latency != time.Second {
		t.Fatalf("a's latency through a new handle = %v, want 1s", l.Latency)
	}
}

func testLatency(t *testing.T, e *env) {
	c := e.b.Counter("d")
	want := func(latency, ttft time.Duration) {
		t.Helper()
		if l := c.Load(); l.Latency != latency || l.TTFT != ttft {
			t.Fatalf("latency %v, ttft %v; want %v, %v", l.Latency, l.TTFT, latency, ttft)
		}
	}
	want(0, 0)
	c.ObserveLatency(100*time.Millisecond, 0)
	want(100*time.Millisecond, 0)
	c.ObserveLatency(300*time.Millisecond, 60*time.Millisecond)
	want(200*time.Millisecond, 60*time.Millisecond) // a non-stream's ttft 0 is not a sample
	e.clock.Advance(LatencyTTL - time.Second)
	want(200*time.Millisecond, 60*time.Millisecond)
	c.ObserveLatency(500*time.Millisecond, 0)
	want(300*time.Millisecond, 60*time.Millisecond)
	e.clock.Advance(2 * time.Second) // the first two are now older than the TTL
	want(500*time.Millisecond, 0)
	e.clock.Advance(LatencyTTL)
	want(0, 0)
}

func testIdleReadsZero(t *testing.T, e *env) {
	c := e.b.Counter("d")
	lim := state.Limits{RPM: 4, TPM: 400, MaxParallel: 4}
	r := state.Reservation{Requests: 1, Tokens: 100}
	t1 := mustAdmit(t, c, lim, r)
	t2 := mustAdmit(t, c, lim, r)
	c.Settle(t1, state.Usage{PromptTokens: 150})
	e.clock.Advance(state.Span - time.Nanosecond) // counted for at least a whole Span
	wantLoad(t, c, 2, 250, 1)
	c.Settle(t2, state.Usage{PromptTokens: 50})
	wantLoad(t, c, 2, 200, 0)
	e.clock.Advance(state.BucketWidth + time.Nanosecond)
	wantLoad(t, c, 0, 0, 0)
	e.clock.Advance(3 * time.Hour)
	wantLoad(t, c, 0, 0, 0)
	for range 4 {
		mustAdmit(t, c, lim, r)
	}
	mustRefuse(t, c, lim, r)
}
