package local

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
	"github.com/herd-proxy/herd/state/statetest"
)

func newConformance(t *testing.T, clock *statetest.Clock) state.Backend {
	return New(Options{Now: clock.Now})
}

func TestConformance(t *testing.T) { statetest.Run(t, newConformance) }

func TestProperties(t *testing.T) { statetest.RunProperties(t, newConformance) }

var t0 = time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC)

func newTest() (*Backend, *statetest.Clock) {
	clock := statetest.NewClock(t0)
	return New(Options{Now: clock.Now}), clock
}

// A reservation counts until the 62nd bucket after its own begins: through 12:01:01.999999999
// for one made at 12:00:00.37, gone at 12:01:02.
func TestBucketGeometry(t *testing.T) {
	if window.RingSize != 62 {
		t.Fatalf("window.RingSize = %d, want 62", window.RingSize)
	}
	b, clock := newTest()
	c := b.Counter("d")
	lim := state.Limits{RPM: 1}
	if _, err := c.Admit(lim, state.Reservation{Requests: 1}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(61*time.Second + 630*time.Millisecond - 1)
	if l := c.Load(); l.Requests != 1 {
		t.Fatalf("at %v: %d requests, want 1", clock.Now(), l.Requests)
	}
	if ra := c.RetryAfter(lim, state.Reservation{Requests: 1}); ra != 1 {
		t.Fatalf("RetryAfter = %v, want 1ns", ra)
	}
	clock.Advance(1)
	if l := c.Load(); l.Requests != 0 {
		t.Fatalf("at %v: %d requests, want 0", clock.Now(), l.Requests)
	}
}

func TestRetryAfterMaxParallelIsOneSecond(t *testing.T) {
	b, _ := newTest()
	c := b.Counter("d")
	lim := state.Limits{RPM: 10, MaxParallel: 1}
	if _, err := c.Admit(lim, state.Reservation{Requests: 1}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Admit(lim, state.Reservation{Requests: 1})
	var nc *state.NoCapacityError
	if !errors.As(err, &nc) || nc.RetryAfter != time.Second {
		t.Fatalf("err = %v, want RetryAfter 1s", err)
	}
}

// After a clock step back, reservations land in the newest bucket, so they stay counted for
// as long as those made before the step.
func TestClockBackwardsUsesHead(t *testing.T) {
	b, clock := newTest()
	c := b.Counter("d")
	lim := state.Limits{RPM: 2}
	one := state.Reservation{Requests: 1}
	first, _ := c.Admit(lim, one)
	clock.Advance(-30 * time.Second)
	second, err := c.Admit(lim, one)
	if err != nil {
		t.Fatal(err)
	}
	if first.Bucket != second.Bucket {
		t.Fatalf("buckets %d then %d, want the head for both", first.Bucket, second.Bucket)
	}
	// From the stepped-back clock, the wait runs to the head bucket's exit.
	if ra, want := c.RetryAfter(lim, one), 30*time.Second+62*time.Second-370*time.Millisecond; ra != want {
		t.Fatalf("RetryAfter = %v, want %v", ra, want)
	}
}

func TestInFlightNeverNegative(t *testing.T) {
	b, _ := newTest()
	c := b.Counter("d")
	lim := state.Limits{MaxParallel: 1}
	tk, _ := c.Admit(lim, state.Reservation{Requests: 1})
	c.Release(tk)
	c.Release(tk)
	c.Settle(state.Ticket{}, state.Usage{})
	if l := c.Load(); l.InFlight != 0 {
		t.Fatalf("in flight = %d, want 0", l.InFlight)
	}
	if _, err := c.Admit(lim, state.Reservation{Requests: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admit(lim, state.Reservation{Requests: 1}); err == nil {
		t.Fatal("double release let a second call in past MaxParallel 1")
	}
}

func TestLatencyKeepsLastTen(t *testing.T) {
	b, _ := newTest()
	c := b.Counter("d")
	for i := 1; i <= 15; i++ {
		c.ObserveLatency(time.Duration(i)*time.Second, time.Duration(i)*time.Millisecond)
	}
	// Samples 6..15.
	if l := c.Load(); l.Latency != 10500*time.Millisecond || l.TTFT != 10500*time.Microsecond {
		t.Fatalf("latency %v, ttft %v; want 10.5s, 10.5ms", l.Latency, l.TTFT)
	}
}

func TestLatencyTTLOption(t *testing.T) {
	clock := statetest.NewClock(t0)
	c := New(Options{Now: clock.Now, LatencyTTL: time.Minute}).Counter("d")
	c.ObserveLatency(time.Second, 0)
	clock.Advance(time.Minute - 1)
	if c.Load().Latency != time.Second {
		t.Fatal("sample expired before the TTL")
	}
	clock.Advance(1)
	if c.Load().Latency != 0 {
		t.Fatal("sample outlived the TTL")
	}
}

func TestCounterIdentity(t *testing.T) {
	b := New(Options{})
	var wg sync.WaitGroup
	got := make([]state.Counter, 32)
	for i := range got {
		wg.Go(func() { got[i] = b.Counter("d") })
	}
	wg.Wait()
	for _, c := range got {
		if c != got[0] {
			t.Fatal("Counter(d) returned different counters")
		}
	}
	if b.Counter("e") == got[0] {
		t.Fatal("different ids share a counter")
	}
}
