package strict

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/local"
	"github.com/herd-proxy/herd/state/statetest"
)

// One node that is the only home is one node with a limit: it must keep the whole contract.
func TestConformanceAsTheOnlyHome(t *testing.T) {
	statetest.Run(t, func(t *testing.T, clock *statetest.Clock) state.Backend {
		b := New(Options{Node: "solo", Epoch: 1, Inner: local.New(local.Options{Now: clock.Now, LatencyTTL: statetest.LatencyTTL}), Now: clock.Now, noLoop: true})
		b.SetHomes(1, []Home{{Name: "solo", Epoch: 1}})
		return b
	})
}

var rpm60 = state.Limits{RPM: 60}

func total(calls ...[]*call) int {
	n := 0
	for _, c := range calls {
		n += len(c)
	}
	return n
}

// Done when: a balanced burst of 180 simultaneous requests on an empty window gets 57-60
// through, here exactly the limit, each node its own share.
func TestBalancedBurstGetsTheLimit(t *testing.T) {
	cl := newCluster(t, 3, 1, nil)
	var got []int
	var all [][]*call
	for _, n := range cl.names {
		calls := cl.load(n, "d", rpm60, 60, 0)
		got = append(got, len(calls))
		all = append(all, calls)
	}
	if n := total(all...); n != 60 {
		t.Fatalf("admitted %d of a burst of 180 against rpm 60 (per node %v); want exactly 60", n, got)
	}
	var log []arrival
	for _, calls := range all {
		confirmAll(cl.clock.Now(), calls, &log)
	}
	// The window holds them a minute; the next minute gets the limit again.
	cl.advance(30 * time.Second)
	if n := total(cl.load("node1", "d", rpm60, 60, 0)); n != 0 {
		t.Fatalf("admitted %d more within the minute", n)
	}
	cl.advance(33 * time.Second)
	if n := total(cl.load("node0", "d", rpm60, 60, 0), cl.load("node1", "d", rpm60, 60, 0), cl.load("node2", "d", rpm60, 60, 0)); n != 60 {
		t.Fatalf("admitted %d in the next minute; want 60", n)
	}
}

// Done when: all demand on one node at 6x for 30 s gets 57-60 through: the hot node borrows
// the idle homes' shares.
func TestHotNodeBorrowsTheRest(t *testing.T) {
	cl := newCluster(t, 3, 2, nil)
	var log []arrival
	every := time.Second / 6
	for i := 0; i < 180; i++ {
		confirmAll(cl.clock.Now(), cl.load("node0", "d", rpm60, 1, 0), &log)
		cl.advance(every)
	}
	req, _ := maxInWindow(log, time.Minute)
	if len(log) < 57 || req > 60 {
		t.Fatalf("hot node: %d through, %d in the busiest minute; want 57-60", len(log), req)
	}
	// Borrowed units go back to their homes: after the window the others can use them.
	cl.advance(70 * time.Second)
	if n := total(cl.load("node1", "d", rpm60, 60, 0), cl.load("node2", "d", rpm60, 60, 0), cl.load("node0", "d", rpm60, 60, 0)); n < 57 {
		t.Fatalf("after the hot node went quiet and a window passed, the cluster admitted %d; want about 60", n)
	}
}

// A hot node at 1,000 requests a second that also reserve tokens keeps borrowing once its own
// share is spent: its share's spare tokens, with no request units beside them, must not count
// as held (they once stopped it asking, and it admitted nothing for the rest of the minute).
func TestHotNodeBorrowsAtAHighRateWithTokens(t *testing.T) {
	cl := newCluster(t, 3, 5, nil)
	lim := state.Limits{RPM: 90000, TPM: 1_000_000_000_000}
	var log []arrival
	offered := 0
	for range 60 * 100 { // 10 ms steps of 10 requests
		confirmAll(cl.clock.Now(), cl.load("node0", "d", lim, 10, 300), &log)
		offered += 10
		cl.advance(10 * time.Millisecond)
	}
	req, tok := maxInWindow(log, time.Minute)
	if len(log) < offered*99/100 || req > lim.RPM || tok > lim.TPM {
		t.Fatalf("hot node at 1000/s under rpm %d: %d of %d through, %d in the busiest minute", lim.RPM, len(log), offered, req)
	}
}

// A home lends request and token units in the proportion asked, whole requests only: tokens
// for half the requests come with half the request units, not all of them.
func TestLoansComeInWholeRequests(t *testing.T) {
	var grant record
	b := New(Options{Node: "self", Epoch: 1, Inner: local.New(local.Options{}), Network: netFuncs{to: func(_ string, m []byte) bool {
		_ = decode(m, func(_ string, r *record) {
			if r.kind == kindGrant {
				grant = *r
			}
		})
		return true
	}}, noLoop: true})
	b.SetHomes(1, []Home{{Name: "peer", Epoch: 1}, {Name: "self", Epoch: 1}})
	// This home's share of rpm 1000, tpm 6000: 500 requests, 3000 tokens; enough tokens for 10
	// requests of 300, not the 20 asked.
	b.HandleMessage(encodeOne("peer", record{kind: kindWant, dep: "d", id: 1, req: 20, tok: 6000, dReq: 20, dTok: 6000, rpm: 1000, tpm: 6000}))
	if grant.req != 10 || grant.tok != 3000 {
		t.Fatalf("granted %d requests, %d tokens; want 10 and 3000", grant.req, grant.tok)
	}
}

// Done when: with one node cut off and both sides loaded at once, the upstream sees at most
// the limit, and both sides served some.
func TestPartitionedSidesShareTheLimit(t *testing.T) {
	cl := newCluster(t, 3, 3, nil)
	cl.partition([]string{"node0", "node1"}, []string{"node2"})
	var log []arrival
	sides := map[string]int{}
	for i := 0; i < 60*3; i++ {
		for _, n := range cl.names {
			k := cl.load(n, "d", rpm60, 1, 0)
			sides[n] += len(k)
			confirmAll(cl.clock.Now(), k, &log)
		}
		cl.advance(time.Second / 3)
	}
	req, _ := maxInWindow(log, time.Minute)
	if req > 60 {
		t.Fatalf("partitioned: %d requests in one minute against rpm 60", req)
	}
	if sides["node2"] == 0 || sides["node0"]+sides["node1"] == 0 {
		t.Fatalf("both sides must serve: %v", sides)
	}
	// After the cut heals, the hot side may borrow what the other side does not use.
	cl.heal()
	cl.advance(70 * time.Second)
	log = log[:0]
	for i := 0; i < 120; i++ {
		confirmAll(cl.clock.Now(), cl.load("node0", "d", rpm60, 1, 0), &log)
		cl.advance(time.Second / 4)
	}
	if len(log) < 57 {
		t.Fatalf("after healing, a hot node got %d in 30 s; want the whole limit back", len(log))
	}
}

func TestRestartedHomeWaitsOutItsPreviousLife(t *testing.T) {
	cl := newCluster(t, 3, 4, nil)
	var log []arrival
	confirmAll(cl.clock.Now(), cl.load("node1", "d", rpm60, 20, 0), &log)
	if len(log) != 20 {
		t.Fatalf("node1 admitted %d of its share of 20", len(log))
	}
	cl.restart("node1")
	// The new life must not spend the share its previous life just spent, nor lend it: it
	// may only borrow the others' shares.
	b := cl.backend("node1")
	if s := b.share(60, b.mono()); s != 0 {
		t.Fatalf("restarted home's share is %d at once", s)
	}
	for range 10 {
		for _, n := range cl.names {
			confirmAll(cl.clock.Now(), cl.load(n, "d", rpm60, 20, 0), &log)
		}
		cl.advance(time.Second)
	}
	// Loans the previous life held are lost with it until they time out: at most the limit.
	if req, _ := maxInWindow(log, time.Minute); req > 60 {
		t.Fatalf("busiest minute around the restart: %d against rpm 60", req)
	}
	cl.advance(defaultLoan + cooldown - 11*time.Second)
	if s := b.share(60, b.mono()); s != 0 {
		t.Fatalf("restarted home's share usable after %s: %d", defaultLoan+cooldown-time.Second, s)
	}
	cl.advance(2 * time.Second)
	if s := b.share(60, b.mono()); s != 20 {
		t.Fatalf("restarted home's share %d after the wait; want 20", s)
	}
}

func TestFencedHomeStopsUsingItsShare(t *testing.T) {
	cl := newCluster(t, 3, 5, nil)
	cl.partition([]string{"node0", "node1"}, []string{"node2"})
	cl.advance(defaultFence - time.Second)
	if k := cl.load("node2", "d", rpm60, 1, 0); len(k) != 1 {
		t.Fatal("a home cut off for less than the fence must serve on its share")
	}
	cl.advance(2 * time.Second)
	if k := cl.load("node2", "d", rpm60, 20, 0); len(k) != 0 {
		t.Fatalf("a home cut off longer than the fence admitted %d", len(k))
	}
}

// A home cut off from the leader for longer than the fence stops; the leader may then drop it
// and the others grow after the grace. Both together keep the limit.
func TestRemovedHomeAndTheGrowthNeverOverlap(t *testing.T) {
	cl := newCluster(t, 3, 10, nil)
	cl.partition([]string{"node0", "node1"}, []string{"node2"})
	cl.advance(5 * time.Second)
	if !cl.commitHomes([]Home{{Name: "node0", Epoch: 1}, {Name: "node1", Epoch: 2}}) {
		t.Fatal("the majority side could not commit")
	}
	var log []arrival
	for range 300 { // 5 minutes, everyone loaded
		for _, n := range cl.names {
			confirmAll(cl.clock.Now(), cl.load(n, "d", rpm60, 2, 0), &log)
		}
		cl.advance(time.Second)
	}
	if req, _ := maxInWindow(log, time.Minute); req > 60 {
		t.Fatalf("busiest minute %d against rpm 60", req)
	}
	b := cl.backend("node0")
	if s := b.share(60, b.mono()); s != 30 {
		t.Fatalf("node0's share after the grace: %d; want 30", s)
	}
}

func TestGrowthWaitsForTheGrace(t *testing.T) {
	cl := newCluster(t, 3, 6, nil)
	b := cl.backend("node0")
	now := b.mono()
	if s := b.share(60, now); s != 20 {
		t.Fatalf("share %d; want 20", s)
	}
	// node2 leaves the table: node0's share would grow to 30, but node2 may still be using its
	// own until the fence, a loan and a cooldown have passed.
	b.SetHomes(2, []Home{{Name: "node0", Epoch: 1}, {Name: "node1", Epoch: 2}})
	if s := b.share(60, b.mono()); s != 20 {
		t.Fatalf("share right after the change %d; want still 20", s)
	}
	grace := defaultFence + defaultLoan + cooldown + growthSlack
	cl.advance(grace - time.Second)
	if s := b.share(60, b.mono()); s != 20 {
		t.Fatalf("share before the grace ended %d; want 20", s)
	}
	cl.advance(2 * time.Second)
	if s := b.share(60, b.mono()); s != 30 {
		t.Fatalf("share after the grace %d; want 30", s)
	}
	// A home added shrinks everyone at once.
	b.SetHomes(3, []Home{{Name: "node0", Epoch: 1}, {Name: "node1", Epoch: 2}, {Name: "node2", Epoch: 3}, {Name: "node3", Epoch: 4}})
	if s := b.share(60, b.mono()); s != 15 {
		t.Fatalf("share after a home was added %d; want 15", s)
	}
}

func TestRightsShowWhereUnitsAre(t *testing.T) {
	cl := newCluster(t, 2, 12, nil)
	if _, ok := cl.backend("node0").Rights("d"); ok {
		t.Fatal("rights of a deployment never admitted on")
	}
	cl.load("node0", "d", rpm60, 31, 0) // its share of 30, then one on a loan from node1
	r0, _ := cl.backend("node0").Rights("d")
	if !r0.Home || r0.Share != 30 || r0.Busy != 30 || r0.Borrowed < 0 {
		t.Fatalf("node0 rights %+v; want a home's 30, all spent", r0)
	}
	cl.backend("node1").Counter("d").Admit(rpm60, state.Reservation{Requests: 1})
	r1, _ := cl.backend("node1").Rights("d")
	if r1.Lent < 1 || r1.Busy != 1 || r1.Share != 30 {
		t.Fatalf("node1 rights %+v; want its share of 30 with some lent and one spent", r1)
	}
	cl.backend("node0").Strict(false)
	if _, ok := cl.backend("node0").Rights("d"); ok {
		t.Fatal("rights shown in fast mode")
	}
}

func TestSharesAddUpToTheLimit(t *testing.T) {
	for _, limit := range []int64{1, 2, 7, 60, 1000, 1 << 62} {
		for n := 1; n <= 9; n++ {
			var sum int64
			for i := range n {
				sum += part(limit, i, n)
			}
			if sum != limit {
				t.Fatalf("limit %d over %d homes: shares sum to %d", limit, n, sum)
			}
		}
	}
}

func TestConfirmRefusesALapsedLoan(t *testing.T) {
	cl := newCluster(t, 3, 7, nil)
	// node0 spends its share, then one more on a loan.
	if k := cl.load("node0", "d", rpm60, 20, 0); len(k) != 20 {
		t.Fatalf("node0 admitted %d of its share of 20", len(k))
	}
	calls := cl.load("node0", "d", rpm60, 1, 0)
	if len(calls) != 1 || calls[0].t.Rights&fromLoan == 0 {
		t.Fatalf("want one call on a loan, got %+v", calls)
	}
	// The process pauses between admission and the request's write, past the loan's deadline.
	cl.pause("node0")
	cl.advance(defaultLoan + confirmSlack + tick)
	cl.resume("node0")
	err := calls[0].c.(state.Confirmer).Confirm(&calls[0].t)
	if !errors.Is(err, ErrRightsLapsed) {
		t.Fatalf("Confirm after the loan's deadline: %v; want ErrRightsLapsed", err)
	}
	calls[0].c.Release(calls[0].t)
}

func TestConfirmRestartsAnOwnUnitsCooldown(t *testing.T) {
	cl := newCluster(t, 1, 8, nil)
	calls := cl.load("node0", "d", rpm60, 60, 0)
	if len(calls) != 60 {
		t.Fatalf("admitted %d", len(calls))
	}
	// Written to the upstream 30 s later (a pause): they count for a minute from then.
	cl.advance(30 * time.Second)
	var log []arrival
	confirmAll(cl.clock.Now(), calls, &log)
	cl.advance(45 * time.Second)
	if k := cl.load("node0", "d", rpm60, 1, 0); len(k) != 0 {
		t.Fatal("a unit whose request left 45 s ago was reused")
	}
	cl.advance(17 * time.Second)
	if k := cl.load("node0", "d", rpm60, 60, 0); len(k) != 60 {
		t.Fatalf("after the cooldown from the write, %d of 60 admitted", len(k))
	}
}

func TestTokensAreRightsToo(t *testing.T) {
	cl := newCluster(t, 3, 9, nil)
	lim := state.Limits{TPM: 3000}
	var log []arrival
	for _, n := range cl.names {
		confirmAll(cl.clock.Now(), cl.load(n, "d", lim, 50, 100), &log)
		cl.advance(tick)
	}
	_, tok := maxInWindow(log, time.Minute)
	if tok > 3000 || tok < 2900 {
		t.Fatalf("tokens through %d against tpm 3000; want 2900-3000", tok)
	}
}

// The simulation: random load on random nodes under random partitions, loss, pauses and
// restarts. Whatever happens, no interval of a minute holds more arrivals than the limit.
func TestNoOvershootUnderRandomFaults(t *testing.T) {
	seeds := 8
	if testing.Short() {
		seeds = 3
	}
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { simulate(t, uint64(seed)) })
	}
}

func simulate(t *testing.T, seed uint64) {
	const nodes = 5
	cl := newCluster(t, nodes, seed+100, nil)
	rng := cl.rng
	if seed%2 == 1 {
		cl.delay = time.Duration(rng.IntN(1500)+100) * time.Millisecond // up to most of a loan
	}
	lim := state.Limits{RPM: 120, TPM: 12000}
	var log []arrival
	var open []*call // admitted, not yet written (their node may be paused)
	paused := map[string]time.Time{}
	for step := 0; step < 4000; step++ { // 400 s
		now := cl.clock.Now()
		// Faults.
		switch r := rng.IntN(400); {
		case r == 0:
			cut := rng.IntN(nodes-1) + 1
			perm := rng.Perm(nodes)
			var a, b []string
			for i, p := range perm {
				if i < cut {
					a = append(a, cl.names[p])
				} else {
					b = append(b, cl.names[p])
				}
			}
			cl.partition(a, b)
		case r == 1:
			cl.heal()
		case r == 2:
			cl.mu.Lock()
			cl.loss = []float64{0, 0.1, 0.5}[rng.IntN(3)]
			cl.mu.Unlock()
		case r == 3:
			n := cl.names[rng.IntN(nodes)]
			if _, p := paused[n]; !p {
				cl.pause(n)
				paused[n] = now.Add(time.Duration(rng.IntN(90)+1) * time.Second)
			}
		case r == 5:
			// The leader drops a home or takes every node back (cluster.Homes's changes).
			cl.mu.Lock()
			homes := slices.Clone(cl.table)
			cl.mu.Unlock()
			if len(homes) > 2 && rng.IntN(2) == 0 {
				i := rng.IntN(len(homes))
				homes = slices.Delete(homes, i, i+1)
			} else {
				homes = homes[:0]
				for _, n := range cl.names {
					homes = append(homes, Home{Name: n, Epoch: cl.nodes[n].epochInTable()})
				}
			}
			cl.commitHomes(homes)
		case r == 4:
			n := cl.names[rng.IntN(nodes)]
			if _, p := paused[n]; !p {
				// Calls admitted on the old life never reach the upstream.
				open = dropNode(open, n)
				cl.restart(n)
			}
		}
		for n, until := range paused {
			if !now.Before(until) {
				delete(paused, n)
				cl.resume(n)
			}
		}
		// Load: bursts on random live nodes.
		for _, n := range cl.names {
			if _, p := paused[n]; p || rng.IntN(3) != 0 {
				continue
			}
			calls := cl.load(n, "d", lim, rng.IntN(4), int64(rng.IntN(150)+1))
			open = append(open, calls...)
		}
		// Writes: calls on live nodes leave now; on paused ones when they wake.
		var keep []*call
		for _, k := range open {
			if _, p := paused[k.node]; p {
				keep = append(keep, k)
				continue
			}
			confirmAll(now, []*call{k}, &log)
		}
		open = keep
		cl.advance(100 * time.Millisecond)
	}
	req, tok := maxInWindow(log, time.Minute)
	if req > lim.RPM || tok > lim.TPM {
		t.Fatalf("seed %d: busiest minute %d requests, %d tokens; limits %d, %d", seed, req, tok, lim.RPM, lim.TPM)
	}
	if len(log) < 200 {
		t.Fatalf("seed %d: only %d requests in 400 s: the simulation barely admitted anything", seed, len(log))
	}
	t.Logf("seed %d: %d requests; busiest minute %d/%d requests, %d/%d tokens; %d messages", seed, len(log), req, lim.RPM, tok, lim.TPM, cl.sent)
}

func dropNode(calls []*call, node string) []*call {
	var keep []*call
	for _, k := range calls {
		if k.node != node {
			keep = append(keep, k)
		}
	}
	return keep
}

func TestNotReadyUntilTheFirstTable(t *testing.T) {
	b := New(Options{Node: "n", Epoch: 1, Inner: local.New(local.Options{}), noLoop: true})
	if b.NotReady() == "" {
		t.Fatal("strict mode without a homes table claims to be ready")
	}
	b.Strict(false)
	if r := b.NotReady(); r != "" {
		t.Fatalf("fast mode not ready: %s", r)
	}
	b.Strict(true)
	b.SetHomes(1, []Home{{Name: "other", Epoch: 9}})
	if r := b.NotReady(); r != "" {
		t.Fatalf("with a table (even without this node in it) not ready: %s", r)
	}
}

// A leader paused past the fence believes, on waking, that it still leads: its first word
// of contact is not taken until raft had time to make it step down.
func TestPausedLeaderDoesNotTrustItsOwnWord(t *testing.T) {
	clock := statetest.NewClock(simStart)
	b := New(Options{Node: "n", Epoch: 1, Inner: local.New(local.Options{Now: clock.Now}), Now: clock.Now,
		LeaderContact: clock.Now, noLoop: true}) // "I am the leader": contact is always now
	b.SetHomes(1, []Home{{Name: "n", Epoch: 1}})
	b.Tick()
	if s := b.share(60, b.mono()); s != 60 {
		t.Fatalf("share %d; want 60", s)
	}
	clock.Advance(defaultFence + time.Second) // SIGSTOP
	b.Tick()
	if s := b.share(60, b.mono()); s != 0 {
		t.Fatalf("right after a pause past the fence, share %d; want 0 until raft could step it down", s)
	}
	for range distrustFor / tick {
		if s := b.share(60, b.mono()); s != 0 {
			t.Fatalf("within the distrust window, share %d", s)
		}
		clock.Advance(tick)
		b.Tick()
	}
	if s := b.share(60, b.mono()); s != 60 {
		t.Fatalf("after the distrust window, a leader raft still reports has share %d; want 60", s)
	}
}

// Strict mode turned on after a long spell of fast mode, in which the fence was not refreshed,
// finds the fence open at once: the spell is not a pause.
func TestStrictAfterFastModeHasItsShare(t *testing.T) {
	clock := statetest.NewClock(simStart)
	b := New(Options{Node: "n", Epoch: 1, Inner: local.New(local.Options{Now: clock.Now}), Now: clock.Now,
		LeaderContact: clock.Now, noLoop: true})
	b.SetHomes(1, []Home{{Name: "n", Epoch: 1}})
	b.Strict(false)
	for range 3 {
		clock.Advance(defaultFence)
		b.Tick()
	}
	b.Strict(true)
	if s := b.share(60, b.mono()); s != 60 {
		t.Fatalf("share %d right after strict mode came on; want 60", s)
	}
}

// In fast mode the loop ticks every fastTick; turning strict mode on ticks at once.
func TestLoopSlowsInFastMode(t *testing.T) {
	b := New(Options{Node: "n", Epoch: 1, Inner: local.New(local.Options{})})
	t.Cleanup(b.Close)
	if b.period() != quietTick {
		t.Fatalf("strict period without work %v, want %v", b.period(), quietTick)
	}
	b.Strict(false)
	if b.period() != fastTick {
		t.Fatalf("fast period %v, want %v", b.period(), fastTick)
	}
	// The tick already due comes; the loop then waits fastTick.
	n := b.ticks.Load()
	deadline := time.Now().Add(10 * time.Second)
	for b.ticks.Load() == n {
		if time.Now().After(deadline) {
			t.Fatal("the loop stopped ticking")
		}
		time.Sleep(time.Millisecond) // poll interval
	}
	n = b.ticks.Load()
	b.Strict(true)
	deadline = time.Now().Add(fastTick / 2)
	for b.ticks.Load() == n {
		if time.Now().After(deadline) {
			t.Fatalf("no tick within %v of strict mode coming on", fastTick/2)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}

// The loop ticks every tick only while a loan, a want or a waiting admission needs it, and
// every quietTick otherwise, demand included: a busy node that holds its own rights, tells its
// demand and lends nothing wakes four times a second. Quiet ticks still announce demand, and
// are not taken for a pause.
func TestLoopQuietsWithoutWork(t *testing.T) {
	clock := statetest.NewClock(simStart)
	var announced int
	var wantID uint64 // the last want sent
	b := New(Options{Node: "self", Epoch: 1, Inner: local.New(local.Options{Now: clock.Now}), Now: clock.Now,
		LeaderContact: clock.Now, Loan: 5 * time.Second, Wait: -1, noLoop: true,
		Network: netFuncs{to: func(_ string, m []byte) bool {
			_ = decode(m, func(_ string, r *record) {
				if r.kind == kindWant {
					wantID = r.id
				}
			})
			return true
		}, all: func(m []byte) {
			_ = decode(m, func(_ string, r *record) {
				if r.kind == kindDemand {
					announced++
				}
			})
		}}})
	t.Cleanup(b.Close)
	b.SetHomes(1, []Home{{Name: "peer", Epoch: 1}, {Name: "self", Epoch: 1}})
	want := func(p time.Duration, when string) {
		t.Helper()
		if got := b.period(); got != p {
			t.Fatalf("%s: period %v, want %v", when, got, p)
		}
	}
	// run ticks the loop as it would for d: every period.
	run := func(d time.Duration, each func()) {
		for end := clock.Now().Add(d); clock.Now().Before(end); {
			clock.Advance(b.period())
			if each != nil {
				each()
			}
			b.Tick()
		}
	}
	admit := func(rpm int64) error {
		_, err := b.Counter("d").Admit(state.Limits{RPM: rpm}, state.Reservation{Requests: 1})
		return err
	}

	want(quietTick, "idle")
	// Units lent out: every tick until the loan ends.
	b.HandleMessage(encodeOne("peer", record{kind: kindWant, dep: "d", id: 7, req: 2, dReq: 2, rpm: 600}))
	want(tick, "with units lent out")
	run(5*time.Second, nil)
	want(quietTick, "once the loan ended")

	// 4 requests a second on the own share (30 of rpm 60), with a peer's demand known.
	b.HandleMessage(encodeOne("peer", record{kind: kindDemand, dep: "d", dReq: 1}))
	run(3*time.Second, func() {
		if err := admit(600); err != nil {
			t.Fatal(err)
		}
		if b.period() != quietTick {
			t.Fatalf("own demand and a peer's: period %v, want %v", b.period(), quietTick)
		}
	})
	if announced < 2 {
		t.Fatalf("3 s of quiet ticks with steady demand announced it %d times; want at least 2", announced)
	}
	b.fenceMu.Lock()
	distrust := b.distrustUntil
	b.fenceMu.Unlock()
	if distrust != 0 {
		t.Fatal("ticks quietTick apart were taken for a pause")
	}

	// A want out: every tick until it is answered or times out.
	run(61*time.Second, nil) // the own share's units cool
	for admit(60) == nil {
	}
	want(tick, "with a want out")
	// Answered with a loan: every tick while it is held.
	b.HandleMessage(encodeOne("peer", record{kind: kindGrant, dep: "d", id: wantID, loan: 99, req: 5}))
	c := b.counter("d")
	c.mu.Lock()
	left, held := len(c.wants), len(c.loans)
	c.mu.Unlock()
	if left != 0 || held != 1 {
		t.Fatalf("after the grant: %d wants out, %d loans held; want 0 and 1", left, held)
	}
	want(tick, "with a loan held")
	run(10*time.Second, nil) // the loan ends; the demand that asks again decays, its wants time out
	want(quietTick, "once the loan ended and the demand decayed")
}

// A node whose first raft contact comes with its first homes table admits at once: the table
// refreshes the fence, and while the fence is closed the loop ticks every tick, not quietly.
func TestFenceOpensWithTheTable(t *testing.T) {
	clock := statetest.NewClock(simStart)
	var contact time.Time // no leader yet
	b := New(Options{Node: "self", Epoch: 1, Inner: local.New(local.Options{Now: clock.Now}), Now: clock.Now,
		LeaderContact: func() time.Time { return contact }, noLoop: true})
	t.Cleanup(b.Close)
	if p := b.period(); p != tick {
		t.Fatalf("period with the fence closed %v, want %v", p, tick)
	}
	clock.Advance(time.Second)
	contact = clock.Now()
	b.SetHomes(1, []Home{{Name: "self", Epoch: 1}})
	if _, err := b.Counter("d").Admit(rpm60, state.Reservation{Requests: 1}); err != nil {
		t.Fatalf("a request right after the first table and contact: %v", err)
	}
	if p := b.period(); p != quietTick {
		t.Fatalf("period with the fence open and no work %v, want %v", p, quietTick)
	}
}

// A request admitted on the own share, then held up past a cooldown (a pause), must find a
// free unit when it finally leaves: its own came free meanwhile and was spent again.
func TestConfirmAfterALongPauseNeedsAFreeUnit(t *testing.T) {
	cl := newCluster(t, 1, 13, nil)
	old := cl.load("node0", "d", rpm60, 1, 0)
	cl.advance(cooldown + time.Second)
	if k := cl.load("node0", "d", rpm60, 60, 0); len(k) != 60 {
		t.Fatalf("admitted %d of 60 after the cooldown", len(k))
	}
	if err := old[0].c.(state.Confirmer).Confirm(&old[0].t); !errors.Is(err, ErrRightsLapsed) {
		t.Fatalf("Confirm of a request whose unit was spent again: %v; want ErrRightsLapsed", err)
	}
}

// After a partition heals, rights stranded on the other side are usable again within a few
// seconds: the hot side borrows the idle side's share at once.
func TestStrandedRightsComeBackWhenThePartitionHeals(t *testing.T) {
	cl := newCluster(t, 3, 14, nil)
	cl.partition([]string{"node0", "node1"}, []string{"node2"})
	var log []arrival
	for range 20 * 6 { // 20 s at 6 req/s on node0 only: its share and node1's, 40
		confirmAll(cl.clock.Now(), cl.load("node0", "d", rpm60, 1, 0), &log)
		cl.advance(time.Second / 6)
	}
	if len(log) != 40 {
		t.Fatalf("during the partition node0 got %d; want its share and node1's, 40", len(log))
	}
	cl.heal()
	healed := cl.clock.Now()
	for range 3 * 6 {
		confirmAll(cl.clock.Now(), cl.load("node0", "d", rpm60, 1, 0), &log)
		cl.advance(time.Second / 6)
	}
	var after int
	for _, a := range log {
		if !a.at.Before(healed) {
			after++
		}
	}
	if after < 15 {
		t.Fatalf("in the 3 s after the heal node0 got %d of node2's 20 (at 6 req/s, 18 offered)", after)
	}
}

// At a node's start, a request waits for the first homes table rather than being refused.
func TestAdmitWaitsForTheFirstTable(t *testing.T) {
	b := New(Options{Node: "n", Epoch: 1, Inner: local.New(local.Options{}), noLoop: true})
	done := make(chan error, 1)
	go func() {
		_, err := b.Counter("d").Admit(rpm60, state.Reservation{Requests: 1})
		done <- err
	}()
	b.SetHomes(1, []Home{{Name: "n", Epoch: 1}})
	if err := <-done; err != nil {
		t.Fatalf("a request made before the first table: %v; want admitted once it came", err)
	}
}

// A home short of units recalls what its borrowers hold unspent, so no unit sits idle in a
// loan while requests are refused: two nodes, one home, alternating requests get the limit.
func TestHomeRecallsIdleLoans(t *testing.T) {
	cl := newClusterHomes(t, 2, 1, 15, func(o *Options) { o.Wait = time.Second }) // node1 only borrows
	lim := state.Limits{RPM: 10}
	var log []arrival
	for i := range 14 {
		confirmAll(cl.clock.Now(), cl.load(cl.names[i%2], "d", lim, 1, 0), &log)
		cl.advance(300 * time.Millisecond)
	}
	if len(log) != 10 {
		t.Fatalf("admitted %d of 14 alternating requests with rpm 10; want 10", len(log))
	}
}

// swappable is a Backend whose counts can be lost at once, as a Redis restarted empty loses
// them: Counter hands out the current backend's counter.
type swappable struct{ cur *local.Backend }

func (s *swappable) Counter(id string) state.Counter { return s.cur.Counter(id) }

// With CheckInner (a Redis under strict rights) an admission needs both: what Inner refuses
// (its window holds another cluster's requests) is refused and its rights go back; what the
// rights refuse (Inner lost its window) is refused although Inner has room. Without
// CheckInner, Inner's view of the limit is not asked.
func TestCheckInnerNeedsBothToAgree(t *testing.T) {
	lim := state.Limits{RPM: 10}
	one := state.Reservation{Requests: 1}
	admit := func(c state.Counter, n int) (ok int) {
		for range n {
			if _, err := c.Admit(lim, one); err == nil {
				ok++
			}
		}
		return ok
	}
	for _, check := range []bool{true, false} {
		clock := statetest.NewClock(simStart)
		inner := &swappable{local.New(local.Options{Now: clock.Now})}
		b := New(Options{Node: "n", Epoch: 1, Inner: inner, CheckInner: check, Now: clock.Now, noLoop: true})
		b.SetHomes(1, []Home{{Name: "n", Epoch: 1}})
		c := b.Counter("d")
		if n := admit(c, 1); n != 1 {
			t.Fatalf("CheckInner %v: the first request was refused", check)
		}
		if n := admit(inner.Counter("d"), 4); n != 4 { // another cluster sharing the Redis
			t.Fatalf("prefill admitted %d", n)
		}
		want := 5 // Inner's room
		if !check {
			want = 9 // the rights'
		}
		if n := admit(c, 10); n != want {
			t.Fatalf("CheckInner %v: admitted %d of 10 with 1 of rpm 10 spent and 4 more counted in Inner; want %d", check, n, want)
		}
		if !check {
			continue
		}
		// The 5 Inner refused went back to the rights: once Inner has room, 4 are left.
		inner.cur = local.New(local.Options{Now: clock.Now}) // restarted empty
		c = b.Counter("d")
		if n := admit(c, 10); n != 4 {
			t.Fatalf("after Inner lost its window: admitted %d of 10; want the 4 rights left", n)
		}
	}
}

// sent is what a node sent, decoded, for tests that play the other nodes by hand.
type sent struct {
	mu   sync.Mutex
	recs []record
}

func (s *sent) net(reply func(r record)) netFuncs {
	return netFuncs{to: func(_ string, m []byte) bool {
		_ = decode(m, func(_ string, r *record) {
			s.mu.Lock()
			s.recs = append(s.recs, *r)
			s.mu.Unlock()
			if reply != nil {
				reply(*r)
			}
		})
		return true
	}}
}

func (s *sent) of(kind byte) []record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []record
	for _, r := range s.recs {
		if r.kind == kind {
			out = append(out, r)
		}
	}
	return out
}

// A loan that arrives after the admissions it was asked for gave up goes straight back to its
// home, unspent: the home may be short itself (a burst that reaches every node at once), and
// the units would otherwise sit idle here. One that finds its admission still waiting serves it.
func TestLateLoanGoesBack(t *testing.T) {
	var s sent
	b := New(Options{Node: "self", Epoch: 1, Inner: local.New(local.Options{}), Network: s.net(nil), Wait: time.Millisecond, noLoop: true})
	b.SetHomes(1, []Home{{Name: "home", Epoch: 1}}) // self only borrows
	c := b.Counter("d")
	if _, err := c.Admit(rpm60, state.Reservation{Requests: 1}); err == nil {
		t.Fatal("admitted with no rights and no answer")
	}
	wants := s.of(kindWant)
	if len(wants) != 1 {
		t.Fatalf("sent %d wants", len(wants))
	}
	b.HandleMessage(encodeOne("home", record{kind: kindGrant, dep: "d", id: wants[0].id, loan: 7, req: 3}))
	if cl := s.of(kindClose); len(cl) != 1 || cl[0].loan != 7 || cl[0].req != 0 {
		t.Fatalf("closes after a late loan: %+v; want loan 7 closed unspent", cl)
	}

	// Answered while the admission waits: kept, and spent.
	var s2 sent
	var b2 *Backend
	s2net := s2.net(func(r record) {
		if r.kind == kindWant {
			go b2.HandleMessage(encodeOne("home", record{kind: kindGrant, dep: "d", id: r.id, loan: 8, req: 3}))
		}
	})
	b2 = New(Options{Node: "self", Epoch: 1, Inner: local.New(local.Options{}), Network: s2net, Wait: 10 * time.Second, noLoop: true})
	b2.SetHomes(1, []Home{{Name: "home", Epoch: 1}})
	if _, err := b2.Counter("d").Admit(rpm60, state.Reservation{Requests: 1}); err != nil {
		t.Fatalf("a loan that came while the admission waited: %v", err)
	}
	if cl := s2.of(kindClose); len(cl) != 0 {
		t.Fatalf("closed a loan its admission spent: %+v", cl)
	}
}

// A home short of units that owes no other node asks back a loan younger than recallAfter
// too, and waits for it: a burst reached a peer first and the peer's admissions may be gone.
func TestShortHomeRecallsAFreshLoan(t *testing.T) {
	var s sent
	var b *Backend
	net := s.net(func(r record) {
		if r.kind == kindRecall { // the borrower's admissions are done: all of it comes back
			go b.HandleMessage(encodeOne("peer", record{kind: kindClose, dep: "d", loan: r.loan}))
		}
	})
	b = New(Options{Node: "self", Epoch: 1, Inner: local.New(local.Options{}), Network: net, Wait: 10 * time.Second, noLoop: true})
	b.SetHomes(1, []Home{{Name: "self", Epoch: 1}})
	lim := state.Limits{RPM: 10}
	b.HandleMessage(encodeOne("peer", record{kind: kindWant, dep: "d", id: 1, req: 10, dReq: 50, rpm: 10}))
	if g := s.of(kindGrant); len(g) != 1 || g[0].req != 10 {
		t.Fatalf("grants %+v; want the whole idle share lent", g)
	}
	if _, err := b.Counter("d").Admit(lim, state.Reservation{Requests: 1}); err != nil {
		t.Fatalf("the home's own request with its share lent a moment ago: %v; want it recalled", err)
	}
	if r := s.of(kindRecall); len(r) != 1 {
		t.Fatalf("recalls %+v; want the fresh loan asked back once", r)
	}
}

// Activation charges a counter's share with what the cluster counted outside strict mode: on a
// switch from fast mode, all fast mode admitted; on a counter made in strict mode, what was
// counted when it was made. Later counts were admitted on other nodes' rights, and charging
// them too left units idle: a burst reaching three nodes at once got 58-59 of 60.
func TestActivationChargesWhatCameBeforeStrict(t *testing.T) {
	lim := state.Limits{RPM: 10}
	admit := func(c state.Counter, n int) (ok int) {
		for range n {
			if _, err := c.Admit(lim, state.Reservation{Requests: 1}); err == nil {
				ok++
			}
		}
		return ok
	}
	inner := local.New(local.Options{})
	b := New(Options{Node: "n", Epoch: 1, Inner: inner, noLoop: true})
	b.SetHomes(1, []Home{{Name: "n", Epoch: 1}})
	admit(inner.Counter("d"), 2) // counted before this node made its counter
	c := b.Counter("d")
	admit(inner.Counter("d"), 3) // counted since: other nodes, on their rights
	if n := admit(c, 10); n != 8 {
		t.Fatalf("made in strict mode with 2 counted before and 3 after: admitted %d of 10; want 8", n)
	}
	b.Strict(false)
	c = b.Counter("e")
	if n := admit(c, 4); n != 4 {
		t.Fatalf("fast mode admitted %d of 4", n)
	}
	b.Strict(true)
	if n := admit(c, 10); n != 6 {
		t.Fatalf("after 4 in fast mode, strict admitted %d of 10; want 6", n)
	}
}

// A steady demand is told about once a second, well within peers' demandTTL; a demand that
// jumps is told at the next announcement.
func TestDemandIsToldWhenItMovesOrAgesOnly(t *testing.T) {
	clock := statetest.NewClock(simStart)
	var told []float64 // announced request rates
	b := New(Options{Node: "n", Epoch: 1, Inner: local.New(local.Options{Now: clock.Now}), Now: clock.Now,
		Network: netFuncs{to: func(string, []byte) bool { return true }, all: func(msg []byte) {
			if err := decode(msg, func(_ string, r *record) {
				if r.kind == kindDemand {
					told = append(told, r.dReq)
				}
			}); err != nil {
				t.Fatal(err)
			}
		}},
		LeaderContact: clock.Now, noLoop: true})
	b.SetHomes(1, []Home{{Name: "n", Epoch: 1}, {Name: "m", Epoch: 1}})
	run := func(d time.Duration, perTick int) {
		for range d / tick {
			for range perTick {
				if tk, err := b.Counter("d").Admit(state.Limits{RPM: 1e6}, state.Reservation{Requests: 1}); err == nil {
					b.Counter("d").Release(tk)
				}
			}
			clock.Advance(tick)
			b.Tick()
		}
	}
	run(5*time.Second, 2) // settles at 40 requests a second
	told = nil
	run(10*time.Second, 2)
	if len(told) < 10 || len(told) > 11 {
		t.Fatalf("a steady demand was told %d times in 10 s, want about once a second: %v", len(told), told)
	}
	told = nil
	run(announceEvery, 20) // ten times the demand
	if len(told) != 1 || told[0] < 60 {
		t.Fatalf("a demand that jumped from 40/s was told as %v within %v", told, announceEvery)
	}
}
