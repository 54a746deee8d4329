package statetest

import (
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
)

const workers = 64

// newRand returns a generator seeded from STATETEST_SEED when set, else from the wall clock;
// the seed is logged so a failure can be replayed.
func newRand(t *testing.T) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("STATETEST_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("STATETEST_SEED: %v", err)
		}
	}
	t.Logf("STATETEST_SEED=%d", seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// span is an admission whose time is known to lie in [from, to], counting n.
type span struct {
	from, to time.Time
	n        int64
}

// busiestWindow returns the most any 60-second interval [a, a+Window) surely holds: the sum of
// n over spans lying wholly inside it. Only such spans count, so a result above a limit is a
// real violation, never an artefact of when the test read the clock. The maximum is reached
// with a at some span's from (raising a up to the earliest from inside keeps every span and
// only widens the interval's end), so trying those is exhaustive.
func busiestWindow(spans []span) (int64, time.Time) {
	var worst int64
	var at time.Time
	for _, s := range spans {
		a, end := s.from, s.from.Add(state.Window)
		var sum int64
		for _, o := range spans {
			if !o.from.Before(a) && o.to.Before(end) {
				sum += o.n
			}
		}
		if sum > worst {
			worst, at = sum, a
		}
	}
	return worst, at
}

// call is one request a hammer worker makes: what it reserves, what it then uses, and whether
// it gives the reservation back instead (a call that never reached the upstream).
type call struct {
	r       state.Reservation
	u       state.Usage
	release bool
}

// admission is a granted call, bracketed by clock readings taken just before and just after
// the Admit that granted it.
type admission struct {
	call
	before, after time.Time
}

// epoch is one clock reading of a hammer run.
type epoch struct {
	next   chan struct{} // closed once the clock has moved on
	ready  chan struct{} // closed once half the workers were refused at this time
	parked atomic.Int32
}

func newEpoch() *epoch { return &epoch{next: make(chan struct{}), ready: make(chan struct{})} }

// hammer has 64 workers admit calls from gen to c under lim, settling or releasing each at
// once, while this goroutine moves the clock forward in random steps of up to maxStep until
// d has passed. It moves the clock once half the workers have been refused at the current time,
// so the window is kept full and the run does not depend on scheduling, and the other half are
// still calling Admit while it moves. Refused workers wait for the next step: at a frozen time
// nothing but other calls' settles can make room.
func hammer(t *testing.T, e *env, c state.Counter, lim state.Limits, d, maxStep time.Duration, maxAdmitted int, gen func(*rand.Rand) call) []admission {
	t.Helper()
	rng := newRand(t)
	var (
		cur      atomic.Pointer[epoch]
		stop     = make(chan struct{})
		stopOnce sync.Once
		total    atomic.Int64
		wg       sync.WaitGroup
		got      = make([][]admission, workers)
	)
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	cur.Store(newEpoch())
	for w := range workers {
		wrng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ep := cur.Load()
				cl := gen(wrng)
				before := e.clock.Now()
				tk, err := c.Admit(lim, cl.r)
				after := e.clock.Now()
				if err == nil {
					if cl.release {
						c.Release(tk)
					} else {
						c.Settle(tk, cl.u)
					}
					got[w] = append(got[w], admission{call: cl, before: before, after: after})
					if total.Add(1) > int64(maxAdmitted) {
						t.Errorf("more than %d admissions: the limits are not enforced", maxAdmitted)
						halt()
						return
					}
					continue
				}
				if !errors.Is(err, state.ErrNoCapacity) {
					t.Errorf("Admit: %v", err)
					halt()
					return
				}
				if ep.parked.Add(1) == workers/2 {
					close(ep.ready)
				}
				select {
				case <-ep.next:
				case <-stop:
					return
				}
			}
		}()
	}
run:
	for elapsed := time.Duration(0); elapsed < d; {
		ep := cur.Load()
		select {
		case <-ep.ready:
		case <-stop:
			break run
		}
		step := 1 + time.Duration(rng.Int64N(int64(maxStep)))
		e.clock.Advance(step)
		elapsed += step
		cur.Store(newEpoch())
		close(ep.next)
	}
	halt()
	wg.Wait()

	var all []admission
	exact := 0
	for _, g := range got {
		for _, a := range g {
			if a.before.Equal(a.after) {
				exact++
			}
		}
		all = append(all, g...)
	}
	t.Logf("%d admissions in %v, %d with an exact time", len(all), d, exact)
	if l := c.Load(); l.InFlight != 0 {
		t.Errorf("%d in flight after every call ended", l.InFlight)
	}
	return all
}

// testConcurrentRPM checks the rpm guarantee in every 60-second interval under contention
// while time moves, and that contention does not waste the window.
func testConcurrentRPM(t *testing.T, e *env) {
	const (
		rpm = 100
		d   = 5 * time.Minute
	)
	lim := state.Limits{RPM: rpm}
	all := hammer(t, e, e.b.Counter("d"), lim, d, 500*time.Millisecond, 100*rpm, func(rng *rand.Rand) call {
		return call{r: one, u: state.Usage{PromptTokens: 10}, release: rng.IntN(10) == 0}
	})
	spans := make([]span, 0, len(all))
	var kept int64
	for _, a := range all {
		if !a.release { // a released call counted only until its release
			spans = append(spans, span{from: a.before, to: a.after, n: 1})
			kept++
		}
	}
	if worst, at := busiestWindow(spans); worst > rpm {
		t.Errorf("%d requests admitted in the 60 s from %v; rpm is %d", worst, at, rpm)
	}
	if want := 0.75 * rpm * d.Minutes(); float64(kept) < want {
		t.Errorf("%d requests kept in %v at rpm %d, want at least %.0f", kept, d, rpm, want)
	}
}

// testConcurrentTPM is testConcurrentRPM for tokens, with calls settling above and below
// their reservations. While in the window a call counts at least the smaller of its reservation
// and its usage, so no interval may hold more than tpm of those.
func testConcurrentTPM(t *testing.T, e *env) {
	const (
		tpm = 20000
		d   = 5 * time.Minute
	)
	lim := state.Limits{TPM: tpm}
	all := hammer(t, e, e.b.Counter("d"), lim, d, 500*time.Millisecond, 100*tpm/50, func(rng *rand.Rand) call {
		return call{
			r:       state.Reservation{Requests: 1, Tokens: 50 + rng.Int64N(101)},
			u:       state.Usage{PromptTokens: rng.Int64N(100), CompletionTokens: rng.Int64N(201)},
			release: rng.IntN(10) == 0,
		}
	})
	spans := make([]span, 0, len(all))
	var used int64
	for _, a := range all {
		if !a.release {
			spans = append(spans, span{from: a.before, to: a.after, n: min(a.r.Tokens, a.u.Total())})
			used += a.u.Total()
		}
	}
	if worst, at := busiestWindow(spans); worst > tpm {
		t.Errorf("%d tokens admitted in the 60 s from %v; tpm is %d", worst, at, tpm)
	}
	if want := 0.6 * tpm * d.Minutes(); float64(used) < want {
		t.Errorf("%d tokens used in %v at tpm %d, want at least %.0f", used, d, tpm, want)
	}
}

// testConcurrentLastSlot fills a window at one instant from 64 goroutines: exactly the limit
// is admitted, never one more, and no update is lost.
func testConcurrentLastSlot(t *testing.T, e *env) {
	t.Run("rpm", func(t *testing.T) {
		c := e.b.Counter("rpm")
		lim := state.Limits{RPM: 500}
		var admitted atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				// The clock is frozen: a refusal stays a refusal. The bound only stops a
				// backend that never refuses.
				for admitted.Load() <= 2*lim.RPM {
					if _, err := c.Admit(lim, one); err != nil {
						return
					}
					admitted.Add(1)
				}
			})
		}
		wg.Wait()
		if n := admitted.Load(); n != lim.RPM {
			t.Fatalf("admitted %d at rpm %d", n, lim.RPM)
		}
		wantLoad(t, c, lim.RPM, 0, lim.RPM)
	})
	t.Run("rpm and tpm with settles", func(t *testing.T) {
		c := e.b.Counter("tpm")
		lim := state.Limits{RPM: 1000, TPM: 50000}
		rng := newRand(t)
		tickets := make([][]state.Ticket, workers)
		var wg sync.WaitGroup
		for w := range workers {
			wrng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
			wg.Go(func() {
				for refused, i := 0, 0; refused < 20 && i < 1000; i++ {
					tk, err := c.Admit(lim, state.Reservation{Requests: 1, Tokens: 1 + wrng.Int64N(100)})
					if err != nil {
						refused++
						continue
					}
					tickets[w] = append(tickets[w], tk)
				}
			})
		}
		wg.Wait()
		var requests, tokens int64
		for _, ts := range tickets {
			for _, tk := range ts {
				requests += tk.Reserved.Requests
				tokens += tk.Reserved.Tokens
			}
		}
		if requests > lim.RPM || tokens > lim.TPM {
			t.Fatalf("admitted %d requests, %d tokens under %+v", requests, tokens, lim)
		}
		wantLoad(t, c, requests, tokens, requests)

		var used atomic.Int64
		for w := range workers {
			wrng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
			wg.Go(func() {
				for _, tk := range tickets[w] {
					u := state.Usage{PromptTokens: wrng.Int64N(100), CompletionTokens: wrng.Int64N(100)}
					c.Settle(tk, u)
					used.Add(u.Total())
				}
			})
		}
		wg.Wait()
		wantLoad(t, c, requests, used.Load(), 0)
	})
}

// testConcurrentMaxParallel checks that no more than MaxParallel calls are ever in flight.
func testConcurrentMaxParallel(t *testing.T, e *env) {
	c := e.b.Counter("d")
	lim := state.Limits{MaxParallel: 3}
	var inFlight, peak, admitted atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range 300 {
				tk, err := c.Admit(lim, one)
				if err != nil {
					continue
				}
				admitted.Add(1)
				// Counted after Admit and uncounted before the end: never more than the
				// backend's own in-flight count.
				n := inFlight.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				inFlight.Add(-1)
				if (w+i)%2 == 0 {
					c.Settle(tk, state.Usage{PromptTokens: 1})
				} else {
					c.Release(tk)
				}
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > lim.MaxParallel {
		t.Fatalf("%d calls in flight at once, MaxParallel is %d", p, lim.MaxParallel)
	}
	if admitted.Load() == 0 {
		t.Fatal("nothing admitted")
	}
	if l := c.Load(); l.InFlight != 0 {
		t.Fatalf("%d in flight after every call ended", l.InFlight)
	}
}
