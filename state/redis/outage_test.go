package redis

import (
	"context"
	"errors"
	"slices"
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

// failFastClient is a client on srv that dials once and sends each command once: against a
// killed server a call fails at once instead of retrying until its deadline, so a test opens
// the breaker in milliseconds.
func failFastClient(t *testing.T, srv *redistest.Server) *goredis.Client {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: srv.Password(), ContextTimeoutEnabled: true,
		DialerRetries: 1, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// tripBreaker calls Redis, which must be unreachable, until b's breaker opens.
func tripBreaker(t *testing.T, b *Backend) {
	t.Helper()
	c := b.Counter("trip")
	for n := 0; b.Mode() != ModeDegraded; n++ {
		if n > 100 {
			t.Fatal("100 failed calls and the breaker is still closed")
		}
		_, _ = c.Admit(state.Limits{}, state.Reservation{Requests: 1})
	}
}

// redisWindow reads the deployment's window straight from Redis.
func redisWindow(t *testing.T, rc *goredis.Client, c *counter) snapshot {
	t.Helper()
	blob, err := rc.Get(context.Background(), c.keys[0]).Result()
	if err != nil && !errors.Is(err, goredis.Nil) {
		t.Fatal(err)
	}
	var w snapshot
	if err := w.decode(blob); err != nil {
		t.Fatal(err)
	}
	return w
}

// Redis hangs (SIGSTOP: it keeps its data) while two nodes admit on their own, each at half of
// rpm 20 over what Redis had counted; once it answers, the window in Redis holds everything the
// nodes admitted, in seconds no earlier than the server's clock read when they admitted it, so
// both nodes refuse until it ages out, and the ends of calls admitted alone still reach Redis.
func TestOutageCountsInRedisOnceBack(t *testing.T) {
	srv := redistest.Start(t)
	opts := Options{KeyPrefix: uniquePrefix(), BreakerCooldown: 20 * time.Millisecond, RefreshEvery: 20 * time.Millisecond, noBlocks: true}
	nodes := []*Backend{newServerClockBackend(t, srv, opts), newServerClockBackend(t, srv, opts)}
	for _, n := range nodes {
		n.SetNodes(2)
	}
	lim := state.Limits{RPM: 20, TPM: 20 * 100}
	r := state.Reservation{Requests: 1, Tokens: 100}
	ca, cb := nodes[0].counter("d"), nodes[1].counter("d")
	for range 4 {
		ca.Settle(mustAdmit(t, ca, lim, r), state.Usage{PromptTokens: 100})
	}
	rc := rawClient(t, srv)
	ctx := context.Background()
	t0, err := rc.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	read0 := time.Now() // the server's clock read at least t0 then

	srv.Pause()
	for _, n := range nodes {
		tripBreaker(t, n)
	}
	type admitted struct {
		c   *counter
		tk  state.Ticket
		low int64 // a bucket the server's clock had reached when it was admitted
	}
	var local []admitted
	for _, c := range []*counter{ca, cb} {
		for {
			low := window.BucketOf(t0.UnixNano() + int64(time.Since(read0)))
			tk, err := c.Admit(lim, r)
			if errors.Is(err, state.ErrNoCapacity) {
				break
			}
			if err != nil || tk.ID&localTicket == 0 {
				t.Fatalf("Admit with Redis hanging: %+v, %v; want a local ticket", tk, err)
			}
			local = append(local, admitted{c, tk, low})
		}
	}
	if len(local) != 20 {
		t.Fatalf("admitted %d locally, want 20: each node 10 (its share), whatever Redis had counted", len(local))
	}

	srv.Resume()
	waitFor(t, 10*time.Second, "the nodes never went back to Redis", func() bool {
		return nodes[0].Mode() == ModeRedis && nodes[1].Mode() == ModeRedis
	})
	t1, err := rc.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	w := redisWindow(t, rc, ca)
	if req, tok := w.ring.Sums(); req != 24 || tok != 2400 {
		t.Fatalf("Redis counts %d requests, %d tokens; want 24, 2400: the 4 it had and the 20 admitted without it", req, tok)
	}
	// No count is in a second before the one the server's clock was in when it was admitted
	// (for every bucket, at least as many counts from it on as admissions that late), and none
	// after the server's now.
	for x := window.BucketOf(t0.UnixNano()) + 1; x <= w.ring.Head(); x++ {
		var inRedis, due int64
		for y := x; y <= w.ring.Head(); y++ {
			req, _ := w.ring.At(y)
			inRedis += req
		}
		for _, a := range local {
			if a.low >= x {
				due++
			}
		}
		if inRedis < due {
			t.Fatalf("Redis counts %d requests in seconds from %d on, but %d were admitted then or later", inRedis, x, due)
		}
	}
	if head := w.ring.Head(); head > window.BucketOf(t1.UnixNano()) {
		t.Fatalf("the window's head %d is after the server's now %d", head, window.BucketOf(t1.UnixNano()))
	}

	for _, c := range []*counter{ca, cb} {
		if _, err := c.Admit(lim, r); !errors.Is(err, state.ErrNoCapacity) {
			t.Fatalf("Admit over a window of 24 at rpm 20: %v, want a refusal", err)
		}
		waitFor(t, 5*time.Second, "Load never showed the window Redis holds", func() bool {
			l := c.Load()
			return l.Requests == 24 && l.Tokens == 2400
		})
	}
	// A local call ends after the outage: its release, and another's settle above its
	// reservation, correct the seconds Redis counted them in.
	ca.Release(local[0].tk)
	cb.Settle(local[len(local)-1].tk, state.Usage{PromptTokens: 150})
	waitFor(t, 5*time.Second, "the ends of local calls never reached Redis", func() bool {
		w := redisWindow(t, rc, ca)
		req, tok := w.ring.Sums()
		return req == 23 && tok == 2400-100+50
	})
}

// A Redis that restarts empty gets back what the node admitted while it was down, in the seconds
// the node admitted it in: it leaves Redis's window exactly when it would have left the node's.
func TestOutageLeavesTheWindowWhenItWould(t *testing.T) {
	srv := redistest.Start(t)
	start := time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC)
	clock := statetest.NewClock(start)
	b := newBackend(t, srv, Options{Client: failFastClient(t, srv), Now: clock.Now, BreakerCooldown: 20 * time.Millisecond,
		RefreshEvery: 20 * time.Millisecond, Timeout: 2 * time.Second, noBlocks: true})
	c := b.counter("d")
	lim := state.Limits{RPM: 5}
	r := state.Reservation{Requests: 1, Tokens: 10}
	srv.Kill()
	tripBreaker(t, b)
	for range 3 {
		mustAdmit(t, c, lim, r)
	}
	clock.Advance(10 * time.Second)
	for range 2 {
		mustAdmit(t, c, lim, r)
	}
	if _, err := c.Admit(lim, r); !errors.Is(err, state.ErrNoCapacity) {
		t.Fatalf("a sixth local admission at rpm 5: %v", err)
	}

	srv.Restart()
	waitFor(t, 10*time.Second, "never back to Redis", func() bool { return b.Mode() == ModeRedis })
	first := window.BucketOf(start.UnixNano())
	w := redisWindow(t, rawClient(t, srv), c)
	if a, _ := w.ring.At(first); a != 3 {
		t.Fatalf("Redis counts %d in the first second, want 3", a)
	}
	if a, _ := w.ring.At(first + 10); a != 2 {
		t.Fatalf("Redis counts %d ten seconds later, want 2", a)
	}
	_, err := c.Admit(lim, r)
	var nc *state.NoCapacityError
	if !errors.As(err, &nc) {
		t.Fatalf("Admit over the five admitted without Redis: %v, want a refusal", err)
	}
	leaves := time.Unix(first+window.RingSize, 0) // when the first second leaves the window
	if want := leaves.Sub(clock.Now()); nc.RetryAfter != want {
		t.Fatalf("RetryAfter %v, want %v: until the first second leaves, as it would have locally", nc.RetryAfter, want)
	}
	clock.Advance(leaves.Sub(clock.Now()) - time.Nanosecond)
	if _, err := c.Admit(lim, r); !errors.Is(err, state.ErrNoCapacity) {
		t.Fatalf("Admit a nanosecond before the first second leaves: %v, want a refusal", err)
	}
	clock.Advance(time.Nanosecond)
	for range 3 {
		if tk := mustAdmit(t, c, lim, r); tk.ID&localTicket != 0 {
			t.Fatal("a local ticket with Redis up")
		}
	}
	if _, err := c.Admit(lim, r); !errors.Is(err, state.ErrNoCapacity) {
		t.Fatalf("a fourth admission while the later two still count: %v", err)
	}
}

// push.lua counts a push once whatever the client retries, puts a second later than the
// server's now in the head, drops one that has left the window, and counts nothing below zero.
func TestPushScript(t *testing.T) {
	srv := redistest.Start(t)
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC))
	b := newBackend(t, srv, Options{Now: clock.Now, RefreshEvery: time.Hour, Timeout: 5 * time.Second, noBlocks: true})
	c := b.counter("d")
	mustAdmit(t, c, state.Limits{}, state.Reservation{Requests: 1, Tokens: 1})
	now := window.BucketOf(clock.Now().UnixNano())
	p := &push{c: c, floor: now, ops: []pushOp{
		{bucket: now - 5, requests: 2, tokens: 20},
		{bucket: now + 100, requests: 1, tokens: 5},      // after the server's now: counted now
		{bucket: now - 200, requests: 7, tokens: 7},      // left the window long ago
		{bucket: now - 3, requests: -4, tokens: -9},      // nothing below zero
		{bucket: now - 2, requests: maxCount, tokens: 0}, // as much as a bucket holds
	}}
	rc := rawClient(t, srv)
	ctx := context.Background()
	if err := rc.ScriptLoad(ctx, pushScript.src.(string)).Err(); err != nil {
		t.Fatal(err)
	}
	run := func() reply {
		t.Helper()
		cmd := p.command(ctx)
		if err := rc.Process(ctx, cmd); err != nil {
			t.Fatal(err)
		}
		rep, err := parseCmd(cmd)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	check := func() {
		t.Helper()
		w := redisWindow(t, rc, c)
		for _, want := range []struct{ bucket, requests, tokens int64 }{
			{now - 5, 2, 20}, {now, 2, 6}, {now - 3, 0, 0}, {now - 2, maxCount, 0},
		} {
			if req, tok := w.ring.At(want.bucket); req != want.requests || tok != want.tokens {
				t.Fatalf("bucket now%+d holds %d, %d; want %d, %d", want.bucket-now, req, tok, want.requests, want.tokens)
			}
		}
		if req, tok := w.ring.Sums(); req != 4+maxCount || tok != 26 {
			t.Fatalf("sums %d, %d; want %d, 26", req, tok, 4+maxCount)
		}
	}
	if rep := run(); rep.status != 1 || rep.kind != whole {
		t.Fatalf("first push: status %d, kind %d; want 1 with the whole window", rep.status, rep.kind)
	}
	check()
	if rep := run(); rep.status != 0 {
		t.Fatalf("the same push again: status %d, want 0 (applied before)", rep.status)
	}
	check()
}

// Many goroutines admit through an outage and the breaker's closing: every admission made
// without Redis is in Redis once it is back, none twice, whichever side of the closing it fell.
func TestEveryLocalAdmissionReachesRedis(t *testing.T) {
	srv := redistest.Start(t)
	b := newServerClockBackend(t, srv, Options{Client: failFastClient(t, srv), BreakerCooldown: 5 * time.Millisecond,
		RefreshEvery: 10 * time.Millisecond, Timeout: 2 * time.Second})
	c := b.counter("d")
	// max_parallel keeps escrow blocks out: their unused rest would count in Redis too.
	lim := state.Limits{MaxParallel: 1 << 20}
	r := state.Reservation{Requests: 1, Tokens: 3}
	srv.Kill()
	tripBreaker(t, b)

	var local, viaRedis atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				tk, err := c.Admit(lim, r)
				if err != nil {
					t.Errorf("Admit: %v", err)
					return
				}
				if tk.ID&localTicket != 0 {
					local.Add(1)
				} else {
					viaRedis.Add(1)
				}
				c.Settle(tk, state.Usage{PromptTokens: 3})
			}
		}()
	}
	waitFor(t, 10*time.Second, "no local admissions", func() bool { return local.Load() > 100 })
	srv.Restart()
	waitFor(t, 20*time.Second, "never back to Redis", func() bool { return viaRedis.Load() > 100 })
	close(stop)
	wg.Wait()
	if b.Mode() != ModeRedis {
		t.Fatal("degraded again")
	}
	total := local.Load() + viaRedis.Load()
	rc := rawClient(t, srv)
	waitFor(t, 5*time.Second, "Redis never counted every admission", func() bool {
		w := redisWindow(t, rc, c)
		req, tok := w.ring.Sums()
		return req == total && tok == 3*total
	})
	w := redisWindow(t, rc, c)
	req, _ := w.ring.Sums()
	t.Logf("%d admitted locally, %d through Redis; Redis counts %d", local.Load(), viaRedis.Load(), req)
}

// pushHook fails the next push round trip (fail), or holds its replies after Redis has run it
// until release is closed (hold).
type pushHook struct {
	fail, hold *atomic.Bool
	ran        chan struct{}
	release    chan struct{}
}

func (h pushHook) DialHook(next goredis.DialHook) goredis.DialHook          { return next }
func (h pushHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook { return next }
func (h pushHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		pushes := slices.ContainsFunc(cmds, func(c goredis.Cmder) bool {
			args := c.Args()
			return len(args) > 1 && args[1] == pushScript.sha
		})
		if pushes && h.fail.CompareAndSwap(true, false) {
			err := errors.New("injected failure")
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		}
		err := next(ctx, cmds)
		if pushes && h.hold.CompareAndSwap(true, false) {
			close(h.ran)
			<-h.release
		}
		return err
	}
}

// A push that fails leaves the counts to the next; local calls that end while a push is on its
// way correct what it pushed once it is in.
func TestPushFailsOrRacesAnEnd(t *testing.T) {
	srv := redistest.Start(t)
	hook := pushHook{fail: new(atomic.Bool), hold: new(atomic.Bool), ran: make(chan struct{}), release: make(chan struct{})}
	client := failFastClient(t, srv)
	client.AddHook(hook)
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC))
	b := newBackend(t, srv, Options{Client: client, Now: clock.Now, BreakerCooldown: 20 * time.Millisecond,
		RefreshEvery: time.Hour, Timeout: 2 * time.Second, noBlocks: true})
	c := b.counter("d")
	lim := state.Limits{RPM: 10}
	r := state.Reservation{Requests: 1, Tokens: 10}
	srv.Kill()
	tripBreaker(t, b)
	var local []state.Ticket
	for range 3 {
		local = append(local, mustAdmit(t, c, lim, r))
	}
	hook.fail.Store(true)
	hook.hold.Store(true)
	srv.Restart()
	select {
	case <-hook.ran: // the second push ran in Redis; its reply waits
	case <-time.After(20 * time.Second):
		t.Fatal("no push after the restart")
	}
	if hook.fail.Load() || b.Mode() != ModeDegraded {
		t.Fatalf("the first push did not fail (mode %s)", b.Mode())
	}
	c.Release(local[0])
	c.Settle(local[1], state.Usage{PromptTokens: 60}) // 50 more than reserved
	close(hook.release)
	waitFor(t, 10*time.Second, "never back to Redis", func() bool { return b.Mode() == ModeRedis })
	rc := rawClient(t, srv)
	waitFor(t, 5*time.Second, "the ends never reached Redis", func() bool {
		w := redisWindow(t, rc, c)
		req, tok := w.ring.Sums()
		return req == 2 && tok == 3*10-10+50
	})
	if l := c.Load(); l.Requests != 2 || l.Tokens != 70 {
		t.Fatalf("load %+v, want 2 requests, 70 tokens", l)
	}
}
