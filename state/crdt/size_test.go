package crdt

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
	"github.com/herd-proxy/herd/state/statetest"
)

// The state a node sends in push-pull is bounded by what is live: the configured deployments,
// and the incarnations with counts in the window. At herd's documented scale, 50 nodes x 500
// deployments with every node using every deployment in every second of the window (the worst
// case), the state a joining node gets stays below half of memberlist's 20 MiB limit on a
// remote state, and the periodic push-pull, which carries a node's own counts only, is a
// fortieth of it.
func TestFullStateSizeAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 25,000 busy records: not in -short")
	}
	const nodes, deployments = 50, 500
	clock := statetest.NewClock(t0)
	ids := make([]string, deployments)
	for i := range ids {
		ids[i] = fmt.Sprintf("azure-gpt-4o-eastus-%03d", i) // IDs as long as real ones
	}
	rng := rand.New(rand.NewPCG(1, 2))
	all := New(Options{Node: "herd-00.herd.svc.cluster.local", Now: clock.Now, FlushEvery: -1, Deployments: ids})
	// A window's worth of seconds of this node admitting and settling on every deployment.
	for range ringSize {
		for _, id := range ids {
			c := all.Counter(id)
			for range 1 + rng.IntN(8) {
				tk, err := c.Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 1000})
				if err != nil {
					t.Fatal(err)
				}
				c.Settle(tk, state.Usage{PromptTokens: int64(200 + rng.IntN(2000)), CompletionTokens: int64(rng.IntN(800))})
			}
		}
		clock.Advance(time.Second)
	}
	// And the same of every other node, as their full states bring it.
	now := window.BucketOf(clock.Now().UnixNano())
	for i := 1; i < nodes; i++ {
		k := incKey{node: fmt.Sprintf("herd-%02d.herd.svc.cluster.local", i), epoch: uint64(i)}
		var recs []record
		for _, id := range ids {
			cells := make([]cell, 0, ringSize)
			for b := now - ringSize + 1; b <= now; b++ {
				cl := cell{bucket: b}
				for range 1 + rng.IntN(8) { // requests reserving 1000 tokens, settled as above
					used := int64(200+rng.IntN(2000)) + int64(rng.IntN(800))
					cl.reqP++
					cl.tokP += 1000 + max(used-1000, 0)
					cl.tokN += max(1000-used, 0)
				}
				cells = append(cells, cl)
			}
			recs = append(recs, record{k: k, id: id, cells: cells})
		}
		all.MergeRemoteState(compressState(forge(recs...)))
	}
	raw := all.fullState(false)
	sent := all.LocalState(true)
	own := all.LocalState(false)
	t.Logf("%d nodes x %d deployments, every second of the window used: the state a joining node gets is %.1f MB, sent compressed as %.1f MB (%.1fx); the periodic push-pull carries %.2f MB",
		nodes, deployments, float64(len(raw))/1e6, float64(len(sent))/1e6, float64(len(raw))/float64(len(sent)), float64(len(own))/1e6)
	// memberlist refuses a remote state over 20 MiB.
	if limit := 8 << 20; len(sent) > limit {
		t.Fatalf("a joining node's state is %d bytes, want at most %d", len(sent), limit)
	}
	if limit := 512 << 10; len(own) > limit {
		t.Fatalf("the periodic state is %d bytes, want at most %d", len(own), limit)
	}
	// It is what the receiver needs: a fresh node learns every count from it alone.
	fresh := New(Options{Node: "fresh", Now: clock.Now, FlushEvery: -1, Deployments: ids})
	fresh.MergeRemoteState(sent)
	for _, id := range ids[:20] {
		want, _, _ := all.Snapshot(id)
		if got, _, _ := fresh.Snapshot(id); got != want {
			t.Fatalf("%s: a fresh node learned %d requests from the full state, the sender has %d", id, got, want)
		}
	}
}
