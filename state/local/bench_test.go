package local

import (
	"strconv"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
)

var sink state.Load

func BenchmarkAdmitSettle(b *testing.B) {
	c := New(Options{}).Counter("d")
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
	c := New(Options{}).Counter("d")
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

// A refusal allocates its *NoCapacityError; this measures the refusal path with RetryAfter's
// scan of the ring.
func BenchmarkAdmitRefused(b *testing.B) {
	c := New(Options{}).Counter("d")
	lim := state.Limits{RPM: 1}
	c.Admit(lim, state.Reservation{Requests: 1})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Admit(lim, state.Reservation{Requests: 1}); err == nil {
			b.Fatal("admitted")
		}
	}
}

func BenchmarkLoad(b *testing.B) {
	c := New(Options{}).Counter("d")
	for i := range 10 {
		c.ObserveLatency(time.Duration(1000+i), time.Duration(i))
	}
	b.ReportAllocs()
	for b.Loop() {
		sink = c.Load()
	}
}

// BenchmarkLoad100 is one routing decision's read of 100 deployments, looked up by ID.
func BenchmarkLoad100(b *testing.B) {
	be := New(Options{})
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = "deployment-" + strconv.Itoa(i)
		c := be.Counter(ids[i])
		tk, _ := c.Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 10})
		c.Settle(tk, state.Usage{PromptTokens: 5})
		c.ObserveLatency(1000, 100)
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, id := range ids {
			sink = be.Counter(id).Load()
		}
	}
}
