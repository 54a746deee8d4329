package redis

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/redistest"
	"github.com/herd-proxy/herd/state"
)

var (
	benchLim = state.Limits{RPM: 1 << 40, TPM: 1 << 40, MaxParallel: 1 << 20}
	benchRes = state.Reservation{Requests: 1, Tokens: 100}
	benchUse = state.Usage{PromptTokens: 40, CompletionTokens: 50}
)

// BenchmarkAdmitSettle is one admission and its settle, two round trips to a local
// redis-server, one after the other.
func BenchmarkAdmitSettle(b *testing.B) {
	c := newBackend(b, redistest.Start(b), Options{}).Counter("d")
	b.ReportAllocs()
	for b.Loop() {
		tk, err := c.Admit(benchLim, benchRes)
		if err != nil || tk.ID == 0 {
			b.Fatalf("Admit: %v (ticket %+v)", err, tk)
		}
		c.Settle(tk, benchUse)
	}
}

// BenchmarkAdmitSettleParallel is BenchmarkAdmitSettle from GOMAXPROCS goroutines on one
// deployment: Redis runs the scripts one at a time, so this is the per-deployment throughput.
func BenchmarkAdmitSettleParallel(b *testing.B) {
	bk := newBackend(b, redistest.Start(b), Options{})
	c := bk.Counter("d")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tk, err := c.Admit(benchLim, benchRes)
			if err != nil {
				b.Errorf("Admit: %v", err)
				return
			}
			c.Settle(tk, benchUse)
		}
	})
	if s := bk.Stats(); s.LocalAdmits != 0 {
		b.Fatalf("%d admissions fell back locally: %+v", s.LocalAdmits, s)
	}
}

// BenchmarkAdmitLatency reports the p50 and p99 of one Admit round trip, with 8 goroutines
// admitting at once (the herd overhead a request sees), as admit-p50-µs and admit-p99-µs.
func BenchmarkAdmitLatency(b *testing.B) {
	for _, workers := range []int{1, 8} {
		b.Run(map[int]string{1: "serial", 8: "8way"}[workers], func(b *testing.B) {
			bk := newBackend(b, redistest.Start(b), Options{})
			c := bk.Counter("d")
			per := make([][]time.Duration, workers)
			n := b.N
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := w; i < n; i += workers {
						start := time.Now()
						tk, err := c.Admit(benchLim, benchRes)
						per[w] = append(per[w], time.Since(start))
						if err != nil {
							b.Errorf("Admit: %v", err)
							return
						}
						c.Settle(tk, benchUse)
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			all := slices.Concat(per...)
			slices.Sort(all)
			if len(all) == 0 {
				return
			}
			q := func(p float64) float64 {
				return float64(all[min(int(p*float64(len(all))), len(all)-1)]) / float64(time.Microsecond)
			}
			b.ReportMetric(q(0.50), "admit-p50-µs")
			b.ReportMetric(q(0.99), "admit-p99-µs")
		})
	}
}

// BenchmarkLoad is routing's read of a deployment: from the cache, no round trip.
func BenchmarkLoad(b *testing.B) {
	c := newBackend(b, redistest.Start(b), Options{}).Counter("d")
	for range 10 {
		tk, _ := c.Admit(benchLim, benchRes)
		c.Settle(tk, benchUse)
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		sink = c.LoadAt(now)
	}
}

var sink state.Load
