package cluster

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestStatusFromHeartbeats(t *testing.T) {
	n := &Node{cfg: Config{NodeName: "me", heartbeat: heartbeatEvery}}
	now := time.Now()
	beat := n.heartbeatInterval()
	tests := []struct {
		name string
		m    memberState
		want string
	}{
		{"heard just now", memberState{Member: Member{Name: "a", Status: StatusAlive}, since: now.Add(-time.Hour), heard: now.Add(-beat)}, StatusAlive},
		{"silent for long", memberState{Member: Member{Name: "a", Status: StatusAlive}, since: now.Add(-time.Hour), heard: now.Add(-4 * beat)}, StatusSuspect},
		{"never heard, joined just now", memberState{Member: Member{Name: "a", Status: StatusAlive}, since: now.Add(-beat)}, StatusAlive},
		{"never heard, joined long ago", memberState{Member: Member{Name: "a", Status: StatusAlive}, since: now.Add(-time.Hour)}, StatusSuspect},
		{"self is never suspect", memberState{Member: Member{Name: "me", Status: StatusAlive}, since: now.Add(-time.Hour)}, StatusAlive},
		{"dead stays dead", memberState{Member: Member{Name: "a", Status: StatusDead}, since: now.Add(-time.Hour)}, StatusDead},
		{"left stays left", memberState{Member: Member{Name: "a", Status: StatusLeft}, heard: now}, StatusLeft},
	}
	for _, tt := range tests {
		if got := n.statusLocked(&tt.m, now, beat); got != tt.want {
			t.Errorf("%s: status %q, want %q", tt.name, got, tt.want)
		}
	}
}

// A member cut off from the others is shown as suspect before memberlist declares it dead,
// and healthy members never are.
func TestSilentMemberIsSuspectBeforeDead(t *testing.T) {
	c := newTestCluster(t)
	var nodes []*Node
	for i := range 3 {
		nodes = append(nodes, c.start(i, nil, seed(memAddrOf(0))))
	}
	waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })
	// Every member has been heard from: all alive, for several heartbeat periods.
	for range 3 {
		waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })
	}

	c.net.Partition([]string{memAddrOf(0), memAddrOf(1)}, []string{memAddrOf(2)})
	var seen []string
	deadline := time.Now().Add(converge)
	for time.Now().Before(deadline) {
		st := statuses(nodes[0])
		if len(seen) == 0 || seen[len(seen)-1] != st["node2"] {
			seen = append(seen, st["node2"])
		}
		if st["node1"] != StatusAlive {
			t.Fatalf("healthy node1 shown as %q", st["node1"])
		}
		if st["node2"] == StatusDead {
			break
		}
		time.Sleep(2 * time.Millisecond) // poll interval: the suspect phase lasts a few hundred ms
	}
	if len(seen) < 3 || seen[0] != StatusAlive || seen[1] != StatusSuspect || seen[len(seen)-1] != StatusDead {
		t.Fatalf("node2's statuses over the partition = %v, want alive, suspect, ..., dead", seen)
	}
}

// When a partition heals, the sides exchange full state at once (resync), without waiting for
// memberlist's periodic push-pull (off here): the usage deltas sent meanwhile were lost.
func TestHealedPartitionResyncs(t *testing.T) {
	c := newTestCluster(t)
	noPushPull := func(cfg *Config) {
		cfg.tune = func(mc *memberlist.Config) { fastGossip(mc); mc.PushPullInterval = 0 }
	}
	syncs := []*fakeSync{{state: []byte("state0")}, {state: []byte("state1")}, {state: []byte("state2")}}
	var nodes []*Node
	for i, s := range syncs {
		nodes = append(nodes, c.start(i, s, func(cfg *Config) {
			noPushPull(cfg)
			if i > 0 {
				cfg.Join = []string{memAddrOf(0)}
			}
		}))
	}
	waitFor(t, 10*time.Second, func() error { return allSee(nodes, names(nodes), StatusAlive) })
	waitFor(t, 10*time.Second, func() error { // heartbeats flow both ways
		for _, n := range nodes {
			for _, m := range n.Members() {
				if !m.Self && m.LastHeard.IsZero() {
					return fmt.Errorf("%s has not heard %s yet", n.Name(), m.Name)
				}
			}
		}
		return nil
	})
	merged := func(s *fakeSync) int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.merged) }
	before := [3]int{merged(syncs[0]), merged(syncs[1]), merged(syncs[2])}

	c.net.Partition([]string{memAddrOf(0), memAddrOf(1)}, []string{memAddrOf(2)})
	waitFor(t, 10*time.Second, func() error {
		if st := statuses(nodes[0])["node2"]; st == StatusAlive {
			return errors.New("node0 still hears node2")
		}
		return nil
	})
	c.net.Heal()
	waitFor(t, 10*time.Second, func() error {
		if merged(syncs[2]) == before[2] {
			return fmt.Errorf("node2 has not merged the other side's state (resyncs %d %d %d, node0 sees %v)",
				nodes[0].resyncs.Load(), nodes[1].resyncs.Load(), nodes[2].resyncs.Load(), statuses(nodes[0]))
		}
		if merged(syncs[0]) == before[0] && merged(syncs[1]) == before[1] {
			return errors.New("the other side has not merged node2's state")
		}
		return nil
	})
	if r := nodes[0].resyncs.Load() + nodes[1].resyncs.Load() + nodes[2].resyncs.Load(); r == 0 {
		t.Fatal("the state moved, but not by a resync")
	}
}

// resendSync is a fakeSync that can resend its own counts (as state/crdt's Backend can), and
// records since when it was asked to.
type resendSync struct {
	fakeSync
	resendMu sync.Mutex
	resends  []time.Time
}

func (r *resendSync) Resend(since time.Time) {
	r.resendMu.Lock()
	defer r.resendMu.Unlock()
	r.resends = append(r.resends, since)
}

func (r *resendSync) resentSince() []time.Time {
	r.resendMu.Lock()
	defer r.resendMu.Unlock()
	return slices.Clone(r.resends)
}

// With a StateSync that resends, a member coming back after a partition has both sides resend
// their own counts since before the partition at once, and the backstop's full-state exchange
// does not run while nobody is gone: each origin repairs its own.
func TestHealedPartitionResends(t *testing.T) {
	c := newTestCluster(t)
	syncs := []*resendSync{{fakeSync: fakeSync{state: []byte("state0")}}, {fakeSync: fakeSync{state: []byte("state1")}}, {fakeSync: fakeSync{state: []byte("state2")}}}
	var nodes []*Node
	for i, s := range syncs {
		nodes = append(nodes, c.start(i, s, func(cfg *Config) {
			cfg.tune = func(mc *memberlist.Config) { fastGossip(mc); mc.PushPullInterval = 0 }
			if i > 0 {
				cfg.Join = []string{memAddrOf(0)}
			}
		}))
	}
	waitFor(t, 10*time.Second, func() error { return allSee(nodes, names(nodes), StatusAlive) })
	cut := time.Now()
	c.net.Partition([]string{memAddrOf(0), memAddrOf(1)}, []string{memAddrOf(2)})
	waitFor(t, 10*time.Second, func() error {
		if st := statuses(nodes[0])["node2"]; st != StatusDead {
			return fmt.Errorf("node0 sees node2 %s", st)
		}
		return nil
	})
	if len(syncs[0].resentSince()) != 0 || len(syncs[2].resentSince()) != 0 {
		t.Fatal("a resend before anything came back")
	}
	c.net.Heal()
	waitFor(t, 10*time.Second, func() error {
		for _, i := range []int{0, 2} {
			r := syncs[i].resentSince()
			if len(r) == 0 {
				return fmt.Errorf("node%d has not resent", i)
			}
			// A member that memberlist declared dead just after the heal, and alive again,
			// may bring a resend since its death first; one of them covers the partition.
			if first := slices.MinFunc(r, time.Time.Compare); first.After(cut) {
				return fmt.Errorf("node%d resent since %v at the earliest, after the partition began at %v", i, first, cut)
			}
		}
		return nil
	})
	if r := nodes[0].resyncs.Load() + nodes[1].resyncs.Load() + nodes[2].resyncs.Load(); r != 0 {
		t.Errorf("%d full-state exchanges ran before the backstop's time", r)
	}
}

// A member back from dead exchanges full state with the member after it in name order, once at
// once and once exchangeAfter later, and with no other: what it missed while dead to some nodes
// is not resent to it.
func TestMemberBackFromDeadExchangesWithTheNext(t *testing.T) {
	c := newTestCluster(t)
	var nodes []*Node
	for i := range 3 {
		s := &resendSync{fakeSync: fakeSync{state: fmt.Appendf(nil, "state%d", i)}}
		nodes = append(nodes, c.start(i, s, func(cfg *Config) {
			cfg.tune = func(mc *memberlist.Config) { fastGossip(mc); mc.PushPullInterval = 0 }
			if i > 0 {
				cfg.Join = []string{memAddrOf(0)}
			}
		}))
	}
	waitFor(t, 10*time.Second, func() error { return allSee(nodes, names(nodes), StatusAlive) })
	c.net.Partition([]string{memAddrOf(0), memAddrOf(1)}, []string{memAddrOf(2)})
	waitFor(t, 10*time.Second, func() error {
		for _, n := range nodes[:2] {
			if st := statuses(n)["node2"]; st != StatusDead {
				return fmt.Errorf("%s sees node2 %s", n.Name(), st)
			}
		}
		return nil
	})
	c.net.Heal()
	// node2 came back to node0 and node1; node0 is the next after it (wrapping around).
	waitFor(t, 10*time.Second, func() error {
		if got := nodes[0].exchanges.Load(); got == 0 {
			return errors.New("node0 has not exchanged with node2")
		}
		return nil
	})
	// The second exchange is owed exchangeAfter later. On a loaded machine a member can flap
	// (a probe times out, the member comes back) and bring more exchanges at once, so what is
	// checked is that one comes after half that time has passed.
	var atHalf atomic.Int64
	atHalf.Store(-1)
	half := time.AfterFunc(exchangeAfter/2, func() { atHalf.Store(int64(nodes[0].exchanges.Load())) })
	t.Cleanup(func() { half.Stop() })
	waitFor(t, 10*time.Second, func() error {
		h := atHalf.Load()
		if h < 0 {
			return fmt.Errorf("%v since the first exchange has not passed", exchangeAfter/2)
		}
		if got := int64(nodes[0].exchanges.Load()); got <= h {
			return fmt.Errorf("node0 exchanged %d times, none more than %v after the first", got, exchangeAfter/2)
		}
		return nil
	})
}

// Of the nodes that see a member come back from dead, only the next after it owes the member an
// exchange (node1 in the test above may also see node0 come back, when node2's old verdict on
// node0 reaches it after the heal, so that is checked here).
func TestBackFromDeadOwedByTheNextOnly(t *testing.T) {
	for _, tt := range []struct {
		self string
		owes bool
	}{{"a", true}, {"b", false}} {
		n := &Node{
			cfg:          Config{NodeName: tt.self, heartbeat: heartbeatEvery},
			log:          testLogger(t),
			sync:         &resendSync{},
			members:      map[string]*memberState{},
			changed:      make(chan struct{}, 1),
			resyncWait:   map[string]struct{}{},
			resyncKick:   make(chan struct{}, 1),
			exchangeWait: map[string]exchangeDue{},
		}
		for i, name := range []string{"a", "b", "c"} {
			n.setMember(name, net.IPv4(127, 0, 0, byte(i+1)), 7946, StatusAlive)
		}
		n.setMember("c", net.IPv4(127, 0, 0, 3), 7946, StatusDead)
		if len(n.exchangeWait) != 0 {
			t.Fatalf("%s owes an exchange before anyone came back: %v", tt.self, n.exchangeWait)
		}
		n.setMember("c", net.IPv4(127, 0, 0, 3), 7946, StatusAlive)
		_, owes := n.exchangeWait["127.0.0.3:7946"]
		if owes != tt.owes {
			t.Errorf("%s owes c an exchange: %v, want %v (a follows c)", tt.self, owes, tt.owes)
		}
	}
}

// The member after another in name order wraps around, and skips members not alive.
func TestNextAfter(t *testing.T) {
	n := &Node{members: map[string]*memberState{}}
	for name, status := range map[string]string{"a": StatusAlive, "b": StatusDead, "c": StatusAlive, "d": StatusAlive} {
		n.members[name] = &memberState{Member: Member{Name: name, Status: status}}
	}
	for name, want := range map[string]string{"a": "c", "b": "c", "c": "d", "d": "a", "e": "a"} {
		if got := n.nextAfterLocked(name); got != want {
			t.Errorf("next after %s = %q, want %q", name, got, want)
		}
	}
	n.members = map[string]*memberState{"a": {Member: Member{Name: "a", Status: StatusAlive}}}
	if got := n.nextAfterLocked("a"); got != "" {
		t.Errorf("next after the only member = %q, want none", got)
	}
}

// The backstop exchange runs only while a member that died or left lately may hold counts
// nobody else can resend.
func TestOriginGone(t *testing.T) {
	n := &Node{members: map[string]*memberState{}}
	set := func(status string, since time.Time) {
		n.members["m"] = &memberState{Member: Member{Name: "m", Status: status}, since: since}
	}
	set(StatusAlive, time.Now())
	if n.originGone() {
		t.Error("an alive member counts as gone")
	}
	for _, st := range []string{StatusDead, StatusLeft} {
		set(st, time.Now().Add(-time.Second))
		if !n.originGone() {
			t.Errorf("a member %s a second ago does not count as gone", st)
		}
		set(st, time.Now().Add(-goneWithin-time.Second))
		if n.originGone() {
			t.Errorf("a member %s beyond the window counts as gone", st)
		}
	}
}

// A heartbeat from a node this one does not know as a member marks its view for repair; one
// from a member, or an echo of its own name, does not.
func TestHeartbeatFromAStrangerAsksForRepair(t *testing.T) {
	n := &Node{cfg: Config{NodeName: "me", heartbeat: heartbeatEvery, Now: time.Now},
		members: map[string]*memberState{"a": {Member: Member{Name: "a", Status: StatusAlive}, since: time.Now()}}}
	beat := func(name string) []byte { return append([]byte{msgHeartbeat}, name...) }
	for _, name := range []string{"a", "me"} {
		if !n.handleHeartbeat(beat(name)) || n.strangerHeard.Load() {
			t.Fatalf("a heartbeat from %q: stranger %v", name, n.strangerHeard.Load())
		}
	}
	if !n.handleHeartbeat(beat("b")) || !n.strangerHeard.Load() {
		t.Fatal("a heartbeat from a node that is not a member did not ask for a repair")
	}
}

// resendLog is a StateSync that records its resends.
type resendLog struct {
	StateSync
	since []time.Time
}

func (r *resendLog) Resend(since time.Time) { r.since = append(r.since, since) }

// A healed partition brings its members back one by one as their heartbeats fall due: one
// resend stands for all whose silence began with it (within a heartbeat), but not for a
// silence that began earlier, nor for one that began after it.
func TestOneResendCoversTheSilenceItEnded(t *testing.T) {
	log := &resendLog{}
	n := &Node{cfg: Config{heartbeat: heartbeatEvery}, sync: log,
		resyncWait: map[string]struct{}{}, resyncKick: make(chan struct{}, 1)}
	now := time.Now()
	resends := func(since time.Time) int {
		before := len(log.since)
		n.resync("a:1", since)
		n.resend()
		return len(log.since) - before
	}
	if got := resends(now.Add(-10 * time.Second)); got != 1 {
		t.Fatalf("the first member back: %d resends, want 1", got)
	}
	if got := resends(now.Add(-10*time.Second - heartbeatEvery/2)); got != 0 {
		t.Fatalf("a member silent since half a beat earlier: %d resends, want 0", got)
	}
	if got := resends(now.Add(-10*time.Second - 2*heartbeatEvery)); got != 1 {
		t.Fatalf("a member silent since two beats earlier: %d resends, want 1", got)
	}
	if got := resends(time.Now().Add(time.Millisecond)); got != 1 {
		t.Fatalf("a member silent since after the resend: %d resends, want 1", got)
	}
	n.resentAt = n.resentAt.Add(-resendCovers) // long ago
	if got := resends(now.Add(-10 * time.Second)); got != 1 {
		t.Fatalf("a member back after the resend stopped covering: %d resends, want 1", got)
	}
}

// pausedSync is a StateSync whose deltas from each member last paused as long ago as it says.
type pausedSync struct {
	resendLog
	began map[string]time.Duration
}

func (p *pausedSync) LastPause(node string) (time.Duration, bool) {
	d, ok := p.began[node]
	return d, ok
}

// A member heard again after a silence has this node resend from the start of the latest
// pause in the member's deltas when that came after its last heartbeat (a busy member's deltas
// stop when the partition begins, its heartbeats may have been due seconds later), and from
// its last heartbeat otherwise.
func TestResendFromWhenTheDeltasPaused(t *testing.T) {
	sync := &pausedSync{began: map[string]time.Duration{"busy": 3 * time.Second, "idle": time.Hour}}
	n := &Node{cfg: Config{NodeName: "me", heartbeat: heartbeatEvery, Now: time.Now}, sync: sync,
		resyncWait: map[string]struct{}{}, resyncKick: make(chan struct{}, 1), members: map[string]*memberState{}}
	for _, tc := range []struct {
		name string
		want time.Duration // before now, the second of slack included
	}{
		{"busy", 3*time.Second + time.Second},
		{"idle", 10*time.Second + time.Second},
		{"unknown", 10*time.Second + time.Second},
	} {
		n.members[tc.name] = &memberState{Member: Member{Name: tc.name, Status: StatusAlive, Addr: tc.name + ":1"},
			heard: time.Now().Add(-10 * time.Second)}
		n.resentAt = time.Time{} // each its own resend
		start := time.Now()
		if !n.handleHeartbeat(append([]byte{msgHeartbeat}, tc.name...)) {
			t.Fatal("not taken as a heartbeat")
		}
		n.resend()
		if len(sync.since) == 0 {
			t.Fatalf("%s: no resend", tc.name)
		}
		got := start.Sub(sync.since[len(sync.since)-1])
		if got < tc.want-time.Second/2 || got > tc.want+time.Second/2 {
			t.Errorf("%s: resent since %v before the heartbeat, want about %v", tc.name, got.Round(time.Millisecond), tc.want)
		}
	}
}
