package statetest

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
)

// RunProperties runs random sequences of admissions, settles, releases and clock moves (forward,
// a window ahead, a few seconds back) on counters of a fresh backend, checking after every step
// that the counts are never negative, never more than what was admitted and not given back,
// and, with honest values, never less than what the window must still hold nor over rpm (or
// tpm, while no settle exceeded its reservation). The hostile run uses values no request
// should produce but an upstream or a bug might: reservations and usages of +-2^63,
// negatives, sums that wrap int64 (issue 12 found max_tokens 1e309 wrapping a window to
// -9.2e18). newBackend is as for Run. state/local and state/crdt run it; state/redis does not
// yet: under load its cached Load can briefly miscount calls in flight (a reply overtaking an
// escrow block's), which the honest run catches about once in a few runs.
func RunProperties(t *testing.T, newBackend func(t *testing.T, clock *Clock) state.Backend) {
	for _, hostile := range []bool{false, true} {
		name := "NeverNegativeHonest"
		if hostile {
			name = "NeverNegativeHostile"
		}
		t.Run(name, func(t *testing.T) {
			clock := NewClock(start)
			runSequence(t, &env{clock: clock, b: newBackend(t, clock)}, hostile)
		})
	}
}

// ticketModel is what the test knows of one admission.
type ticketModel struct {
	tk      state.Ticket
	at      time.Time // the latest clock reading when admitted (the window never moves back)
	tokens  int64     // what it counts now: its reservation, or its usage once settled
	settled bool
}

func runSequence(t *testing.T, e *env, hostile bool) {
	rng := newRand(t)
	limits := []state.Limits{{RPM: 20, TPM: 5000, MaxParallel: 6}, {RPM: 50}, {TPM: 3000}}
	if hostile {
		limits = append(limits, state.Limits{}, state.Limits{RPM: 1, TPM: 1, MaxParallel: 1})
	}
	for i, lim := range limits {
		runLimits(t, e, rng, e.b.Counter("prop-"+strconv.Itoa(i)), lim, hostile)
	}
}

func runLimits(t *testing.T, e *env, rng *rand.Rand, c state.Counter, lim state.Limits, hostile bool) {
	var (
		open, closed []*ticketModel // in flight; settled (still counting)
		latest       = e.clock.Now()
		overTPM      bool // a settle above its reservation may push tokens past tpm
	)
	tokens := func() int64 { return rng.Int64N(600) }
	if hostile {
		wild := []int64{math.MaxInt64, math.MinInt64, math.MaxInt64 / 2, -1, -(1 << 40), 1 << 62, 0}
		tokens = func() int64 {
			if rng.IntN(3) == 0 {
				return wild[rng.IntN(len(wild))]
			}
			return rng.Int64N(600)
		}
	}
	const steps = 1500
	for step := range steps {
		op := rng.IntN(20)
		switch {
		case op < 8:
			r := state.Reservation{Requests: 1, Tokens: tokens()}
			if hostile && rng.IntN(8) == 0 {
				r.Requests = tokens()
			}
			tk, err := c.Admit(lim, r)
			if err != nil {
				break
			}
			want := state.Reservation{Requests: max(r.Requests, 0), Tokens: max(r.Tokens, 0)}
			if tk.Reserved.Requests > want.Requests || tk.Reserved.Tokens > want.Tokens || tk.Reserved.Requests < 0 || tk.Reserved.Tokens < 0 {
				t.Fatalf("step %d: Admit(%+v) reserved %+v", step, r, tk.Reserved)
			}
			open = append(open, &ticketModel{tk: tk, at: latest, tokens: tk.Reserved.Tokens})
		case op < 13 && len(open) > 0:
			i := rng.IntN(len(open))
			m := open[i]
			open = append(open[:i], open[i+1:]...)
			u := state.Usage{PromptTokens: tokens() / 2, CompletionTokens: tokens() / 2}
			if !hostile {
				u = state.Usage{PromptTokens: rng.Int64N(m.tokens + 1), CompletionTokens: rng.Int64N(m.tokens/4 + 1)}
			}
			c.Settle(m.tk, u)
			m.tokens, m.settled = satAdd(max(u.PromptTokens, 0), max(u.CompletionTokens, 0)), true
			overTPM = overTPM || m.tokens > m.tk.Reserved.Tokens
			closed = append(closed, m)
		case op < 15 && len(open) > 0:
			i := rng.IntN(len(open))
			c.Release(open[i].tk)
			open = append(open[:i], open[i+1:]...)
		case op < 19:
			e.clock.Advance(time.Duration(rng.Int64N(int64(3 * time.Second))))
		default:
			if rng.IntN(2) == 0 {
				e.clock.Advance(-time.Duration(rng.Int64N(int64(5 * time.Second)))) // a wall-clock step back
			} else {
				e.clock.Advance(full)
			}
		}
		if now := e.clock.Now(); now.After(latest) {
			latest = now
		}

		l := c.Load()
		// Bounds from the model: at most everything admitted and not given back (an upper bound
		// whatever the window has dropped), at least what was admitted less than a span ago.
		var maxReq, maxTok, minReq, minTok int64
		for _, set := range [][]*ticketModel{open, closed} {
			for _, m := range set {
				maxReq = satAdd(maxReq, m.tk.Reserved.Requests)
				maxTok = satAdd(maxTok, m.tokens)
				if latest.Sub(m.at) < state.Span-state.BucketWidth {
					minReq += m.tk.Reserved.Requests
					minTok = satAdd(minTok, m.tokens)
				}
			}
		}
		fail := func(why string) {
			t.Helper()
			t.Fatalf("step %d (limits %+v): load %+v %s (model: %d..%d requests, %d..%d tokens, %d in flight)",
				step, lim, l, why, minReq, maxReq, minTok, maxTok, len(open))
		}
		switch {
		case l.Requests < 0 || l.Tokens < 0 || l.InFlight < 0:
			fail("is negative")
		case l.InFlight != int64(len(open)):
			fail("has the wrong number in flight")
		case l.Requests > maxReq || l.Tokens > maxTok:
			fail("counts more than was admitted and not given back")
		case !hostile && e.clock.Now().Equal(latest) && (l.Requests < minReq || l.Tokens < minTok):
			// (Read at the latest time only: what a read behind it shows is ClockBackwards' matter.)
			fail("lost counts the window must still hold")
		case !hostile && lim.RPM > 0 && l.Requests > lim.RPM:
			fail("exceeds rpm")
		case !hostile && !overTPM && lim.TPM > 0 && l.Tokens > lim.TPM:
			fail("exceeds tpm")
		}
		// Old settles leave the model once a full window has passed since their admission.
		kept := closed[:0]
		for _, m := range closed {
			if latest.Sub(m.at) <= full+state.BucketWidth {
				kept = append(kept, m)
			}
		}
		closed = kept
	}
	for _, m := range open {
		c.Settle(m.tk, state.Usage{})
	}
	if l := c.Load(); l.InFlight != 0 || l.Requests < 0 || l.Tokens < 0 {
		t.Fatalf("after settling everything: %+v", l)
	}
}

// satAdd is a+b for non-negative a and b, stopping at math.MaxInt64.
func satAdd(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}
