package crdt

import (
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/statetest"
)

// A request admitted in one second and sent in a later one is counted in the later one, as the
// upstream counts it: it stays in the window until 60 s after it left, and a peer sees it
// there too. Without Confirm's move the next window's requests got in while the upstream still
// counted the first (herdbench, a 10x burst queued for a second: 650 in 60 s against rpm 600).
func TestConfirmCountsARequestWhenItLeaves(t *testing.T) {
	clock := statetest.NewClock(time.Date(2026, 12, 2, 12, 0, 0, 900_000_000, time.UTC))
	b := New(Options{Node: "a", FlushEvery: -1, Now: clock.Now})
	peer := New(Options{Node: "p", FlushEvery: -1, Now: clock.Now})
	c := b.Counter("d").(*counter)
	lim := state.Limits{RPM: 1}
	tk, err := c.Admit(lim, state.Reservation{Requests: 1})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(300 * time.Millisecond) // queued on the node into the next second
	if err := c.Confirm(&tk); err != nil {
		t.Fatal(err)
	}
	c.Settle(tk, state.Usage{})
	if l := c.Load(); l.Requests != 1 {
		t.Fatalf("after Confirm the window holds %d requests, want 1", l.Requests)
	}
	// 60.1 s after admission, 59.8 s after it left: the upstream still counts it.
	clock.Advance(59800 * time.Millisecond)
	if _, err := c.Admit(lim, state.Reservation{Requests: 1}); err == nil {
		t.Fatal("a second request fit while the upstream's window still held the first")
	}
	peer.MergeRemoteState(b.LocalState(true))
	if l := peer.Counter("d").Load(); l.Requests != 1 {
		t.Fatalf("the peer sees %d requests, want the moved one", l.Requests)
	}
	// Once it left a span and a bucket ago (62 s) the window lets the next one in.
	clock.Advance(2200 * time.Millisecond)
	if _, err := c.Admit(lim, state.Reservation{Requests: 1}); err != nil {
		t.Fatalf("62 s after it left: %v", err)
	}
}
