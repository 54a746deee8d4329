package crdt

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/statetest"
)

func newSolo(t *testing.T, clock *statetest.Clock) state.Backend {
	b := New(Options{Node: "solo", Now: clock.Now})
	t.Cleanup(b.Close)
	return b
}

// newEchoing is a node connected to two idle peers that receive its deltas (flushed by the
// background loop while a test runs) and push their full state, which holds the node's own
// cells, straight back: merging those echoes must never count anything twice.
func newEchoing(t *testing.T, clock *statetest.Clock) state.Backend {
	n := newMemNet()
	n.echoFull = true
	b := New(Options{Node: "a", Now: clock.Now, FlushEvery: time.Millisecond})
	t.Cleanup(b.Close)
	n.add("a", b)
	for _, name := range []string{"p1", "p2"} {
		n.add(name, New(Options{Node: name, Now: clock.Now, FlushEvery: -1}))
	}
	return flushing{b}
}

func TestConformanceSingleNode(t *testing.T)       { statetest.Run(t, newSolo) }
func TestConformanceWithEchoingPeers(t *testing.T) { statetest.Run(t, newEchoing) }
func TestPropertiesSingleNode(t *testing.T)        { statetest.RunProperties(t, newSolo) }
func TestPropertiesWithEchoingPeers(t *testing.T)  { statetest.RunProperties(t, newEchoing) }

// flushing flushes after every change, so every delta is echoed back at once, on top of the
// background loop's flushes.
type flushing struct{ b *Backend }

func (f flushing) Counter(id string) state.Counter { return flushingCounter{f.b.Counter(id), f.b} }

type flushingCounter struct {
	state.Counter
	b *Backend
}

func (f flushingCounter) Admit(lim state.Limits, r state.Reservation) (state.Ticket, error) {
	defer f.b.Flush()
	return f.Counter.Admit(lim, r)
}

func (f flushingCounter) Settle(t state.Ticket, u state.Usage) {
	f.Counter.Settle(t, u)
	f.b.Flush()
}

func (f flushingCounter) Release(t state.Ticket) {
	f.Counter.Release(t)
	f.b.Flush()
}

var t0 = time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC)

// cluster is n nodes named n1..nN on one memNet and one clock, flushed by hand.
// Honest nodes never reject each other's messages: the test fails on any rejection unless it
// sets allowRejects.
type cluster struct {
	t            *testing.T
	net          *memNet
	clock        *statetest.Clock
	nodes        map[string]*Backend
	rejects      rejects
	allowRejects bool
}

func newCluster(t *testing.T, n int) *cluster {
	c := &cluster{t: t, net: newMemNet(), clock: statetest.NewClock(t0), nodes: map[string]*Backend{}}
	for i := 1; i <= n; i++ {
		c.start(fmt.Sprintf("n%d", i))
	}
	t.Cleanup(func() {
		if got := c.rejects.get(); len(got) > 0 && !c.allowRejects {
			t.Errorf("honest nodes rejected messages: %v", got)
		}
	})
	return c
}

// start starts (or restarts) node name: a new Backend, a new incarnation.
func (c *cluster) start(name string) *Backend {
	b := New(Options{Node: name, Now: c.clock.Now, FlushEvery: -1, OnReject: c.rejects.add, shareHorizon: testHorizon})
	c.nodes[name] = b
	c.net.add(name, b)
	return b
}

func (c *cluster) admit(name, id string, lim state.Limits, r state.Reservation) (state.Ticket, error) {
	return c.nodes[name].Counter(id).Admit(lim, r)
}

// admitN admits r on node name n times under lim and returns how many were admitted.
func (c *cluster) admitN(name, id string, lim state.Limits, r state.Reservation, n int) int {
	got := 0
	for range n {
		tk, err := c.admit(name, id, lim, r)
		if err != nil {
			continue
		}
		got++
		c.nodes[name].Counter(id).Settle(tk, state.Usage{PromptTokens: r.Tokens})
	}
	return got
}

// testHorizon is (at least) the share check's horizon (share.go) in a cluster's nodes: shorter than
// herd's, so that tests can let many horizons pass within a window.
const testHorizon = 50 * time.Millisecond

// quiet is how far admitApart moves the clock between admissions: past every count of the
// share check's horizon (H and a slot), so each admission finds the cluster quiet.
const quiet = 2 * testHorizon

// admitApart is admitN with the clock moved on by quiet before each admission: nodes that
// admit one request at a time, as on a lightly loaded cluster, where only the merged window
// decides (the share check is for bursts).
func (c *cluster) admitApart(name, id string, lim state.Limits, r state.Reservation, n int) int {
	got := 0
	for range n {
		c.clock.Advance(quiet)
		got += c.admitN(name, id, lim, r, 1)
	}
	return got
}

func (c *cluster) wantSnapshot(names []string, id string, requests, tokens, inFlight int64) {
	c.t.Helper()
	for _, name := range names {
		r, tk, f := c.nodes[name].Snapshot(id)
		if r != requests || tk != tokens || f != inFlight {
			c.t.Fatalf("%s sees %d requests, %d tokens, %d in flight; want %d, %d, %d",
				name, r, tk, f, requests, tokens, inFlight)
		}
	}
}

func names(ns ...int) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = fmt.Sprintf("n%d", n)
	}
	return out
}

func TestFiveNodesConverge(t *testing.T) {
	c := newCluster(t, 5)
	var lim state.Limits
	for i, name := range names(1, 2, 3, 4, 5) {
		c.admitN(name, "d", lim, state.Reservation{Requests: 1, Tokens: 10}, i+1)
		c.clock.Advance(300 * time.Millisecond)
	}
	// Deltas only: 1+2+3+4+5 requests everywhere.
	c.net.flushAll()
	c.wantSnapshot(names(1, 2, 3, 4, 5), "d", 15, 150, 0)

	// Settles and releases travel too; tokens settle below and above the reservation.
	tk, _ := c.admit("n1", "d", lim, state.Reservation{Requests: 1, Tokens: 100})
	tk2, _ := c.admit("n2", "d", lim, state.Reservation{Requests: 1, Tokens: 100})
	tk3, _ := c.admit("n3", "d", lim, state.Reservation{Requests: 1, Tokens: 100})
	c.net.flushAll()
	c.wantSnapshot(names(1, 2, 3, 4, 5), "d", 18, 450, 3)
	c.nodes["n1"].Counter("d").Settle(tk, state.Usage{PromptTokens: 30})
	c.nodes["n2"].Counter("d").Settle(tk2, state.Usage{PromptTokens: 300})
	c.nodes["n3"].Counter("d").Release(tk3)
	c.net.flushAll()
	c.wantSnapshot(names(1, 2, 3, 4, 5), "d", 17, 480, 0)

	// Repeated full-state exchanges change nothing: merge is idempotent.
	c.net.pushPull()
	c.net.pushPull()
	c.wantSnapshot(names(1, 2, 3, 4, 5), "d", 17, 480, 0)
}

// Lost deltas are repaired by push-pull, and queued (late) deltas then change nothing.
func TestLostAndLateDeltas(t *testing.T) {
	c := newCluster(t, 3)
	c.net.dropAll = true
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 5}, 4)
	c.net.flushAll()
	c.wantSnapshot(names(2, 3), "d", 0, 0, 0)
	c.net.dropAll = false
	c.net.pushPull()
	c.wantSnapshot(names(1, 2, 3), "d", 4, 20, 0)

	c.net.queue = true
	c.admitN("n2", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 5}, 2)
	c.net.flushAll()
	c.wantSnapshot(names(1, 3), "d", 4, 20, 0)
	c.net.pushPull()
	c.wantSnapshot(names(1, 2, 3), "d", 6, 30, 0)
	c.net.Deliver() // the late deltas arrive after the repair
	c.wantSnapshot(names(1, 2, 3), "d", 6, 30, 0)
}

func TestPartitionAndHeal(t *testing.T) {
	c := newCluster(t, 5)
	lim := state.Limits{RPM: 20}
	one := state.Reservation{Requests: 1, Tokens: 1}
	c.admitN("n1", "d", lim, one, 2)
	c.admitN("n4", "d", lim, one, 2)
	c.net.flushAll()
	c.wantSnapshot(names(1, 2, 3, 4, 5), "d", 4, 4, 0)

	c.net.partition(map[string]int{"n1": 1, "n2": 1, "n3": 2, "n4": 2, "n5": 2})
	// Each side admits against its own view: up to the limit on each side.
	if got := c.admitApart("n1", "d", lim, one, 10); got != 10 {
		t.Fatalf("n1 admitted %d of 10", got)
	}
	c.net.flushAll()
	if got := c.admitApart("n2", "d", lim, one, 10); got != 6 {
		t.Fatalf("n2 admitted %d, want 6 (20 - 4 before - 10 by n1)", got)
	}
	if got := c.admitApart("n3", "d", lim, one, 10); got != 10 {
		t.Fatalf("n3 admitted %d of 10", got)
	}
	c.net.flushAll()
	if got := c.admitApart("n5", "d", lim, one, 10); got != 6 {
		t.Fatalf("n5 admitted %d, want 6", got)
	}
	c.net.flushAll()
	c.net.pushPull() // within each side only
	c.wantSnapshot(names(1, 2), "d", 20, 20, 0)
	c.wantSnapshot(names(3, 4, 5), "d", 20, 20, 0)

	c.net.heal()
	c.net.pushPull()
	c.wantSnapshot(names(1, 2, 3, 4, 5), "d", 36, 36, 0) // the true total: 4 + 16 + 16
	if _, err := c.admit("n3", "d", lim, one); err == nil {
		t.Fatal("admitted over the limit after healing")
	}
}

func TestRestartDoesNotReset(t *testing.T) {
	c := newCluster(t, 3)
	lim := state.Limits{RPM: 10}
	one := state.Reservation{Requests: 1, Tokens: 7}
	c.admitN("n1", "d", lim, one, 6)
	c.net.flushAll()
	c.clock.Advance(10 * time.Second)

	old := c.nodes["n1"]
	b := c.start("n1") // same name, new process
	if b.self == old.self {
		t.Fatal("a restart kept its incarnation")
	}
	c.wantSnapshot(names(2, 3), "d", 6, 42, 0)
	c.net.pushPull() // the join
	c.wantSnapshot(names(1, 2, 3), "d", 6, 42, 0)

	// The new incarnation's counts add to the old one's, everywhere.
	if got := c.admitN("n1", "d", lim, one, 10); got != 4 {
		t.Fatalf("restarted n1 admitted %d, want 4", got)
	}
	c.net.flushAll()
	c.wantSnapshot(names(1, 2, 3), "d", 10, 70, 0)

	// Both incarnations age out with their buckets.
	c.clock.Advance(state.Span + state.BucketWidth)
	c.net.flushAll()
	c.net.pushPull()
	c.wantSnapshot(names(1, 2, 3), "d", 0, 0, 0)
	for _, name := range names(1, 2, 3) {
		if _, ok := c.nodes[name].counter("d").incs[old.self]; ok {
			t.Errorf("%s still holds n1's old incarnation", name)
		}
	}
}

func TestDeadNodeAgesOut(t *testing.T) {
	c := newCluster(t, 3)
	lim := state.Limits{MaxParallel: 10}
	one := state.Reservation{Requests: 1, Tokens: 3}
	c.admitN("n3", "d", lim, one, 5)
	// Two calls still in flight when n3 dies.
	c.admit("n3", "d", lim, one)
	c.admit("n3", "d", lim, one)
	c.net.flushAll()
	c.wantSnapshot(names(1, 2), "d", 7, 21, 2)
	c.net.remove("n3")

	c.clock.Advance(state.Span - time.Second)
	c.net.flushAll()
	c.net.pushPull()
	c.wantSnapshot(names(1, 2), "d", 7, 21, 2)

	c.clock.Advance(2 * time.Second)
	c.net.flushAll()
	c.net.pushPull()
	c.wantSnapshot(names(1, 2), "d", 0, 0, 0)
	for _, name := range names(1, 2) {
		if n := len(c.nodes[name].counter("d").incs); n != 1 {
			t.Errorf("%s still holds %d incarnations, want only its own", name, n)
		}
	}
}

// A live node with a long call in flight refreshes its count, so peers do not expire it.
func TestInFlightRefreshed(t *testing.T) {
	c := newCluster(t, 2)
	tk, _ := c.admit("n1", "d", state.Limits{}, state.Reservation{Requests: 1})
	for range 30 {
		c.clock.Advance(5 * time.Second)
		c.net.flushAll()
	}
	c.wantSnapshot(names(1, 2), "d", 0, 0, 1)
	c.nodes["n1"].Counter("d").Settle(tk, state.Usage{})
	c.net.flushAll()
	c.wantSnapshot(names(1, 2), "d", 0, 0, 0)
}

// In-flight counts are cluster-wide: least-busy sees the calls other nodes have in flight, and
// MaxParallel holds across the cluster as far as the view is current.
func TestInFlightClusterWide(t *testing.T) {
	c := newCluster(t, 3)
	lim := state.Limits{MaxParallel: 3}
	one := state.Reservation{Requests: 1}
	var tks []state.Ticket
	for range 2 {
		tk, err := c.admit("n1", "busy", lim, one)
		if err != nil {
			t.Fatal(err)
		}
		tks = append(tks, tk)
	}
	c.admit("n2", "idle", lim, one)
	c.net.flushAll()
	now := c.clock.Now()
	if b, i := c.nodes["n3"].Counter("busy").LoadAt(now), c.nodes["n3"].Counter("idle").LoadAt(now); b.InFlight != 2 || i.InFlight != 1 {
		t.Fatalf("n3 sees busy %d, idle %d in flight; want 2, 1", b.InFlight, i.InFlight)
	}
	if _, err := c.admit("n3", "busy", lim, one); err != nil {
		t.Fatal(err)
	}
	c.net.flushAll()
	if _, err := c.admit("n2", "busy", lim, one); err == nil {
		t.Fatal("n2 admitted a 4th call in flight cluster-wide")
	}
	for _, tk := range tks {
		c.nodes["n1"].Counter("busy").Settle(tk, state.Usage{})
	}
	c.net.flushAll()
	c.wantSnapshot(names(1, 2, 3), "busy", 3, 0, 1)
}

// Deltas are split into packets under maxMessage, and each decodes on its own.
func TestDeltasSplit(t *testing.T) {
	c := newCluster(t, 2)
	for range 3 {
		for i := range 200 {
			id := fmt.Sprintf("deployment-with-a-long-name-%03d", i)
			c.admitN("n1", id, state.Limits{}, state.Reservation{Requests: 1, Tokens: 1 << 40}, 1)
		}
		c.clock.Advance(time.Second)
	}
	c.net.flushAll()
	if c.net.maxSize > maxMessage {
		t.Fatalf("a %d-byte delta; want at most %d", c.net.maxSize, maxMessage)
	}
	if c.net.sent < 2 {
		t.Fatalf("%d messages: the batch was not split", c.net.sent)
	}
	for i := range 200 {
		id := fmt.Sprintf("deployment-with-a-long-name-%03d", i)
		c.wantSnapshot(names(1, 2), id, 3, 3<<40, 0)
	}
	t.Logf("%d messages, largest %d bytes", c.net.sent, c.net.maxSize)
}

// One deployment's 61 cells with huge counts do not fit one packet: the record is split.
func TestRecordSplit(t *testing.T) {
	var cells []cell
	for x := range ringSize {
		cells = append(cells, cell{bucket: 1_750_000_000 + x, reqP: 1 << 62, reqN: 1 << 61, tokP: 1 << 62, tokN: 1 << 62})
	}
	enc := encoder{limit: maxMessage}
	enc.record(incKey{node: "n", epoch: 1 << 62}, "d", 9, 4, cells)
	msgs := enc.messages()
	if len(msgs) < 2 {
		t.Fatalf("%d messages", len(msgs))
	}
	var got []cell
	ifSeen := 0
	for _, m := range msgs {
		if len(m) > maxMessage {
			t.Fatalf("%d-byte message", len(m))
		}
		err := decode(m, 1, func(_ meta, k incKey, id string, ifVer uint64, inFlight int64, cs []cell) {
			if k.node != "n" || k.epoch != 1<<62 || id != "d" {
				t.Fatalf("record of %v %q", k, id)
			}
			if ifVer != 0 {
				ifSeen++
				if ifVer != 9 || inFlight != 4 {
					t.Fatalf("in flight %d v%d", inFlight, ifVer)
				}
			}
			got = append(got, cs...)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if ifSeen != 1 || len(got) != len(cells) {
		t.Fatalf("%d in-flight records, %d cells", ifSeen, len(got))
	}
	for i := range cells {
		if got[i] != cells[i] {
			t.Fatalf("cell %d = %+v, want %+v", i, got[i], cells[i])
		}
	}
}

func TestGarbageChangesNothing(t *testing.T) {
	c := newCluster(t, 2)
	c.allowRejects = true
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 5}, 3)
	c.net.flushAll()
	good := c.nodes["n1"].LocalState(true)
	for _, bad := range [][]byte{nil, {}, {2}, {wireVersion, 9}, good[:len(good)-1], append(append([]byte{}, good...), tagDep)} {
		c.nodes["n2"].HandleMessage(bad)
		c.nodes["n2"].MergeRemoteState(bad)
	}
	c.wantSnapshot(names(2), "d", 3, 15, 0)
	if got := c.rejects.get(); got[reasonNames[reasonMalformed]] != 12 || len(got) != 1 {
		t.Fatalf("rejections %v, want 12 malformed", got)
	}
}

type captureNet func([]byte)

func (c captureNet) SendToAll(msg []byte)             { c(msg) }
func (c captureNet) SendTo(_ string, msg []byte) bool { c(msg); return true }

// A lost in-flight update heals at the owner's next refresh, without a push-pull.
func TestInFlightLostUpdateHeals(t *testing.T) {
	c := newCluster(t, 2)
	tk, _ := c.admit("n1", "d", state.Limits{}, state.Reservation{Requests: 1})
	c.net.flushAll()
	c.net.dropAll = true
	c.nodes["n1"].Counter("d").Settle(tk, state.Usage{})
	c.net.flushAll()
	c.net.dropAll = false
	c.wantSnapshot(names(2), "d", 1, 0, 1)
	c.clock.Advance(inFlightRefresh * state.BucketWidth)
	c.net.flushAll()
	c.wantSnapshot(names(1, 2), "d", 1, 0, 0)
}

// A delta lost in a burst (the receiver's queue full) heals at the next bucket's flush, or at
// the one after if that is lost too, without a push-pull; after the late repeats the cells go
// quiet again.
func TestLostDeltaRepeatedNextBuckets(t *testing.T) {
	c := newCluster(t, 2)
	tk, _ := c.admit("n1", "d", state.Limits{}, state.Reservation{Requests: 3, Tokens: 30})
	c.net.dropAll = true
	c.net.flushAll()
	c.wantSnapshot(names(2), "d", 0, 0, 0)
	c.clock.Advance(state.BucketWidth)
	c.net.flushAll() // the first repeat, lost as well
	c.net.dropAll = false
	c.wantSnapshot(names(2), "d", 0, 0, 0)
	c.clock.Advance(state.BucketWidth)
	c.net.flushAll()
	c.wantSnapshot(names(1, 2), "d", 3, 30, 1)

	c.nodes["n1"].Counter("d").Settle(tk, state.Usage{PromptTokens: 20})
	c.net.flushAll()
	c.wantSnapshot(names(1, 2), "d", 3, 20, 0)
	for range lateRepeat {
		c.clock.Advance(state.BucketWidth)
		c.net.flushAll()
	}
	before := c.net.sent
	c.clock.Advance(state.BucketWidth)
	c.net.flushAll()
	if c.net.sent != before {
		t.Fatalf("%d messages after the last repeat of the last change, want none", c.net.sent-before)
	}
}

// A dead node's in-flight count, known to some survivors only, expires everywhere and is not
// handed back and forth between survivors by push-pull.
func TestDeadInFlightNotResurrected(t *testing.T) {
	c := newCluster(t, 3)
	c.admit("n3", "d", state.Limits{}, state.Reservation{Requests: 1})
	c.net.partition(map[string]int{"n2": 1})
	c.net.flushAll() // only n1 hears it
	c.net.heal()
	c.net.remove("n3")
	for i := range 30 {
		c.clock.Advance(5 * time.Second)
		c.net.flushAll()
		c.net.pushPull()
		if i >= 13 { // more than a window after the count was heard
			c.wantSnapshot(names(1, 2), "d", 0, 0, 0)
		}
	}
}

// Every node admits once per flush interval, so without the share check each would take the
// last free slots alongside the others, up to nodes-1 over. With it the nodes split what
// remains: never over, and at most nodes-1 slots left to nobody (a share below one request).
func TestOvershootBound(t *testing.T) {
	const nodes, rpm = 5, 98 // 98: the last round lands across the limit
	c := newCluster(t, nodes)
	lim := state.Limits{RPM: rpm}
	all := names(1, 2, 3, 4, 5)
	for range 2 * rpm / nodes {
		for _, name := range all {
			c.admit(name, "d", lim, state.Reservation{Requests: 1})
		}
		c.net.flushAll()
		c.clock.Advance(10 * time.Millisecond)
	}
	r, _, _ := c.nodes["n1"].Snapshot("d")
	if r < rpm-(nodes-1) || r > rpm {
		t.Fatalf("%d admitted cluster-wide at rpm %d; want %d..%d", r, rpm, rpm-(nodes-1), rpm)
	}
	t.Logf("%d admitted at rpm %d", r, rpm)
}

// A full state travels compressed, and decompresses to exactly what it held; one that is cut
// short, has bytes after its end, or expands beyond the limit is refused whole.
func TestFullStateCompression(t *testing.T) {
	c := newCluster(t, 2)
	c.allowRejects = true
	for i := range 20 {
		c.admitN("n1", fmt.Sprintf("deployment-%02d", i), state.Limits{}, state.Reservation{Requests: 1, Tokens: 5}, 3)
	}
	raw := c.nodes["n1"].fullState(false)
	packed := compressState(raw)
	if sent := c.nodes["n1"].LocalState(true); sent[0] != wireFlate || len(packed) >= len(raw)/2 {
		t.Fatalf("full state of %d bytes sent as %d bytes starting %#x, want compressed to under half", len(raw), len(sent), sent[0])
	}
	if got, err := expandState(packed, maxState); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("expand: %v, equal %v", err, bytes.Equal(got, raw))
	}
	if got, err := expandState(raw, maxState); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("an uncompressed state must pass as it is: %v", err)
	}
	for name, bad := range map[string][]byte{
		"cut short":     packed[:len(packed)-3],
		"trailing byte": append(slices.Clone(packed), 0),
		"only the mark": {wireFlate},
	} {
		if _, err := expandState(bad, maxState); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := expandState(packed, len(raw)-1); err == nil {
		t.Errorf("expanded beyond the limit")
	}
	c.nodes["n2"].MergeRemoteState(packed[:len(packed)-3])
	c.nodes["n2"].MergeRemoteState(packed)
	for i := range 20 {
		c.wantSnapshot(names(2), fmt.Sprintf("deployment-%02d", i), 3, 15, 0)
	}
	if got := c.rejects.get(); got[reasonNames[reasonMalformed]] != 1 || len(got) != 1 {
		t.Fatalf("rejections %v, want 1 malformed", got)
	}
}

// The periodic push-pull carries a node's own counts only; a joining node gets everyone's.
func TestPeriodicStateIsOwnOnly(t *testing.T) {
	c := newCluster(t, 2)
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 5}, 3)
	c.admitN("n2", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 5}, 2)
	c.net.flushAll()
	origins := func(join bool) map[string]bool {
		msg, err := expandState(c.nodes["n1"].LocalState(join), maxState)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		if err := decode(msg, maxMessageIncs, func(_ meta, k incKey, _ string, _ uint64, _ int64, _ []cell) { got[k.node] = true }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := origins(false); len(got) != 1 || !got["n1"] {
		t.Fatalf("periodic state holds the counts of %v, want n1's only", got)
	}
	if got := origins(true); len(got) != 2 {
		t.Fatalf("a joining node's state holds the counts of %v, want n1's and n2's", got)
	}
}

// StateNews counts full states that taught this node something, not those it already knew.
func TestStateNews(t *testing.T) {
	c := newCluster(t, 2)
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 5}, 3)
	st := c.nodes["n1"].LocalState(true)
	n2 := c.nodes["n2"]
	if n2.StateNews() != 0 {
		t.Fatal("news before any merge")
	}
	n2.MergeRemoteState(st)
	first := n2.StateNews()
	if first == 0 {
		t.Fatal("a state with counts n2 lacked brought no news")
	}
	n2.MergeRemoteState(st)
	n2.MergeRemoteState(n2.LocalState(true))
	if got := n2.StateNews(); got != first {
		t.Fatalf("states n2 already knew counted as news (%d, then %d)", first, got)
	}
}

// A change cut off for longer than the first repeats (a short partition, a relay that died
// unnoticed) still arrives, lateRepeat buckets after it was made, without a push-pull; then
// the cells go quiet.
func TestLostDeltaRepeatedLate(t *testing.T) {
	c := newCluster(t, 2)
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 10}, 2)
	c.net.dropAll = true
	for range lateRepeat - 1 {
		c.net.flushAll()
		c.clock.Advance(state.BucketWidth)
	}
	c.net.flushAll()
	c.net.dropAll = false
	c.wantSnapshot(names(2), "d", 0, 0, 0)
	c.clock.Advance(state.BucketWidth)
	c.net.flushAll()
	c.wantSnapshot(names(1, 2), "d", 2, 20, 0)
	c.net.queue = true
	for range lateRepeat + 2 {
		c.clock.Advance(state.BucketWidth)
		c.net.flushAll()
	}
	for _, p := range c.net.pending { // in-flight refreshes only
		if err := decode(p.msg, maxDeltaIncs, func(_ meta, _ incKey, _ string, _ uint64, _ int64, cells []cell) {
			if len(cells) > 0 {
				t.Errorf("cells %v sent again after the last repeat", cells)
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// Resend has the next flush carry again this node's own cells from a bucket on, after every
// repeat of theirs was lost: what a member that was cut off for longer missed. Cells before
// that bucket are not sent again.
func TestResendSince(t *testing.T) {
	c := newCluster(t, 2)
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 10}, 1)
	c.net.dropAll = true
	c.net.flushAll()
	c.clock.Advance(3 * state.BucketWidth)
	since := c.clock.Now()
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 10}, 2)
	for range lateRepeat + 2 { // every repeat of both is lost
		c.clock.Advance(state.BucketWidth)
		c.net.flushAll()
	}
	c.net.dropAll = false
	c.clock.Advance(state.BucketWidth)
	c.net.flushAll()
	c.wantSnapshot(names(2), "d", 0, 0, 0)

	c.nodes["n1"].Resend(since)
	c.net.flushAll()
	c.wantSnapshot(names(2), "d", 2, 20, 0)
	c.wantSnapshot(names(1), "d", 3, 30, 0)
}

// What a resend sent goes once more a bucket later, for a member whose view still lagged,
// and not again after that: resends follow every healed silence, and the repeats' whole
// schedule would have each one cost five times over.
func TestResendGoesTwice(t *testing.T) {
	c := newCluster(t, 2)
	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 10}, 1)
	for range lateRepeat + 2 { // the change and all its repeats are out of the way
		c.clock.Advance(state.BucketWidth)
		c.net.flushAll()
	}
	c.wantSnapshot(names(2), "d", 1, 10, 0)

	c.net.queue = true
	c.nodes["n1"].Resend(c.clock.Now().Add(-time.Minute))
	var sends []int // messages with cells, per bucket
	for range lateRepeat + 2 {
		n := 0
		for _, p := range c.hop() {
			if cellsIn(t, p) > 0 {
				n++
			}
		}
		sends = append(sends, n)
		c.clock.Advance(state.BucketWidth)
	}
	want := make([]int, lateRepeat+2)
	want[0], want[1] = 1, 1
	if !slices.Equal(sends, want) {
		t.Fatalf("n1 sent cells in %v message(s) in the buckets from its resend on, want %v", sends, want)
	}
}

// cellsIn counts the cells p carries.
func cellsIn(t *testing.T, p packet) int {
	t.Helper()
	n := 0
	if err := decode(p.msg, maxDeltaIncs, func(_ meta, _ incKey, _ string, _ uint64, _ int64, cells []cell) { n += len(cells) }); err != nil {
		t.Fatal(err)
	}
	return n
}
