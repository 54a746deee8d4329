package state

import (
	"math"
	"testing"
)

// Fits never adds: a reservation that would wrap the sum past int64 does not fit (issue 12:
// max_tokens 1e309 became MaxInt64 and wrapped a window negative).
func TestFitsNeverWraps(t *testing.T) {
	lim := Limits{RPM: 10, TPM: 1000, MaxParallel: 5}
	for _, tc := range []struct {
		l    Load
		r    Reservation
		want bool
	}{
		{Load{Requests: 9, Tokens: 900, InFlight: 4}, Reservation{Requests: 1, Tokens: 100}, true},
		{Load{Requests: 9, Tokens: 901}, Reservation{Requests: 1, Tokens: 100}, false},
		{Load{Tokens: 10}, Reservation{Requests: 1, Tokens: math.MaxInt64}, false},
		{Load{Requests: 1}, Reservation{Requests: math.MaxInt64}, false},
		{Load{Tokens: math.MaxInt64}, Reservation{Requests: 1, Tokens: 1}, false},
		{Load{InFlight: math.MaxInt64}, Reservation{Requests: 1}, false},
		{Load{Tokens: 1000}, Reservation{Requests: 1, Tokens: math.MinInt64}, true}, // counts as 0
	} {
		if got := tc.l.Fits(lim, tc.r); got != tc.want {
			t.Errorf("%+v.Fits(%+v) = %v, want %v", tc.l, tc.r, got, tc.want)
		}
	}
}

func TestUsageTotalSaturates(t *testing.T) {
	for _, tc := range []struct {
		u    Usage
		want int64
	}{
		{Usage{3, 4}, 7},
		{Usage{math.MaxInt64, math.MaxInt64}, math.MaxInt64},
		{Usage{-5, 4}, 4},
		{Usage{math.MinInt64, math.MinInt64}, 0},
	} {
		if got := tc.u.Total(); got != tc.want {
			t.Errorf("%+v.Total() = %d, want %d", tc.u, got, tc.want)
		}
	}
}
