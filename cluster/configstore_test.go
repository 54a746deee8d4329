package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
)

const storeFile = `model_list:
  - model_name: m
    litellm_params:
      model: openai/first
      api_key: os.environ/KEY
router_settings:
  num_retries: 1
`

type storeNode struct {
	i     int
	node  *Node
	raft  *Raft
	store *ConfigStore
}

// startStores starts n gossip+raft nodes on c's in-memory network, each replicating its own
// ConfigStore seeded from storeFile.
func startStores(t *testing.T, c *testCluster, n int) []*storeNode {
	t.Helper()
	static, dyn, err := config.Split([]byte(storeFile))
	if err != nil {
		t.Fatal(err)
	}
	var out []*storeNode
	for i := range n {
		var seeds []string
		if i > 0 {
			seeds = []string{memAddrOf(0)}
		}
		node := c.start(i, nil, seed(seeds...))
		store := NewConfigStore(static, dyn, config.MapEnv{"KEY": "sk-node"}, c.log)
		store.OnChange(func(*config.Config, uint64) error { return nil }) // serves every version
		r, err := node.StartRaft(RaftConfig{BootstrapExpect: n, streams: c.net.raftStreams, timers: &fastTimers, ApplyTimeout: time.Second}, store.FSM())
		if err != nil {
			t.Fatal(err)
		}
		store.Attach(r)
		t.Cleanup(func() { _ = r.Shutdown() })
		out = append(out, &storeNode{i: i, node: node, raft: r, store: store})
	}
	return out
}

// servedEverywhere waits until every node's member list shows every node serving version v:
// the version each node serves travels in its gossip metadata, for /cluster/status.
func servedEverywhere(t *testing.T, nodes []*storeNode, v uint64) {
	t.Helper()
	waitFor(t, converge, func() error {
		for _, n := range nodes {
			ms := n.node.Members()
			if len(ms) != len(nodes) {
				return fmt.Errorf("node%d sees %d members", n.i, len(ms))
			}
			for _, m := range ms {
				if !m.ServedKnown || m.ServedConfig != v {
					return fmt.Errorf("node%d sees %s serving %d (known %v), want %d", n.i, m.Name, m.ServedConfig, m.ServedKnown, v)
				}
				if m.Self != (m.Name == n.node.Name()) {
					return fmt.Errorf("node%d marks %s self=%v", n.i, m.Name, m.Self)
				}
				if !m.Self && m.LastHeard.IsZero() {
					return fmt.Errorf("node%d has never heard from %s", n.i, m.Name)
				}
			}
		}
		return nil
	})
}

// sameConfig waits until every node has applied version v with the same content.
func sameConfig(t *testing.T, nodes []*storeNode, v uint64) []byte {
	t.Helper()
	var first []byte
	waitFor(t, converge, func() error {
		for i, n := range nodes {
			if got := n.store.Version(); got != v {
				return fmt.Errorf("node%d at version %d, want %d", n.i, got, v)
			}
			snap, err := n.store.FSM().Snapshot()
			if err != nil {
				return err
			}
			if i == 0 {
				first = snap
			} else if string(snap) != string(first) {
				return fmt.Errorf("node%d holds %s, node%d %s", n.i, snap, nodes[0].i, first)
			}
		}
		return nil
	})
	return first
}

func storeLeader(t *testing.T, nodes []*storeNode) *storeNode {
	t.Helper()
	var leader *storeNode
	waitFor(t, converge, func() error {
		leader = nil
		for _, n := range nodes {
			if n.raft.IsLeader() {
				leader = n
			}
		}
		if leader == nil {
			return errors.New("no leader")
		}
		for _, n := range nodes {
			if st := n.raft.Status(); st.Leader != leader.node.Name() {
				return fmt.Errorf("node%d sees leader %q", n.i, st.Leader)
			}
		}
		return nil
	})
	return leader
}

func TestConfigStoreOverRaft(t *testing.T) {
	c := newTestCluster(t)
	nodes := startStores(t, c, 3)
	sameConfig(t, nodes, 1) // the leader seeded the file's config
	leader := storeLeader(t, nodes)
	var fol *storeNode
	for _, n := range nodes {
		if n != leader {
			fol = n
			break
		}
	}
	ctx := context.Background()

	// A write on a follower is forwarded, committed and applied everywhere.
	id, v, err := fol.store.AddModel(ctx, map[string]any{"model_name": "m2", "litellm_params": map[string]any{"model": "openai/second", "rpm": 5.0}})
	if err != nil || v != 2 || id == "" {
		t.Fatalf("AddModel on a follower: %q %d %v", id, v, err)
	}
	if got := fol.store.Version(); got != 2 {
		t.Fatalf("the writer had not applied its own write on return: version %d", got)
	}
	sameConfig(t, nodes, 2)
	servedEverywhere(t, nodes, 2)

	// A bad change is refused before raft; nothing moves.
	if _, err := fol.store.UpdateRouterSettings(ctx, map[string]any{"routing_strategy": "fastest"}); err == nil {
		t.Fatal("invalid routing strategy accepted")
	} else if ce := (*config.Error)(nil); !errors.As(err, &ce) {
		t.Fatalf("invalid change: %T %v, want a *config.Error", err, err)
	}
	if _, err := fol.store.DeleteModel(ctx, "nope"); !errors.Is(err, config.ErrUnknownDeployment) {
		t.Fatalf("delete of an unknown id: %v", err)
	}
	sameConfig(t, nodes, 2)

	// Concurrent writes on different nodes both land, one re-based on the other.
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = n.store.AddModel(ctx, map[string]any{"model_name": fmt.Sprintf("c%d", i), "litellm_params": map[string]any{"model": "openai/c"}})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent AddModel on node%d: %v", i, err)
		}
	}
	sameConfig(t, nodes, 5)

	// The leader is cut off: the majority elects another and takes writes, the minority fails.
	var majority []*storeNode
	for _, n := range nodes {
		if n != leader {
			majority = append(majority, n)
		}
	}
	c.net.Partition([]string{memAddrOf(leader.i)}, []string{memAddrOf(majority[0].i), memAddrOf(majority[1].i)})
	newLeader := storeLeader(t, majority)
	if _, err := newLeader.store.UpdateRouterSettings(ctx, map[string]any{"num_retries": 3.0}); err != nil {
		t.Fatalf("write on the majority: %v", err)
	}
	start := time.Now()
	_, _, err = leader.store.AddModel(ctx, map[string]any{"model_name": "lost", "litellm_params": map[string]any{"model": "openai/lost"}})
	if !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("write on the minority: %v, want ErrNoQuorum", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the minority's write failed after %v", d)
	}
	if got := leader.store.Version(); got != 5 {
		t.Errorf("the minority applied version %d", got)
	}
	lateID, _, err := newLeader.store.AddModel(ctx, map[string]any{"model_name": "late", "litellm_params": map[string]any{"model": "openai/late"}})
	if err != nil {
		t.Fatalf("add on the majority: %v", err)
	}

	// The cut-off node does not know lateID yet. Asked to delete it, it must not answer "no
	// such deployment" from its stale view (the chaos suite found that): it confirms its
	// version through raft first, so it either deletes it or cannot answer without a quorum.
	deleted := make(chan error, 1)
	go func() { _, err := leader.store.DeleteModel(ctx, lateID); deleted <- err }()
	c.net.Heal()
	for err := <-deleted; err != nil; err = <-deleted {
		if !errors.Is(err, ErrNoQuorum) {
			t.Fatalf("delete on a lagging node: %v, want success (or no quorum while it catches up)", err)
		}
		go func() { _, err := leader.store.DeleteModel(ctx, lateID); deleted <- err }()
	}
	final := sameConfig(t, nodes, 8)
	if strings.Contains(string(final), "openai/late") {
		t.Errorf("the deleted deployment is still there: %s", final)
	}
	t.Logf("after healing every node holds version 8: %s", final)
}

// A node whose file differs from the cluster's config serves the cluster's and says so once;
// a version that does not build on this node is held but not served.
func TestConfigStoreFileDiffersAndUnbuildableVersion(t *testing.T) {
	static, dyn, err := config.Split([]byte(storeFile))
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	store := NewConfigStore(static, dyn, config.MapEnv{"KEY": "k"}, log)
	var served []uint64
	store.OnChange(func(_ *config.Config, v uint64) error { served = append(served, v); return nil })

	cluster := dyn.AddModel(map[string]any{"model_name": "other", "litellm_params": map[string]any{"model": "openai/other"}})
	cluster.Version = 4
	snap, _ := json.Marshal(cluster)
	if err := store.FSM().Restore(snap); err != nil {
		t.Fatal(err)
	}
	if store.Version() != 4 || len(served) != 1 || served[0] != 4 {
		t.Fatalf("after restore: version %d, served %v", store.Version(), served)
	}
	if !strings.Contains(logs.String(), "differs from the cluster's config") {
		t.Errorf("no warning that the file is not applied:\n%s", logs.String())
	}

	// Version 5 needs an environment variable this node lacks: held, not served.
	bad := cluster.AddModel(map[string]any{"model_name": "x", "litellm_params": map[string]any{"model": "openai/x", "api_key": "os.environ/ONLY_ELSEWHERE"}})
	cmd, _ := json.Marshal(configCommand{Expect: 4, Next: &bad})
	if _, err := store.FSM().Apply(9, cmd); err != nil {
		t.Fatal(err)
	}
	if store.Version() != 5 || len(served) != 1 {
		t.Fatalf("unbuildable version: state %d, served %v", store.Version(), served)
	}
	if !strings.Contains(logs.String(), "cannot be applied on this node") {
		t.Errorf("no error for the unbuildable version:\n%s", logs.String())
	}
	if n := strings.Count(logs.String(), "differs from the cluster's config"); n != 1 {
		t.Errorf("file warning logged %d times", n)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestWaitForSeesProgressOutsideTheFSM: raft's applied index also moves for its own
// configuration entries, which never reach the FSM; a wait on it must notice without an FSM
// apply. (Before, the first leader could wait out its whole timeout and never seed version 1.)
func TestWaitForSeesProgressOutsideTheFSM(t *testing.T) {
	static, dyn, err := config.Split([]byte(storeFile))
	if err != nil {
		t.Fatal(err)
	}
	s := NewConfigStore(static, dyn, config.MapEnv{"KEY": "sk-node"}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Raft has applied the entry from the second look on; no FSM apply, so s.changed never closes.
	var looks atomic.Int32
	appliedByRaft := func() bool { return looks.Add(1) > 1 }
	if err := s.waitFor(ctx, func() bool { return false }, appliedByRaft); err != nil {
		t.Fatalf("waitFor did not notice raft's progress: %v", err)
	}
}
