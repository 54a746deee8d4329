package crdt

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
	"github.com/herd-proxy/herd/state/statetest"
)

// estimates is what the cluster knows of peers' clock offsets (Options.Offset); tests change
// it as heartbeats would.
type estimates struct {
	mu sync.Mutex
	m  map[string]time.Duration
}

func (e *estimates) set(node string, d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]time.Duration{}
	}
	e.m[node] = d
}

func (e *estimates) offset(node string) (time.Duration, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, ok := e.m[node]
	return d, ok
}

// skewed is node a on a clock of its own, with the offset estimates it is given, and a peer p
// whose clock is off from a's by off. Nothing is delivered until a test flushes.
type skewed struct {
	t      *testing.T
	net    *memNet
	ca, cp *statetest.Clock
	a, p   *Backend
	est    estimates
	rej    rejects
}

func newSkewed(t *testing.T, aNow time.Time, off time.Duration) *skewed {
	s := &skewed{t: t, net: newMemNet(), ca: statetest.NewClock(aNow), cp: statetest.NewClock(aNow.Add(off))}
	s.a = New(Options{Node: "a", Now: s.ca.Now, FlushEvery: -1, Offset: s.est.offset, OnReject: s.rej.add})
	s.p = New(Options{Node: "p", Now: s.cp.Now, FlushEvery: -1})
	s.net.add("a", s.a)
	s.net.add("p", s.p)
	return s
}

// admit has p admit n requests and deltas them to a.
func (s *skewed) admit(n int64) {
	s.t.Helper()
	if _, err := s.p.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: n}); err != nil {
		s.t.Fatal(err)
	}
	s.p.Flush()
}

// seenAt advances both clocks together to a's time at and returns the requests a counts then.
// a flushes first, as its loop does every bucket, so that it reads the latest offsets.
func (s *skewed) seenAt(at time.Time) int64 {
	s.t.Helper()
	d := at.Sub(s.ca.Now())
	s.ca.Advance(d)
	s.cp.Advance(d)
	s.a.Flush()
	if err := checkInvariants(s.a); err != nil {
		s.t.Fatal(err)
	}
	return s.a.Counter("d").Load().Requests
}

// bucketStart is the start of the bucket holding t.
func bucketStart(t time.Time) time.Time {
	return time.Unix(0, window.BucketOf(t.UnixNano())*window.BucketNanos)
}

// A peer whose clock is ahead, by 10 s here: its counts are merged the moment they arrive,
// whether or not its offset is known (before, a cell more than 2 buckets ahead was ignored until
// this node's clock caught up: 10 s of that peer's usage hidden). Without an estimate they are
// kept as long as its bucket numbers say, 10 s too long; with one, exactly as long as counts of
// this node made at the same moment.
func TestPeerAheadNeverHidden(t *testing.T) {
	b := bucketStart(t0)
	for _, known := range []bool{false, true} {
		t.Run(fmt.Sprintf("estimate known %v", known), func(t *testing.T) {
			s := newSkewed(t, t0, 10*time.Second)
			if known {
				s.est.set("p", 10*time.Second)
			}
			s.admit(3)
			if got := s.seenAt(t0); got != 3 {
				t.Fatalf("a counts %d of the 3 a peer 10 s ahead just admitted", got)
			}
			// Counted for the window: as a's own count of bucket b would be.
			if got := s.seenAt(b.Add(state.Span + state.BucketWidth - time.Nanosecond)); got != 3 {
				t.Fatalf("a counts %d of the 3 just before their window ends", got)
			}
			gone := b.Add(state.Span + state.BucketWidth)
			if !known {
				gone = gone.Add(10 * time.Second)
			}
			if got := s.seenAt(gone); got != 0 {
				t.Fatalf("a counts %d at %v, want 0", got, gone.Sub(b))
			}
		})
	}
}

// A peer whose clock is behind, by 10 s here: with its offset known its counts stay in the
// window as long as this node's own would, where its bucket numbers alone would drop them 10 s
// early (the window of a node 10 s behind ends 10 s earlier).
func TestPeerBehindKeptForTheWindow(t *testing.T) {
	b := bucketStart(t0)
	s := newSkewed(t, t0, -10*time.Second)
	s.est.set("p", -10*time.Second)
	s.admit(3)
	if got := s.seenAt(t0); got != 3 {
		t.Fatalf("a counts %d of the 3 a peer 10 s behind just admitted", got)
	}
	// Its own bucket numbers put the count in a's bucket b-10, gone at b+51.
	if got := s.seenAt(b.Add(51 * time.Second)); got != 3 {
		t.Fatalf("a counts %d of the 3 after 51 s: a peer 10 s behind had its counts expire early", got)
	}
	if got := s.seenAt(b.Add(state.Span + state.BucketWidth - time.Nanosecond)); got != 3 {
		t.Fatalf("a counts %d of the 3 just before their window ends", got)
	}
	if got := s.seenAt(b.Add(state.Span + state.BucketWidth)); got != 0 {
		t.Fatalf("a counts %d once their window ended, want 0", got)
	}
}

// Offsets that are no whole number of buckets, estimated a little short as heartbeats do (the
// network delay makes a peer's clock look earlier): whenever in a bucket the peer admits, a
// counts it from the start for at least a window (never hidden early) and drops it at most a
// bucket after its own count of that moment would go (never kept late beyond a bucket).
func TestFractionalOffsets(t *testing.T) {
	for _, off := range []time.Duration{10400 * time.Millisecond, -10400 * time.Millisecond, 700 * time.Millisecond, -300 * time.Millisecond} {
		for _, frac := range []time.Duration{0, 50 * time.Millisecond, 600 * time.Millisecond, 999 * time.Millisecond} {
			at := bucketStart(t0).Add(frac)
			s := newSkewed(t, at, off)
			s.est.set("p", off-2*time.Millisecond)
			s.admit(1)
			if got := s.seenAt(at); got != 1 {
				t.Fatalf("offset %v, admitted at +%v: not counted on arrival", off, frac)
			}
			if got := s.seenAt(at.Add(state.Span - time.Nanosecond)); got != 1 {
				t.Fatalf("offset %v, admitted at +%v: gone before a window passed", off, frac)
			}
			late := bucketStart(at).Add(state.Span + 2*state.BucketWidth)
			if got := s.seenAt(late); got != 0 {
				t.Fatalf("offset %v, admitted at +%v: still counted more than a bucket after its window", off, frac)
			}
		}
	}
}

// When the estimate of a peer's offset changes (here: unknown at first, then 10 s behind), its
// cells move to where the new estimate puts them at this node's next housekeeping.
func TestOffsetEstimateChangeMovesCells(t *testing.T) {
	b := bucketStart(t0)
	s := newSkewed(t, t0, -10*time.Second)
	s.admit(3)
	if got := s.seenAt(t0); got != 3 {
		t.Fatalf("a counts %d of 3", got)
	}
	s.est.set("p", -10*time.Second)
	if got := s.seenAt(b.Add(55 * time.Second)); got != 3 {
		t.Fatalf("a counts %d of the 3 after 55 s: the new estimate did not move them", got)
	}
	if got := s.seenAt(b.Add(state.Span + state.BucketWidth)); got != 0 {
		t.Fatalf("a counts %d once their window ended, want 0", got)
	}
}

// An estimate beyond maxOffset is used only up to it, and every message from that peer is
// reported: its counts are still merged at once, and kept no more than its excess too long.
func TestOffsetBeyondBoundReported(t *testing.T) {
	b := bucketStart(t0)
	s := newSkewed(t, t0, 45*time.Second)
	s.est.set("p", 45*time.Second)
	s.admit(3)
	if got := s.rej.get()["clock_offset"]; got != 1 {
		t.Fatalf("clock_offset reported %d times for one message, want 1", got)
	}
	if got := s.seenAt(t0); got != 3 {
		t.Fatalf("a counts %d of the 3 a peer 45 s ahead admitted", got)
	}
	end := b.Add(state.Span + state.BucketWidth + 45*time.Second - maxOffset)
	if got := s.seenAt(end.Add(-time.Nanosecond)); got != 3 {
		t.Fatalf("a counts %d of the 3 before the capped alignment lets them go", got)
	}
	if got := s.seenAt(end); got != 0 {
		t.Fatalf("a counts %d after, want 0", got)
	}
}

// Push-pull relays a peer's cells under its own bucket numbers, so every receiver aligns them
// by its own estimate: q, which never hears p, counts p's usage for exactly its window.
func TestRelayedCellsKeepTheirOwnersNumbers(t *testing.T) {
	b := bucketStart(t0)
	s := newSkewed(t, t0, 10*time.Second)
	s.est.set("p", 10*time.Second)
	s.admit(3)
	var est estimates
	est.set("p", 10*time.Second)
	cq := statetest.NewClock(t0)
	q := New(Options{Node: "q", Now: cq.Now, FlushEvery: -1, Offset: est.offset})
	q.MergeRemoteState(s.a.LocalState(true))
	seen := func(at time.Time) int64 {
		cq.Advance(at.Sub(cq.Now()))
		q.Flush()
		return q.Counter("d").Load().Requests
	}
	if got := seen(b.Add(state.Span + state.BucketWidth - time.Nanosecond)); got != 3 {
		t.Fatalf("q counts %d of p's 3 relayed by a, before their window ends", got)
	}
	if got := seen(b.Add(state.Span + state.BucketWidth)); got != 0 {
		t.Fatalf("q counts %d of p's relayed 3 after their window, want 0", got)
	}
}

// A cell from a peer slightly ahead (its next bucket began, ours has not) counts in this node's
// newest bucket until that bucket begins here. Before, it moved the whole window forward and
// dropped this node's oldest bucket up to a second early.
func TestPeerSlightlyAheadDropsNothingEarly(t *testing.T) {
	b := bucketStart(t0)
	s := newSkewed(t, b.Add(500*time.Millisecond), 600*time.Millisecond)
	if _, err := s.a.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1}); err != nil {
		t.Fatal(err)
	}
	// 61.9 s later a still holds its own count of bucket b; p is already in bucket b+62.
	s.seenAt(b.Add(state.Span + 900*time.Millisecond))
	s.admit(1)
	if got := s.a.Counter("d").Load().Requests; got != 2 {
		t.Fatalf("a counts %d, want its own of 61.9 s ago and p's new one", got)
	}
	if got := s.seenAt(b.Add(state.Span + state.BucketWidth)); got != 1 {
		t.Fatalf("a counts %d once its own count's window ended, want p's 1", got)
	}
	// p's count, made in a's bucket b+61 but in p's b+62, stays for p's bucket's window.
	if got := s.seenAt(b.Add(2*(state.Span+state.BucketWidth) - time.Nanosecond)); got != 1 {
		t.Fatalf("a counts %d of p's 1 before its bucket's window ended", got)
	}
	if got := s.seenAt(b.Add(2 * (state.Span + state.BucketWidth))); got != 0 {
		t.Fatalf("a counts %d of p's 1 after its window, want 0", got)
	}
}
