package redis

import (
	"errors"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/redistest"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/statetest"
)

// A call that waits after its admission is counted in Redis from when its request leaves: the
// chaos suite's seed 4 (redis mode, every nemesis) had a node paused for 5 s between admitting
// and sending, and the upstream saw 623 in a minute against rpm 600 as the counts of those
// requests left Redis's window 5 s before the upstream's. One that waited for a whole window
// is not sent at all.
func TestConfirmCountsARequestWhenItLeaves(t *testing.T) {
	srv := redistest.Start(t)
	clock := statetest.NewClock(time.Date(2026, 12, 2, 12, 0, 0, 370_000_000, time.UTC))
	b := newBackend(t, srv, Options{Now: clock.Now, RefreshEvery: time.Hour})
	c := b.counter("d")
	lim := state.Limits{RPM: 2}
	one := state.Reservation{Requests: 1}

	paused := mustAdmit(t, c, lim, one)
	clock.Advance(30 * time.Second) // the node stops between admission and send
	if err := c.Confirm(&paused); err != nil {
		t.Fatal(err)
	}
	if paused.Bucket != time.Date(2026, 12, 2, 12, 0, 30, 0, time.UTC).Unix() {
		t.Fatalf("confirmed 30 s after its admission, the call counts in bucket %d, want the send's", paused.Bucket)
	}
	c.Settle(paused, state.Usage{})
	mustAdmit(t, c, lim, one)
	waitFor(t, 5*time.Second, "the move never reached Redis", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.ends) == 0
	})
	// 62.5 s after the admission the count would have left; 32.5 s after the send it holds.
	clock.Advance(32500 * time.Millisecond)
	if tk, err := c.Admit(lim, one); err == nil {
		t.Fatalf("admitted %+v while the upstream's minute still held the two sent at 30 s", tk)
	}
	// Another node reads the same window from Redis.
	other := newBackend(t, srv, Options{Now: clock.Now, KeyPrefix: b.prefix, RefreshEvery: time.Hour}).Counter("d")
	if _, err := other.Admit(lim, one); err == nil {
		t.Fatal("another node was admitted: Redis does not hold the moved count")
	}
	if got := other.RetryAfter(lim, one); got < 29*time.Second || got > 30*time.Second {
		t.Fatalf("another node's RetryAfter = %v, want the sent second's exit, 29.13 s away", got)
	}

	lapsed := mustAdmit(t, c, state.Limits{RPM: 10}, one)
	clock.Advance(61 * time.Second)
	if err := c.Confirm(&lapsed); !errors.Is(err, ErrAdmissionLapsed) {
		t.Fatalf("confirmed a minute after its admission: %v, want ErrAdmissionLapsed", err)
	}
	c.Release(lapsed)
}
