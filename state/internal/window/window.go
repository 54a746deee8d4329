// Package window is the sliding-window arithmetic every state backend shares: bucket geometry,
// a ring of per-bucket request and token counts with running sums, the exact wait until a
// reservation fits, and recent-latency samples. Backends add their own locking and merging.
package window

import (
	"math"
	"time"

	"github.com/herd-proxy/herd/state"
)

// Geometry. A count made during bucket b counts until bucket b+RingSize begins, so it is counted
// for at least state.Span and at most state.Span+state.BucketWidth.
//
// Why 62 buckets: take any 60-second interval [a, a+60s). Admissions inside it fall in the
// buckets floor(a) .. floor(a)+60, at most 61 of them. When the last admission inside the
// interval is checked, its window (its own bucket and the 60 before it) still holds every
// earlier admission of the interval, so the check counts them all and the interval can never
// exceed rpm (or tpm). With 60 buckets an interval starting late in a bucket would lose its
// first bucket before its end: up to twice the limit in intervals not aligned to bucket edges.
// The 62nd is state.ArrivalMargin: the same holds at the upstream while no request takes a
// second longer to arrive than another.
const (
	BucketNanos = int64(state.BucketWidth)
	RingSize    = int64(state.Span/state.BucketWidth) + 1
)

// MaxCount bounds what one bucket holds, of requests or of tokens, either way: buckets stay
// within [-MaxCount, MaxCount] (Count: [0, MaxCount]), so a window's sum of RingSize buckets plus
// one more reservation never overflows int64. About 1.5e17: far above any real count, so honest
// counting never reaches it.
const MaxCount = math.MaxInt64 / (RingSize + 1)

// Clamp is n within [0, MaxCount].
func Clamp(n int64) int64 { return min(max(n, 0), MaxCount) }

// Sane is r with both counts clamped: what a backend reserves for r. Reservations come from
// request bodies; no value of theirs may wrap a sum or give back more than it took.
func Sane(r state.Reservation) state.Reservation {
	return state.Reservation{Requests: Clamp(r.Requests), Tokens: Clamp(r.Tokens)}
}

// addWithin is old+d within [lo, MaxCount], for old in that range and lo <= 0, without overflow.
func addWithin(old, d, lo int64) int64 {
	switch {
	case d > MaxCount-old:
		return MaxCount
	case d < lo-old:
		return lo
	}
	return old + d
}

// BucketOf is the bucket number of a Unix time in nanoseconds, rounded down also before 1970.
func BucketOf(ns int64) int64 {
	b := ns / BucketNanos
	if ns%BucketNanos < 0 {
		b--
	}
	return b
}

// Slot is bucket b's index in a ring of RingSize.
func Slot(b int64) int64 {
	i := b % RingSize
	if i < 0 {
		i += RingSize
	}
	return i
}

// Ring holds one deployment's request and token counts per bucket, with running sums so a read
// is two integers instead of adding up the ring. Start it with Reset before use.
type Ring struct {
	// The fields every read touches come first, to share a cache line with the owner's mutex.
	head   int64 // bucket number of the newest bucket; never moves backwards
	reqSum int64
	tokSum int64
	req    [RingSize]int64
	tok    [RingSize]int64
}

// Reset empties the ring with head as its newest bucket.
func (w *Ring) Reset(head int64) { *w = Ring{head: head} }

// Head is the newest bucket.
func (w *Ring) Head() int64 { return w.head }

// Sums are the requests and tokens counted in the window.
func (w *Ring) Sums() (requests, tokens int64) { return w.reqSum, w.tokSum }

// Advance makes bucket b the newest, dropping the buckets that left the window. A b older than
// the head (the clock stepped back) changes nothing: counts are never forgotten early. The cost
// is paid once per elapsed bucket, and at most RingSize steps however long the ring idled.
func (w *Ring) Advance(b int64) {
	if b <= w.head {
		return
	}
	if b-w.head >= RingSize {
		w.req, w.tok = [RingSize]int64{}, [RingSize]int64{}
		w.reqSum, w.tokSum = 0, 0
	} else {
		for x := w.head + 1; x <= b; x++ {
			i := Slot(x)
			w.reqSum -= w.req[i]
			w.tokSum -= w.tok[i]
			w.req[i], w.tok[i] = 0, 0
		}
	}
	w.head = b
}

// At is what bucket b holds; 0, 0 when the window does not hold b.
func (w *Ring) At(b int64) (requests, tokens int64) {
	if !w.Holds(b) {
		return 0, 0
	}
	return w.req[Slot(b)], w.tok[Slot(b)]
}

// Holds reports whether bucket b is still in the window.
func (w *Ring) Holds(b int64) bool { return b <= w.head && w.head-b < RingSize }

// Count counts requests and tokens (negative to take back) in bucket b if b is still in the
// window; a change to a bucket that already left is dropped, as the bucket's counts were. The
// bucket's counts stay within [0, MaxCount]: what is taken back beyond what the bucket holds (a
// ticket ended twice, a usage below zero) is dropped, so no sequence of counts makes a window
// negative. The sums follow what the bucket really changed by.
func (w *Ring) Count(b, requests, tokens int64) { w.add(b, requests, tokens, 0) }

// Add is Count for a ring whose buckets hold differences rather than counts (state/redis's cache
// counts the difference from Redis's sums in its head bucket): a bucket may go down to
// -MaxCount. It saturates rather than wrapping.
func (w *Ring) Add(b, requests, tokens int64) { w.add(b, requests, tokens, -MaxCount) }

// AddBelow is Add for a ring that mirrors a store whose buckets never hold more than hi:
// state/redis's cache mirrors Redis, which keeps each bucket within [0, hi] (its maxCount). An
// increase stops at hi as the store's does, so the ring and the store disagree on no bucket (a
// difference put in the wrong bucket shows when that bucket leaves, before or after the right
// one). A bucket already above hi, holding a difference counted there, is not cut back. It
// returns what it added, which is what the caller must take off to undo it.
func (w *Ring) AddBelow(b, requests, tokens, hi int64) (addedReq, addedTok int64) {
	if !w.Holds(b) {
		return 0, 0
	}
	i := Slot(b)
	r, t := below(w.req[i], requests, hi), below(w.tok[i], tokens, hi)
	addedReq, addedTok = r-w.req[i], t-w.tok[i]
	w.reqSum += addedReq
	w.tokSum += addedTok
	w.req[i], w.tok[i] = r, t
	return addedReq, addedTok
}

// below is old+d as Add counts it, but an increase ends at hi (or at old, if old is above hi).
func below(old, d, hi int64) int64 {
	n := addWithin(old, d, -MaxCount)
	if d > 0 && n > hi {
		n = max(old, hi)
	}
	return n
}

func (w *Ring) add(b, requests, tokens, lo int64) {
	if !w.Holds(b) {
		return
	}
	i := Slot(b)
	r, t := addWithin(w.req[i], requests, lo), addWithin(w.tok[i], tokens, lo)
	w.reqSum += r - w.req[i]
	w.tokSum += t - w.tok[i]
	w.req[i], w.tok[i] = r, t
}

// RetryAfter is how long after now (Unix nanoseconds, the ring already advanced to it) r could
// fit under lim with inFlight calls running: the longest of the waits for rpm and tpm, each until
// the oldest buckets holding the excess have left the window (exact to the nanosecond);
// state.DefaultParallelWait when only MaxParallel refuses; state.Window when r exceeds a limit
// by itself; 0 when it fits now, and never 0 when it does not.
func (w *Ring) RetryAfter(now, inFlight int64, lim state.Limits, r state.Reservation) time.Duration {
	r = Sane(r) // so sum+r below cannot overflow
	if (state.Load{Requests: w.reqSum, Tokens: w.tokSum, InFlight: inFlight}).Fits(lim, r) {
		return 0
	}
	if (lim.RPM > 0 && r.Requests > lim.RPM) || (lim.TPM > 0 && r.Tokens > lim.TPM) {
		return state.Window
	}
	var wait int64
	if lim.RPM > 0 {
		if excess := w.reqSum + r.Requests - lim.RPM; excess > 0 {
			d, ok := w.wait(now, &w.req, excess)
			if !ok { // only when r exceeds the limit by itself, handled above
				return state.Window
			}
			wait = max(wait, d)
		}
	}
	if lim.TPM > 0 {
		if excess := w.tokSum + r.Tokens - lim.TPM; excess > 0 {
			d, ok := w.wait(now, &w.tok, excess)
			if !ok {
				return state.Window
			}
			wait = max(wait, d)
		}
	}
	if lim.MaxParallel > 0 && inFlight >= lim.MaxParallel {
		wait = max(wait, int64(state.DefaultParallelWait))
	}
	return time.Duration(max(wait, 1))
}

// wait returns how long after now the oldest buckets of counts, whose sum is at least excess,
// have left the window: the start of the bucket that pushes the last of them out. ok is false
// when the whole window holds less than excess.
func (w *Ring) wait(now int64, counts *[RingSize]int64, excess int64) (d int64, ok bool) {
	var acc int64
	for x := w.head - RingSize + 1; x <= w.head; x++ {
		acc += counts[Slot(x)]
		if acc >= excess {
			// Bucket x leaves when bucket x+RingSize begins. That start lies after now even if
			// the clock stepped back behind the head, because x+RingSize > head.
			return (x+RingSize)*BucketNanos - now, true
		}
	}
	return 0, false
}

// sampleCount is how many recent latencies are kept.
const sampleCount = 10

// Samples is a ring of the last few durations with the time each was observed.
type Samples struct {
	at   [sampleCount]int64 // Unix nanoseconds
	d    [sampleCount]time.Duration
	n    int // samples held
	next int // slot the next sample overwrites
}

// Add records d observed at (Unix nanoseconds).
func (s *Samples) Add(at int64, d time.Duration) {
	s.at[s.next], s.d[s.next] = at, d
	s.next = (s.next + 1) % sampleCount
	s.n = min(s.n+1, sampleCount)
}

// Mean averages the samples younger than ttl at now; 0 when there are none.
func (s *Samples) Mean(now, ttl int64) time.Duration {
	var sum time.Duration
	var k int
	for i := range s.n {
		if now-s.at[i] < ttl {
			sum += s.d[i]
			k++
		}
	}
	if k == 0 {
		return 0
	}
	return sum / time.Duration(k)
}
