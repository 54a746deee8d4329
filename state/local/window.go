package local

import (
	"github.com/herd-proxy/herd/state"
)

// Window geometry. A reservation made during bucket b counts until bucket b+ringSize begins, so
// it is counted for at least state.Window and at most state.Window+state.BucketWidth.
//
// Why 61 buckets and not 60: take any 60-second interval [a, a+60s). Admissions inside it fall
// in the buckets floor(a) .. floor(a)+60, at most 61 of them. When the last admission inside the
// interval is checked, its window (its own bucket and the 60 before it) still holds every
// earlier admission of the interval, so the check counts them all and the interval can never
// exceed rpm (or tpm). With 60 buckets an interval starting late in a bucket would lose its
// first bucket before its end: up to twice the limit in intervals not aligned to bucket edges.
const (
	bucketNanos = int64(state.BucketWidth)
	ringSize    = int64(state.Window/state.BucketWidth) + 1
)

// window holds one deployment's request and token counts in a ring of buckets with running
// sums, so admission reads two integers instead of adding up the ring. Its zero value is not
// ready: set head to the current bucket first.
type window struct {
	// The fields every read touches come first, to share a cache line with the counter's mutex.
	head   int64 // bucket number of the newest bucket; never moves backwards
	reqSum int64
	tokSum int64
	req    [ringSize]int64
	tok    [ringSize]int64
}

// bucketOf is the bucket number of a Unix time in nanoseconds, rounded down also before 1970.
func bucketOf(ns int64) int64 {
	b := ns / bucketNanos
	if ns%bucketNanos < 0 {
		b--
	}
	return b
}

func slot(b int64) int64 {
	i := b % ringSize
	if i < 0 {
		i += ringSize
	}
	return i
}

// advance makes bucket b the newest, dropping the buckets that left the window. A b older than
// the head (the clock stepped back) changes nothing: counts are never forgotten early. The cost
// is paid once per elapsed bucket, and at most ringSize steps however long the counter idled.
func (w *window) advance(b int64) {
	if b <= w.head {
		return
	}
	if b-w.head >= ringSize {
		w.req, w.tok = [ringSize]int64{}, [ringSize]int64{}
		w.reqSum, w.tokSum = 0, 0
	} else {
		for x := w.head + 1; x <= b; x++ {
			i := slot(x)
			w.reqSum -= w.req[i]
			w.tokSum -= w.tok[i]
			w.req[i], w.tok[i] = 0, 0
		}
	}
	w.head = b
}

// holds reports whether bucket b is still in the window.
func (w *window) holds(b int64) bool { return b <= w.head && w.head-b < ringSize }

// add counts requests and tokens in bucket b if b is still in the window; a correction for a
// bucket that already left is dropped, as the bucket's counts were.
func (w *window) add(b, requests, tokens int64) {
	if !w.holds(b) {
		return
	}
	i := slot(b)
	w.req[i] += requests
	w.tok[i] += tokens
	w.reqSum += requests
	w.tokSum += tokens
}

// wait returns how long after now (Unix nanoseconds) the oldest buckets of counts, whose sum
// is at least excess, have left the window: the start of the bucket that pushes the last of
// them out. It is exact to the nanosecond: nothing leaves the window earlier. ok is false when
// the whole window holds less than excess.
func (w *window) wait(now int64, counts *[ringSize]int64, excess int64) (d int64, ok bool) {
	var acc int64
	for x := w.head - ringSize + 1; x <= w.head; x++ {
		acc += counts[slot(x)]
		if acc >= excess {
			// Bucket x leaves when bucket x+ringSize begins. That start lies after now even if
			// the clock stepped back behind the head, because x+ringSize > head.
			return (x+ringSize)*bucketNanos - now, true
		}
	}
	return 0, false
}
