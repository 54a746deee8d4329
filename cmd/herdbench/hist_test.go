package main

import (
	"math"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	// Every value lands in a bucket that contains it, and buckets tile the line.
	for _, v := range []uint64{0, 1, 4095, 4096, 4097, 8191, 8192, 5_000_000, 123_456_789, 1<<40 - 1} {
		i := histIndex(v)
		low, width := histBucket(i)
		if v < low || v >= low+width {
			t.Errorf("value %d: bucket %d is [%d, %d)", v, i, low, low+width)
		}
		if i+1 < histNBuckets {
			if next, _ := histBucket(i + 1); next != low+width {
				t.Errorf("bucket %d ends at %d but bucket %d starts at %d", i, low+width, i+1, next)
			}
		}
	}
	if got := histIndex(1 << 50); got != histNBuckets-1 {
		t.Errorf("huge value: index %d, want the last bucket %d", got, histNBuckets-1)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	h := newHistogram()
	// 1..10000 µs, uniformly.
	for i := 1; i <= 10000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5000 * time.Microsecond}, {0.9, 9000 * time.Microsecond}, {0.99, 9900 * time.Microsecond}, {1, 10 * time.Millisecond}} {
		got := h.quantile(tc.q)
		if rel := math.Abs(float64(got-tc.want)) / float64(tc.want); rel > 0.0005 {
			t.Errorf("q%.2f = %v, want %v (relative error %.5f)", tc.q, got, tc.want, rel)
		}
	}
	if h.max != 10*time.Millisecond || h.min != time.Microsecond {
		t.Errorf("min/max = %v/%v", h.min, h.max)
	}
	if got, want := h.mean(), 5000500*time.Nanosecond; got != want {
		t.Errorf("mean = %v, want %v", got, want)
	}

	h.reset()
	if h.quantile(0.5) != 0 || h.n != 0 {
		t.Errorf("reset histogram is not empty")
	}
	h.add(7 * time.Millisecond)
	if got := h.quantile(0.99); got != 7*time.Millisecond {
		t.Errorf("single value: q99 = %v, want it clamped to the exact 7ms", got)
	}
}
