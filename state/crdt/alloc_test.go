//go:build !race

package crdt

import (
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
)

// The race detector allocates on its own, so this runs in normal builds only.
func TestNoAllocs(t *testing.T) {
	b := New(Options{Node: "a", FlushEvery: -1})
	peer := New(Options{Node: "p", FlushEvery: -1})
	peer.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 5})
	b.MergeRemoteState(peer.LocalState(true))
	c := b.Counter("d")
	lim := state.Limits{RPM: 1 << 40, TPM: 1 << 40, MaxParallel: 1 << 20}
	r := state.Reservation{Requests: 1, Tokens: 100}
	c.ObserveLatency(1, 1)
	now := time.Now()
	for name, fn := range map[string]func(){
		"Admit+Settle":  func() { tk, _ := c.Admit(lim, r); c.Settle(tk, state.Usage{PromptTokens: 10}) },
		"Admit+Release": func() { tk, _ := c.Admit(lim, r); c.Release(tk) },
		"Load":          func() { _ = c.Load() },
		"LoadAt":        func() { _ = c.LoadAt(now) },
		"RetryAfter":    func() { _ = c.RetryAfter(state.Limits{RPM: 1}, r) },
		"Counter":       func() { _ = b.Counter("d") },
		"Observe":       func() { c.ObserveLatency(1, 1) },
	} {
		if n := testing.AllocsPerRun(100, fn); n != 0 {
			t.Errorf("%s: %v allocations, want 0", name, n)
		}
	}
}
