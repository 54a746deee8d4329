package cluster

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/redistest"
)

func offsetOf(n *Node, name string) (time.Duration, bool) {
	for _, m := range n.Members() {
		if m.Name == name {
			return m.ClockOffset, m.OffsetKnown
		}
	}
	return 0, false
}

// TestPeersClockOffsets: each node estimates every peer's clock offset from heartbeats, to
// within the network's delay, and WARNs about a peer more than a second off.
func TestPeersClockOffsets(t *testing.T) {
	c := newTestCluster(t)
	const skew = 3 * time.Second
	var logs redistest.Buffer // a log sink tests can read while nodes write
	a := c.start(0, nil, func(cfg *Config) { cfg.Logger = slogTo(&logs) })
	b := c.start(1, nil, func(cfg *Config) {
		cfg.Join = []string{memAddrOf(0)}
		cfg.Now = func() time.Time { return time.Now().Add(skew) }
	})
	const tolerance = 50 * time.Millisecond // the in-memory network's delay, and scheduling
	waitFor(t, converge, func() error {
		ab, ok1 := offsetOf(a, "node1")
		ba, ok2 := offsetOf(b, "node0")
		if !ok1 || !ok2 {
			return fmt.Errorf("offsets not known yet: %v %v", ok1, ok2)
		}
		if (ab-skew).Abs() > tolerance || (ba+skew).Abs() > tolerance {
			return fmt.Errorf("node0 sees node1 at %v, node1 sees node0 at %v; want ±%v", ab, ba, skew)
		}
		return nil
	})
	if self, ok := offsetOf(a, "node0"); !ok || self != 0 {
		t.Errorf("own offset %v (%v)", self, ok)
	}
	// ClockOffset, which the usage counters align by, says what Members says (up to a newer
	// heartbeat in between).
	for _, name := range []string{"node0", "node1"} {
		want, wantOK := offsetOf(a, name)
		if got, ok := a.ClockOffset(name); (got-want).Abs() > tolerance || ok != wantOK {
			t.Errorf("ClockOffset(%s) = %v, %v; Members says %v, %v", name, got, ok, want, wantOK)
		}
	}
	if _, ok := a.ClockOffset("nobody"); ok {
		t.Error("an offset for a node that is not a member")
	}
	waitFor(t, converge, func() error {
		if !strings.Contains(logs.String(), "a peer's clock is off") || !strings.Contains(logs.String(), "peer=node1") {
			return fmt.Errorf("no WARN about node1's clock")
		}
		return nil
	})
	if strings.Count(logs.String(), "a peer's clock is off") != 1 {
		t.Errorf("warned more than once:\n%s", logs.String())
	}
}

// TestOffsetEstimateIgnoresDelay: a delayed heartbeat makes a peer look further behind than it
// is; the estimate keeps the least delayed of the last samples.
func TestOffsetEstimateIgnoresDelay(t *testing.T) {
	var m memberState
	now := time.Now()
	for _, d := range []time.Duration{2 * time.Millisecond, -400 * time.Millisecond, time.Millisecond, -2 * time.Second} {
		m.observeOffset(d, now)
	}
	if m.offset != 2*time.Millisecond {
		t.Errorf("offset %v, want 2ms", m.offset)
	}
	for range offsetSamples {
		m.observeOffset(-5*time.Second, now) // the peer's clock really jumped back
	}
	if m.offset != -5*time.Second {
		t.Errorf("offset %v after the jump, want -5s", m.offset)
	}
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
