package crdt

import (
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
	"github.com/herd-proxy/herd/state/statetest"
)

// record is one deployment's counts of one incarnation, as a peer puts it on the wire.
type record struct {
	k        incKey
	id       string
	ifVer    uint64
	inFlight int64
	cells    []cell
}

// forge encodes records into one unstamped message, valid both as a delta and as a full state
// (unless it defines more than maxDeltaIncs incarnations, which only a full state may).
func forge(recs ...record) []byte {
	var e encoder
	e.reset(false, 0)
	for _, r := range recs {
		e.record(r.k, r.id, r.ifVer, r.inFlight, r.cells)
	}
	return slices.Clone(e.messages()[0])
}

// rejects counts what Options.OnReject reports, by reason.
type rejects struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *rejects) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[reason]++
}

func (r *rejects) get() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.n)
}

// checkInvariants returns what in b's merged state breaks an invariant merge must keep
// whatever peers send: per cell 0 <= N <= P <= its bound, in-flight counts bounded, the
// window's sums equal to the cells they sum, and incarnations within their caps.
func checkInvariants(b *Backend) error {
	var errs []error
	for _, c := range b.all(nil) {
		c.mu.Lock()
		var req, tok, inFlight int64
		perNode := map[string]int{}
		for k, inc := range c.incs {
			if inc.key != k {
				errs = append(errs, fmt.Errorf("%s: incarnation %v filed under %v", c.id, inc.key, k))
			}
			for b := inc.newest - ringSize + 1; b <= inc.newest; b++ {
				cl := inc.cells[window.Slot(b)]
				if _, ok := c.pos(inc, b); cl.bucket != b || !ok {
					continue
				}
				if cl.reqN < 0 || cl.reqN > cl.reqP || cl.reqP > maxCellRequests ||
					cl.tokN < 0 || cl.tokN > cl.tokP || cl.tokP > maxCellTokens {
					errs = append(errs, fmt.Errorf("%s: %v holds cell %+v", c.id, k, cl))
				}
				req += cl.requests()
				tok += cl.tokens()
			}
			if inc.inFlight < 0 || inc.inFlight > maxInFlight {
				errs = append(errs, fmt.Errorf("%s: %v has %d in flight", c.id, k, inc.inFlight))
			}
			inFlight += inc.inFlight
			if inc != c.own {
				perNode[k.node]++
			}
		}
		if r, tk := c.w.Sums(); r != req || tk != tok {
			errs = append(errs, fmt.Errorf("%s: window sums %d, %d; cells sum %d, %d", c.id, r, tk, req, tok))
		}
		if inFlight != c.ifSum {
			errs = append(errs, fmt.Errorf("%s: in flight %d; incarnations sum %d", c.id, c.ifSum, inFlight))
		}
		if len(perNode) > b.maxNodes {
			errs = append(errs, fmt.Errorf("%s: %d peer node names, cap %d", c.id, len(perNode), b.maxNodes))
		}
		for name, n := range perNode {
			if n > maxIncsPerNode {
				errs = append(errs, fmt.Errorf("%s: %d incarnations of %q, cap %d", c.id, n, name, maxIncsPerNode))
			}
		}
		c.mu.Unlock()
	}
	return errors.Join(errs...)
}

// A forged packet with absurd counts, from a made-up node or in a real node's name, changes no
// admission decision: an rpm 5 limit still refuses the 6th request.
func TestForgedCountsChangeNoAdmission(t *testing.T) {
	c := newCluster(t, 2)
	c.allowRejects = true
	lim := state.Limits{RPM: 5}
	one := state.Reservation{Requests: 1, Tokens: 1}
	c.admitN("n1", "d", lim, one, 3)
	c.admitN("n2", "d", lim, one, 2)
	c.net.flushAll()
	now := window.BucketOf(c.clock.Now().UnixNano())
	n1, n2 := c.nodes["n1"].self, c.nodes["n2"].self
	evil := incKey{node: "evil", epoch: 1}
	for _, f := range []struct {
		name string
		msg  []byte
	}{
		{"huge release from a made-up node", forge(record{k: evil, id: "d", cells: []cell{{bucket: now, reqN: 1 << 40, tokN: 1 << 40}}})},
		{"huge release on a real peer's cell", forge(record{k: n1, id: "d", cells: []cell{{bucket: now, reqP: 3, reqN: 1 << 40}}})},
		{"releases matching forged reservations on the receiver's own cell", forge(record{k: n2, id: "d", cells: []cell{{bucket: now, reqP: 1 << 20, reqN: 1 << 20}}})},
		{"huge release in an earlier bucket", forge(record{k: evil, id: "d", cells: []cell{{bucket: now - 30, reqN: 1 << 62}}})},
		{"releases beyond the bound on both sides", forge(record{k: evil, id: "d", cells: []cell{{bucket: now, reqP: 1 << 62, reqN: 1 << 62}}})},
	} {
		c.nodes["n2"].HandleMessage(f.msg)
		c.nodes["n2"].MergeRemoteState(f.msg)
		if _, err := c.admit("n2", "d", lim, one); err == nil {
			t.Fatalf("%s: n2 admitted a 6th request under rpm 5", f.name)
		}
		if err := checkInvariants(c.nodes["n2"]); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
	}
	c.wantSnapshot(names(2), "d", 5, 5, 0)
	if got := c.rejects.get()[reasonNames[reasonInvariant]]; got == 0 {
		t.Fatalf("no invariant rejections counted: %v", c.rejects.get())
	}
}

// Thousands of made-up deployment IDs from a peer create no counters and take no memory: only
// the configured IDs are kept.
func TestMadeUpDeploymentsTakeNoMemory(t *testing.T) {
	clock := statetest.NewClock(t0)
	var r rejects
	b := New(Options{Node: "a", Now: clock.Now, FlushEvery: -1, Deployments: []string{"d"}, OnReject: r.add})
	b.Counter("d")
	now := window.BucketOf(clock.Now().UnixNano())
	peer := incKey{node: "p", epoch: 1}
	const ids = 5000
	msgs := make([][]byte, ids)
	for i := range msgs {
		msgs[i] = forge(record{k: peer, id: fmt.Sprintf("made-up-%05d", i), ifVer: 1, inFlight: 1, cells: []cell{{bucket: now, reqP: 1, tokP: 10}}})
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, m := range msgs {
		b.HandleMessage(m)
	}
	b.MergeRemoteState(slices.Concat(msgs[0], msgs[1][1:], msgs[2][1:])) // one full state with several
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(msgs)
	if n := len(b.all(nil)); n != 1 {
		t.Fatalf("%d counters after %d made-up IDs, want 1", n, ids)
	}
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if grew > 1<<20 {
		t.Fatalf("heap grew by %d bytes for %d made-up IDs", grew, ids)
	}
	t.Logf("heap grew by %d bytes for %d made-up IDs", grew, ids)
	if got := r.get()[reasonNames[reasonUnknownDeployment]]; got != ids+1 {
		t.Fatalf("%d unknown_deployment rejections, want %d", got, ids+1)
	}
}

// A removed deployment's counter is collected once it holds nothing; one added later learns
// peers' counts again.
func TestRemovedDeploymentCollected(t *testing.T) {
	c := newCluster(t, 2)
	c.allowRejects = true // n2 drops n1's counts for e while they disagree
	for _, b := range c.nodes {
		b.SetDeployments([]string{"d", "e"})
	}
	one := state.Reservation{Requests: 1, Tokens: 1}
	c.admitN("n1", "e", state.Limits{}, one, 4)
	c.net.flushAll()
	c.wantSnapshot(names(1, 2), "e", 4, 4, 0)

	c.nodes["n2"].SetDeployments([]string{"d"})
	c.admitN("n1", "e", state.Limits{}, one, 1)
	c.net.flushAll()
	c.net.pushPull()
	if got := c.rejects.get()[reasonNames[reasonUnknownDeployment]]; got == 0 {
		t.Fatal("n2 took counts of a deployment it no longer has")
	}
	// Still within the window: kept, in case the deployment comes back.
	c.net.flushAll()
	if c.nodes["n2"].counters.Lookup("e") == nil {
		t.Fatal("counter collected while it still held counts")
	}
	c.clock.Advance(state.Span + 2*state.BucketWidth)
	c.net.flushAll()
	if c.nodes["n2"].counters.Lookup("e") != nil {
		t.Fatal("removed deployment's counter not collected after a window")
	}

	// Added again: the next push-pull brings n1's counts back.
	c.admitN("n1", "e", state.Limits{}, one, 2)
	c.net.flushAll()
	c.nodes["n2"].SetDeployments([]string{"d", "e"})
	c.wantSnapshot(names(2), "e", 0, 0, 0)
	c.net.pushPull()
	c.wantSnapshot(names(1, 2), "e", 2, 2, 0)
}

// Until a set of deployments is known, any ID is kept, but only up to a cap, and what only
// peers used is collected once it ages out.
func TestUnknownDeploymentsCapped(t *testing.T) {
	clock := statetest.NewClock(t0)
	var r rejects
	b := New(Options{Node: "a", Now: clock.Now, FlushEvery: -1, OnReject: r.add, maxCounters: 50})
	local := b.Counter("mine")
	now := window.BucketOf(clock.Now().UnixNano())
	for i := range 200 {
		b.HandleMessage(forge(record{k: incKey{node: "p", epoch: 1}, id: fmt.Sprint("x", i), cells: []cell{{bucket: now, reqP: 1}}}))
	}
	if n := len(b.all(nil)); n > 50 {
		t.Fatalf("%d counters, cap 50", n)
	}
	if r.get()[reasonNames[reasonTooManyDeployments]] == 0 {
		t.Fatalf("nothing counted over the cap: %v", r.get())
	}
	clock.Advance(state.Span + 2*state.BucketWidth)
	b.Flush()
	if all := b.all(nil); len(all) != 1 || all[0] != local {
		t.Fatalf("%d counters after their counts aged out, want only the one used locally", len(all))
	}
}

// Every reason is counted once per message, and a message's good records still merge.
func TestRejectionsByReason(t *testing.T) {
	clock := statetest.NewClock(t0)
	now := window.BucketOf(clock.Now().UnixNano())
	p := incKey{node: "p", epoch: 1}
	good := record{k: p, id: "d", cells: []cell{{bucket: now, reqP: 2, tokP: 20}}}
	bad := func(cl cell) record { return record{k: p, id: "d", cells: []cell{cl}} }
	manyNames := make([]record, 0, defaultMaxNodes+1)
	for i := range defaultMaxNodes + 1 {
		manyNames = append(manyNames, record{k: incKey{node: fmt.Sprint("n", i), epoch: 1}, id: "d", cells: []cell{{bucket: now, reqP: 1}}})
	}
	manyIncs := make([]record, 0, maxIncsPerNode+1)
	for i := range maxIncsPerNode + 1 {
		manyIncs = append(manyIncs, record{k: incKey{node: "p", epoch: uint64(i + 1)}, id: "d", cells: []cell{{bucket: now, reqP: 1}}})
	}
	crowded := []record{good}
	for i := range maxDeltaIncs {
		crowded = append(crowded, record{k: incKey{node: "q", epoch: uint64(i + 1)}, id: "d", cells: []cell{{bucket: now, reqP: 1}}})
	}
	for _, tc := range []struct {
		name   string
		msg    []byte
		delta  bool
		reason string
		merged int64 // requests d shows afterwards
	}{
		{"garbage", []byte{wireVersion, 9}, true, "malformed", 0},
		{"truncated", forge(good)[:8], false, "malformed", 0},
		{"delta of more incarnations than a relay holds", forge(crowded...), true, "malformed", 0},
		{"oversized delta", append(forge(good), make([]byte, maxDelta)...), true, "too_large", 0},
		{"compressed garbage", []byte{wireFlate, 1, 2, 3}, true, "malformed", 0},
		{"compressed delta expanding past the bound", compress(nil, append(forge(good), make([]byte, maxDelta)...)), true, "malformed", 0},
		{"compressed delta with bytes after its stream", append(compress(nil, forge(good)), 0), true, "malformed", 0},
		{"oversized state", append(forge(good), make([]byte, maxState)...), false, "too_large", 0},
		{"release above reservation", forge(good, bad(cell{bucket: now - 1, reqP: 1, reqN: 2})), false, "invariant", 2},
		{"tokens released above reserved", forge(good, bad(cell{bucket: now - 1, tokP: 5, tokN: 6})), false, "invariant", 2},
		{"requests beyond a node's second", forge(good, bad(cell{bucket: now - 1, reqP: maxCellRequests + 1})), false, "invariant", 2},
		{"tokens beyond a node's second", forge(good, bad(cell{bucket: now - 1, tokP: maxCellTokens + 1})), false, "invariant", 2},
		{"in flight beyond bound", forge(good, record{k: p, id: "d", ifVer: 1, inFlight: maxInFlight + 1}), false, "invariant", 2},
		{"bucket far behind", forge(good, bad(cell{bucket: now - 3*ringSize, reqP: 1})), false, "stale", 2},
		{"bucket far ahead", forge(good, bad(cell{bucket: now + 2*ringSize, reqP: 1})), false, "stale", 2},
		{"unknown deployment", forge(good, record{k: p, id: "x", cells: []cell{{bucket: now, reqP: 1}}}), false, "unknown_deployment", 2},
		{"too many node names", forge(manyNames...), false, "too_many_nodes", defaultMaxNodes},
		{"too many incarnations of one name", forge(manyIncs...), false, "too_many_nodes", maxIncsPerNode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r rejects
			b := New(Options{Node: "a", Now: clock.Now, FlushEvery: -1, Deployments: []string{"d"}, OnReject: r.add})
			if tc.delta {
				b.HandleMessage(tc.msg)
			} else {
				b.MergeRemoteState(tc.msg)
			}
			if got := r.get(); len(got) != 1 || got[tc.reason] != 1 {
				t.Fatalf("rejections %v, want one %s", got, tc.reason)
			}
			if req, _, _ := b.Snapshot("d"); req != tc.merged {
				t.Fatalf("d shows %d requests, want %d", req, tc.merged)
			}
			if err := checkInvariants(b); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Honest traffic never breaks an invariant, including settles far below and above the
// estimate, releases, and an upstream that reports negative usage.
func TestHonestCellsKeepInvariants(t *testing.T) {
	c := newCluster(t, 3)
	lim := state.Limits{}
	for step := range 200 {
		name := fmt.Sprintf("n%d", step%3+1)
		cn := c.nodes[name].Counter("d")
		tk, err := cn.Admit(lim, state.Reservation{Requests: 1, Tokens: int64(step % 50)})
		if err != nil {
			t.Fatal(err)
		}
		switch step % 5 {
		case 0:
			cn.Release(tk)
		case 1:
			cn.Settle(tk, state.Usage{}) // far below the estimate
		case 2:
			cn.Settle(tk, state.Usage{PromptTokens: 1000, CompletionTokens: 30}) // above
		case 3:
			cn.Settle(tk, state.Usage{PromptTokens: -1 << 40}) // a lying upstream
		}
		if step%7 == 0 {
			c.net.flushAll()
		}
		if step%31 == 0 {
			c.net.pushPull()
		}
		c.clock.Advance(300 * time.Millisecond)
	}
	c.net.flushAll()
	c.net.pushPull()
	for name, b := range c.nodes {
		if err := checkInvariants(b); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// newCluster fails the test on any rejection.
}

// A counter handed out while collections run is never one they removed: its counts would
// never be flushed.
func TestCounterNotCollectedWhileHandedOut(t *testing.T) {
	clock := statetest.NewClock(t0)
	b := New(Options{Node: "a", Now: clock.Now, FlushEvery: -1, Deployments: []string{}})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20000 {
			b.SetDeployments(nil) // a config without d: each one makes d collectable again
			c := b.Counter("d")
			if b.counters.Lookup("d") != c {
				t.Error("Counter returned a counter no longer registered")
				return
			}
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
			clock.Advance(state.BucketWidth)
			b.Flush()
		}
	}
}
