package window

import (
	"math"
	"testing"

	"github.com/herd-proxy/herd/state"
)

func TestBucketOf(t *testing.T) {
	for _, tc := range []struct{ ns, want int64 }{
		{0, 0}, {999_999_999, 0}, {1_000_000_000, 1}, {-1, -1}, {-1_000_000_000, -1}, {-1_000_000_001, -2},
	} {
		if got := BucketOf(tc.ns); got != tc.want {
			t.Errorf("BucketOf(%d) = %d, want %d", tc.ns, got, tc.want)
		}
	}
}

func TestSlotWrapsNegativeBuckets(t *testing.T) {
	if RingSize != 62 {
		t.Fatalf("RingSize = %d, want 62 (see the geometry comment)", RingSize)
	}
	for _, b := range []int64{-1, -61, -62, 0, 60, 61, 1 << 40} {
		if s := Slot(b); s < 0 || s >= RingSize || (b-s)%RingSize != 0 {
			t.Errorf("Slot(%d) = %d", b, s)
		}
	}
}

// Counts stay within [0, MaxCount] per bucket whatever is counted, and the sums follow what the
// buckets really hold, so no sequence of counts can make a window negative or wrap it.
func TestCountClamps(t *testing.T) {
	var w Ring
	w.Reset(100)
	check := func(wantReq, wantTok int64) {
		t.Helper()
		var req, tok int64
		for x := w.Head() - RingSize + 1; x <= w.Head(); x++ {
			if r, k := w.req[Slot(x)], w.tok[Slot(x)]; r < 0 || k < 0 || r > MaxCount || k > MaxCount {
				t.Fatalf("bucket %d holds %d requests, %d tokens", x, r, k)
			} else {
				req, tok = req+r, tok+k
			}
		}
		if gr, gt := w.Sums(); gr != req || gt != tok || gr != wantReq || gt != wantTok {
			t.Fatalf("sums %d, %d; buckets add up to %d, %d; want %d, %d", gr, gt, req, tok, wantReq, wantTok)
		}
	}
	w.Count(100, 1, 500)
	w.Count(100, 0, -(1 << 62)) // a settle far below zero takes the bucket to 0, not beyond
	check(1, 0)
	w.Count(99, 2, math.MaxInt64)
	w.Count(99, 0, math.MaxInt64)
	check(3, MaxCount)
	for x := 100 - RingSize + 1; x <= 100; x++ { // every bucket full: the sums still fit an int64
		w.Count(x, math.MaxInt64, math.MaxInt64)
	}
	check(RingSize*MaxCount, RingSize*MaxCount)
	if _, tok := w.Sums(); tok > math.MaxInt64-MaxCount {
		t.Fatalf("a full window (%d) plus one reservation could overflow", tok)
	}
	for x := 100 - RingSize + 1; x <= 100; x++ {
		w.Count(x, math.MinInt64, math.MinInt64)
	}
	check(0, 0)
}

func TestRetryAfterHugeReservation(t *testing.T) {
	var w Ring
	w.Reset(100)
	w.Add(100, 1, 10)
	lim := state.Limits{RPM: 10, TPM: 100}
	for _, r := range []state.Reservation{{Requests: 1, Tokens: math.MaxInt64}, {Requests: math.MaxInt64, Tokens: 1}} {
		if d := w.RetryAfter(100*BucketNanos, 0, lim, r); d != state.Window {
			t.Errorf("RetryAfter(%+v) = %v, want %v (it can never fit)", r, d, state.Window)
		}
	}
	if d := w.RetryAfter(100*BucketNanos, 0, lim, state.Reservation{Requests: 1, Tokens: math.MinInt64}); d != 0 {
		t.Errorf("a negative reservation counts as 0 and fits: RetryAfter = %v", d)
	}
}

// Add (for rings of differences) may go negative, but saturates at -MaxCount and MaxCount.
func TestAddSaturates(t *testing.T) {
	var w Ring
	w.Reset(100)
	w.Add(100, -5, -7)
	if r, k := w.Sums(); r != -5 || k != -7 {
		t.Fatalf("sums %d, %d; want -5, -7", r, k)
	}
	for x := 100 - RingSize + 1; x <= 100; x++ {
		w.Add(x, math.MinInt64, math.MinInt64)
		w.Add(x, math.MinInt64, math.MinInt64)
	}
	if r, k := w.Sums(); r != -RingSize*MaxCount || k != -RingSize*MaxCount {
		t.Fatalf("sums %d, %d; want %d", r, k, -RingSize*MaxCount)
	}
	w.Add(100, math.MaxInt64, math.MaxInt64)
	if r, _ := w.Sums(); r != -(RingSize-1)*MaxCount+MaxCount {
		t.Fatalf("sum %d after a saturating add", r)
	}
}

// AddBelow stops an increase at hi, as the store a cache mirrors does, reports what it added so
// the caller can undo exactly that, and cuts back no bucket that already holds more.
func TestAddBelow(t *testing.T) {
	var w Ring
	w.Reset(100)
	const hi = 1000
	w.Add(99, 990, 0)
	if r, k := w.AddBelow(99, 30, 5, hi); r != 10 || k != 5 {
		t.Fatalf("AddBelow(99, 30, 5) added %d, %d; want 10 (up to hi), 5", r, k)
	}
	if r, _ := w.Sums(); r != hi {
		t.Fatalf("sum %d, want %d", r, hi)
	}
	if r, _ := w.AddBelow(99, -10, 0, hi); r != -10 {
		t.Fatalf("a decrease added %d, want -10", r)
	}
	w.Add(100, 2*hi, 0) // a difference counted in the head: above hi already
	if r, _ := w.AddBelow(100, 7, 0, hi); r != 0 {
		t.Fatalf("an increase of a bucket above hi added %d, want 0", r)
	}
	if r, _ := w.AddBelow(100, -7, 0, hi); r != -7 {
		t.Fatalf("a decrease of a bucket above hi added %d, want -7", r)
	}
	w.Add(98, -50, 0) // and below zero: decreases and increases both count, as Add
	if r, _ := w.AddBelow(98, 20, 0, hi); r != 20 {
		t.Fatalf("an increase of a negative bucket added %d, want 20", r)
	}
	if r, _ := w.AddBelow(98, math.MinInt64, 0, hi); r != -MaxCount+30 {
		t.Fatalf("a huge decrease added %d, want it to saturate at -MaxCount", r)
	}
	if r, k := w.AddBelow(100-RingSize, 1, 1, hi); r != 0 || k != 0 {
		t.Fatalf("a bucket that left the window took %d, %d", r, k)
	}
	var req int64
	for x := w.Head() - RingSize + 1; x <= w.Head(); x++ {
		req += w.req[Slot(x)]
	}
	if r, _ := w.Sums(); r != req {
		t.Fatalf("sum %d, buckets hold %d", r, req)
	}
}
