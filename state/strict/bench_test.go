package strict

import (
	"testing"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/crdt"
)

// BenchmarkAdmitSettle is a request's cost in state: admit, confirm, settle. Fast mode is the
// crdt backend alone; strict adds the rights on a home's own share (no network).
func BenchmarkAdmitSettle(b *testing.B) {
	lim := state.Limits{RPM: 1 << 40, TPM: 1 << 50}
	r := state.Reservation{Requests: 1, Tokens: 300}
	for _, mode := range []string{"fast", "strict"} {
		b.Run(mode, func(b *testing.B) {
			inner := crdt.New(crdt.Options{Node: "n", FlushEvery: -1})
			sb := New(Options{Node: "n", Epoch: 1, Inner: inner, noLoop: true})
			sb.SetHomes(1, []Home{{Name: "n", Epoch: 1}})
			sb.Strict(mode == "strict")
			c := sb.Counter("d")
			b.ReportAllocs()
			for b.Loop() {
				t, err := c.Admit(lim, r)
				if err != nil {
					b.Fatal(err)
				}
				_ = c.(state.Confirmer).Confirm(&t)
				c.Settle(t, state.Usage{PromptTokens: 200, CompletionTokens: 50})
			}
		})
	}
}
