package crdt

import (
	"cmp"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
	"github.com/herd-proxy/herd/state/statetest"
)

var sink state.Load

// benchBackend is a node that already merged 9 peers' counts for the deployment, so the
// request path works against a realistic merged view.
func benchBackend(b *testing.B) (*Backend, state.Counter) {
	be := New(Options{Node: "bench"})
	b.Cleanup(be.Close)
	for i := range 9 {
		peer := New(Options{Node: fmt.Sprint("peer", i), FlushEvery: -1})
		for range 50 {
			tk, _ := peer.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 100})
			peer.Counter("d").Settle(tk, state.Usage{PromptTokens: 80})
		}
		be.MergeRemoteState(peer.LocalState(true))
	}
	return be, be.Counter("d")
}

func BenchmarkAdmitSettle(b *testing.B) {
	_, c := benchBackend(b)
	lim := state.Limits{RPM: 1 << 40, TPM: 1 << 40, MaxParallel: 1 << 20}
	r := state.Reservation{Requests: 1, Tokens: 100}
	b.ReportAllocs()
	for b.Loop() {
		tk, err := c.Admit(lim, r)
		if err != nil {
			b.Fatal(err)
		}
		c.Settle(tk, state.Usage{PromptTokens: 40, CompletionTokens: 50})
	}
}

func BenchmarkAdmitSettleParallel(b *testing.B) {
	_, c := benchBackend(b)
	lim := state.Limits{RPM: 1 << 40, TPM: 1 << 40, MaxParallel: 1 << 20}
	r := state.Reservation{Requests: 1, Tokens: 100}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tk, _ := c.Admit(lim, r)
			c.Settle(tk, state.Usage{PromptTokens: 40, CompletionTokens: 50})
		}
	})
}

func BenchmarkLoadAt(b *testing.B) {
	_, c := benchBackend(b)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		sink = c.LoadAt(now)
	}
}

// BenchmarkFlush is one batch of deltas for 100 deployments, each changed since the last.
func BenchmarkFlush(b *testing.B) {
	be := New(Options{Node: "bench", FlushEvery: -1})
	be.SetNetwork(captureNet(func([]byte) {}))
	cs := make([]state.Counter, 100)
	for i := range cs {
		cs[i] = be.Counter(fmt.Sprint("deployment-", i))
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, c := range cs {
			tk, _ := c.Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 10})
			c.Settle(tk, state.Usage{PromptTokens: 5})
		}
		be.Flush()
	}
}

// BenchmarkFlushOneOf500 is a busy node's flush under a config of 500 deployments of which
// one changed since the last flush: the common case between two requests.
func BenchmarkFlushOneOf500(b *testing.B) {
	be := New(Options{Node: "bench", FlushEvery: -1})
	be.SetNetwork(captureNet(func([]byte) {}))
	cs := make([]state.Counter, 500)
	for i := range cs {
		cs[i] = be.Counter(fmt.Sprint("deployment-", i))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c := cs[i%len(cs)]
		i++
		tk, _ := c.Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 10})
		c.Settle(tk, state.Usage{PromptTokens: 5})
		be.Flush()
	}
}

// BenchmarkHandleMessage is a receiver merging a peer's typical delta: one deployment, the
// current bucket and one call in flight.
func BenchmarkHandleMessage(b *testing.B) {
	peer := New(Options{Node: "peer", FlushEvery: -1})
	var msg []byte
	peer.SetNetwork(captureNet(func(m []byte) { msg = append(msg[:0], m...) }))
	peer.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 100})
	peer.Flush()
	be, _ := benchBackend(b)
	b.ReportAllocs()
	for b.Loop() {
		be.HandleMessage(msg)
	}
}

// BenchmarkFullStateSparse encodes the full state of a node of 50 that merged every peer's
// counts on 500 deployments, each peer busy on each deployment in a few seconds of the window
// only: what a joining or resyncing node gets in a cluster whose deployments are not all busy
// all the time (cluster's simulation).
func BenchmarkFullStateSparse(b *testing.B) {
	const nodes, deployments, busySeconds = 50, 500, 3
	ids := make([]string, deployments)
	for i := range ids {
		ids[i] = fmt.Sprintf("deployment-%03d", i)
	}
	clock := statetest.NewClock(t0)
	be := New(Options{Node: "node00", Now: clock.Now, FlushEvery: -1, Deployments: ids})
	b.Cleanup(be.Close)
	now := window.BucketOf(clock.Now().UnixNano())
	for i := 1; i < nodes; i++ {
		k := incKey{node: fmt.Sprintf("node%02d", i), epoch: uint64(i)}
		var recs []record
		for d, id := range ids {
			var cells []cell
			for s := range busySeconds {
				cells = append(cells, cell{bucket: now - int64((d+i+s*17)%int(ringSize)), reqP: 2, tokP: 200})
			}
			slices.SortFunc(cells, func(a, b cell) int { return cmp.Compare(a.bucket, b.bucket) })
			cells = slices.CompactFunc(cells, func(a, b cell) bool { return a.bucket == b.bucket })
			recs = append(recs, record{k: k, id: id, cells: cells})
		}
		be.MergeRemoteState(compressState(forge(recs...)))
	}
	b.ReportAllocs()
	for b.Loop() {
		if len(be.fullState(false)) == 0 {
			b.Fatal("empty state")
		}
	}
}
