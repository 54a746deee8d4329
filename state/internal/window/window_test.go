package window

import "testing"

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
	if RingSize != 61 {
		t.Fatalf("RingSize = %d, want 61 (see the geometry comment)", RingSize)
	}
	for _, b := range []int64{-1, -61, -62, 0, 60, 61, 1 << 40} {
		if s := Slot(b); s < 0 || s >= RingSize || (b-s)%RingSize != 0 {
			t.Errorf("Slot(%d) = %d", b, s)
		}
	}
}
