package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRaftThreeVotersBootstrapAndForward(t *testing.T) {
	c := newRaftCluster(t, nil)
	var nodes []*raftNode
	for i := range 3 {
		nodes = append(nodes, c.startRaft(i, 3, "", memAddrOf(0)))
	}
	leader := c.waitLeader(nodes, 3)
	f := follower(nodes, leader)

	res, index, err := f.raft.Apply(context.Background(), []byte("a"))
	if err != nil {
		t.Fatalf("Apply on follower %s: %v", f.name(), err)
	}
	if string(res) != "1" || index == 0 {
		t.Errorf("Apply = %q, %d; want \"1\" and an index", res, index)
	}
	st := waitSameState(t, nodes, []string{"a"})
	if st.Version != index {
		t.Errorf("FSM version %d, Apply returned index %d", st.Version, index)
	}

	// A rejected command keeps its FSM error class, forwarded or not, and changes nothing.
	for _, rn := range []*raftNode{f, leader} {
		_, _, err := rn.raft.Apply(context.Background(), []byte("bad one"))
		if !errors.Is(err, ErrRejected) {
			t.Errorf("%s: Apply(bad) = %v, want ErrRejected", rn.name(), err)
		}
	}
	mustApply(t, f, "b")
	waitSameState(t, nodes, []string{"a", "b"})
}

func TestRaftPartitionedLeaderLosesWrites(t *testing.T) {
	c := newRaftCluster(t, func(cfg *RaftConfig) { cfg.DeadServerGrace = time.Minute })
	var nodes []*raftNode
	for i := range 3 {
		nodes = append(nodes, c.startRaft(i, 3, "", memAddrOf(0)))
	}
	old := c.waitLeader(nodes, 3)
	mustApply(t, old, "before")
	waitSameState(t, nodes, []string{"before"})

	var majority []*raftNode
	for _, rn := range nodes {
		if rn != old {
			majority = append(majority, rn)
		}
	}
	c.net.Partition(gossipAddrsOf([]*raftNode{old}), gossipAddrsOf(majority))

	leader := c.waitLeader(majority, 3)
	mustApply(t, follower(majority, leader), "during")

	start := time.Now()
	_, _, err := old.raft.Apply(context.Background(), []byte("lost"))
	elapsed := time.Since(start)
	if !errors.Is(err, ErrNoQuorum) {
		t.Errorf("minority Apply = %v, want ErrNoQuorum", err)
	}
	if elapsed > time.Second+500*time.Millisecond {
		t.Errorf("minority Apply took %v, ApplyTimeout is 1s", elapsed)
	}
	t.Logf("minority Apply failed after %v: %v", elapsed, err)
	// Reads of the local FSM still work in the minority.
	if got := old.fsm.state().Items; !slices.Equal(got, []string{"before"}) {
		t.Errorf("minority FSM = %v", got)
	}

	c.net.Heal()
	mustApply(t, leader, "after")
	waitSameState(t, nodes, []string{"before", "during", "after"})
	waitFor(t, converge, func() error {
		want := nodes[0].raft.Status().LastIndex
		for _, rn := range nodes {
			st := rn.raft.Status()
			if st.LastIndex != want {
				return fmt.Errorf("%s last index %d, %s %d", rn.name(), st.LastIndex, nodes[0].name(), want)
			}
			if st.LastApplied != st.LastIndex {
				return fmt.Errorf("%s applied up to %d of %d", rn.name(), st.LastApplied, st.LastIndex)
			}
		}
		return nil
	})
}

func TestRaftRestartFromDataDirCatchesUp(t *testing.T) {
	// Snapshot often and keep few logs, so the restarted node needs the leader's snapshot.
	c := newRaftCluster(t, func(cfg *RaftConfig) {
		cfg.DeadServerGrace = time.Minute
		cfg.snapshotThreshold = 4
		cfg.trailingLogs = 2
	})
	var nodes []*raftNode
	for i := range 3 {
		nodes = append(nodes, c.startRaft(i, 3, t.TempDir(), memAddrOf(0)))
	}
	leader := c.waitLeader(nodes, 3)
	want := []string{"a"}
	mustApply(t, leader, "a")
	waitSameState(t, nodes, want)

	victim := follower(nodes, leader)
	c.kill(victim.i)
	for i := range 10 {
		cmd := fmt.Sprintf("while-down-%d", i)
		mustApply(t, leader, cmd)
		want = append(want, cmd)
	}

	// Wait for the leader to snapshot (and so drop the log the victim lacks).
	waitFor(t, converge, func() error {
		entries, _ := os.ReadDir(filepath.Join(leader.dir, "raft", "snapshots"))
		if len(entries) == 0 {
			return errors.New("leader has no snapshot yet")
		}
		return nil
	})

	back := c.startRaft(victim.i, 3, victim.dir, memAddrOf(leader.i))
	nodes = c.up()
	waitSameState(t, nodes, want)
	c.waitLeader(nodes, 3)
	if st := back.raft.Status(); !slices.Contains(st.Voters, back.name()) {
		t.Errorf("restarted node is no longer a voter: %+v", st)
	}
	mustApply(t, back, "after")
	waitSameState(t, nodes, append(want, "after"))
}

func TestRaftFiveNodesBootstrapOneCluster(t *testing.T) {
	orders := [][]int{{0, 1, 2, 3, 4}, {4, 3, 2, 1, 0}, rand.Perm(5)}
	for _, order := range orders {
		t.Run(fmt.Sprint(order), func(t *testing.T) {
			c := newRaftCluster(t, nil)
			all := make([]string, 5)
			for i := range 5 {
				all[i] = memAddrOf(i)
			}
			// Started together, each seeded with every address, as a headless service does.
			var mu sync.Mutex
			var wg sync.WaitGroup
			for _, i := range order {
				wg.Go(func() {
					c.t.Helper()
					node := c.start(i, nil, seed(all...))
					r, err := node.StartRaft(RaftConfig{BootstrapExpect: 5, streams: c.net.raftStreams, timers: &fastTimers, ApplyTimeout: time.Second}, &listFSM{})
					if err != nil {
						t.Errorf("node%d: %v", i, err)
						return
					}
					t.Cleanup(func() { _ = r.Shutdown() })
					mu.Lock()
					c.nodes[i] = &raftNode{i: i, node: node, raft: r, fsm: r.fsm.fsm.(*listFSM)}
					mu.Unlock()
				})
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			nodes := c.up()
			leader := c.waitLeader(nodes, 5)
			for _, rn := range nodes {
				if got := rn.raft.Status().Voters; len(got) != 5 {
					t.Errorf("%s voters %v", rn.name(), got)
				}
			}
			mustApply(t, follower(nodes, leader), "x")
			waitSameState(t, nodes, []string{"x"})
		})
	}
}

func TestRaftJoinAsNonVoterThenReplaceDeadVoter(t *testing.T) {
	c := newRaftCluster(t, func(cfg *RaftConfig) { cfg.DeadServerGrace = 500 * time.Millisecond })
	var nodes []*raftNode
	for i := range 3 {
		nodes = append(nodes, c.startRaft(i, 3, "", memAddrOf(0)))
	}
	leader := c.waitLeader(nodes, 3)
	mustApply(t, leader, "a")

	late := c.startRaft(3, 3, "", memAddrOf(0))
	waitFor(t, converge, func() error {
		st := leader.raft.Status()
		if !slices.Equal(st.NonVoters, []string{late.name()}) || len(st.Voters) != 3 {
			return fmt.Errorf("leader sees voters %v non-voters %v", st.Voters, st.NonVoters)
		}
		return nil
	})
	waitSameState(t, c.up(), []string{"a"})

	// Kill a voter that is not the leader: after the grace it is replaced by the non-voter.
	victim := follower(nodes, leader)
	c.kill(victim.i)
	waitFor(t, converge, func() error {
		st := leader.raft.Status()
		if slices.Contains(st.Voters, victim.name()) || slices.Contains(st.NonVoters, victim.name()) {
			return fmt.Errorf("dead %s still in the configuration: %v %v", victim.name(), st.Voters, st.NonVoters)
		}
		if !slices.Contains(st.Voters, late.name()) || len(st.Voters) != 3 {
			return fmt.Errorf("voters %v, want 3 with %s", st.Voters, late.name())
		}
		return nil
	})
	mustApply(t, late, "b")
	waitSameState(t, c.up(), []string{"a", "b"})
}

func TestRaftLeftServerIsRemovedAtOnce(t *testing.T) {
	c := newRaftCluster(t, func(cfg *RaftConfig) { cfg.DeadServerGrace = time.Hour })
	var nodes []*raftNode
	for i := range 3 {
		nodes = append(nodes, c.startRaft(i, 3, "", memAddrOf(0)))
	}
	leader := c.waitLeader(nodes, 3)
	gone := follower(nodes, leader)
	if err := gone.raft.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := gone.node.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	gone.down = true
	waitFor(t, converge, func() error {
		if st := leader.raft.Status(); slices.Contains(st.Voters, gone.name()) {
			return fmt.Errorf("voters still %v", st.Voters)
		}
		return nil
	})
	mustApply(t, leader, "a")
	waitSameState(t, c.up(), []string{"a"})
}

func TestRaftSingleNodeAlone(t *testing.T) {
	c := newRaftCluster(t, nil)
	rn := c.startRaft(0, 0, "")
	leaderCalls := make(chan bool, 4)
	rn.raft.OnLeader(func(isLeader bool) { leaderCalls <- isLeader })
	res, index, err := rn.raft.Apply(context.Background(), []byte("solo"))
	if err != nil || string(res) != "1" {
		t.Fatalf("Apply = %q, %d, %v", res, index, err)
	}
	st := rn.raft.Status()
	if st.State != "leader" || st.Leader != "node0" || !slices.Equal(st.Voters, []string{"node0"}) || st.LastApplied < index {
		t.Errorf("status %+v", st)
	}
	select {
	case got := <-leaderCalls:
		if !got {
			t.Error("OnLeader(false) on the only node")
		}
	case <-time.After(converge):
		t.Error("OnLeader not called")
	}
}

func TestRaftApplyAfterShutdown(t *testing.T) {
	c := newRaftCluster(t, nil)
	rn := c.startRaft(0, 0, "")
	mustApply(t, rn, "x")
	if err := rn.raft.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rn.raft.Apply(context.Background(), []byte("y")); !errors.Is(err, ErrRaftShutdown) {
		t.Errorf("Apply after Shutdown = %v", err)
	}
	if err := rn.raft.Shutdown(); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	// Nothing of raft, the raft port or the forwarding server keeps running.
	waitFor(t, converge, func() error {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "hashicorp/raft") || strings.Contains(g, "cluster.(*Raft)") || strings.Contains(g, "cluster.(*mux)") {
				return fmt.Errorf("goroutine still running:\n%s", g)
			}
		}
		return nil
	})
}

func TestRaftFollowerWithoutLeaderFailsFast(t *testing.T) {
	// BootstrapExpect 2 with only one node: raft never starts, writes fail within the timeout.
	c := newRaftCluster(t, func(cfg *RaftConfig) { cfg.ApplyTimeout = 300 * time.Millisecond })
	rn := c.startRaft(0, 2, "")
	start := time.Now()
	_, _, err := rn.raft.Apply(context.Background(), []byte("x"))
	if !errors.Is(err, ErrNoLeader) || !errors.Is(err, ErrNoQuorum) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Apply = %v, want ErrNoLeader and ErrNoQuorum", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Apply took %v", d)
	}
}

// LeaderContact is zero before any leader, fresh on the leader and its followers, and stops
// at the partition on a follower cut off.
func TestLeaderContact(t *testing.T) {
	c := newRaftCluster(t, func(cfg *RaftConfig) { cfg.DeadServerGrace = time.Minute })
	first := c.startRaft(0, 3, "", memAddrOf(0))
	if lc := first.raft.LeaderContact(); !lc.IsZero() {
		t.Errorf("before any leader: %v", lc)
	}
	nodes := []*raftNode{first, c.startRaft(1, 3, "", memAddrOf(0)), c.startRaft(2, 3, "", memAddrOf(0))}
	leader := c.waitLeader(nodes, 3)
	fresh := func(group []*raftNode) func() error {
		return func() error {
			for _, rn := range group {
				if age := time.Since(rn.raft.LeaderContact()); age > 300*time.Millisecond {
					return fmt.Errorf("%s last knew a leader %v ago", rn.name(), age)
				}
			}
			return nil
		}
	}
	waitFor(t, converge, fresh(nodes))

	cut := follower(nodes, leader)
	var rest []*raftNode
	for _, rn := range nodes {
		if rn != cut {
			rest = append(rest, rn)
		}
	}
	c.net.Partition(gossipAddrsOf([]*raftNode{cut}), gossipAddrsOf(rest))
	cutAt := time.Now()
	waitFor(t, converge, func() error {
		if age := time.Since(cut.raft.LeaderContact()); age < time.Second {
			return fmt.Errorf("%s cut off, yet last knew a leader only %v ago", cut.name(), age)
		}
		return nil
	})
	if lc := cut.raft.LeaderContact(); lc.After(cutAt.Add(100 * time.Millisecond)) {
		t.Errorf("%s heard a leader %v after the partition", cut.name(), lc.Sub(cutAt))
	}
	if err := fresh(rest)(); err != nil {
		t.Errorf("the majority: %v", err)
	}
	c.net.Heal()
	waitFor(t, converge, fresh(nodes))
}
