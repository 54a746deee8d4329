package crdt

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
)

// Two nodes admit, settle and release one deployment's calls at random, hostile values among
// them (+-2^63, negatives), while deltas are flushed, queued, lost and full states pushed and
// pulled at random, and the clock moves on, jumps a window or steps back. After every step each
// node's merged view is non-negative and within what the two admitted; at every quiet moment
// (everything delivered, a push-pull done) both views agree, and with honest values hold at least
// what the window must. No node ever rejects a record of the other's for breaking an invariant:
// own cells keep the wire's bounds whatever the values. (A packet queued across a window jump
// arrives stale, and is rejected as such.)
func TestTwoNodesRandomSequences(t *testing.T) {
	for _, hostile := range []bool{false, true} {
		name := "honest"
		if hostile {
			name = "hostile"
		}
		t.Run(name, func(t *testing.T) { twoNodeSequence(t, hostile) })
	}
}

type modelTicket struct {
	node    string
	tk      state.Ticket
	at      time.Time
	tokens  int64 // counted now: reservation, then usage
	most    int64 // the most it ever counted
	ended   bool
	release bool
}

func twoNodeSequence(t *testing.T, hostile bool) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	c := newCluster(t, 2)
	c.allowRejects = true
	t.Cleanup(func() {
		for reason, n := range c.rejects.get() {
			if reason != "stale" {
				t.Errorf("%d records rejected as %s", n, reason)
			}
		}
	})
	c.net.queue = true
	nodes := names(1, 2)
	lim := state.Limits{RPM: 30, TPM: 6000}
	if hostile {
		lim = state.Limits{}
	}
	wild := []int64{math.MaxInt64, math.MinInt64, -1, -(1 << 40), 1 << 62, maxCellTokens + 1}
	tokens := func() int64 {
		if hostile && rng.IntN(3) == 0 {
			return wild[rng.IntN(len(wild))]
		}
		return rng.Int64N(500)
	}
	var all []*modelTicket
	latest := c.clock.Now()
	for step := range 2000 {
		node := nodes[rng.IntN(2)]
		cnt := c.nodes[node].Counter("d")
		var open []*modelTicket
		for _, m := range all {
			if m.node == node && !m.ended {
				open = append(open, m)
			}
		}
		switch op := rng.IntN(24); {
		case op < 8:
			tk, err := cnt.Admit(lim, state.Reservation{Requests: 1, Tokens: tokens()})
			if err == nil {
				all = append(all, &modelTicket{node: node, tk: tk, at: latest, tokens: tk.Reserved.Tokens, most: tk.Reserved.Tokens})
			}
		case op < 12 && len(open) > 0:
			m := open[rng.IntN(len(open))]
			u := state.Usage{PromptTokens: tokens(), CompletionTokens: tokens()}
			if !hostile {
				u = state.Usage{PromptTokens: rng.Int64N(m.tokens + 1)}
			}
			cnt.Settle(m.tk, u)
			m.ended, m.tokens = true, min(u.Total(), maxCellTokens)
			m.most = max(m.most, m.tokens)
		case op < 14 && len(open) > 0:
			m := open[rng.IntN(len(open))]
			cnt.Release(m.tk)
			m.ended, m.release, m.tokens = true, true, 0
		case op < 16:
			c.nodes[node].Flush()
		case op < 18:
			c.net.Deliver()
		case op < 19:
			c.net.mu.Lock()
			c.net.pending = nil // lost packets
			c.net.mu.Unlock()
		case op < 20:
			c.net.pushPull()
		case op < 23:
			c.clock.Advance(time.Duration(rng.Int64N(int64(2 * time.Second))))
		default:
			if rng.IntN(3) == 0 {
				c.clock.Advance(state.Span + state.BucketWidth)
			} else {
				c.clock.Advance(-time.Duration(rng.Int64N(int64(3 * time.Second))))
			}
		}
		if now := c.clock.Now(); now.After(latest) {
			latest = now
		}

		// Upper bounds: every ticket of the last window and two buckets, at the most it counted.
		var maxReq, maxTok int64
		for _, m := range all {
			if latest.Sub(m.at) <= state.Span+2*state.BucketWidth {
				maxReq++
				maxTok = satAdd(maxTok, m.most)
			}
		}
		for _, n := range nodes {
			l := c.nodes[n].Counter("d").Load()
			if l.Requests < 0 || l.Tokens < 0 || l.InFlight < 0 || l.Requests > maxReq || l.Tokens > maxTok {
				t.Fatalf("step %d: %s sees %+v; the nodes admitted at most %d requests, %d tokens", step, n, l, maxReq, maxTok)
			}
		}
		if step%50 != 49 {
			continue
		}
		// A quiet moment: both views agree, and hold what the window must still hold.
		c.net.flushAll()
		c.net.Deliver()
		c.net.pushPull()
		r1, t1, f1 := c.nodes["n1"].Snapshot("d")
		r2, t2, f2 := c.nodes["n2"].Snapshot("d")
		if r1 != r2 || t1 != t2 || f1 != f2 {
			t.Fatalf("step %d: after a full exchange n1 sees %d/%d/%d, n2 %d/%d/%d", step, r1, t1, f1, r2, t2, f2)
		}
		var inFlight, minReq, minTok int64
		for _, m := range all {
			if !m.ended {
				inFlight++
			}
			if !m.release && latest.Sub(m.at) < state.Span-state.BucketWidth {
				minReq++
				minTok += m.tokens
			}
		}
		if f1 != inFlight {
			t.Fatalf("step %d: %d in flight, want %d", step, f1, inFlight)
		}
		if !hostile && c.clock.Now().Equal(latest) && (r1 < minReq || t1 < minTok) {
			t.Fatalf("step %d: %d requests, %d tokens; the window must hold at least %d, %d", step, r1, t1, minReq, minTok)
		}
	}
}

func satAdd(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}
