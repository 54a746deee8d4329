package redis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/herd-proxy/herd/internal/redistest"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
	"github.com/herd-proxy/herd/state/statetest"
)

var prefixes atomic.Int64

// uniquePrefix keeps tests that share a server out of each other's keys.
func uniquePrefix() string { return fmt.Sprintf("t%d-%d:", time.Now().UnixNano(), prefixes.Add(1)) }

// newBackend returns a backend on srv with a fresh key prefix (unless opts has one), closed when
// the test ends. Logs go to t.Log. A fake clock in opts.Now stands in for the server's clock in
// windows too, so the test moves windows with it; newServerClockBackend keeps the server's.
func newBackend(t testing.TB, srv *redistest.Server, opts Options) *Backend {
	t.Helper()
	if opts.Now != nil && opts.serverNow == nil {
		opts.serverNow = opts.Now
	}
	return newServerClockBackend(t, srv, opts)
}

// newServerClockBackend is newBackend with windows on the Redis server's clock, whatever
// opts.Now is: as in production.
func newServerClockBackend(t testing.TB, srv *redistest.Server, opts Options) *Backend {
	t.Helper()
	if len(opts.Addrs) == 0 && opts.Client == nil {
		opts.Addrs = []string{srv.Addr()}
	}
	if opts.Password == "" {
		opts.Password = srv.Password()
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = uniquePrefix()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// tWriter sends log lines to t.Log.
type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// rawClient is a client for inspecting srv directly.
func rawClient(t testing.TB, srv *redistest.Server) *goredis.Client {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: srv.Password()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not a wait for the condition
	}
}

func TestConformance(t *testing.T) {
	srv := redistest.Start(t)
	statetest.Run(t, func(t *testing.T, clock *statetest.Clock) state.Backend {
		// A generous deadline: this suite checks semantics, and a call timed out under -race on a
		// busy machine would be admitted by the fallback instead (TestBreaker covers that path).
		b := newBackend(t, srv, Options{Now: clock.Now, Timeout: 5 * time.Second})
		t.Cleanup(func() {
			s := b.Stats()
			if s.Errors != 0 || s.LocalAdmits != 0 {
				t.Errorf("Redis calls failed: %+v", s)
			}
			t.Logf("admitted from escrow blocks: %d (%d reservations)", s.BlockAdmits, s.BlockReserves)
		})
		return b
	})
}

// TestProperties runs the property suite, escrow blocks included (the sequence is fast enough
// that most runs reserve hundreds): Load, read after every step, must show exactly what this
// node admitted, whatever replies race and however Redis cuts a hostile count.
func TestProperties(t *testing.T) {
	srv := redistest.Start(t)
	statetest.RunProperties(t, func(t *testing.T, clock *statetest.Clock) state.Backend {
		b := newBackend(t, srv, Options{Now: clock.Now, Timeout: 5 * time.Second})
		t.Cleanup(func() {
			s := b.Stats()
			t.Logf("admitted from escrow blocks: %d (%d reservations)", s.BlockAdmits, s.BlockReserves)
		})
		return b
	})
}

// Two nodes and 64 goroutines race for one deployment's rpm: exactly rpm are admitted in all.
func TestTwoNodesShareOneLimit(t *testing.T) {
	srv := redistest.Start(t)
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC))
	prefix := uniquePrefix()
	nodes := []*Backend{
		newBackend(t, srv, Options{Now: clock.Now, KeyPrefix: prefix, Timeout: 5 * time.Second}),
		newBackend(t, srv, Options{Now: clock.Now, KeyPrefix: prefix, Timeout: 5 * time.Second}),
	}
	const rpm = 300
	lim := state.Limits{RPM: rpm, TPM: 100 * rpm}
	r := state.Reservation{Requests: 1, Tokens: 100}
	var admitted [2]atomic.Int64
	var wg sync.WaitGroup
	for w := range 64 {
		n := w % 2
		c := nodes[n].Counter("shared")
		wg.Go(func() {
			for {
				tk, err := c.Admit(lim, r)
				if err != nil {
					if !errors.Is(err, state.ErrNoCapacity) {
						t.Errorf("Admit: %v", err)
					}
					return
				}
				admitted[n].Add(1)
				if tk.ID == 0 {
					t.Errorf("ticket issued locally while Redis is up")
				}
				c.Settle(tk, state.Usage{PromptTokens: 100})
			}
		})
	}
	wg.Wait()
	a, b := admitted[0].Load(), admitted[1].Load()
	t.Logf("node 0 admitted %d, node 1 admitted %d", a, b)
	if a+b != rpm {
		t.Fatalf("admitted %d in total at rpm %d", a+b, rpm)
	}
	if a == 0 || b == 0 {
		t.Fatalf("one node admitted nothing (%d, %d): the test did not race two nodes", a, b)
	}
	for i, n := range nodes {
		// The other node's last settles reach this node's cache at its next refresh.
		waitFor(t, 5*time.Second, fmt.Sprintf("node %d never read %d requests, %d tokens, none in flight", i, rpm, 100*rpm), func() bool {
			l := n.Counter("shared").Load()
			return l.Requests == rpm && l.Tokens == 100*rpm && l.InFlight == 0
		})
		if s := n.Stats(); s.Errors != 0 || s.LocalAdmits != 0 {
			t.Fatalf("node %d: %+v", i, s)
		}
	}
}

// max_parallel holds across nodes, and a node that dies mid-call frees its slots when its
// leases run out, while a live node's long call keeps its slot.
func TestMaxParallelAcrossNodesAndCrash(t *testing.T) {
	srv := redistest.Start(t)
	prefix := uniquePrefix()
	const lease = 300 * time.Millisecond
	alive := newBackend(t, srv, Options{KeyPrefix: prefix, LeaseTTL: lease, RefreshEvery: 20 * time.Millisecond, Timeout: 2 * time.Second})
	doomed := newBackend(t, srv, Options{KeyPrefix: prefix, LeaseTTL: lease, RefreshEvery: 20 * time.Millisecond, Timeout: 2 * time.Second})
	lim := state.Limits{MaxParallel: 3}
	one := state.Reservation{Requests: 1}

	long := mustAdmit(t, alive.Counter("d"), lim, one)
	for range 2 {
		mustAdmit(t, doomed.Counter("d"), lim, one)
	}
	if _, err := alive.Counter("d").Admit(lim, one); !errors.Is(err, state.ErrNoCapacity) {
		t.Fatalf("a 4th call at max_parallel 3: %v", err)
	}
	_ = doomed.Close() // the node dies with 2 calls in flight: nobody renews their leases
	start := time.Now()
	var freed state.Ticket
	waitFor(t, 10*lease, "the dead node's slots never came back", func() bool {
		tk, err := alive.Counter("d").Admit(lim, one)
		if err != nil {
			return false
		}
		freed = tk
		return true
	})
	if took := time.Since(start); took < lease/2 {
		t.Fatalf("slots came back after %v, before the lease (%v) could have run out", took, lease)
	}
	// The second dead call's lease may run out a moment after the first's.
	waitFor(t, 10*lease, "the dead node's second slot never came back", func() bool {
		_, err := alive.Counter("d").Admit(lim, one)
		return err == nil
	})
	// The live node renews its own long call: it keeps its slot over many lease periods.
	until := time.Now().Add(3 * lease)
	for time.Now().Before(until) {
		if _, err := alive.Counter("d").Admit(lim, one); err == nil {
			t.Fatal("a live node's call lost its slot")
		}
		time.Sleep(lease / 10) // pacing the check, not waiting for a condition
	}
	alive.Counter("d").Settle(long, state.Usage{})
	alive.Counter("d").Release(freed)
	if l := alive.Counter("d").Load(); l.InFlight != 1 {
		t.Fatalf("in flight %d, want 1", l.InFlight)
	}
}

func mustAdmit(t *testing.T, c state.Counter, lim state.Limits, r state.Reservation) state.Ticket {
	t.Helper()
	tk, err := c.Admit(lim, r)
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	return tk
}

// crc16 is Redis Cluster's key hash (CRC-16/XMODEM).
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// slot is the Redis Cluster slot of key, hash tags included.
func slot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return crc16(key) % 16384
}

// Every key a deployment uses lands in one cluster slot, and every key has a TTL.
// The Lua scripts keep the same ring as state/internal/window: a script with another length
// would read every slot of a window at the wrong bucket.
func TestLuaRingIsWindowRing(t *testing.T) {
	m := regexp.MustCompile(`(?m)^local N = (\d+)`).FindStringSubmatch(windowLua)
	if m == nil {
		t.Fatal("lua/window.lua sets no ring length (local N = ...)")
	}
	if n, _ := strconv.ParseInt(m[1], 10, 64); n != window.RingSize {
		t.Fatalf("lua/window.lua's ring has %d buckets, state/internal/window's %d", n, window.RingSize)
	}
	if windowKey != ":w"+m[1] {
		t.Fatalf("window keys end %q, which does not name the ring's length", windowKey)
	}
}

func TestKeysShareASlotAndExpire(t *testing.T) {
	if got := crc16("123456789"); got != 0x31c3 {
		t.Fatalf("crc16 check value = %#x, want 0x31c3", got)
	}
	srv := redistest.Start(t)
	prefix := uniquePrefix()
	b := newBackend(t, srv, Options{KeyPrefix: prefix, Timeout: 2 * time.Second})
	lim := state.Limits{RPM: 100, TPM: 10000, MaxParallel: 10}
	// An id Redis would not take as a hash tag ("", "}x") is escaped, without taking the keys of
	// another ("~}x").
	ids := []string{"gpt-4o/eastus", "a", "with}brace", "{odd", "}x", "~}x", ""}
	for _, id := range ids {
		c := b.Counter(id)
		t1 := mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 10})
		mustAdmit(t, c, lim, state.Reservation{Requests: 1, Tokens: 10}) // stays in flight
		c.Settle(t1, state.Usage{PromptTokens: 3})
	}
	rc := rawClient(t, srv)
	ctx := context.Background()
	keys, err := rc.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2*len(ids) {
		t.Fatalf("keys %q, want 2 per deployment", keys)
	}
	for _, id := range ids {
		c := b.counter(id)
		if s0, s1 := slot(c.keys[0]), slot(c.keys[1]); s0 != s1 {
			t.Fatalf("deployment %q: %q in slot %d, %q in slot %d", id, c.keys[0], s0, c.keys[1], s1)
		}
	}
	for _, k := range keys {
		ttl, err := rc.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 || ttl > max(windowTTL, 2*DefaultLeaseTTL) {
			t.Fatalf("key %q has TTL %v", k, ttl)
		}
	}
}

// Load answers from the cache: no Redis call, and the cache ages as the clock moves.
func TestLoadMakesNoRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	var calls atomic.Int64
	client := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: srv.Password(), ContextTimeoutEnabled: true})
	client.AddHook(countHook{&calls})
	t.Cleanup(func() { _ = client.Close() })
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC))
	b := newBackend(t, srv, Options{Client: client, Now: clock.Now, RefreshEvery: time.Hour})
	c := b.Counter("d")
	lim := state.Limits{RPM: 10}
	for range 3 {
		mustAdmit(t, c, lim, state.Reservation{Requests: 1})
		clock.Advance(10 * time.Second)
	}
	before := calls.Load()
	for range 1000 {
		c.LoadAt(clock.Now())
	}
	if l := c.Load(); l.Requests != 3 || l.InFlight != 3 {
		t.Fatalf("load %+v, want 3 requests in flight", l)
	}
	clock.Advance(32 * time.Second) // the first admission leaves the window
	if l := c.Load(); l.Requests != 2 {
		t.Fatalf("after the first bucket left: %+v, want 2 requests", l)
	}
	clock.Advance(20 * time.Second)
	if l := c.Load(); l.Requests != 0 || l.InFlight != 3 {
		t.Fatalf("after the window: %+v, want 0 requests, 3 in flight", l)
	}
	if n := calls.Load() - before; n != 0 {
		t.Fatalf("Load made %d Redis calls", n)
	}
}

type countHook struct{ n *atomic.Int64 }

func (h countHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h countHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h countHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// Another node's admissions reach this node's Load through the background refresh.
func TestRefreshSeesOtherNodes(t *testing.T) {
	srv := redistest.Start(t)
	prefix := uniquePrefix()
	a := newBackend(t, srv, Options{KeyPrefix: prefix, RefreshEvery: 20 * time.Millisecond, Timeout: 2 * time.Second})
	b := newBackend(t, srv, Options{KeyPrefix: prefix, RefreshEvery: 20 * time.Millisecond, Timeout: 2 * time.Second})
	b.Counter("d").Load() // routing reads it: it is active
	// max_parallel: in-flight calls are exact across nodes only where no escrow block is used
	// (a block's calls show as one); 7 quick admissions without it may reserve one.
	for range 7 {
		mustAdmit(t, a.Counter("d"), state.Limits{RPM: 100, MaxParallel: 100}, state.Reservation{Requests: 1, Tokens: 5})
	}
	waitFor(t, 5*time.Second, "node b never saw node a's admissions", func() bool {
		l := b.Counter("d").Load()
		return l.Requests == 7 && l.Tokens == 35 && l.InFlight == 7
	})
}

// Kill Redis mid-run: admissions keep answering fast, locally at a fair share; restart it: the
// backend goes back to Redis on its own.
func TestBreaker(t *testing.T) {
	srv := redistest.Start(t)
	var logs redistest.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := newBackend(t, srv, Options{
		Logger:          logger,
		BreakerCooldown: 100 * time.Millisecond,
		RefreshEvery:    20 * time.Millisecond,
	})
	modes := make(chan string, 16)
	b.OnModeChange(func(m string) { modes <- m })
	unlimited := state.Limits{}
	one := state.Reservation{Requests: 1, Tokens: 10}

	c := b.Counter("d")
	inRedis := mustAdmit(t, c, unlimited, one)
	if b.Mode() != ModeRedis || inRedis.ID == 0 {
		t.Fatalf("mode %s, ticket %+v: want a Redis ticket", b.Mode(), inRedis)
	}

	used := b.Counter("used")
	for range 6 {
		mustAdmit(t, used, state.Limits{RPM: 10}, state.Reservation{Requests: 1})
	}

	srv.Kill()
	var worst time.Duration
	calls := 0
	for b.Mode() != ModeDegraded {
		if calls++; calls > 100 {
			t.Fatal("100 failed calls and the breaker is still closed")
		}
		start := time.Now()
		mustAdmit(t, c, unlimited, one)
		worst = max(worst, time.Since(start))
	}
	t.Logf("breaker open after %d calls, slowest %v", calls, worst)
	if worst > 200*time.Millisecond {
		t.Fatalf("an Admit took %v while Redis was down", worst)
	}
	if m := <-modes; m != ModeDegraded {
		t.Fatalf("OnModeChange(%q), want %q", m, ModeDegraded)
	}
	// Open: no network at all.
	for range 200 {
		start := time.Now()
		mustAdmit(t, c, unlimited, one)
		if d := time.Since(start); d > 20*time.Millisecond {
			t.Fatalf("Admit took %v with the breaker open", d)
		}
	}
	// What Redis counted before it died still counts until it ages out: 6 of rpm 10 were used,
	// or 7 if the six came fast enough to reserve an escrow block whose rest never made it back
	// (timing decides; a lost block is counted, never forgotten).
	n := 0
	for ; n < 20; n++ {
		if _, err := used.Admit(state.Limits{RPM: 10}, state.Reservation{Requests: 1}); err != nil {
			var nc *state.NoCapacityError
			// The real clock moves between the two readings: they agree to within that.
			ra := used.RetryAfter(state.Limits{RPM: 10}, state.Reservation{Requests: 1})
			if !errors.As(err, &nc) || nc.RetryAfter <= 0 || (nc.RetryAfter-ra).Abs() > 100*time.Millisecond {
				t.Fatalf("refusal %v; RetryAfter() %v", err, used.RetryAfter(state.Limits{RPM: 10}, state.Reservation{Requests: 1}))
			}
			break
		}
	}
	if n != 4 && n != 3 {
		t.Fatalf("admitted %d locally after Redis counted 6 (or 7 with an escrow block) of rpm 10, want 4 (or 3)", n)
	}
	// Fair share: 2 nodes, rpm 10 -> 5 here.
	b.SetNodes(2)
	share := b.Counter("share")
	var local []state.Ticket
	for {
		tk, err := share.Admit(state.Limits{RPM: 10}, state.Reservation{Requests: 1})
		if err != nil {
			if !errors.Is(err, state.ErrNoCapacity) {
				t.Fatal(err)
			}
			break
		}
		local = append(local, tk)
	}
	if len(local) != 5 {
		t.Fatalf("admitted %d locally at rpm 10 over 2 nodes, want 5", len(local))
	}
	if l := share.Load(); l.Requests != 10 {
		t.Fatalf("degraded Load %+v: want 5 local requests scaled by 2 nodes = 10", l)
	}
	dropped := b.Stats().DroppedEnds
	c.Settle(inRedis, state.Usage{PromptTokens: 1}) // a Redis ticket while Redis is down: dropped, no wait
	if got := b.Stats().DroppedEnds; got != dropped+1 {
		t.Fatalf("DroppedEnds %d, want %d", got, dropped+1)
	}

	srv.Restart()
	waitFor(t, 10*time.Second, "the backend never went back to Redis", func() bool { return b.Mode() == ModeRedis })
	if m := <-modes; m != ModeRedis {
		t.Fatalf("OnModeChange(%q), want %q", m, ModeRedis)
	}
	for _, tk := range local { // degraded tickets end locally, after recovery too
		share.Release(tk)
	}
	localAdmits := b.Stats().LocalAdmits
	tk := mustAdmit(t, share, state.Limits{RPM: 10}, state.Reservation{Requests: 1})
	if tk.ID == 0 || b.Stats().LocalAdmits != localAdmits {
		t.Fatal("admitted locally after Redis came back")
	}
	share.Settle(tk, state.Usage{})
	if l := share.Load(); l.Requests != 1 || l.InFlight != 0 {
		t.Fatalf("load after recovery %+v, want 1 request (the local ones were counted in Redis, then released), none in flight", l)
	}
	s := b.Stats()
	t.Logf("stats %+v", s)
	if s.Errors == 0 {
		t.Fatal("no errors counted")
	}
	if strings.Contains(logs.String(), srv.Password()) {
		t.Fatal("the password is in the logs")
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("%d warnings logged, want 1 per state change:\n%s", n, logs.String())
	}
}

// New does not fail, nor wait long, when Redis is down; the backend starts degraded and joins
// Redis once it answers, which then counts what it admitted alone.
func TestStartWithRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	start := time.Now()
	b := newBackend(t, srv, Options{BreakerCooldown: 50 * time.Millisecond, RefreshEvery: 10 * time.Millisecond})
	if took := time.Since(start); took > time.Second {
		t.Fatalf("New took %v with Redis down", took)
	}
	if b.Mode() != ModeDegraded {
		t.Fatalf("mode %s with Redis down, want %s", b.Mode(), ModeDegraded)
	}
	c := b.Counter("d")
	tk := mustAdmit(t, c, state.Limits{RPM: 1}, state.Reservation{Requests: 1})
	if tk.ID&localTicket == 0 {
		t.Fatal("a Redis ticket with Redis down")
	}
	srv.Restart()
	waitFor(t, 10*time.Second, "never reached Redis", func() bool { return b.Mode() == ModeRedis })
	// What it admitted alone counts in Redis now: rpm 1 is used up.
	if _, err := c.Admit(state.Limits{RPM: 1}, state.Reservation{Requests: 1}); !errors.Is(err, state.ErrNoCapacity) {
		t.Fatalf("Admit at rpm 1 after the local admission: %v, want a refusal", err)
	}
	tk = mustAdmit(t, c, state.Limits{RPM: 2}, state.Reservation{Requests: 1})
	if tk.ID == 0 || tk.ID&localTicket != 0 {
		t.Fatal("a local ticket with Redis up")
	}
}

// A hanging Redis (frozen with SIGSTOP: connections open, no answers) costs at most one
// Timeout per call until the breaker opens, then nothing.
func TestHangingRedis(t *testing.T) {
	srv := redistest.Start(t)
	b := newBackend(t, srv, Options{Timeout: 30 * time.Millisecond, BreakerCooldown: 50 * time.Millisecond, RefreshEvery: time.Hour})
	c := b.Counter("d")
	mustAdmit(t, c, state.Limits{}, state.Reservation{Requests: 1})
	srv.Pause()
	var worst time.Duration
	for range 50 {
		start := time.Now()
		mustAdmit(t, c, state.Limits{}, state.Reservation{Requests: 1})
		worst = max(worst, time.Since(start))
	}
	t.Logf("slowest Admit against a hanging Redis: %v", worst)
	if worst > 200*time.Millisecond {
		t.Fatalf("Admit took %v against a hanging Redis", worst)
	}
	if s := b.Stats(); b.Mode() != ModeDegraded || s.Timeouts < DefaultBreakerFailures {
		t.Fatalf("mode %s, stats %+v after 50 calls to a hanging Redis", b.Mode(), s)
	}
	srv.Resume()
	waitFor(t, 10*time.Second, "never back to Redis", func() bool { return b.Mode() == ModeRedis })
	if tk := mustAdmit(t, c, state.Limits{}, state.Reservation{Requests: 1}); tk.ID == 0 {
		t.Fatal("admitted locally after Redis resumed")
	}
}

func TestOptionsFromURL(t *testing.T) {
	o, err := OptionsFromURL("rediss://herd:s3cret@cache.example:6380/2")
	if err != nil {
		t.Fatal(err)
	}
	if o.Addrs[0] != "cache.example:6380" || o.Username != "herd" || o.Password != "s3cret" || o.DB != 2 || o.TLS == nil {
		t.Fatalf("%+v", o)
	}
	o, err = OptionsFromURL("redis://:pw@localhost")
	if err != nil || o.TLS != nil || o.Addrs[0] != "localhost:6379" || o.Password != "pw" {
		t.Fatalf("%+v, %v", o, err)
	}
	for _, bad := range []string{"http://u:s3cret@host", "redis://u:s3cret@host/x/y", "redis://u:s3cret@ho st:%zz"} {
		_, err := OptionsFromURL(bad)
		if err == nil {
			t.Fatalf("%q accepted", bad)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("error shows the password: %v", err)
		}
	}
}

func TestOptionsLogWithoutPassword(t *testing.T) {
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("start", "redis", Options{Addrs: []string{"h:1"}, Password: "s3cret"})
	if strings.Contains(buf.String(), "s3cret") || !strings.Contains(buf.String(), "h:1") {
		t.Fatalf("logged %s", buf.String())
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{
		{KeyPrefix: "a{b"},
		{Timeout: -1},
		{LeaseTTL: time.Millisecond},
		{Addrs: []string{"a:1", "b:1"}, DB: 2}, // a cluster has only database 0
		{Addrs: []string{"a:1"}, ClusterMode: true, DB: 1},
		{Addrs: []string{"s:1"}, MasterName: "m", ClusterMode: true},
	} {
		o.SetDefaults()
		if err := o.Validate(); err == nil {
			t.Fatalf("%+v valid", o)
		}
	}
	for _, o := range []Options{
		{Addrs: []string{"s1:1", "s2:1"}, MasterName: "m", DB: 2}, // Sentinel: a database is fine
		{Addrs: []string{"a:1", "b:1"}},
	} {
		o.SetDefaults()
		if err := o.Validate(); err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
	}
	var o Options
	o.SetDefaults()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Timeout != DefaultTimeout || o.KeyPrefix != DefaultKeyPrefix || o.Addrs[0] != DefaultAddr {
		t.Fatalf("defaults %+v", o)
	}
}

func TestFairShare(t *testing.T) {
	b := &Backend{}
	for _, tc := range []struct {
		n         int64
		lim, want state.Limits
	}{
		{1, state.Limits{RPM: 10, TPM: 100, MaxParallel: 3}, state.Limits{RPM: 10, TPM: 100, MaxParallel: 3}},
		{2, state.Limits{RPM: 10, TPM: 101, MaxParallel: 3}, state.Limits{RPM: 5, TPM: 50, MaxParallel: 1}},
		{50, state.Limits{RPM: 10, MaxParallel: 1}, state.Limits{RPM: 1, MaxParallel: 1}},
	} {
		b.nodes.Store(tc.n)
		if got := b.fairShare(tc.lim); got != tc.want {
			t.Fatalf("share of %+v over %d nodes = %+v, want %+v", tc.lim, tc.n, got, tc.want)
		}
	}
}

// A settle costs no round trip of its own when the deployment's next Admit comes within
// endDelay: it rides along, and that Admit's decision counts it.
func TestSettleRidesWithNextAdmit(t *testing.T) {
	srv := redistest.Start(t)
	var calls atomic.Int64
	client := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: srv.Password(), ContextTimeoutEnabled: true})
	client.AddHook(countHook{&calls})
	t.Cleanup(func() { _ = client.Close() })
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC))
	b := newBackend(t, srv, Options{Client: client, Now: clock.Now, RefreshEvery: time.Hour, Timeout: 5 * time.Second})
	c := b.Counter("d")
	lim := state.Limits{TPM: 100, MaxParallel: 1}
	r := state.Reservation{Requests: 1, Tokens: 100}
	tk := mustAdmit(t, c, lim, r) // loads the script: counted before the measure starts
	before := calls.Load()
	for range 100 {
		// Only the settle frees the tokens and the in-flight slot the next admission needs.
		c.Settle(tk, state.Usage{PromptTokens: 0})
		tk = mustAdmit(t, c, state.Limits{TPM: 100, MaxParallel: 1}, r)
	}
	// The flush timer may have sent a settle on its own when this goroutine was descheduled.
	if n := calls.Load() - before; n > 100+10 {
		t.Fatalf("100 admissions and settles took %d round trips, want about 100", n)
	}
	if l := c.Load(); l.Requests != 101 || l.Tokens != 100 || l.InFlight != 1 {
		t.Fatalf("load %+v, want 101 requests, 100 tokens, 1 in flight", l)
	}
}

// A settle no Admit carries reaches Redis on its own, within endDelay.
func TestLoneSettleReachesRedis(t *testing.T) {
	srv := redistest.Start(t)
	prefix := uniquePrefix()
	b := newBackend(t, srv, Options{KeyPrefix: prefix, RefreshEvery: time.Hour, Timeout: 5 * time.Second})
	other := newBackend(t, srv, Options{KeyPrefix: prefix, RefreshEvery: time.Hour, Timeout: 5 * time.Second})
	c := b.Counter("d")
	tk := mustAdmit(t, c, state.Limits{}, state.Reservation{Requests: 1, Tokens: 100})
	c.Settle(tk, state.Usage{PromptTokens: 30})
	if l := c.Load(); l.Tokens != 30 || l.InFlight != 0 {
		t.Fatalf("load right after the settle %+v, want 30 tokens, none in flight", l)
	}
	rc := rawClient(t, srv)
	waitFor(t, 5*time.Second, "the settle never reached Redis", func() bool {
		n, err := rc.ZCard(context.Background(), b.counter("d").keys[1]).Result()
		return err == nil && n == 0
	})
	// Another node reads the settled window: one round trip (RetryAfter reads it afresh).
	oc := other.Counter("d")
	oc.RetryAfter(state.Limits{}, state.Reservation{})
	if l := oc.Load(); l.Requests != 1 || l.Tokens != 30 || l.InFlight != 0 {
		t.Fatalf("the other node's load %+v, want 1 request, 30 tokens, none in flight", l)
	}
	if s := b.Stats(); s.DroppedEnds != 0 || s.Errors != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// holdEndHook holds the reply of the next end.lua call (a settle sent on its own) after Redis
// has run it, until release is closed: another round trip of the node can then run after it and
// reply first.
type holdEndHook struct {
	armed   *atomic.Bool
	ran     chan struct{}
	release chan struct{}
}

func (h holdEndHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h holdEndHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		err := next(ctx, cmd)
		if args := cmd.Args(); len(args) > 1 && args[1] == endScript.sha && h.armed.CompareAndSwap(true, false) {
			close(h.ran)
			<-h.release
		}
		return err
	}
}
func (h holdEndHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

// A settle's round trip replies after an admission's that ran after it: the admission's reply
// counts the settle already, and Load still counts it once, with the right calls in flight, both
// before the settle's reply is read and after.
func TestReplyAfterAnEndOnItsWay(t *testing.T) {
	srv := redistest.Start(t)
	hook := holdEndHook{armed: new(atomic.Bool), ran: make(chan struct{}), release: make(chan struct{})}
	client := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: srv.Password(), ContextTimeoutEnabled: true})
	client.AddHook(hook)
	t.Cleanup(func() { _ = client.Close() })
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC))
	b := newBackend(t, srv, Options{Client: client, Now: clock.Now, RefreshEvery: time.Hour, Timeout: 5 * time.Second, noBlocks: true})
	c := b.counter("d")
	r := state.Reservation{Requests: 1, Tokens: 100}
	first := mustAdmit(t, c, state.Limits{}, r)
	mustAdmit(t, c, state.Limits{}, r)

	hook.armed.Store(true)
	c.Settle(first, state.Usage{PromptTokens: 250}) // above its reservation: +150
	select {
	case <-hook.ran: // the settle went on its own (endDelay) and Redis has counted it
	case <-time.After(10 * time.Second):
		t.Fatal("the settle was never sent")
	}
	mustAdmit(t, c, state.Limits{}, r) // runs after the settle, replies before it
	want := func(when string) {
		t.Helper()
		if l := c.Load(); l.Requests != 3 || l.Tokens != 450 || l.InFlight != 2 {
			t.Fatalf("%s: load %+v, want 3 requests, 450 tokens, 2 in flight", when, l)
		}
	}
	want("before the settle's reply")
	close(hook.release)
	waitFor(t, 5*time.Second, "the settle's reply was never read", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.ends) == 0
	})
	want("after the settle's reply")
	// And the cache agrees with Redis.
	if req, tok := redisSums(t, rawClient(t, srv), c); req != 3 || tok != 450 {
		t.Fatalf("Redis counts %d requests, %d tokens; want 3, 450", req, tok)
	}
}

// A settle too large for its bucket (maxCount, about 1.4e14 tokens: only a bug or a hostile
// upstream reports that much) is cut at maxCount in Redis, and the cache cuts it the same way:
// counted in full there, the part Redis dropped would come back, through the next replies'
// differences, as tokens nobody used once the bucket left the window.
func TestHugeSettleCachedAsRedisCountsIt(t *testing.T) {
	srv := redistest.Start(t)
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC))
	b := newBackend(t, srv, Options{Now: clock.Now, RefreshEvery: time.Hour, Timeout: 5 * time.Second, noBlocks: true})
	c := b.counter("d")
	r := state.Reservation{Requests: 1, Tokens: 100}
	huge := mustAdmit(t, c, state.Limits{}, r)
	mustAdmit(t, c, state.Limits{}, r)
	c.Settle(huge, state.Usage{PromptTokens: 1 << 62}) // the bucket would hold maxCount + 100
	clock.Advance(3 * time.Second)
	mustAdmit(t, c, state.Limits{}, r)
	clock.Advance(state.Window)
	last := mustAdmit(t, c, state.Limits{}, r) // the first bucket has left; the third is left
	c.Settle(last, state.Usage{PromptTokens: 100})
	waitFor(t, 5*time.Second, "the settle never reached Redis", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.ends) == 0
	})
	if req, tok := redisSums(t, rawClient(t, srv), c); req != 2 || tok != 200 {
		t.Fatalf("Redis counts %d requests, %d tokens; want 2, 200", req, tok)
	}
	clock.Advance(3 * time.Second) // and now the third leaves too
	if l := c.Load(); l.Requests != 1 || l.Tokens != 100 {
		t.Fatalf("load %+v, want 1 request and 100 tokens: the one admission still in the window", l)
	}
}
