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

// fork is a clock with s's base (so monotonic readings compare) that starts from s's latest
// sample and then learns on its own.
func (s *serverClock) fork() *serverClock {
	f := &serverClock{base: s.base}
	f.off.Store(s.off.Load())
	f.offLo.Store(s.offLo.Load())
	f.sent.Store(s.sent.Load())
	return f
}

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

// mono is this process's monotonic clock: ns since base.
func (s *serverClock) mono() int64 { return time.Since(s.base).Nanoseconds() }

// at is the latest the server's clock can have read (Unix ns) when the monotonic clock read m
// (mono), before or after the latest sample: the server read its clock no sooner than the
// sample's call was sent, so at any moment m it read at most T + (m - sent), as long as it ran at
// the rate of this host's. Before the server ever answered it is this host's wall clock then.
func (s *serverClock) at(m int64) int64 {
	if s.sent.Load() == 0 {
		return time.Now().UnixNano() + m - s.mono()
	}
	return s.off.Load() + m
}

// Each deployment's keys live on one server: the master of their hash slot. In a Redis Cluster
// masters are different hosts with clocks of their own, and a deployment's windows and leases
// run on its master's, so each counter keeps its own estimate (counter.srv), learnt from its own
// scripts' replies; the backend's (Backend.srv), from any server, only seeds it (single Redis,
// Sentinel: the one master) or is replaced by the master's own, read at start and by every probe
// (Backend.masterClock). A reply from another master never moves a deployment's window.

// sawServer records the server time a reply of this counter's carried, for its clock and the
// backend's.
func (c *counter) sawServer(sent time.Time, serverUs int64) {
	c.srv.seen(sent, serverUs)
	c.b.srv.seen(sent, serverUs)
}

// leaseNow is the server's time for leases: always the estimate of the server's clock.
func (c *counter) leaseNow() time.Time { return c.srv.now() }

// windowNow is the server's time for windows, its upper bound (blocks, waits), or in tests the
// clock that stands in for the server's (Options.serverNow).
func (c *counter) windowNow() time.Time {
	if c.b.override != nil {
		return c.b.override()
	}
	return c.srv.now()
}

// windowLow is windowNow's lower bound, which the cached window ages by.
func (c *counter) windowLow() time.Time {
	if c.b.override != nil {
		return c.b.override()
	}
	return c.srv.low()
}

// windowAt is the window time (lower bound) of t, a time on this node's clock (Options.Now): the
// server's time now, moved by t's distance from this node's now.
func (c *counter) windowAt(t time.Time) time.Time {
	if c.b.override != nil {
		return t
	}
	return c.srv.low().Add(t.Sub(c.b.now()))
}

// overrideMs is the scripts' window clock override: 0 (the server's clock) but in tests.
func (b *Backend) overrideMs() int64 {
	if b.override == nil {
		return 0
	}
	return b.override().UnixMilli()
}
