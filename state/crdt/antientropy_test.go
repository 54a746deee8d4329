package crdt

import (
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
)

// tick runs one housekeeping tick's anti-entropy on every node, in order.
func (c *cluster) tick(names ...string) {
	for _, name := range names {
		c.nodes[name].antiEntropyTick(c.clock.Now().UnixNano())
	}
}

// A view that missed an origin's deltas, and every repeat of them, is made whole by the
// origin's digest: the peer finds itself short, asks, and merges the repair, with no flush
// and no push-pull. Views that agree ask nothing.
func TestAntiEntropyRepairsAViewThatMissedEverything(t *testing.T) {
	c := newCluster(t, 3)
	ids := []string{"d0", "d1", "d2"}
	for i, id := range ids {
		c.admitN("n1", id, state.Limits{}, state.Reservation{Requests: 1, Tokens: 100}, 3+i)
		c.admitN("n2", id, state.Limits{}, state.Reservation{Requests: 1, Tokens: 10}, 2)
		c.clock.Advance(time.Second)
	}
	c.net.flushAll() // everyone learns everything
	tk, _ := c.admit("n1", "d1", state.Limits{}, state.Reservation{Requests: 1, Tokens: 7})
	c.nodes["n1"].Counter("d1").Settle(tk, state.Usage{PromptTokens: 5000})
	c.net.partition(map[string]int{"n3": 1}) // n3 alone misses n1's flush of it
	c.net.flushAll()
	c.net.heal()

	c.tick("n1", "n2", "n3") // digests out
	c.tick("n1", "n2", "n3") // not due yet
	if _, asks, _ := c.nodes["n3"].AntiEntropy(); asks != 0 {
		t.Fatalf("n3 asked %d times before checkAfter", asks)
	}
	wantReq, wantTok, _ := c.nodes["n1"].Snapshot("d1")
	if r, tok, _ := c.nodes["n3"].Snapshot("d1"); r == wantReq && tok == wantTok {
		t.Fatal("n3 already has n1's last counts: nothing to repair")
	}
	c.clock.Advance(checkAfter)
	c.tick("n1", "n2", "n3")

	for _, id := range ids {
		r, tok, _ := c.nodes["n1"].Snapshot(id)
		c.wantSnapshot([]string{"n2", "n3"}, id, r, tok, 0)
	}
	// A digest every tick (SetMembers not called: peers unknown), none from n3, which counted nothing.
	for name, want := range map[string][3]uint64{"n1": {3, 0, 1}, "n2": {3, 0, 0}, "n3": {0, 1, 0}} {
		d, a, r := c.nodes[name].AntiEntropy()
		if got := [3]uint64{d, a, r}; got != want {
			t.Errorf("%s: digests, asks, repairs = %v, want %v", name, got, want)
		}
	}

	// Now every view agrees: another round asks nothing, although n1 counts more meanwhile
	// (a view lacks what the digest does not hold yet, and that is not short).
	c.clock.Advance(time.Second)
	c.tick("n1", "n2", "n3")
	c.admitN("n1", "d0", state.Limits{}, state.Reservation{Requests: 1, Tokens: 100}, 2)
	c.clock.Advance(checkAfter)
	c.tick("n1", "n2", "n3")
	for _, name := range []string{"n2", "n3"} {
		if _, a, _ := c.nodes[name].AntiEntropy(); a > 1 {
			t.Errorf("%s asked again with its view whole (%d asks)", name, a)
		}
	}
}

// An ask names only the groups of buckets a view is short in, and the repair holds only
// their cells.
func TestAntiEntropyAsksForTheShortGroupsOnly(t *testing.T) {
	c := newCluster(t, 2)
	c.net.dropAll = true
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 100}, 4) // lost
	c.net.flushAll()
	c.net.dropAll = false
	lost := window.BucketOf(c.clock.Now().UnixNano())
	c.clock.Advance(25 * time.Second)
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 100}, 2)
	c.net.flushAll() // arrives
	hi := window.BucketOf(c.clock.Now().UnixNano())

	c.net.queue = true
	c.tick("n1", "n2")
	c.net.Deliver()
	c.clock.Advance(checkAfter)
	c.tick("n2")
	if len(c.net.pending) != 1 || c.net.pending[0].msg[0] != msgAsk {
		t.Fatalf("want one ask queued, have %d packets", len(c.net.pending))
	}
	d := decoder{buf: c.net.pending[0].msg[1:]}
	asker, _, askHi, groups := string(d.bytes()), d.uvarint(), d.varint(), d.uvarint()
	wantGroup, _ := group(hi, lost)
	if asker != "n2" || askHi != hi || groups != 1<<wantGroup {
		t.Fatalf("ask from %q for groups %b of the digest to %d, want n2, %b, %d", asker, groups, askHi, uint64(1)<<wantGroup, hi)
	}
	c.net.Deliver() // the ask; the repair is queued
	if len(c.net.pending) != 1 || c.net.pending[0].msg[0] != msgRepair {
		t.Fatalf("want one repair queued, have %d packets", len(c.net.pending))
	}
	var buckets []int64
	if err := decode(c.net.pending[0].msg[1:], maxDeltaIncs, func(_ meta, _ incKey, _ string, _ uint64, _ int64, cells []cell) {
		for _, cl := range cells {
			buckets = append(buckets, cl.bucket)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(buckets, []int64{lost}) {
		t.Fatalf("repair holds buckets %v, want only %d", buckets, lost)
	}
	c.net.Deliver()
	r, tok, _ := c.nodes["n1"].Snapshot("d")
	c.wantSnapshot([]string{"n2"}, "d", r, tok, 0)
}

// A node repairs only an alive member, only for its own incarnation's digest while that
// is in the window, at most once per repairGap per asker and repairsPerGap in all, whatever
// it is asked.
func TestAntiEntropyRepairsAreBounded(t *testing.T) {
	c := newCluster(t, 2)
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 100}, 1)
	n1 := c.nodes["n1"]
	n1.SetMembers([]string{"n1", "n2"})
	hi := window.BucketOf(c.clock.Now().UnixNano())
	ask := func(asker string, epoch uint64, hi int64) []byte {
		msg := appendString([]byte{msgAsk}, asker)
		msg = binary.AppendUvarint(msg, epoch)
		msg = binary.AppendVarint(msg, hi)
		return binary.AppendUvarint(msg, 1)
	}
	repairs := func() uint64 { _, _, r := n1.AntiEntropy(); return r }

	for _, m := range [][]byte{
		ask("stranger", n1.self.epoch, hi), // not a member
		ask("n1", n1.self.epoch, hi),       // itself
		ask("n2", n1.self.epoch-1, hi),     // an earlier incarnation's
		ask("n2", n1.self.epoch, hi+1),     // a digest from the future
		ask("n2", n1.self.epoch, hi-ringSize-1),
	} {
		n1.HandleMessage(m)
	}
	if got := repairs(); got != 0 {
		t.Fatalf("%d repairs for asks that call for none", got)
	}
	for range 5 {
		n1.HandleMessage(ask("n2", n1.self.epoch, hi))
	}
	if got := repairs(); got != 1 {
		t.Fatalf("%d repairs for five asks within repairGap, want 1", got)
	}
	c.clock.Advance(repairGap)
	n1.HandleMessage(ask("n2", n1.self.epoch, hi))
	if got := repairs(); got != 2 {
		t.Fatalf("%d repairs after repairGap, want 2", got)
	}

	// Asks naming many askers within repairGap get repairsPerGap repairs in all.
	c.clock.Advance(repairGap)
	var names []string
	for i := range 3 * repairsPerGap {
		names = append(names, fmt.Sprintf("m%02d", i))
	}
	n1.SetMembers(append(names, "n1", "n2"))
	for _, name := range names {
		n1.HandleMessage(ask(name, n1.self.epoch, hi))
	}
	if got := repairs() - 2; got != repairsPerGap {
		t.Fatalf("%d repairs for %d askers within repairGap, want %d", got, len(names), repairsPerGap)
	}
	if got := c.rejects.get(); len(got) > 0 {
		t.Fatalf("well-formed asks rejected: %v", got)
	}
}

// Malformed anti-entropy messages are rejected whole and change nothing.
func TestAntiEntropyRejectsMalformed(t *testing.T) {
	c := newCluster(t, 1)
	c.allowRejects = true
	b := c.nodes["n1"]
	digestOf := func(n byte, tail ...byte) []byte {
		msg := appendString([]byte{msgDigest}, "n2")
		msg = binary.AppendUvarint(msg, 7)
		msg = binary.AppendVarint(msg, 100)
		msg = append(msg, n)
		for range n {
			msg = binary.AppendUvarint(msg, 5)
		}
		return append(msg, tail...)
	}
	askOf := func(groups uint64, tail ...byte) []byte {
		msg := appendString([]byte{msgAsk}, "n2")
		msg = binary.AppendUvarint(msg, b.self.epoch)
		msg = binary.AppendVarint(msg, 100)
		return append(binary.AppendUvarint(msg, groups), tail...)
	}
	bad := [][]byte{
		{msgDigest}, {msgAsk}, {msgRepair}, {msgRepair, wireFlate, 1, 2, 3},
		digestOf(0), digestOf(digestGroups + 1), digestOf(2, 0), digestOf(2)[:12],
		askOf(0), askOf(1 << digestGroups), askOf(1, 0),
	}
	for i, m := range bad {
		before := c.rejects.get()["malformed"]
		b.HandleMessage(m)
		if got := c.rejects.get()["malformed"]; got != before+1 {
			t.Errorf("message %d (% x): malformed rejected %d times, want %d", i, m, got, before+1)
		}
	}
	if len(b.ae.checks) != 0 {
		t.Fatalf("a malformed digest was kept: %v", b.ae.checks)
	}
	b.HandleMessage(digestOf(2))
	if len(b.ae.checks) != 1 {
		t.Fatal("a well-formed digest was not kept")
	}
}

// A node sends its digest once every ceil(peers/8) ticks: at most 8 packets a second whatever
// the cluster's size, as heartbeats; and none while it has counted nothing.
func TestAntiEntropyDigestPaceFollowsPeers(t *testing.T) {
	n := &countNet{}
	b := New(Options{Node: "a", Network: n, FlushEvery: -1})
	names := []string{"a"}
	for i := range 20 {
		names = append(names, string(rune('b'+i)))
	}
	b.SetMembers(names)
	now := time.Now().UnixNano()
	b.antiEntropyTick(now)
	if n.sent.Load() != 0 {
		t.Fatal("a digest sent with nothing counted")
	}
	tk, _ := b.Counter("d").Admit(state.Limits{}, state.Reservation{Requests: 1})
	b.Counter("d").Release(tk)
	for range 9 {
		b.antiEntropyTick(now)
	}
	if d, _, _ := b.AntiEntropy(); d != 3 {
		t.Fatalf("%d digests in 9 ticks with 20 peers, want 3", d)
	}
}

// A check that runs late compares only the groups still wholly in the view's window: cells
// that left it are gone from the view, not missing.
func TestAntiEntropyLateCheckSkipsWhatLeftTheWindow(t *testing.T) {
	c := newCluster(t, 2)
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 100}, 3)
	c.net.flushAll()
	c.clock.Advance(45 * time.Second) // the counts are in the digest's oldest group
	c.tick("n1")
	if len(c.nodes["n2"].ae.checks) != 1 {
		t.Fatal("n2 holds no digest to check")
	}
	c.clock.Advance(17 * time.Second)
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 100}, 1)
	c.net.flushAll() // n2 learns n1's newest bucket, and lets the cells a window older go
	c.tick("n2")
	if _, asks, _ := c.nodes["n2"].AntiEntropy(); asks != 0 {
		t.Fatalf("n2 asked for %d repairs of counts that left its window", asks)
	}
}

// A repair of many deployments goes in compressed packets under maxMessage, and merges whole.
func TestAntiEntropyLargeRepairIsCompressed(t *testing.T) {
	c := newCluster(t, 2)
	var ids []string
	c.net.dropAll = true
	for i := range 200 {
		id := fmt.Sprintf("deployment-%03d", i)
		ids = append(ids, id)
		c.admitN("n1", id, state.Limits{}, state.Reservation{Requests: 1, Tokens: 100}, 1+i%3)
	}
	c.net.flushAll() // all lost
	c.net.dropAll = false
	c.net.queue = true
	c.tick("n1", "n2")
	c.net.Deliver()
	c.clock.Advance(checkAfter)
	c.tick("n2")
	c.net.Deliver() // the ask; the repair is queued
	var compressed int
	for _, p := range c.net.pending {
		if p.msg[0] != msgRepair || len(p.msg) > maxMessage {
			t.Fatalf("a %d-byte packet of kind %#x in the repair", len(p.msg), p.msg[0])
		}
		if p.msg[1] == wireFlate {
			compressed++
		}
	}
	if compressed == 0 {
		t.Fatalf("none of the repair's %d packets is compressed", len(c.net.pending))
	}
	c.net.Deliver()
	for _, id := range ids {
		r, tok, _ := c.nodes["n1"].Snapshot(id)
		c.wantSnapshot([]string{"n2"}, id, r, tok, 0)
	}
}
