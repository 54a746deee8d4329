package redis

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
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

// benchLimBlocks has no max_parallel: admissions may come from escrow blocks.
var benchLimBlocks = state.Limits{RPM: 1 << 40, TPM: 1 << 40}

// BenchmarkAdmitSettleBlocks is BenchmarkAdmitSettle without max_parallel: most admissions
// are taken from escrow blocks, with no round trip.
func BenchmarkAdmitSettleBlocks(b *testing.B) {
	srv := redistest.Start(b)
	bk := newBackend(b, srv, Options{})
	c := bk.Counter("d")
	tk, _ := c.Admit(benchLimBlocks, benchRes)
	c.Settle(tk, benchUse)
	stats := startServerStats(b, srv)
	b.ReportAllocs()
	for b.Loop() {
		tk, err := c.Admit(benchLimBlocks, benchRes)
		if err != nil || tk.ID == 0 {
			b.Fatalf("Admit: %v (ticket %+v)", err, tk)
		}
		c.Settle(tk, benchUse)
	}
	stats.report(b)
	s := bk.Stats()
	b.ReportMetric(float64(s.BlockAdmits)/float64(b.N), "block-admits/op")
}

// BenchmarkAdmitSettle is one admission and its settle, one after the other, against a local
// redis-server: one round trip, as each settle rides with the next admission.
func BenchmarkAdmitSettle(b *testing.B) {
	srv := redistest.Start(b)
	c := newBackend(b, srv, Options{}).Counter("d")
	// Warm up: the scripts are loaded and the window exists before the server's counts start.
	tk, _ := c.Admit(benchLim, benchRes)
	c.Settle(tk, benchUse)
	stats := startServerStats(b, srv)
	b.ReportAllocs()
	for b.Loop() {
		tk, err := c.Admit(benchLim, benchRes)
		if err != nil || tk.ID == 0 {
			b.Fatalf("Admit: %v (ticket %+v)", err, tk)
		}
		c.Settle(tk, benchUse)
	}
	stats.report(b)
}

// serverStats reads Redis's own counts, which a noisy machine does not move: the time the server
// spends per script call and the bytes it sends and receives per op.
type serverStats struct {
	srv *redistest.Server
	cpu time.Duration // this process's CPU time at the start
}

func startServerStats(b *testing.B, srv *redistest.Server) serverStats {
	b.Helper()
	if err := rawClient(b, srv).ConfigResetStat(context.Background()).Err(); err != nil {
		b.Fatal(err)
	}
	return serverStats{srv, processCPU(b)}
}

// processCPU is the CPU time (user and system) this process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// report adds client-cpu-µs/op (this process: client, benchmark and the background loop),
// evalsha-µs/call (Redis's usec_per_call), and net-out-B/op and net-in-B/op (every
// reply and request, the background refresh included).
func (s serverStats) report(b *testing.B) {
	b.Helper()
	b.ReportMetric(float64(processCPU(b)-s.cpu)/float64(time.Microsecond)/float64(b.N), "client-cpu-µs/op")
	rc := rawClient(b, s.srv)
	ctx := context.Background()
	cmds, err := rc.Info(ctx, "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(cmds) {
		if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:"); ok {
			for kv := range strings.SplitSeq(strings.TrimSpace(rest), ",") {
				if v, ok := strings.CutPrefix(kv, "usec_per_call="); ok {
					f, _ := strconv.ParseFloat(v, 64)
					b.ReportMetric(f, "evalsha-µs/call")
				}
				if v, ok := strings.CutPrefix(kv, "calls="); ok {
					f, _ := strconv.ParseFloat(v, 64)
					b.ReportMetric(f/float64(b.N), "evalsha/op")
				}
			}
		}
	}
	st, err := rc.Info(ctx, "stats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(st) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseFloat(v, 64)
		switch k {
		case "total_net_output_bytes":
			b.ReportMetric(n/float64(b.N), "net-out-B/op")
		case "total_net_input_bytes":
			b.ReportMetric(n/float64(b.N), "net-in-B/op")
		}
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
