package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// listFSM is an append-only list of strings; version is the index of the last command.
// Commands starting with "bad" are rejected.
type listFSM struct {
	mu      sync.Mutex
	items   []string
	version uint64
}

var errBadCommand = errors.New("bad command")

func (f *listFSM) Apply(index uint64, cmd []byte) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.HasPrefix(string(cmd), "bad") {
		return nil, errBadCommand
	}
	f.items = append(f.items, string(cmd))
	f.version = index
	return fmt.Appendf(nil, "%d", len(f.items)), nil
}

type listState struct {
	Items   []string
	Version uint64
}

func (f *listFSM) Snapshot() ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return json.Marshal(listState{Items: f.items, Version: f.version})
}

func (f *listFSM) Restore(data []byte) error {
	var s listState
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.items, f.version = s.Items, s.Version
	return nil
}

func (f *listFSM) state() listState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return listState{Items: slices.Clone(f.items), Version: f.version}
}

// raftNode is one node of a raftCluster.
type raftNode struct {
	i    int
	node *Node
	raft *Raft
	fsm  *listFSM
	dir  string
	down bool
}

func (rn *raftNode) name() string { return rn.node.Name() }

type raftCluster struct {
	*testCluster
	nodes     map[int]*raftNode
	mod       func(*RaftConfig) // applied to every node's config
	gossipMod func(*Config)     // applied to the gossip config of nodes started from now on
}

func newRaftCluster(t *testing.T, mod func(*RaftConfig)) *raftCluster {
	return &raftCluster{testCluster: newTestCluster(t), nodes: map[int]*raftNode{}, mod: mod}
}

// startRaft starts gossip and raft for node i, joining seeds, on the in-memory network.
// dir is the data dir ("" = in memory).
func (c *raftCluster) startRaft(i, expect int, dir string, seeds ...string) *raftNode {
	c.t.Helper()
	node := c.start(i, nil, func(cfg *Config) {
		cfg.Join = seeds
		if c.gossipMod != nil {
			c.gossipMod(cfg)
		}
	})
	cfg := RaftConfig{
		BootstrapExpect: expect,
		DataDir:         dir,
		streams:         c.net.raftStreams,
		timers:          &fastTimers,
		ApplyTimeout:    time.Second,
	}
	if c.mod != nil {
		c.mod(&cfg)
	}
	fsm := &listFSM{}
	r, err := node.StartRaft(cfg, fsm)
	if err != nil {
		c.t.Fatalf("node%d: StartRaft: %v", i, err)
	}
	c.t.Cleanup(func() { _ = r.Shutdown() }) // runs before the Node's cleanup
	rn := &raftNode{i: i, node: node, raft: r, fsm: fsm, dir: dir}
	c.nodes[i] = rn
	return rn
}

// kill stops node i without leaving: peers see it die.
func (c *raftCluster) kill(i int) {
	c.t.Helper()
	rn := c.nodes[i]
	if err := rn.raft.Shutdown(); err != nil {
		c.t.Errorf("node%d: raft shutdown: %v", i, err)
	}
	_ = rn.node.Shutdown()
	rn.down = true
}

func (c *raftCluster) up() []*raftNode {
	var out []*raftNode
	for i := range 100 {
		if rn := c.nodes[i]; rn != nil && !rn.down {
			out = append(out, rn)
		}
	}
	return out
}

// waitLeader waits until exactly one of nodes leads with the given number of voters and all
// of them agree on it, and returns it.
func (c *raftCluster) waitLeader(nodes []*raftNode, voters int) *raftNode {
	c.t.Helper()
	return waitLeader(c.t, nodes, voters)
}

func waitLeader(t *testing.T, nodes []*raftNode, voters int) *raftNode {
	t.Helper()
	var leader *raftNode
	waitFor(t, converge, func() error {
		leader = nil
		for _, rn := range nodes {
			if rn.raft.IsLeader() {
				if leader != nil {
					return fmt.Errorf("two leaders: %s and %s", leader.name(), rn.name())
				}
				leader = rn
			}
		}
		if leader == nil {
			return errors.New("no leader")
		}
		for _, rn := range nodes {
			st := rn.raft.Status()
			if st.Leader != leader.name() {
				return fmt.Errorf("%s sees leader %q, want %s", rn.name(), st.Leader, leader.name())
			}
			if len(st.Voters) != voters {
				return fmt.Errorf("%s sees voters %v, want %d", rn.name(), st.Voters, voters)
			}
		}
		return nil
	})
	return leader
}

// waitSameState waits until every node's FSM holds want with the same version.
func waitSameState(t *testing.T, nodes []*raftNode, want []string) listState {
	t.Helper()
	var first listState
	waitFor(t, converge, func() error {
		for i, rn := range nodes {
			st := rn.fsm.state()
			if !slices.Equal(st.Items, want) {
				return fmt.Errorf("%s holds %v, want %v", rn.name(), st.Items, want)
			}
			if i == 0 {
				first = st
			} else if st.Version != first.Version {
				return fmt.Errorf("%s at version %d, %s at %d", rn.name(), st.Version, nodes[0].name(), first.Version)
			}
			if rs := rn.raft.Status(); rs.LastApplied < st.Version || rs.LastApplied > rs.LastIndex {
				return fmt.Errorf("%s: LastApplied %d, FSM version %d, last index %d", rn.name(), rs.LastApplied, st.Version, rs.LastIndex)
			}
		}
		return nil
	})
	return first
}

func mustApply(t *testing.T, rn *raftNode, cmd string) uint64 {
	t.Helper()
	_, index, err := rn.raft.Apply(context.Background(), []byte(cmd))
	if err != nil {
		t.Fatalf("%s: Apply(%q): %v", rn.name(), cmd, err)
	}
	return index
}

func follower(nodes []*raftNode, leader *raftNode) *raftNode {
	for _, rn := range nodes {
		if rn != leader {
			return rn
		}
	}
	return nil
}

func gossipAddrsOf(nodes []*raftNode) []string {
	var out []string
	for _, rn := range nodes {
		out = append(out, memAddrOf(rn.i))
	}
	return out
}
