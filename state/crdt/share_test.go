package crdt

import (
	"errors"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
)

// newMembers is newCluster with membership told (SetPeers), as cmd does: every node knows how
// many may admit, whether or not they have counted anything yet.
func newMembers(t *testing.T, n int) *cluster {
	c := newCluster(t, n)
	for _, b := range c.nodes {
		b.SetPeers(n - 1)
	}
	return c
}

// prefill has each node admit per[node] requests, as fast as its share lets it, delivers
// everything and lets the clock move on by two buckets, so that the counts are in buckets that
// ended more than a horizon ago, known to every node: what shares are taken from.
func (c *cluster) prefill(id string, lim state.Limits, per map[string]int) {
	c.t.Helper()
	for name, n := range per {
		for tries := 0; n > 0; tries++ {
			if tries == 100 {
				c.t.Fatalf("prefill: %s cannot admit %d more", name, n)
			}
			n -= c.admitN(name, id, lim, state.Reservation{Requests: 1}, n)
			c.net.flushAll()
			c.clock.Advance(quiet)
		}
	}
	c.clock.Advance(2 * state.BucketWidth)
}

// burst has every node in names try n admissions with no delivery in between, as when a burst
// reaches all nodes within one propagation delay, then delivers everything. It returns what
// each admitted.
func (c *cluster) burst(id string, lim state.Limits, names []string, n int) map[string]int {
	c.net.queue = true
	got := map[string]int{}
	for _, name := range names {
		got[name] = c.admitN(name, id, lim, state.Reservation{Requests: 1}, n)
	}
	c.net.flushAll()
	c.net.Deliver()
	c.net.queue = false
	return got
}

func sum(m map[string]int) int {
	s := 0
	for _, v := range m {
		s += v
	}
	return s
}

// A burst that reaches every node before any delta does: each node sees the same free slots.
// Without the share check each would take all of them (3 x 30 here); with it the nodes split
// them, and together take exactly what remained.
func TestBurstSplitsTheRemaining(t *testing.T) {
	c := newMembers(t, 3)
	lim := state.Limits{RPM: 60}
	c.prefill("d", lim, map[string]int{"n1": 10, "n2": 10, "n3": 10})
	got := c.burst("d", lim, names(1, 2, 3), 30)
	if s := sum(got); s != 30 {
		t.Fatalf("the burst admitted %v, %d in all; want 30 (the 60 limit less 30 used)", got, s)
	}
	for name, n := range got {
		if n != 10 {
			t.Errorf("%s admitted %d, want its even third, 10", name, n)
		}
	}
	c.wantSnapshot(names(1, 2, 3), "d", 60, 0, 0)
}

// A burst that spans a bucket boundary while deltas are held up: each node knows its own count
// of the bucket just completed at once, the others' only later. Shares are therefore taken from
// buckets that ended a horizon ago; from the one just completed each node would see itself as
// the only one that admitted and take most of the remaining.
func TestBurstAcrossABucketBoundary(t *testing.T) {
	c := newMembers(t, 3)
	lim := state.Limits{RPM: 60}
	c.clock.Advance(bucketStart(c.clock.Now()).Add(state.BucketWidth - 10*time.Millisecond).Sub(c.clock.Now()))
	c.net.queue = true
	got := 0
	for _, name := range names(1, 2, 3) {
		got += c.admitN(name, "d", lim, state.Reservation{Requests: 1}, 5)
	}
	c.net.flushAll() // queued, within the horizon: nobody hears of the others yet
	c.clock.Advance(20 * time.Millisecond)
	for _, name := range names(1, 2, 3) {
		got += c.admitN(name, "d", lim, state.Reservation{Requests: 1}, 60)
	}
	c.net.flushAll()
	c.net.Deliver()
	if got != 60 {
		t.Fatalf("the burst admitted %d in all at rpm 60", got)
	}
}

// The same when the burst arrives in waves with deltas delivered between them, as herdbench's
// bursts do (a delta takes a millisecond or two; the burst lasts tens): never over the limit,
// and the remaining fills up to at most nodes-1 slots left to nobody.
func TestBurstInWavesFillsWithoutOvershoot(t *testing.T) {
	for _, nodes := range []int{3, 5} {
		c := newMembers(t, nodes)
		lim := state.Limits{RPM: 600}
		per := map[string]int{}
		all := make([]string, nodes)
		for i := range all {
			all[i] = names(i + 1)[0]
			per[all[i]] = 450 / nodes
		}
		c.prefill("d", lim, per)
		before, _, _ := c.nodes["n1"].Snapshot("d")
		for range 40 {
			c.burst("d", lim, all, 7)
			c.clock.Advance(2 * time.Millisecond)
		}
		// After the burst, a few horizons later, stragglers take the last slots one at a time.
		for i := range 10 {
			c.clock.Advance(quiet)
			c.burst("d", lim, all[i%nodes:i%nodes+1], 1)
		}
		r, _, _ := c.nodes["n1"].Snapshot("d")
		t.Logf("%d nodes: %d before the burst, %d after, limit %d", nodes, before, r, lim.RPM)
		if r > lim.RPM || r < lim.RPM-int64(nodes-1) {
			t.Errorf("%d nodes: %d admitted in the window at rpm %d; want %d..%d", nodes, r, lim.RPM, lim.RPM-int64(nodes-1), lim.RPM)
		}
	}
}

// A node that did all of the window's admissions gets most of what remains (3/4 plus its even
// part) in a burst, not a third: a hot node keeps its utilisation.
func TestHotNodeGetsMostOfTheRemaining(t *testing.T) {
	c := newMembers(t, 3)
	lim := state.Limits{RPM: 60}
	c.prefill("d", lim, map[string]int{"n1": 30})
	got := c.burst("d", lim, names(1), 60)
	// share = 1/12 + 3/4 = 10/12 of 30
	if got["n1"] != 25 {
		t.Fatalf("the hot node admitted %d of the 30 remaining in one burst, want 25", got["n1"])
	}
	// Once its burst has reached the others it shares the rest again, down to a slot left to
	// nobody (a share below one request).
	total := 30 + got["n1"]
	for range 5 {
		c.clock.Advance(quiet)
		total += c.burst("d", lim, names(1), 60)["n1"]
	}
	if total < 59 || total > 60 {
		t.Fatalf("the hot node admitted %d in all at rpm 60, want 59 or 60", total)
	}
	c.wantSnapshot(names(1, 2, 3), "d", int64(total), 0, 0)
}

// Sparse requests, each on a quiet cluster, use the whole of a small limit whatever their node,
// although a node without history has a share of less than one request.
func TestSparseRequestsUseASmallLimit(t *testing.T) {
	c := newMembers(t, 3)
	lim := state.Limits{RPM: 6}
	c.prefill("d", lim, map[string]int{"n1": 3})
	got := 0
	for _, name := range []string{"n2", "n3", "n2", "n1"} {
		got += c.admitApart(name, "d", lim, state.Reservation{Requests: 1}, 1)
		c.net.flushAll()
	}
	if got != 3 {
		t.Fatalf("admitted %d of the 3 remaining, one request at a time", got)
	}
	if _, err := c.admit("n1", "d", lim, state.Reservation{Requests: 1}); !errors.Is(err, state.ErrNoCapacity) {
		t.Fatalf("admission over the limit: %v", err)
	}
}

// Counts that arrive by push-pull (a heal, a join) were never admitted within a share, so they
// shrink the remaining the share is taken of at once, instead of counting as recent.
func TestPushPullCountsAreNotRecent(t *testing.T) {
	c := newMembers(t, 2)
	lim := state.Limits{RPM: 30}
	c.net.partition(map[string]int{"n2": 1})
	if got := c.admitN("n2", "d", lim, state.Reservation{Requests: 1}, 20); got == 0 {
		t.Fatal("n2 admitted nothing on its side")
	}
	c.net.flushAll()
	c.net.heal()
	c.net.pushPull()
	r, _, _ := c.nodes["n1"].Snapshot("d")
	c.clock.Advance(quiet) // n2's own recent admissions are old now; n1 merged them just now
	got := c.burst("d", lim, names(1), 30)["n1"]
	// n1's even share (no completed bucket yet: 1/2) of what remains after push-pull.
	if want := int(lim.RPM-r) / 2; got != want {
		t.Fatalf("n1 admitted %d after push-pull brought %d; want %d, half of the %d remaining", got, r, want, lim.RPM-r)
	}
}

// A limit of zero is no limit: the strict mode's counting (state/strict admits through these
// counters with no rpm or tpm) is never refused by a share, however large the burst.
func TestNoLimitNoShare(t *testing.T) {
	c := newMembers(t, 3)
	lim := state.Limits{MaxParallel: 1 << 20}
	got := c.burst("d", lim, names(1, 2, 3), 500)
	if s := sum(got); s != 1500 {
		t.Fatalf("admitted %d of 1500 without rpm or tpm", s)
	}
	// A reservation that takes nothing of a limit is not held to a share of it either.
	lim = state.Limits{TPM: 100}
	c.clock.Advance(quiet)
	got = c.burst("e", lim, names(1, 2, 3), 100)
	if s := sum(got); s != 300 {
		t.Fatalf("admitted %d of 300 zero-token reservations under tpm 100", s)
	}
}

// Tokens are shared like requests.
func TestTokensShared(t *testing.T) {
	c := newMembers(t, 2)
	lim := state.Limits{TPM: 1000}
	c.net.queue = true
	var got int64
	for _, name := range names(1, 2) {
		for range 10 {
			if tk, err := c.admit(name, "d", lim, state.Reservation{Requests: 1, Tokens: 100}); err == nil {
				got += tk.Reserved.Tokens
			}
		}
	}
	if got != 1000 {
		t.Fatalf("two nodes reserved %d tokens in one burst under tpm 1000", got)
	}
}

// A steady stream on every node, with every delta held up for a while (less than the horizon):
// each node admits against a view that lacks the others' last admissions, so without the share
// check the cluster goes over by what it admits in one delay. With it, every node draws the
// horizon's line at the same moment and the shares of what is left before it add up to that.
func TestSteadyStreamWithDelayedDeltas(t *testing.T) {
	const nodes, rpm = 5, 300
	const step, delay = time.Millisecond, 40 * time.Millisecond // 1000 admissions a second; < testHorizon
	c := newMembers(t, nodes)
	c.net.queue = true
	lim := state.Limits{RPM: rpm}
	all := names(1, 2, 3, 4, 5)
	got := 0
	for i := range 1500 {
		got += c.admitN(all[i%nodes], "d", lim, state.Reservation{Requests: 1}, 1)
		c.net.flushAll()
		c.clock.Advance(step)
		if i%int(delay/step) == 0 {
			c.net.Deliver() // what was flushed up to a delay ago, and a little since
		}
	}
	c.net.Deliver()
	if got > rpm || got < rpm-nodes+1 {
		t.Fatalf("%d admitted at rpm %d with deltas held up to %v; want %d..%d", got, rpm, delay, rpm-nodes+1, rpm)
	}
	t.Logf("%d admitted at rpm %d", got, rpm)
}

// A peer's delta counts as recent by when it was sent, in this node's time: from a peer 10 s
// behind whose offset is known, a fresh delta is recent; without the offset it looks 10 s old
// and goes into the base, and so does a delta that really was held up beyond the horizon.
func TestDeltaCountsAsRecentBySendTime(t *testing.T) {
	for _, tc := range []struct {
		name       string
		known      bool
		heldUp     time.Duration
		wantRecent bool
	}{
		{"offset known", true, 0, true},
		{"offset unknown", false, 0, false},
		{"held up beyond the horizon", true, shareHorizon + shareHorizon/(recentSlots-1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSkewed(t, t0, -10*time.Second)
			if tc.known {
				s.est.set("p", -10*time.Second)
			}
			s.net.queue = true
			s.admit(1)
			s.ca.Advance(tc.heldUp)
			s.net.Deliver()
			c := s.a.counter("d")
			c.mu.Lock()
			recent := c.recent.tot[peerReq]
			c.mu.Unlock()
			if (recent == 1) != tc.wantRecent {
				t.Fatalf("p's admission counts %d as recent, want recent %v", recent, tc.wantRecent)
			}
			if got := s.a.Counter("d").Load().Requests; got != 1 {
				t.Fatalf("a counts %d of p's 1", got)
			}
		})
	}
}
