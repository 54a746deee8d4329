package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
)

// homesSeen records what OnHomes delivered.
type homesSeen struct {
	mu  sync.Mutex
	got []Homes
}

func (h *homesSeen) add(x Homes) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, x)
}

func (h *homesSeen) all() []Homes {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

type homesNode struct {
	*storeNode
	seen *homesSeen
}

// startHome starts node i with its ConfigStore on c's network, with epoch as its incarnation;
// OnHomes is registered before raft starts, so seen holds everything from the replay on.
func startHome(t *testing.T, c *testCluster, i, expect int, epoch uint64, dir string, mod func(*RaftConfig)) *homesNode {
	t.Helper()
	static, dyn, err := config.Split([]byte(storeFile))
	if err != nil {
		t.Fatal(err)
	}
	var seeds []string
	if i > 0 {
		seeds = []string{memAddrOf(0)}
	}
	node := c.start(i, nil, func(cfg *Config) { cfg.Join, cfg.Epoch = seeds, epoch })
	store := NewConfigStore(static, dyn, config.MapEnv{"KEY": "sk-node"}, c.log)
	seen := &homesSeen{}
	store.OnHomes(seen.add)
	rc := RaftConfig{BootstrapExpect: expect, DataDir: dir, streams: c.net.raftStreams, timers: &fastTimers, ApplyTimeout: time.Second}
	if mod != nil {
		mod(&rc)
	}
	r, err := node.StartRaft(rc, store.FSM())
	if err != nil {
		t.Fatal(err)
	}
	store.Attach(r)
	t.Cleanup(func() { _ = r.Shutdown() })
	return &homesNode{storeNode: &storeNode{i: i, node: node, raft: r, store: store}, seen: seen}
}

func stopHome(t *testing.T, n *homesNode) {
	t.Helper()
	if err := n.raft.Shutdown(); err != nil {
		t.Error(err)
	}
	_ = n.node.Shutdown()
}

// waitHomes waits until every store holds want at one version, and returns the table.
func waitHomes(t *testing.T, stores []*ConfigStore, want []Home) Homes {
	t.Helper()
	var first Homes
	waitFor(t, converge, func() error {
		for i, s := range stores {
			h := s.Homes()
			if !slices.Equal(h.Homes, want) {
				return fmt.Errorf("store %d holds %+v, want %+v", i, h, want)
			}
			if i == 0 {
				first = h
			} else if h.Version != first.Version {
				return fmt.Errorf("store %d at homes version %d, store 0 at %d", i, h.Version, first.Version)
			}
		}
		return nil
	})
	return first
}

// waitHomeNames waits until every store's table names exactly names, whatever the epochs.
func waitHomeNames(t *testing.T, stores []*ConfigStore, names ...string) {
	t.Helper()
	waitFor(t, converge, func() error {
		for i, s := range stores {
			if h := s.Homes(); !slices.Equal(h.Names(), names) {
				return fmt.Errorf("store %d holds homes %+v, want %v", i, h, names)
			}
		}
		return nil
	})
}

func storesOf(nodes ...*homesNode) []*ConfigStore {
	var out []*ConfigStore
	for _, n := range nodes {
		out = append(out, n.store)
	}
	return out
}

func homesLeader(t *testing.T, nodes ...*homesNode) *homesNode {
	t.Helper()
	var sn []*storeNode
	for _, n := range nodes {
		sn = append(sn, n.storeNode)
	}
	l := storeLeader(t, sn)
	for _, n := range nodes {
		if n.storeNode == l {
			return n
		}
	}
	return nil
}

// The first table holds every server with the epoch it published, written once; every node's
// OnHomes saw the empty table at registration and then that one; a write that expects an
// older version is a conflict and changes nothing.
func TestHomesTableFormsFromEveryServer(t *testing.T) {
	c := newTestCluster(t)
	var nodes []*homesNode
	for i := range 3 {
		nodes = append(nodes, startHome(t, c, i, 3, uint64(101+i), "", nil))
	}
	want := []Home{{"node0", 101}, {"node1", 102}, {"node2", 103}}
	table := waitHomes(t, storesOf(nodes...), want)
	if table.Version != 1 {
		t.Errorf("first table at version %d, want 1", table.Version)
	}
	for _, n := range nodes {
		waitFor(t, converge, func() error {
			got := n.seen.all()
			if len(got) != 2 || got[0].Version != 0 || len(got[0].Homes) != 0 || got[1].Version != 1 || !slices.Equal(got[1].Homes, want) {
				return fmt.Errorf("node%d's OnHomes saw %+v", n.i, got)
			}
			return nil
		})
		if st := n.store.Status(); st.Homes.Version != 1 || !slices.Equal(st.Homes.Names(), []string{"node0", "node1", "node2"}) {
			t.Errorf("node%d's status shows homes %+v", n.i, st.Homes)
		}
	}

	// A writer that missed version 1 (a deposed leader) conflicts, on a follower too.
	fol := nodes[0]
	if fol == homesLeader(t, nodes...) {
		fol = nodes[1]
	}
	res, err := fol.store.proposeHomes(context.Background(), homesCommand{Expect: 0, Homes: []Home{{"node9", 9}}})
	if err != nil || !res.Conflict || res.Version != 1 {
		t.Fatalf("stale homes write: %+v, %v; want a conflict at version 1", res, err)
	}
	waitHomes(t, storesOf(nodes...), want)
	if got := fol.seen.all(); len(got) != 2 {
		t.Errorf("a conflict reached OnHomes: %+v", got)
	}
}

// A node that joins is added with its epoch, in one change; a home that restarts keeps the
// epoch it was added with (its new one is visible to the leader when the next change is made).
func TestHomesAddJoinerAndKeepRestartedEpoch(t *testing.T) {
	c := newTestCluster(t)
	snapshotOften := func(rc *RaftConfig) { rc.snapshotThreshold, rc.trailingLogs = 4, 2 }
	var nodes []*homesNode
	for i := range 3 {
		nodes = append(nodes, startHome(t, c, i, 3, uint64(101+i), "", snapshotOften))
	}
	waitHomes(t, storesOf(nodes...), []Home{{"node0", 101}, {"node1", 102}, {"node2", 103}})
	for i := range 6 { // logs past the snapshot threshold, so the joiner may start from one
		if _, _, err := nodes[0].store.AddModel(context.Background(), bigEntry(i)); err != nil {
			t.Fatal(err)
		}
	}

	joiner := startHome(t, c, 3, 3, 200, "", snapshotOften)
	all := append(slices.Clone(nodes), joiner)
	want := []Home{{"node0", 101}, {"node1", 102}, {"node2", 103}, {"node3", 200}}
	if v := waitHomes(t, storesOf(all...), want).Version; v != 2 {
		t.Errorf("after the join the table is at version %d, want 2", v)
	}
	waitFor(t, converge, func() error {
		if got := joiner.seen.all(); len(got) == 0 || !slices.Equal(got[len(got)-1].Homes, want) {
			return fmt.Errorf("the joiner's OnHomes saw %+v", got)
		}
		return nil
	})

	stopHome(t, joiner)
	again := startHome(t, c, 3, 3, 300, "", snapshotOften)
	leader := homesLeader(t, nodes...)
	waitFor(t, converge, func() error {
		v, ok := leader.raft.homeView()
		if !ok || !v.servers["node3"] || v.alive["node3"] != 300 {
			return fmt.Errorf("the leader does not see node3 back with epoch 300 yet: %+v", v)
		}
		return nil
	})
	late := startHome(t, c, 4, 3, 400, "", snapshotOften)
	all = append(nodes, again, late)
	table := waitHomes(t, storesOf(all...), append(want, Home{"node4", 400}))
	if table.Version != 3 {
		t.Errorf("adding node4 left version %d, want 3", table.Version)
	}
}

// A home gone from the raft configuration and from gossip for homeGone is removed; the table
// never forgets it before the raft configuration does.
func TestHomesRemovesAHomeGoneLongEnough(t *testing.T) {
	c := newTestCluster(t)
	// Raft drops the dead server after longer than homeGone (1s), so a table that counted
	// only gossip would drop it first.
	grace := func(rc *RaftConfig) { rc.DeadServerGrace = 1500 * time.Millisecond }
	var nodes []*homesNode
	for i := range 3 {
		nodes = append(nodes, startHome(t, c, i, 3, uint64(101+i), "", grace))
	}
	waitHomes(t, storesOf(nodes...), []Home{{"node0", 101}, {"node1", 102}, {"node2", 103}})
	leader := homesLeader(t, nodes...)
	victim := nodes[0]
	if victim == leader {
		victim = nodes[1]
	}
	stopHome(t, victim)
	var rest []*homesNode
	var want []Home
	for _, n := range nodes {
		if n != victim {
			rest = append(rest, n)
			want = append(want, Home{n.node.Name(), uint64(101 + n.i)})
		}
	}
	waitFor(t, converge, func() error {
		h := leader.store.Homes()
		v, _ := leader.raft.homeView()
		if slices.ContainsFunc(h.Homes, func(x Home) bool { return x.Name == victim.node.Name() }) {
			return fmt.Errorf("%s still a home (in the raft configuration: %v)", victim.node.Name(), v.servers[victim.node.Name()])
		}
		if v.servers[victim.node.Name()] {
			t.Fatalf("%s removed from the homes while still in the raft configuration", victim.node.Name())
		}
		return nil
	})
	if v := waitHomes(t, storesOf(rest...), want).Version; v != 2 {
		t.Errorf("after the removal the table is at version %d, want 2", v)
	}
}

// plan with production timings and a moved clock: the first table's wait, the rate limit,
// removal only after two minutes of continuous absence, restarted homes left alone.
func TestHomesPlan(t *testing.T) {
	tm := productionTimers()
	t0 := time.Unix(1_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	view := func(servers []string, alive map[string]uint64) homeView {
		v := homeView{servers: map[string]bool{}, alive: alive}
		for _, s := range servers {
			v.servers[s] = true
		}
		return v
	}
	names := func(h []Home) []string { return Homes{Homes: h}.Names() }

	t.Run("first table waits for epochs, boundedly", func(t *testing.T) {
		k := newHomesKeeper(1, t0)
		v := view([]string{"a", "b", "c"}, map[string]uint64{"a": 1, "b": 2, "c": 0})
		if next, ok := k.plan(Homes{}, v, at(0), &tm); ok {
			t.Fatalf("formed at once without c's epoch: %v", next)
		}
		if next, ok := k.plan(Homes{}, v, at(homesFormWait-time.Millisecond), &tm); ok {
			t.Fatalf("formed before the wait was over: %v", next)
		}
		next, ok := k.plan(Homes{}, v, at(homesFormWait), &tm)
		if !ok || !slices.Equal(next, []Home{{"a", 1}, {"b", 2}}) {
			t.Fatalf("after the wait: %v %v", next, ok)
		}
		v.alive["c"] = 3
		k2 := newHomesKeeper(2, t0)
		next, ok = k2.plan(Homes{}, v, t0, &tm)
		if !ok || !slices.Equal(next, []Home{{"a", 1}, {"b", 2}, {"c", 3}}) {
			t.Fatalf("with every epoch known: %v %v", next, ok)
		}
		dead := view([]string{"a"}, map[string]uint64{})
		if next, ok := newHomesKeeper(3, t0).plan(Homes{}, dead, at(time.Hour), &tm); ok {
			t.Fatalf("an empty first table: %v", next)
		}
	})

	cur := Homes{Version: 1, Homes: []Home{{"a", 1}, {"b", 2}, {"c", 3}}}
	t.Run("additions at most every 30s", func(t *testing.T) {
		k := newHomesKeeper(1, t0) // elected at t0: that starts the period
		v := view([]string{"a", "b", "c", "d", "e"}, map[string]uint64{"a": 1, "b": 2, "c": 3, "d": 4, "e": 0, "x": 9})
		if next, ok := k.plan(cur, v, at(homesEvery-time.Second), &tm); ok {
			t.Fatalf("changed within 30s of the election: %v", next)
		}
		next, ok := k.plan(cur, v, at(homesEvery), &tm)
		if !ok || !slices.Equal(names(next), []string{"a", "b", "c", "d"}) {
			t.Fatalf("adding d (e has no epoch, x is no raft server): %v %v", next, ok)
		}
	})

	t.Run("removal after two minutes gone from both", func(t *testing.T) {
		inConfDead := view([]string{"a", "b", "c"}, map[string]uint64{"a": 1, "b": 2})
		aliveOut := view([]string{"a", "b"}, map[string]uint64{"a": 1, "b": 2, "c": 7})
		for _, v := range []homeView{inConfDead, aliveOut} {
			k := newHomesKeeper(1, t0)
			for _, when := range []time.Duration{time.Hour, time.Hour + 2*homeGone, 2 * time.Hour} {
				if next, ok := k.plan(cur, v, at(when), &tm); ok {
					t.Fatalf("removed a home that is only half gone (%+v): %v", v, next)
				}
			}
		}
		k := newHomesKeeper(1, t0)
		gone := view([]string{"a", "b"}, map[string]uint64{"a": 1, "b": 2})
		start := at(time.Hour)
		if _, ok := k.plan(cur, gone, start, &tm); ok {
			t.Fatal("removed at the first sight of absence")
		}
		if _, ok := k.plan(cur, gone, start.Add(homeGone-time.Second), &tm); ok {
			t.Fatal("removed before two minutes")
		}
		// Back for a moment: the two minutes start again.
		k.plan(cur, aliveOut, start.Add(homeGone-time.Millisecond), &tm)
		if _, ok := k.plan(cur, gone, start.Add(homeGone), &tm); ok {
			t.Fatal("absence was not continuous, yet removed")
		}
		next, ok := k.plan(cur, gone, start.Add(2*homeGone), &tm)
		if !ok || !slices.Equal(next, []Home{{"a", 1}, {"b", 2}}) {
			t.Fatalf("after two minutes gone: %v %v", next, ok)
		}
		// A new leader observes afresh.
		k2 := newHomesKeeper(2, start.Add(2*homeGone))
		if _, ok := k2.plan(cur, gone, start.Add(2*homeGone+homesEvery), &tm); ok {
			t.Fatal("a new leader removed a home it had not seen gone for two minutes")
		}
	})

	t.Run("a restarted home keeps its epoch", func(t *testing.T) {
		k := newHomesKeeper(1, t0)
		v := view([]string{"a", "b", "c"}, map[string]uint64{"a": 11, "b": 12, "c": 13})
		if next, ok := k.plan(cur, v, at(time.Hour), &tm); ok {
			t.Fatalf("new epochs changed the table: %v", next)
		}
	})
}

// Table writes are compare-and-set on the version, validated alike on every node; config and
// homes versions are independent; the snapshot carries both, and an older snapshot (a bare
// Dynamic) restores with an empty table.
func TestHomesCommandsAndSnapshots(t *testing.T) {
	static, file, err := config.Split([]byte(storeFile))
	if err != nil {
		t.Fatal(err)
	}
	s := NewConfigStore(static, file, config.MapEnv{"KEY": "k"}, nil)
	seen := &homesSeen{}
	s.OnHomes(seen.add)
	apply := func(index uint64, c homesCommand) (configResult, error) {
		b, err := encodeHomesCommand(c)
		if err != nil {
			t.Fatal(err)
		}
		out, err := s.FSM().Apply(index, b)
		if err != nil {
			return configResult{}, err
		}
		var res configResult
		return res, json.Unmarshal(out, &res)
	}
	seedCmd, _ := encodeCommand(configCommand{Expect: 0, Next: &file})
	if _, err := s.FSM().Apply(1, seedCmd); err != nil {
		t.Fatal(err)
	}
	table := []Home{{"a", 1}, {"b", 2}}
	if res, err := apply(2, homesCommand{Expect: 0, Homes: table}); err != nil || res != (configResult{Version: 1}) {
		t.Fatalf("first table: %+v %v", res, err)
	}
	if res, err := apply(3, homesCommand{Expect: 0, Homes: []Home{{"z", 1}}}); err != nil || res != (configResult{Version: 1, Conflict: true}) {
		t.Fatalf("stale write: %+v %v", res, err)
	}
	for _, bad := range [][]Home{{{"b", 1}, {"a", 1}}, {{"a", 1}, {"a", 2}}, {{"a", 0}}, {{"", 1}}, {{strings.Repeat("n", maxHomeNameSize+1), 1}}} {
		if _, err := apply(4, homesCommand{Expect: 1, Homes: bad}); err == nil {
			t.Errorf("table %v applied", bad)
		}
	}
	for _, raw := range []string{"h", "h{", `h{"expect":1,"homes":{}}`} {
		if _, err := s.FSM().Apply(4, []byte(raw)); err == nil {
			t.Errorf("%q applied", raw)
		}
	}
	if h := s.Homes(); h.Version != 1 || !slices.Equal(h.Homes, table) || s.Version() != 1 {
		t.Fatalf("after refused writes: homes %+v, config version %d", h, s.Version())
	}
	if got := seen.all(); len(got) != 2 || got[1].Version != 1 {
		t.Fatalf("OnHomes saw %+v, want the empty table then version 1", got)
	}
	// A herd from before the table does not take a homes command for a config write.
	entry, _ := encodeHomesCommand(homesCommand{Expect: 1, Homes: table})
	var old preOpsCommand
	if err := json.Unmarshal(entry, &old); err == nil {
		t.Errorf("a herd from before homes decodes %q", entry)
	}

	snap, err := s.FSM().Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	restored := NewConfigStore(static, file, config.MapEnv{"KEY": "k"}, nil)
	rseen := &homesSeen{}
	restored.OnHomes(rseen.add)
	if err := restored.FSM().Restore(snap); err != nil {
		t.Fatal(err)
	}
	if h := restored.Homes(); h.Version != 1 || !slices.Equal(h.Homes, table) || restored.Version() != 1 {
		t.Fatalf("restored homes %+v, config version %d", h, restored.Version())
	}
	if got := rseen.all(); len(got) != 2 || got[1].Version != 1 {
		t.Fatalf("OnHomes after restore saw %+v", got)
	}
	again, _ := restored.FSM().Snapshot()
	if string(again) != string(snap) {
		t.Errorf("snapshot round trip:\n got %s\nwant %s", again, snap)
	}
	// An older herd reads the config out of the new snapshot.
	var d config.Dynamic
	if err := json.Unmarshal(snap, &d); err != nil || d.Version != 1 || len(d.ModelList) != 1 {
		t.Errorf("the new snapshot as a bare Dynamic: %+v %v", d, err)
	}

	// The snapshot format from before the table.
	oldSnap, _ := json.Marshal(file.AddModel(map[string]any{"model_name": "x", "litellm_params": map[string]any{"model": "openai/x"}}))
	if err := restored.FSM().Restore(oldSnap); err != nil {
		t.Fatal(err)
	}
	if h := restored.Homes(); h.Version != 0 || len(h.Homes) != 0 {
		t.Errorf("an old snapshot restored homes %+v", h)
	}
	if got := rseen.all(); len(got) != 3 || got[2].Version != 0 {
		t.Errorf("OnHomes after the old snapshot saw %+v", got)
	}
	for _, bad := range []string{`{"version":1,"homes":{"version":0,"homes":[{"name":"a","epoch":1}]}}`, `{"version":1,"homes":{"version":2,"homes":[{"name":"a","epoch":0}]}}`} {
		if err := restored.FSM().Restore([]byte(bad)); err == nil {
			t.Errorf("snapshot %s restored", bad)
		}
	}
}

// A node restarted on its data dir hands OnHomes the table it replays before it serves.
func TestHomesReplayedAtStart(t *testing.T) {
	c := newTestCluster(t)
	dir := t.TempDir()
	n := startHome(t, c, 0, 0, 7, dir, func(rc *RaftConfig) { rc.snapshotThreshold, rc.trailingLogs = 2, 1 })
	want := []Home{{"node0", 7}}
	waitHomes(t, storesOf(n), want)
	for i := range 4 {
		if _, _, err := n.store.AddModel(context.Background(), bigEntry(i)); err != nil {
			t.Fatal(err)
		}
	}
	stopHome(t, n)

	again := startHome(t, c, 0, 0, 8, dir, nil)
	waitFor(t, converge, func() error {
		got := again.seen.all()
		if len(got) < 2 || got[len(got)-1].Version != 1 || !slices.Equal(got[len(got)-1].Homes, want) {
			return fmt.Errorf("OnHomes saw %+v", got)
		}
		if v := again.store.Version(); v != 5 {
			return fmt.Errorf("config version %d, want 5", v)
		}
		return nil
	})
	if h := again.store.Homes(); h.Version != 1 || !slices.Equal(h.Homes, want) {
		t.Errorf("after the replay the table is %+v: the restart (epoch 8) changed it", h)
	}
}
