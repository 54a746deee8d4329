package redis

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/herd-proxy/herd/internal/redistest"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/statetest"
)

// evalHook counts script calls (EVALSHA), single or pipelined.
type evalHook struct{ n *atomic.Int64 }

func (h evalHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h evalHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if cmd.Name() == "evalsha" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h evalHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		for _, cmd := range cmds {
			if cmd.Name() == "evalsha" {
				h.n.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

// escrowNodes returns n backends sharing one Redis key prefix and clock, each with its own
// client counting script calls into calls.
func escrowNodes(t *testing.T, srv *redistest.Server, clock *statetest.Clock, n int, calls *atomic.Int64) []*Backend {
	prefix := uniquePrefix()
	nodes := make([]*Backend, n)
	for i := range nodes {
		client := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: srv.Password(), ContextTimeoutEnabled: true})
		client.AddHook(evalHook{calls})
		t.Cleanup(func() { _ = client.Close() })
		nodes[i] = newBackend(t, srv, Options{Client: client, Now: clock.Now, KeyPrefix: prefix,
			Timeout: 5 * time.Second, RefreshEvery: 20 * time.Millisecond, FairShareNodes: n})
		nodes[i].SetNodes(n)
	}
	return nodes
}

// redisSums reads the deployment's window straight from Redis.
func redisSums(t *testing.T, rc *goredis.Client, c *counter) (requests, tokens int64) {
	t.Helper()
	blob, err := rc.Get(context.Background(), c.keys[0]).Result()
	if err != nil && !errors.Is(err, goredis.Nil) {
		t.Fatal(err)
	}
	var w snapshot
	if err := w.decode(blob); err != nil {
		t.Fatal(err)
	}
	return w.ring.Sums()
}

// Two nodes share one Redis and one deployment under concurrent load from many goroutines while
// the clock crosses buckets: no 61-bucket span ever holds more than rpm, most admissions are
// taken from escrow blocks without a round trip, and once the last bucket has passed the unused
// remainders are back: Redis counts exactly the real admissions.
func TestEscrowBlocks(t *testing.T) {
	srv := redistest.Start(t)
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 0, time.UTC))
	var calls atomic.Int64
	nodes := escrowNodes(t, srv, clock, 2, &calls)
	const (
		rpm     = 40000
		buckets = 12
		perStep = 5000 // attempts per bucket: the limit binds about two thirds in
		tokens  = 100
	)
	lim := state.Limits{RPM: rpm, TPM: 100 * rpm}
	r := state.Reservation{Requests: 1, Tokens: tokens}
	var (
		attempts, admitted atomic.Int64
		mu                 sync.Mutex
		perBucket          = map[int64]int64{}
		stop               = make(chan struct{})
		wg                 sync.WaitGroup
	)
	for w := range 32 {
		c := nodes[w%2].Counter("d")
		wg.Go(func() {
			mine := map[int64]int64{}
			defer func() {
				mu.Lock()
				for b, n := range mine {
					perBucket[b] += n
				}
				mu.Unlock()
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				attempts.Add(1)
				tk, err := c.Admit(lim, r)
				if err != nil {
					if !errors.Is(err, state.ErrNoCapacity) {
						t.Errorf("Admit: %v", err)
						return
					}
					runtime.Gosched()
					continue
				}
				if tk.ID == 0 {
					t.Errorf("ticket issued locally while Redis is up")
				}
				mine[tk.Bucket]++
				admitted.Add(1)
				if tk.ID%10 == 0 {
					c.Release(tk)
					mine[tk.Bucket]--
					admitted.Add(-1)
				} else {
					c.Settle(tk, state.Usage{PromptTokens: tokens})
				}
			}
		})
	}
	for step := range buckets {
		waitFor(t, 30*time.Second, fmt.Sprintf("bucket %d: %d attempts", step, perStep), func() bool {
			return attempts.Load() >= int64(step+1)*perStep
		})
		clock.Advance(state.BucketWidth)
	}
	close(stop)
	wg.Wait()
	var total int64
	for _, n := range perBucket {
		total += n
	}
	// Every span of 61 buckets lies within the run's 13: the whole run is the worst span.
	if total > rpm {
		t.Fatalf("%d admitted within %d buckets at rpm %d", total, buckets+1, rpm)
	}
	var blockAdmits, reserves int64
	for _, n := range nodes {
		s := n.Stats()
		blockAdmits += s.BlockAdmits + s.BlockReserves
		reserves += s.BlockReserves
		if s.Errors != 0 || s.LocalAdmits != 0 {
			t.Fatalf("stats %+v", s)
		}
	}
	t.Logf("%d attempts, %d admitted (%v per bucket), %d script calls, %d from blocks (%d reservations)",
		attempts.Load(), total, perBucket, calls.Load(), blockAdmits, reserves)
	if total < rpm*9/10 {
		t.Fatalf("only %d admitted at rpm %d: blocks wasted the window", total, rpm)
	}
	if blockAdmits < total/2 || calls.Load() > attempts.Load()/2 {
		t.Fatalf("%d of %d admissions from blocks, %d script calls for %d attempts: most should make no round trip",
			blockAdmits, total, calls.Load(), attempts.Load())
	}
	// The clock has left every block's bucket: the remainders go back, and Redis counts the real
	// admissions (every settle kept its reservation's tokens).
	rc := rawClient(t, srv)
	c := nodes[0].counter("d")
	waitFor(t, 10*time.Second, fmt.Sprintf("Redis never counted exactly the %d admissions", total), func() bool {
		req, tok := redisSums(t, rc, c)
		return req == total && tok == total*tokens
	})
	for i, n := range nodes {
		waitFor(t, 5*time.Second, fmt.Sprintf("node %d never read %d requests, none in flight", i, total), func() bool {
			l := n.Counter("d").Load()
			return l.Requests == total && l.Tokens == total*tokens && l.InFlight == 0
		})
	}
}

// Near the limit, blocks shrink to nothing and admission is synchronous and exact: two warm
// nodes hammering a shared rpm of 300 admit exactly 300, never more. Within one second a node
// may be refused while the other still holds a block's last slots; they come back when that
// second ends, so the hammering goes on for a few seconds until nothing more fits.
func TestEscrowNearLimitIsExact(t *testing.T) {
	srv := redistest.Start(t)
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC))
	var calls atomic.Int64
	nodes := escrowNodes(t, srv, clock, 2, &calls)
	for _, rpm := range []int64{300, 5000} {
		id := fmt.Sprint("d", rpm)
		lim := state.Limits{RPM: rpm}
		var admitted [2]atomic.Int64
		for second := 0; second < 5; second++ {
			before := admitted[0].Load() + admitted[1].Load()
			var wg sync.WaitGroup
			for w := range 64 {
				n := w % 2
				c := nodes[n].Counter(id)
				wg.Go(func() {
					for {
						tk, err := c.Admit(lim, state.Reservation{Requests: 1})
						if err != nil {
							if !errors.Is(err, state.ErrNoCapacity) {
								t.Errorf("Admit: %v", err)
							}
							return
						}
						admitted[n].Add(1)
						c.Settle(tk, state.Usage{})
					}
				})
			}
			wg.Wait()
			if got := admitted[0].Load() + admitted[1].Load(); got > rpm {
				t.Fatalf("admitted %d at rpm %d", got, rpm)
			} else if got == before {
				break // a whole second with nothing more admitted
			}
			clock.Advance(time.Second) // the blocks' remainders go back
		}
		a, b := admitted[0].Load(), admitted[1].Load()
		t.Logf("rpm %d: node 0 admitted %d, node 1 %d; stats %+v, %+v", rpm, a, b, nodes[0].Stats(), nodes[1].Stats())
		if a+b != rpm {
			t.Fatalf("admitted %d in total at rpm %d", a+b, rpm)
		}
		for i, n := range nodes {
			waitFor(t, 5*time.Second, fmt.Sprintf("node %d never read %d requests, none in flight", i, rpm), func() bool {
				l := n.Counter(id).Load()
				return l.Requests == rpm && l.InFlight == 0
			})
		}
	}
}
