package redis

import (
	"sync/atomic"
	"time"
)

// serverClock estimates the Redis server's clock, which every node's windows and leases run on
// (see "Time" in the package comment), from the server time each script reply (and each refresh)
// carries. The server read its clock T between the call's sending and its reply, so at any later
// moment x its clock reads at most T + (x - sent) (now: the upper bound) and at least
// T + (x - received) (low), measured on this process's monotonic clock, which no wall-clock step
// moves. Each use errs on its safe side: this node leaves a block's bucket by the upper bound,
// early rather than late; it ages its cached window and tells the scripts the latest bucket it
// has seen (the floor they count in) by the lower bound, so neither runs ahead of the server.
type serverClock struct {
	base  time.Time    // the monotonic origin of sent
	off   atomic.Int64 // server Unix ns minus sent (ns since base) of the latest sample
	offLo atomic.Int64 // server Unix ns minus received (ns since base) of the latest sample
	sent  atomic.Int64 // when the latest sample's call was sent, ns since base; 0: none yet
}

func newServerClock() *serverClock { return &serverClock{base: time.Now()} }

// seen records that a call sent at sent found the server's clock at serverUs (Unix µs). An
// older call's sample never replaces a newer one: the server's clock may have been stepped
// between them. Two racing calls may each store half a sample; both halves are valid bounds
// within a round trip, so that costs precision, not safety.
func (s *serverClock) seen(sent time.Time, serverUs int64) {
	if serverUs <= 0 {
		return
	}
	at := max(sent.Sub(s.base).Nanoseconds(), 1)
	if at < s.sent.Load() {
		return
	}
	s.sent.Store(at)
	s.off.Store(serverUs*1000 - at)
	s.offLo.Store(serverUs*1000 - time.Since(s.base).Nanoseconds())
}

// now is the estimate, or this host's wall clock before the server ever answered.
func (s *serverClock) now() time.Time {
	if s.sent.Load() == 0 {
		return time.Now()
	}
	return time.Unix(0, s.off.Load()+time.Since(s.base).Nanoseconds())
}

// low is the lower bound, or this host's wall clock before the server ever answered.
func (s *serverClock) low() time.Time {
	if s.sent.Load() == 0 {
		return time.Now()
	}
	return time.Unix(0, s.offLo.Load()+time.Since(s.base).Nanoseconds())
}

// leaseNow is the server's time for leases: always the estimate of the server's clock.
func (b *Backend) leaseNow() time.Time { return b.srv.now() }

// windowNow is the server's time for windows, its upper bound (blocks, waits), or in tests the
// clock that stands in for the server's (Options.serverNow).
func (b *Backend) windowNow() time.Time {
	if b.override != nil {
		return b.override()
	}
	return b.srv.now()
}

// windowLow is windowNow's lower bound, which the cached window ages by.
func (b *Backend) windowLow() time.Time {
	if b.override != nil {
		return b.override()
	}
	return b.srv.low()
}

// windowAt is the window time (lower bound) of t, a time on this node's clock (Options.Now): the
// server's time now, moved by t's distance from this node's now.
func (b *Backend) windowAt(t time.Time) time.Time {
	if b.override != nil {
		return t
	}
	return b.srv.low().Add(t.Sub(b.now()))
}

// overrideMs is the scripts' window clock override: 0 (the server's clock) but in tests.
func (b *Backend) overrideMs() int64 {
	if b.override == nil {
		return 0
	}
	return b.override().UnixMilli()
}
