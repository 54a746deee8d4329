package crdt

import (
	"encoding/binary"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
	"github.com/herd-proxy/herd/state/statetest"
)

// countNet counts the messages sent; safe for the flush loop's goroutine.
type countNet struct{ sent atomic.Int64 }

func (n *countNet) SendToAll([]byte)           { n.sent.Add(1) }
func (n *countNet) SendTo(string, []byte) bool { n.sent.Add(1); return true }

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// An idle backend runs no flush at all; the first change is flushed FlushEvery later, once,
// with every change made meanwhile; then the backend is idle again.
func TestFlushOnChange(t *testing.T) {
	const every = 20 * time.Millisecond
	n := &countNet{}
	b := New(Options{Node: "a", Network: n, FlushEvery: every, housekeepEvery: time.Hour})
	t.Cleanup(b.Close)
	c := b.Counter("d")

	// An idle period of many FlushEvery: a ticker would have flushed every time.
	<-time.After(10 * every)
	if got := b.loops.Load(); got != 0 {
		t.Fatalf("idle backend flushed %d times, want 0", got)
	}

	start := time.Now()
	for range 5 {
		tk, _ := c.Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 10})
		c.Settle(tk, state.Usage{PromptTokens: 5})
	}
	waitFor(t, "the delta", func() bool { return n.sent.Load() > 0 })
	t.Logf("first change flushed after %v (FlushEvery %v)", time.Since(start), every)
	waitFor(t, "the flush to finish", func() bool { return b.loops.Load() > 0 })
	if got := n.sent.Load(); got != 1 {
		t.Fatalf("%d messages for one batch, want 1", got)
	}

	<-time.After(10 * every)
	if got := b.loops.Load(); got != 1 {
		t.Fatalf("%d flushes for one batch of changes, want 1", got)
	}

	// The next change arms the timer again.
	tk, _ := c.Admit(state.Limits{}, state.Reservation{Requests: 1})
	c.Release(tk)
	waitFor(t, "the second delta", func() bool { return n.sent.Load() == 2 })
}

// Under a steady stream of changes a node flushes at most once per FlushGap, each flush
// carrying every change made since the last; none is lost.
func TestFlushGapBatchesUnderLoad(t *testing.T) {
	const gap = 40 * time.Millisecond
	n := &countNet{}
	b := New(Options{Node: "a", Network: n, FlushEvery: time.Millisecond, FlushGap: gap, housekeepEvery: time.Hour})
	t.Cleanup(b.Close)
	c := b.Counter("d")
	start := time.Now()
	changes := 0
	for time.Since(start) < 10*gap {
		tk, _ := c.Admit(state.Limits{}, state.Reservation{Requests: 1})
		c.Release(tk)
		changes++
	}
	elapsed := time.Since(start)
	waitFor(t, "the last flush", func() bool { return !b.armed.Load() })
	flushes := b.loops.Load()
	if limit := int64(elapsed/gap) + 2; flushes > limit {
		t.Fatalf("%d flushes in %v of constant change, want at most %d (one per %v)", flushes, elapsed, limit, gap)
	}
	if flushes < 2 {
		t.Fatalf("%d flushes in %v: the stream was not sent as it came", flushes, elapsed)
	}
	t.Logf("%d changes in %v went out in %d flushes", changes, elapsed, flushes)
}

// A node that sends to every peer itself waits gapPerPeer per peer between flushes, so its
// packets per second stay bounded as the cluster grows; one that relays keeps its gap.
func TestFlushGapGrowsWithPeers(t *testing.T) {
	b := New(Options{Node: "a", FlushEvery: -1})
	const gap = 10 * time.Millisecond
	if got := b.flushGap(gap); got != gap {
		t.Errorf("before membership said anything: gap %v, want %v", got, gap)
	}
	for _, c := range []struct {
		members int
		want    time.Duration
	}{
		{1, gap}, {3, gap}, {5, gap}, {6, 5 * gapPerPeer}, {9, 8 * gapPerPeer},
		{directMax + 2, gap}, // relays: a flush goes to its fingers, not to every peer
	} {
		names := make([]string, c.members)
		for i := range names {
			names[i] = string(rune('a' + i))
		}
		b.SetMembers(names)
		if got := b.flushGap(gap); got != c.want {
			t.Errorf("%d members: gap %v, want %v", c.members, got, c.want)
		}
		if got := b.flushGap(-1); got != -1 {
			t.Errorf("%d members: no gap asked, got %v", c.members, got)
		}
	}

	// The loop honours it: under constant change, a node of 9 flushes at most once per
	// 8 x gapPerPeer although its FlushGap is 1 ms.
	n := &countNet{}
	l := New(Options{Node: "a", Network: n, FlushEvery: time.Millisecond, FlushGap: time.Millisecond, housekeepEvery: time.Hour})
	t.Cleanup(l.Close)
	l.SetMembers([]string{"a", "b", "c", "d", "e", "f", "g", "h", "i"})
	want := 8 * gapPerPeer
	c := l.Counter("d")
	start := time.Now()
	for time.Since(start) < 10*want {
		tk, _ := c.Admit(state.Limits{}, state.Reservation{Requests: 1})
		c.Release(tk)
	}
	elapsed := time.Since(start)
	waitFor(t, "the last flush", func() bool { return !l.armed.Load() })
	if flushes, limit := l.loops.Load(), int64(elapsed/want)+2; flushes > limit {
		t.Fatalf("%d flushes in %v of constant change at 8 peers, want at most %d (one per %v)", flushes, elapsed, limit, want)
	}
}

// The housekeeping flush still re-announces in-flight counts without any change.
func TestHousekeepingFlush(t *testing.T) {
	n := &countNet{}
	b := New(Options{Node: "a", Network: n, FlushEvery: time.Hour, housekeepEvery: time.Millisecond})
	t.Cleanup(b.Close)
	b.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1})
	waitFor(t, "a housekeeping flush", func() bool { return n.sent.Load() > 0 })
}

// Close stops the loop and then flushes what is pending.
func TestCloseFlushesPending(t *testing.T) {
	n := &countNet{}
	b := New(Options{Node: "a", Network: n, FlushEvery: time.Hour, housekeepEvery: time.Hour})
	b.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1})
	b.Close()
	if got := n.sent.Load(); got != 1 {
		t.Fatalf("%d messages after Close, want 1", got)
	}
}

func TestOnDelay(t *testing.T) {
	clock := statetest.NewClock(t0)
	var delays []time.Duration
	n := newMemNet()
	n.queue = true
	a := New(Options{Node: "a", Now: clock.Now, FlushEvery: -1})
	b := New(Options{Node: "b", Now: clock.Now, FlushEvery: -1, OnDelay: func(d time.Duration) { delays = append(delays, d) }})
	n.add("a", a)
	n.add("b", b)

	a.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 3})
	a.Flush() // at T
	clock.Advance(7 * time.Millisecond)
	n.Deliver() // handled at T+7ms
	if len(delays) != 1 || delays[0] != 7*time.Millisecond {
		t.Fatalf("delays %v, want [7ms]", delays)
	}
	if r, tk, f := b.Snapshot("d"); r != 1 || tk != 3 || f != 1 {
		t.Fatalf("b sees %d, %d, %d", r, tk, f)
	}

	// Push-pull is not a delta.
	n.pushPull()
	if len(delays) != 1 {
		t.Fatalf("push-pull reported delays %v", delays[1:])
	}

	// A sender clock ahead of ours reads as no delay.
	a.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1})
	var msg []byte
	a.SetNetwork(captureNet(func(m []byte) { msg = append([]byte(nil), m...) }))
	clock.Advance(time.Second)
	a.Flush()
	clock.Advance(-time.Second)
	b.HandleMessage(msg)
	if len(delays) != 2 || delays[1] != 0 {
		t.Fatalf("delays %v, want [7ms 0]", delays)
	}

	// An unstamped delta (an older sender) still merges, without a delay.
	enc := encoder{limit: maxMessage}
	enc.reset(false, 0)
	enc.record(incKey{node: "old", epoch: 1}, "d", 0, 0, []cell{{bucket: window.BucketOf(clock.Now().UnixNano()), reqP: 4}})
	b.HandleMessage(enc.messages()[0])
	if len(delays) != 2 {
		t.Fatalf("unstamped delta reported delays %v", delays[2:])
	}
	if r, _, _ := b.Snapshot("d"); r != 6 {
		t.Fatalf("b sees %d requests, want 6", r)
	}
}

// Send times and spans apply to the records after them, until the next; each must be whole,
// and a span below maxSpan.
func TestStampAndSpanItems(t *testing.T) {
	rec := []byte{tagInc, 1, 'x', 1, tagDep, 0, 1, 'd', 0, 0}
	msg := func(parts ...[]byte) []byte { return slices.Concat(append([][]byte{{wireVersion}}, parts...)...) }
	var got []meta
	collect := func(m meta, _ incKey, _ string, _ uint64, _ int64, _ []cell) { got = append(got, m) }
	ok := msg([]byte{tagSent, 2}, rec, []byte{tagSpan, 5, tagDep, 0, 1, 'e', 0, 0, tagSent, 4}, []byte{tagDep, 0, 1, 'f', 0, 0})
	if err := decode(ok, 1, collect); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if want := []meta{{sent: 1}, {sent: 1, span: 5}, {sent: 2, span: 5}}; !slices.Equal(got, want) {
		t.Fatalf("records' send times and spans %v, want %v", got, want)
	}
	var big []byte
	big = binary.AppendUvarint(append(big, tagSpan), maxSpan)
	for _, bad := range [][]byte{
		msg([]byte{tagSent}),
		msg([]byte{tagSent, 0x80}),
		msg([]byte{tagSpan}),
		msg(big, rec),
	} {
		if decode(bad, 1, nil) == nil {
			t.Errorf("accepted % x", bad)
		}
	}
}

// A node that membership says is alone arms no flush however much it changes; once a peer
// appears, what accumulated is sent.
func TestAloneArmsNoFlush(t *testing.T) {
	const every = 20 * time.Millisecond
	n := &countNet{}
	b := New(Options{Node: "a", Network: n, FlushEvery: every, housekeepEvery: time.Hour})
	t.Cleanup(b.Close)
	b.SetPeers(0)
	c := b.Counter("d")
	for range 50 {
		tk, _ := c.Admit(state.Limits{}, state.Reservation{Requests: 1})
		c.Settle(tk, state.Usage{})
	}
	<-time.After(10 * every) // observing that nothing happens: there is no event to wait for
	if got := b.loops.Load(); got != 0 {
		t.Fatalf("a node alone flushed %d times, want 0", got)
	}
	b.SetPeers(1)
	waitFor(t, "the accumulated delta", func() bool { return n.sent.Load() > 0 })
}

// The delay a receiver reports starts at the change that armed the flush, not at the flush:
// the batching wait is part of how stale a peer's view is.
func TestOnDelayIncludesBatchingWait(t *testing.T) {
	clock := statetest.NewClock(t0)
	var msg []byte
	a := New(Options{Node: "a", Now: clock.Now, FlushEvery: time.Hour, housekeepEvery: time.Hour,
		Network: captureNet(func(m []byte) { msg = append([]byte(nil), m...) })})
	t.Cleanup(a.Close)
	var delays []time.Duration
	b := New(Options{Node: "b", Now: clock.Now, FlushEvery: -1, OnDelay: func(d time.Duration) { delays = append(delays, d) }})

	a.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1}) // arms the flush at T
	clock.Advance(4 * time.Millisecond)
	a.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1}) // joins the same batch
	a.Flush()                                                            // at T+4ms
	clock.Advance(2 * time.Millisecond)
	b.HandleMessage(msg) // at T+6ms
	if len(delays) != 1 || delays[0] != 6*time.Millisecond {
		t.Fatalf("delays %v, want [6ms]", delays)
	}

	// A flush the loop did not arm (the first flush never cleared armed) carries its own time.
	a.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1})
	a.Flush()
	a.Flush()
	clock.Advance(time.Millisecond)
	b.HandleMessage(msg)
	if len(delays) != 2 || delays[1] != time.Millisecond {
		t.Fatalf("delays %v, want [6ms 1ms]", delays)
	}
}

// A node that relays holds its own changes for RelayWait, as it holds records to relay, so
// that both ride one flush: in a large cluster records to relay arrive all the time.
func TestRelayingNodeHoldsItsOwnChanges(t *testing.T) {
	const wait = 150 * time.Millisecond
	n := &countNet{}
	b := New(Options{Node: "n1", Network: n, FlushEvery: time.Millisecond, RelayWait: wait, housekeepEvery: time.Hour})
	t.Cleanup(b.Close)
	b.SetMembers(allNames(directMax + 2))
	start := time.Now()
	tk, _ := b.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1})
	b.Counter("d").Release(tk)
	waitFor(t, "the delta", func() bool { return n.sent.Load() > 0 })
	if got := time.Since(start); got < wait {
		t.Fatalf("sent %v after the change, want RelayWait (%v)", got, wait)
	}
}
