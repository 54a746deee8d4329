package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/herd-proxy/herd/config"
)

// lastEntries returns the data of r's last n log entries that reached the FSM (commands).
func lastEntries(t *testing.T, r *Raft, n int) [][]byte {
	t.Helper()
	last, err := r.logs.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for i := last; i > 0 && len(out) < n; i-- {
		var l raft.Log
		if err := r.logs.GetLog(i, &l); err != nil {
			t.Fatal(err)
		}
		if l.Type == raft.LogCommand {
			out = append([][]byte{l.Data}, out...)
		}
	}
	return out
}

// bigEntry is a deployment of about 1 KB.
func bigEntry(i int) map[string]any {
	return map[string]any{"model_name": fmt.Sprintf("g%d", i), "litellm_params": map[string]any{"model": "openai/m"},
		"model_info": map[string]any{"id": fmt.Sprintf("d%d", i), "note": strings.Repeat("x", 1000)}}
}

// Issue 12 attack 7: every /model/new wrote the whole config into the raft log, so the n-th
// addition cost n deployments (200 additions: megabytes per node, each slower than the last).
// Now each entry carries its change: the 30th addition is as small as the first.
func TestConfigChangesAreLogSizedToTheChange(t *testing.T) {
	c := newTestCluster(t)
	nodes := startStores(t, c, 3)
	sameConfig(t, nodes, 1)
	// The leader's first homes table is a log entry too; let it be written before counting.
	waitHomeNames(t, []*ConfigStore{nodes[0].store, nodes[1].store, nodes[2].store}, "node0", "node1", "node2")
	leader := storeLeader(t, nodes)
	var fol *storeNode
	for _, n := range nodes {
		if n != leader {
			fol = n
			break
		}
	}
	ctx := context.Background()
	const adds = 30
	for i := range adds {
		if _, _, err := fol.store.AddModel(ctx, bigEntry(i)); err != nil {
			t.Fatalf("add %d: %v", i, err)
		}
	}
	id, _, err := fol.store.AddModel(ctx, map[string]any{"model_name": "u", "litellm_params": map[string]any{"model": "openai/u"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fol.store.UpdateModel(ctx, id, map[string]any{"litellm_params": map[string]any{"rpm": 5.0}}); err != nil {
		t.Fatal(err)
	}
	if _, err := fol.store.DeleteModel(ctx, "d3"); err != nil {
		t.Fatal(err)
	}
	if _, err := fol.store.UpdateRouterSettings(ctx, map[string]any{"num_retries": 4.0}); err != nil {
		t.Fatal(err)
	}
	final := sameConfig(t, nodes, 1+adds+4)

	for _, n := range nodes {
		entries := lastEntries(t, n.raft, adds+4)
		total := 0
		for i, e := range entries {
			total += len(e)
			if len(e) > 1500 || e[0] != cmdOp {
				t.Fatalf("node%d: entry %d of the changes is %d bytes (%.60s...), want one operation of at most 1.5 KB", n.i, i, len(e), e)
			}
		}
		t.Logf("node%d: %d changes took %d bytes of log; the config is %d bytes", n.i, len(entries), total, len(final))
	}
	var d config.Dynamic
	if err := json.Unmarshal(final, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.ModelList) != 1+adds || d.RouterSettings["num_retries"] != 4.0 || strings.Contains(string(final), `"d3"`) {
		t.Errorf("final config: %s", final)
	}
}

// While a server does not publish protoConfigOps (a herd from before them, mid rolling
// upgrade), writers send whole configs, which it applies; ops resume once it does.
func TestConfigOpsWaitForEveryServer(t *testing.T) {
	c := newTestCluster(t)
	nodes := startStores(t, c, 3)
	sameConfig(t, nodes, 1)
	leader := storeLeader(t, nodes)
	var old, writer *storeNode
	for _, n := range nodes {
		switch {
		case n != leader && old == nil:
			old = n
		case n != leader:
			writer = n
		}
	}
	setProto := func(p int) {
		m := old.node.raftGossip.localMeta()
		m.Proto = p
		old.node.raftGossip.setLocal(m)
		old.raft.publishMeta()
		waitFor(t, converge, func() error {
			if writer.raft.serversSpeak(protoConfigOps) != (p >= protoConfigOps) {
				return fmt.Errorf("the writer does not see node%d's proto %d yet", old.i, p)
			}
			return nil
		})
	}
	ctx := context.Background()

	setProto(0)
	if _, _, err := writer.store.AddModel(ctx, bigEntry(1)); err != nil {
		t.Fatal(err)
	}
	sameConfig(t, nodes, 2)
	if e := lastEntries(t, leader.raft, 1)[0]; e[0] != '{' || !strings.Contains(string(e), `"next":{`) {
		t.Errorf("with an old server the entry is %.80s..., want a whole config", e)
	}

	setProto(protoConfigOps)
	if _, _, err := writer.store.AddModel(ctx, bigEntry(2)); err != nil {
		t.Fatal(err)
	}
	sameConfig(t, nodes, 3)
	if e := lastEntries(t, leader.raft, 1)[0]; e[0] != cmdOp {
		t.Errorf("with every server upgraded the entry is %.80s..., want an operation", e)
	}
}

// preOpsCommand is configCommand as herd wrote and read it before operations existed.
type preOpsCommand struct {
	Expect uint64         `json:"expect"`
	Next   config.Dynamic `json:"next"`
	Check  bool           `json:"check,omitempty"`
}

// A node restarting on a data dir written before operations replays its whole-config entries
// (check commands included) and goes on with operations; a herd from before them refuses an
// operation instead of taking it for an empty config.
func TestConfigStoreReplaysALogFromBeforeOperations(t *testing.T) {
	static, file, err := config.Split([]byte(storeFile))
	if err != nil {
		t.Fatal(err)
	}
	c := newTestCluster(t)
	dir := t.TempDir()
	start := func() (*Node, *Raft, *ConfigStore) {
		node := c.start(0, nil, nil)
		store := NewConfigStore(static, file, config.MapEnv{"KEY": "k"}, c.log)
		r, err := node.StartRaft(RaftConfig{DataDir: dir, streams: c.net.raftStreams, timers: &fastTimers, ApplyTimeout: time.Second}, store.FSM())
		if err != nil {
			t.Fatal(err)
		}
		store.Attach(r)
		t.Cleanup(func() { _ = r.Shutdown() }) // runs before the Node's cleanup
		return node, r, store
	}
	waitVersion := func(s *ConfigStore, v uint64) {
		waitFor(t, converge, func() error {
			if got := s.Version(); got != v {
				return fmt.Errorf("version %d, want %d", got, v)
			}
			return nil
		})
	}
	node, r, store := start()
	waitVersion(store, 1)
	waitHomeNames(t, []*ConfigStore{store}, "node0") // its log entry, before the ones this test reads

	// What an older herd wrote: a whole config, then a check (which carried an empty "next").
	v2 := file.AddModel(map[string]any{"model_name": "old", "litellm_params": map[string]any{"model": "openai/old"}})
	for _, cmd := range []preOpsCommand{{Expect: 1, Next: v2}, {Expect: 2, Check: true}} {
		b, _ := json.Marshal(cmd)
		if _, _, err := r.Apply(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	waitVersion(store, 2)
	if _, _, err := store.AddModel(context.Background(), map[string]any{"model_name": "new", "litellm_params": map[string]any{"model": "openai/new"}}); err != nil {
		t.Fatal(err)
	}
	opEntry := lastEntries(t, r, 1)[0]
	before, _ := store.FSM().Snapshot()
	if err := r.Shutdown(); err != nil {
		t.Fatal(err)
	}
	_ = node.Shutdown()

	_, _, again := start()
	waitVersion(again, 3)
	after, _ := again.FSM().Snapshot()
	if string(after) != string(before) {
		t.Fatalf("replayed state differs:\n got %s\nwant %s", after, before)
	}

	var old preOpsCommand
	if err := json.Unmarshal(opEntry, &old); err == nil {
		t.Errorf("a herd from before operations decodes %q without error (as %+v): it would apply an empty config", opEntry, old)
	}
}

// An operation that does not fit the state (it cannot happen through ConfigStore, whose
// writers compute it against the version they expect) is refused on every node alike and
// changes nothing.
func TestConfigOpOutOfRangeChangesNothing(t *testing.T) {
	static, file, err := config.Split([]byte(storeFile))
	if err != nil {
		t.Fatal(err)
	}
	s := NewConfigStore(static, file, config.MapEnv{"KEY": "k"}, nil)
	seed, _ := encodeCommand(configCommand{Expect: 0, Next: &file})
	if _, err := s.FSM().Apply(1, seed); err != nil {
		t.Fatal(err)
	}
	for _, op := range []configOp{{Kind: opDeleteModel, Index: 5}, {Kind: opSetModel, Index: -1, Entry: map[string]any{}}, {Kind: "drop_table"}, {Kind: opAddModel}} {
		cmd, _ := encodeCommand(configCommand{Expect: 1, Op: &op})
		if _, err := s.FSM().Apply(2, cmd); err == nil {
			t.Errorf("%+v applied", op)
		}
	}
	if _, err := s.FSM().Apply(3, []byte(`{"expect":1}`)); err == nil {
		t.Error("a command with no change applied")
	}
	if s.Version() != 1 {
		t.Fatalf("version %d after refused operations", s.Version())
	}
	if _, err := decodeCommand([]byte("o{")); err == nil || !strings.Contains(err.Error(), "bad config command") {
		t.Errorf("truncated operation: %v", err)
	}
}

// Status says which version is committed, which is served, and why they differ.
func TestConfigStatusSaysWhyAVersionIsNotServed(t *testing.T) {
	static, file, err := config.Split([]byte(storeFile))
	if err != nil {
		t.Fatal(err)
	}
	s := NewConfigStore(static, file, config.MapEnv{"KEY": "sk-node-secret"}, nil)
	refuse := errors.New("the proxy refused it")
	var failNext bool
	s.OnChange(func(*config.Config, uint64) error {
		if failNext {
			return refuse
		}
		return nil
	})
	apply := func(index uint64, c configCommand) {
		t.Helper()
		b, _ := encodeCommand(c)
		if _, err := s.FSM().Apply(index, b); err != nil {
			t.Fatal(err)
		}
	}
	apply(1, configCommand{Expect: 0, Next: &file})
	if st := s.Status(); st.Committed != 1 || st.Served != 1 || st.Error != "" {
		t.Fatalf("after version 1: %+v", st)
	}
	apply(2, configCommand{Expect: 1, Op: &configOp{Kind: opAddModel, Entry: map[string]any{"model_name": "x",
		"litellm_params": map[string]any{"model": "openai/x", "api_key": "os.environ/ONLY_ELSEWHERE"}}}})
	st := s.Status()
	if st.Committed != 2 || st.Served != 1 || !strings.Contains(st.Error, "environment variable ONLY_ELSEWHERE is not set") || strings.Contains(st.Error, "sk-node") {
		t.Fatalf("after an unbuildable version: %+v", st)
	}
	failNext = true
	apply(3, configCommand{Expect: 2, Op: &configOp{Kind: opDeleteModel, Index: 1}})
	if st := s.Status(); st.Committed != 3 || st.Served != 1 || st.Error != refuse.Error() {
		t.Fatalf("after a version OnChange refused: %+v", st)
	}
	failNext = false
	apply(4, configCommand{Expect: 3, Op: &configOp{Kind: opRouterSettings, RouterSettings: map[string]any{"num_retries": 2.0}}})
	if st := s.Status(); st.Committed != 4 || st.Served != 4 || st.Error != "" {
		t.Fatalf("after a version that serves: %+v", st)
	}
}
