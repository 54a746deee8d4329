package redis

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/redistest"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/statetest"
)

var one = state.Reservation{Requests: 1}

// A node whose clock runs ahead moves no window and expires no lease: both run on the Redis
// server's clock. With windows on the nodes' clocks (herd before issue 13), the fast node's
// first admission moved the head 61 s past the other node's admissions and emptied the window.
func TestNodeClockSkewMovesNoWindow(t *testing.T) {
	srv := redistest.Start(t)
	clock := statetest.NewClock(time.Now())
	ahead := func() time.Time { return clock.Now().Add(30 * time.Second) }
	prefix := uniquePrefix()
	a := newServerClockBackend(t, srv, Options{Now: clock.Now, KeyPrefix: prefix, Timeout: 5 * time.Second})
	b := newServerClockBackend(t, srv, Options{Now: ahead, KeyPrefix: prefix, Timeout: 5 * time.Second})
	lim := state.Limits{RPM: 10}
	for i := range 10 {
		if _, err := a.Counter("rpm").Admit(lim, one); err != nil {
			t.Fatalf("a's admission %d: %v", i, err)
		}
	}
	// b's clock is now 61 s past a's admissions; the server's, a moment.
	clock.Advance(31 * time.Second)
	_, err := b.Counter("rpm").Admit(lim, one)
	var nc *state.NoCapacityError
	if !errors.As(err, &nc) {
		t.Fatalf("the node 30 s ahead was admitted over rpm (err %v): its clock emptied the window", err)
	}
	if nc.RetryAfter < 50*time.Second {
		t.Errorf("RetryAfter %v: the window's counts leave about 60 s after they were made", nc.RetryAfter)
	}
	for name, n := range map[string]*Backend{"a": a, "b": b} {
		if l := n.Counter("rpm").Load(); l.Requests != 10 {
			t.Errorf("%s's Load %+v, want the 10 admitted", name, l)
		}
	}

	par := state.Limits{MaxParallel: 2}
	var held []state.Ticket
	for range 2 {
		tk, err := a.Counter("par").Admit(par, one)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, tk)
	}
	clock.Advance(10 * time.Minute) // far past any lease on a's clock, or on b's
	if _, err := b.Counter("par").Admit(par, one); !errors.Is(err, state.ErrNoCapacity) {
		t.Fatalf("b admitted a third call while a holds max_parallel 2 (err %v): a's leases expired on b's clock", err)
	}
	a.Counter("par").Settle(held[0], state.Usage{})
	waitFor(t, 5*time.Second, "b admits once a settled one call", func() bool {
		tk, err := b.Counter("par").Admit(par, one)
		if err == nil {
			b.Counter("par").Settle(tk, state.Usage{})
		}
		return err == nil
	})
}

// The node's estimate of the server's clock is an upper bound within a round trip, whatever
// the node's own clock says.
func TestServerClockEstimate(t *testing.T) {
	srv := redistest.Start(t)
	b := newServerClockBackend(t, srv, Options{Now: func() time.Time { return time.Now().Add(time.Hour) }, Timeout: 5 * time.Second})
	rc := rawClient(t, srv)
	for range 20 {
		b.Counter("d").Admit(state.Limits{RPM: 1000}, one)
		before, err := rc.Time(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		est := b.counter("d").windowNow()
		after, err := rc.Time(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		// The estimate may run late by the round trip it came from: generous for -race.
		if est.Before(before) || est.After(after.Add(200*time.Millisecond)) {
			t.Fatalf("estimate %v outside the server's [%v, %v + 200ms]", est, before, after)
		}
	}
}

// In a Redis Cluster each master has its own clock, and a deployment's window runs on the clock
// of the master its keys live on. A reply from another master, whose clock is 2 minutes ahead,
// moves no other deployment's window: with one estimate for every server (herd before it kept
// one per deployment), the counter's floor followed that master, its next admission moved the
// head 2 minutes on and the window came back empty, 10 more admitted at rpm 10.
func TestOtherServersClockMovesNoWindow(t *testing.T) {
	srv := redistest.Start(t)
	b := newServerClockBackend(t, srv, Options{Timeout: 5 * time.Second})
	lim := state.Limits{RPM: 10}
	c := b.Counter("d")
	for i := range 10 {
		if _, err := c.Admit(lim, one); err != nil {
			t.Fatalf("admission %d: %v", i, err)
		}
	}
	// What a reply from a master 2 minutes ahead tells the backend.
	b.srv.seen(time.Now(), time.Now().Add(2*time.Minute).UnixMicro())
	if _, err := c.Admit(lim, one); !errors.Is(err, state.ErrNoCapacity) {
		t.Fatalf("admitted over rpm after another server's clock was seen (err %v): the window moved on", err)
	}
	if l := c.Load(); l.Requests != 10 {
		t.Errorf("Load %+v, want the 10 admitted", l)
	}
}

// A read of the cache as of a time ahead of the node's own clock ages what it returns and
// nothing else. Routing and the rate-limit headers read LoadAt at time.Now, which a node whose
// usage clock is behind (the chaos suite's clock nemesis, -22 s) puts ahead of Options.Now; the
// cache once moved its head there, and the head is the floor every script counts at, so the
// next admission moved Redis's window on for every node: 899 through rpm 600 in a minute.
func TestLoadAheadMovesNoWindow(t *testing.T) {
	srv := redistest.Start(t)
	behind := func() time.Time { return time.Now().Add(-70 * time.Second) }
	b := newServerClockBackend(t, srv, Options{Timeout: 5 * time.Second, Now: behind})
	lim := state.Limits{RPM: 10}
	c := b.Counter("d")
	for i := range 10 {
		if _, err := c.Admit(lim, one); err != nil {
			t.Fatalf("admission %d: %v", i, err)
		}
	}
	if l := c.LoadAt(time.Now()); l.Requests != 0 {
		t.Errorf("LoadAt 70 s after the node's now: %+v, want the window aged empty", l)
	}
	if _, err := c.Admit(lim, one); !errors.Is(err, state.ErrNoCapacity) {
		t.Fatalf("admitted over rpm after a read ahead of the node's clock (err %v): the window moved on", err)
	}
	other := newServerClockBackend(t, srv, Options{Timeout: 5 * time.Second, KeyPrefix: b.prefix}).Counter("d")
	if _, err := other.Admit(lim, one); !errors.Is(err, state.ErrNoCapacity) {
		t.Fatalf("another node was admitted over rpm (err %v): Redis's window moved on", err)
	}
	if l := c.Load(); l.Requests != 10 {
		t.Errorf("Load %+v, want the 10 admitted", l)
	}
}
