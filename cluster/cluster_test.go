package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestFiveNodesJoinThroughOneSeed(t *testing.T) {
	c := newTestCluster(t)
	var nodes []*Node
	for i := range 5 {
		var mod func(*Config)
		if i > 0 {
			mod = seed(memAddrOf(0))
		}
		nodes = append(nodes, c.start(i, nil, mod))
	}
	var mu sync.Mutex
	var lastAlive []Member
	nodes[0].OnMembersChanged(func(alive []Member) {
		mu.Lock()
		defer mu.Unlock()
		lastAlive = alive
	})
	waitFor(t, converge, func() error {
		for _, n := range nodes {
			if got := n.NumAlive(); got != 5 {
				return fmt.Errorf("%s: NumAlive=%d", n.Name(), got)
			}
		}
		return allSee(nodes, names(nodes), StatusAlive)
	})
	waitFor(t, converge, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(lastAlive) != 5 || lastAlive[0].Name != "node0" || lastAlive[4].Name != "node4" {
			return fmt.Errorf("callback saw %v", lastAlive)
		}
		return nil
	})
	if nodes[1].BytesSent() == 0 || nodes[1].BytesReceived() == 0 {
		t.Errorf("byte counters: sent %d received %d", nodes[1].BytesSent(), nodes[1].BytesReceived())
	}
}

func TestSeedDownAtStartIsRetried(t *testing.T) {
	c := newTestCluster(t)
	b := c.start(1, nil, seed(memAddrOf(0)))
	if got := b.NumAlive(); got != 1 {
		t.Fatalf("NumAlive=%d before the seed exists", got)
	}
	a := c.start(0, nil, nil)
	waitFor(t, converge, func() error {
		return allSee([]*Node{a, b}, []string{"node0", "node1"}, StatusAlive)
	})
}

func TestPartitionAndHeal(t *testing.T) {
	c := newTestCluster(t)
	var nodes []*Node
	for i := range 5 {
		nodes = append(nodes, c.start(i, nil, seed(memAddrOf(0))))
	}
	waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })

	left, right := nodes[:2], nodes[2:]
	c.net.Partition([]string{memAddrOf(0), memAddrOf(1)}, []string{memAddrOf(2), memAddrOf(3), memAddrOf(4)})
	waitFor(t, converge, func() error {
		if err := allSee(left, names(right), StatusDead); err != nil {
			return err
		}
		if err := allSee(right, names(left), StatusDead); err != nil {
			return err
		}
		if err := allSee(left, names(left), StatusAlive); err != nil {
			return err
		}
		return allSee(right, names(right), StatusAlive)
	})

	c.net.Heal()
	waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })
}

func TestLeaveIsSeenAsLeft(t *testing.T) {
	c := newTestCluster(t)
	var nodes []*Node
	for i := range 3 {
		nodes = append(nodes, c.start(i, nil, seed(memAddrOf(0))))
	}
	waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })
	if err := nodes[2].Leave(2 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if err := nodes[2].Leave(time.Second); err != nil {
		t.Errorf("second Leave: %v", err)
	}
	waitFor(t, converge, func() error { return allSee(nodes[:2], []string{"node2"}, StatusLeft) })
	for _, n := range nodes[:2] {
		if got := n.NumAlive(); got != 2 {
			t.Errorf("%s: NumAlive=%d after leave", n.Name(), got)
		}
	}
}

func TestSendToAllReachesEveryPeer(t *testing.T) {
	c := newTestCluster(t)
	var nodes []*Node
	var syncs []*fakeSync
	for i := range 4 {
		s := &fakeSync{}
		syncs = append(syncs, s)
		nodes = append(nodes, c.start(i, s, seed(memAddrOf(0))))
	}
	waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })
	msg := []byte("delta-1")
	nodes[1].SendToAll(msg)
	msg[0] = 'X' // the cluster must not keep msg
	waitFor(t, converge, func() error {
		for i, s := range syncs {
			if i != 1 && !s.got(&s.msgs, "delta-1") {
				return fmt.Errorf("node%d has not received the message", i)
			}
		}
		return nil
	})
	if syncs[1].got(&syncs[1].msgs, "delta-1") {
		t.Error("sender received its own message")
	}
}

func TestPushPullExchangesFullState(t *testing.T) {
	c := newTestCluster(t)
	sa, sb := &fakeSync{state: []byte("state-a")}, &fakeSync{state: []byte("state-b")}
	c.start(0, sa, nil)
	c.start(1, sb, seed(memAddrOf(0)))
	// The join itself is a push-pull: both sides get the other's state.
	waitFor(t, converge, func() error {
		if !sb.got(&sb.merged, "state-a") {
			return errors.New("joining node did not get the seed's state")
		}
		if !sa.got(&sa.merged, "state-b") {
			return errors.New("seed did not get the joining node's state")
		}
		return nil
	})
}

func TestGossipKeyAndLabelKeepClustersApart(t *testing.T) {
	key1 := []byte("0123456789abcdef")
	key2 := []byte("fedcba9876543210")
	for _, tc := range []struct {
		name      string
		good, bad func(*Config)
	}{
		{"key", func(c *Config) { c.Key = key1 }, func(c *Config) { c.Key = key2 }},
		{"no key", func(c *Config) { c.Key = key1 }, func(c *Config) {}},
		{"label", func(c *Config) { c.Label = "prod" }, func(c *Config) { c.Label = "staging" }},
		{"no label", func(c *Config) { c.Label = "prod" }, func(c *Config) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t)
			a := c.start(0, nil, tc.good)
			bad := c.start(1, nil, func(cfg *Config) { tc.bad(cfg); cfg.Join = []string{memAddrOf(0)} })
			good := c.start(2, nil, func(cfg *Config) { tc.good(cfg); cfg.Join = []string{memAddrOf(0)} })
			waitFor(t, converge, func() error { return allSee([]*Node{a, good}, []string{"node0", "node2"}, StatusAlive) })
			// Let the bad node retry a few times while the good pair gossips.
			start := bad.joinAttempts.Load()
			waitFor(t, converge, func() error {
				if bad.joinAttempts.Load() < start+3 {
					return errors.New("bad node is not retrying")
				}
				return nil
			})
			for _, n := range []*Node{a, good} {
				if _, ok := statuses(n)["node1"]; ok {
					t.Errorf("%s knows node1: %v", n.Name(), statuses(n))
				}
			}
			if got := bad.NumAlive(); got != 1 {
				t.Errorf("bad node sees %d alive: %v", got, bad.Members())
			}
		})
	}
}

func TestDNSSeedJoinsEveryAddress(t *testing.T) {
	c := newTestCluster(t)
	const svc = "herd-headless.default.svc.cluster.local"
	ips := []string{"127.0.0.11", "127.0.0.12", "127.0.0.13"}
	var lookups atomic.Int32
	resolver := func(_ context.Context, host string) ([]string, error) {
		if host != svc {
			return nil, fmt.Errorf("unknown host %q", host)
		}
		if lookups.Add(1) == 1 {
			return nil, errors.New("no such host") // endpoints not ready yet: retried
		}
		return ips, nil
	}
	var pods []*Node
	for i, ip := range ips {
		addr := ip + ":7946"
		n, err := New(Config{
			NodeName: fmt.Sprintf("pod%d", i), BindAddr: addr, Logger: c.log,
			transport: c.net.Node(addr), tune: fastGossip, heartbeat: fastHeartbeat, RetryJoinEvery: 50 * time.Millisecond,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Shutdown() })
		pods = append(pods, n)
	}
	joiner := c.start(9, nil, func(cfg *Config) {
		cfg.Join = []string{svc + ":7946"}
		cfg.LookupHost = resolver
	})
	all := append(pods, joiner)
	// The pods never joined each other: only the joiner's join of every address links them.
	waitFor(t, converge, func() error { return allSee(all, names(all), StatusAlive) })
	if lookups.Load() < 2 {
		t.Errorf("resolver called %d times, want a retry after the failure", lookups.Load())
	}
}

func TestLossyNetworkStillConverges(t *testing.T) {
	c := newTestCluster(t)
	c.net.SetDropRate(0.1)
	c.net.SetDelay(2 * time.Millisecond)
	var nodes []*Node
	for i := range 4 {
		nodes = append(nodes, c.start(i, nil, seed(memAddrOf(0))))
	}
	waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })
}

func TestRealSockets(t *testing.T) {
	if testing.Short() {
		t.Skip("binds real UDP/TCP sockets on 127.0.0.1")
	}
	log := testLogger(t)
	var nodes []*Node
	var syncs []*fakeSync
	for i := range 3 {
		s := &fakeSync{}
		cfg := Config{
			NodeName: fmt.Sprintf("real%d", i), BindAddr: "127.0.0.1:0", Logger: log,
			tune: fastGossip, heartbeat: fastHeartbeat, RetryJoinEvery: 50 * time.Millisecond,
			Key: []byte("0123456789abcdef0123456789abcdef"), Label: "test",
		}
		if i > 0 {
			cfg.Join = []string{nodes[0].Addr()}
		}
		n, err := New(cfg, s)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Shutdown() })
		nodes = append(nodes, n)
		syncs = append(syncs, s)
	}
	waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })
	nodes[0].SendToAll([]byte("hello"))
	waitFor(t, converge, func() error {
		for i := 1; i < 3; i++ {
			if !syncs[i].got(&syncs[i].msgs, "hello") {
				return fmt.Errorf("real%d did not get the message", i)
			}
		}
		return nil
	})
	if err := nodes[2].Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, converge, func() error { return allSee(nodes[:2], []string{"real2"}, StatusLeft) })
}

// SendTo reaches the named member and no other; it refuses this node, strangers and the dead.
func TestSendToReachesExactlyOneNode(t *testing.T) {
	c := newTestCluster(t)
	var nodes []*Node
	var syncs []*fakeSync
	for i := range 3 {
		s := &fakeSync{}
		syncs = append(syncs, s)
		nodes = append(nodes, c.start(i, s, seed(memAddrOf(0))))
	}
	waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })

	msg := []byte("loan-1")
	if !nodes[0].SendTo("node1", msg) {
		t.Fatal("SendTo(node1) = false")
	}
	msg[0] = 'X' // the cluster must not keep msg
	waitFor(t, converge, func() error {
		if !syncs[1].got(&syncs[1].msgs, "loan-1") {
			return errors.New("node1 has not received the message")
		}
		return nil
	})
	// Packets from node0 to node2 arrive in order: once the marker is there, loan-1 would be too.
	if !nodes[0].SendTo("node2", []byte("marker")) {
		t.Fatal("SendTo(node2) = false")
	}
	waitFor(t, converge, func() error {
		if !syncs[2].got(&syncs[2].msgs, "marker") {
			return errors.New("node2 has not received the marker")
		}
		return nil
	})
	if syncs[2].got(&syncs[2].msgs, "loan-1") || syncs[0].got(&syncs[0].msgs, "loan-1") {
		t.Error("the message to node1 reached another node")
	}

	for _, name := range []string{"node0", "node9"} {
		if nodes[0].SendTo(name, []byte("x")) {
			t.Errorf("SendTo(%s) = true", name)
		}
	}
	_ = nodes[2].Shutdown()
	waitFor(t, converge, func() error {
		if st := statuses(nodes[0])["node2"]; st != StatusDead {
			return fmt.Errorf("node0 sees node2 %s", st)
		}
		return nil
	})
	if nodes[0].SendTo("node2", []byte("x")) {
		t.Error("SendTo a dead member = true")
	}
}

// The transport counts each datagram once where it leaves and once where it arrives, with its
// bytes: the per-node packet rate the cluster's scale is judged by.
func TestTransportCountsPackets(t *testing.T) {
	nw := NewNetwork()
	a := newCountingTransport(nw.Node("127.0.0.1:7001"))
	b := newCountingTransport(nw.Node("127.0.0.1:7002"))
	defer a.Shutdown()
	defer b.Shutdown()
	for _, msg := range []string{"one", "three"} {
		if _, err := a.WriteTo([]byte(msg), "127.0.0.1:7002"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.WriteToAddress([]byte("x"), memberlist.Address{Addr: "127.0.0.1:7002"}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		select {
		case <-b.PacketCh():
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %d did not arrive", i)
		}
	}
	if got := a.packetsSent.Load(); got != 3 {
		t.Errorf("a sent %d packets, want 3", got)
	}
	if got := a.sent.Load(); got != 9 {
		t.Errorf("a sent %d bytes, want 9", got)
	}
	if got := b.packetsReceived.Load(); got != 3 {
		t.Errorf("b received %d packets, want 3", got)
	}
	if got := a.packetsReceived.Load() + b.packetsSent.Load(); got != 0 {
		t.Errorf("%d packets counted the other way", got)
	}
}
