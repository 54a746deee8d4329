package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/herd-proxy/herd/cluster/internal/peertls"
)

// rejects counts Config.OnReject calls by reason.
type rejects struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *rejects) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[reason]++
}

func (r *rejects) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

var (
	testKey  = []byte("0123456789abcdef0123456789abcdef")
	otherKey = []byte("fedcba9876543210fedcba9876543210")
)

// startRealRaft starts n nodes on loopback TCP/UDP with the given key (nil: none) and waits for
// a leader.
func startRealRaft(t *testing.T, n int, key []byte, rj *rejects) []*raftNode {
	t.Helper()
	var nodes []*raftNode
	for i := range n {
		cfg := Config{
			NodeName: fmt.Sprintf("sec%d", i), BindAddr: "127.0.0.1:0", Logger: testLogger(t),
			tune: fastGossip, heartbeat: fastHeartbeat, RetryJoinEvery: 50 * time.Millisecond,
			Key: key, OnReject: rj.add,
		}
		if i > 0 {
			cfg.Join = []string{nodes[0].node.Addr()}
		}
		node, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = node.Shutdown() })
		fsm := &listFSM{}
		r, err := node.StartRaft(RaftConfig{BootstrapExpect: n, timers: &fastTimers}, fsm)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Shutdown() })
		nodes = append(nodes, &raftNode{i: i, node: node, raft: r, fsm: fsm})
	}
	waitLeader(t, nodes, n)
	return nodes
}

// forwardFrame is a forwarded apply of cmd, as a follower sends it to the leader.
func forwardFrame(op byte, cmd string) []byte {
	b := []byte{muxForward, op, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[2:], 2000)
	binary.BigEndian.PutUint32(b[6:], uint32(len(cmd)))
	return append(b, cmd...)
}

// attack sends frame over conn (already dialled, maybe TLS) and returns what came back
// before the peer closed the connection or 3 s passed.
func attack(conn net.Conn, frame []byte) []byte {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	_, _ = conn.Write(frame)
	got, _ := io.ReadAll(bufio.NewReader(conn))
	return got
}

// TestRaftPortRefusesOutsiders replays issue 11's attack: one TCP connection to a node's raft
// port sending a forwarded apply. Without a key it commits (the attack is real); with a key,
// neither a plain connection nor TLS with another key commits or reads anything, and each is
// counted.
func TestRaftPortRefusesOutsiders(t *testing.T) {
	if testing.Short() {
		t.Skip("binds real TCP/UDP sockets on 127.0.0.1")
	}
	t.Run("without a key the attack commits", func(t *testing.T) {
		nodes := startRealRaft(t, 3, nil, &rejects{})
		leader := waitLeader(t, nodes, 3)
		conn, err := net.Dial("tcp", leader.raft.addr)
		if err != nil {
			t.Fatal(err)
		}
		if reply := attack(conn, forwardFrame(opApply, "attacker")); len(reply) == 0 || reply[0] != codeOK {
			t.Fatalf("unkeyed leader answered %x", reply)
		}
		waitSameState(t, nodes, []string{"attacker"})
	})

	rj := &rejects{}
	nodes := startRealRaft(t, 3, testKey, rj)
	leader := waitLeader(t, nodes, 3)
	mustApply(t, leader, "before")
	addr := leader.raft.addr

	plain := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	_, wrongKey, err := peertls.New(peertls.Config{Keys: [][]byte{otherKey}})
	if err != nil {
		t.Fatal(err)
	}
	attempts := []struct {
		name  string
		conn  func() net.Conn
		frame []byte
	}{
		{"plain forwarded apply", plain, forwardFrame(opApply, "attacker")},
		{"plain status read", plain, forwardFrame(opStats, "")},
		{"plain raft frame", plain, append([]byte{muxRaft}, make([]byte, 64)...)},
		{"TLS with another key", func() net.Conn { return tls.Client(plain(), wrongKey) }, forwardFrame(opApply, "attacker")},
		{"TLS without a certificate", func() net.Conn {
			return tls.Client(plain(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		}, forwardFrame(opApply, "attacker")},
	}
	for _, a := range attempts {
		before := rj.get(RejectUnauthenticated)
		reply := attack(a.conn(), a.frame)
		// A plain request gets bytes back only as the start of a TLS alert, never a reply.
		if len(reply) > 0 && reply[0] != 0x15 {
			t.Errorf("%s: got %d bytes back: %x", a.name, len(reply), reply)
		}
		waitFor(t, converge, func() error {
			if rj.get(RejectUnauthenticated) <= before {
				return fmt.Errorf("%s: not counted as unauthenticated", a.name)
			}
			return nil
		})
	}
	mustApply(t, nodes[1], "after") // forwarded by a follower: the keyed cluster still works
	waitSameState(t, nodes, []string{"before", "after"})
}

// TestRaftPortShedsConnectionFloods: idle connections that never authenticate are bounded,
// the excess is refused and counted, and the port keeps serving its peers.
func TestRaftPortShedsConnectionFloods(t *testing.T) {
	if testing.Short() {
		t.Skip("binds real TCP/UDP sockets on 127.0.0.1")
	}
	rj := &rejects{}
	nodes := startRealRaft(t, 1, testKey, rj)
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for range maxPendingConns + 20 {
		c, err := net.Dial("tcp", nodes[0].raft.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(t, converge, func() error {
		if n := rj.get(RejectTooManyConns); n < 20 {
			return fmt.Errorf("%d connections refused, want 20", n)
		}
		return nil
	})
	// The idle ones are cut at muxHeaderTimeout; afterwards a peer's call goes through.
	for _, c := range conns {
		_ = c.Close()
	}
	waitFor(t, 2*muxHeaderTimeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := nodes[0].raft.peerStats(ctx, nodes[0].raft.addr)
		return err
	})
}

// TestForwardedFrameIsCapped: even an authenticated peer cannot make a node allocate more than
// maxFrame for one request, and Apply refuses a command that large before sending it.
func TestForwardedFrameIsCapped(t *testing.T) {
	if testing.Short() {
		t.Skip("binds real TCP/UDP sockets on 127.0.0.1")
	}
	rj := &rejects{}
	nodes := startRealRaft(t, 1, testKey, rj)
	c, err := nodes[0].raft.mux.dial(nodes[0].raft.addr, muxForward, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hdr := []byte{opApply, 0, 0, 0, 100, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[5:], maxFrame+1)
	if reply := attack(c, hdr); len(reply) != 0 {
		t.Errorf("oversized frame answered: %x", reply)
	}
	waitFor(t, converge, func() error {
		if rj.get(RejectFrameTooLarge) == 0 {
			return fmt.Errorf("oversized frame not counted")
		}
		return nil
	})
	if _, _, err := nodes[0].raft.Apply(context.Background(), make([]byte, maxFrame+1)); err == nil {
		t.Error("Apply took a command larger than maxFrame")
	}
}

// TestGossipWithoutKeyIsDroppedAndCounted: a keyed node never hands the state backend a
// message from a node without the key, or with another key, and counts each as
// unauthenticated; a keyed peer's messages still arrive. It also keeps rejectCounter's
// phrases true to the memberlist version in go.mod.
func TestGossipWithoutKeyIsDroppedAndCounted(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
	}{{"no key", nil}, {"another key", otherKey}} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t)
			rj := &rejects{}
			sync := &fakeSync{}
			a := c.start(0, sync, func(cfg *Config) { cfg.Key = testKey; cfg.OnReject = rj.add })
			good := c.start(1, nil, func(cfg *Config) { cfg.Key = testKey; cfg.Join = []string{memAddrOf(0)} })
			bad := c.start(2, nil, func(cfg *Config) { cfg.Key = tc.key; cfg.Join = []string{memAddrOf(0)} })
			waitFor(t, converge, func() error { return allSee([]*Node{a, good}, []string{"node0", "node1"}, StatusAlive) })

			to := memberlistNode(t, a)
			waitFor(t, converge, func() error {
				if err := bad.ml.SendBestEffort(&to, []byte("forged")); err != nil {
					return err
				}
				good.SendToAll([]byte("genuine"))
				if !sync.got(&sync.msgs, "genuine") {
					return errors.New("the keyed peer's message has not arrived")
				}
				if rj.get(RejectUnauthenticated) == 0 {
					return errors.New("nothing counted as unauthenticated")
				}
				return nil
			})
			if sync.got(&sync.msgs, "forged") {
				t.Error("a message without the cluster key reached the state backend")
			}
		})
	}
}

func memberlistNode(t *testing.T, n *Node) memberlist.Node {
	t.Helper()
	host, port, err := net.SplitHostPort(n.Addr())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return memberlist.Node{Name: n.Name(), Addr: net.ParseIP(host), Port: uint16(p)}
}

// TestKeyRotationKeepsGossipAndRaftTalking runs a cluster in each phase of the rotation that
// docs/SECURITY.md describes (install the new key everywhere, send with it everywhere, drop the
// old one), with nodes on both sides of the phase. Gossip and raft, forwarded writes included,
// keep working throughout.
func TestKeyRotationKeepsGossipAndRaftTalking(t *testing.T) {
	old, nw := testKey, otherKey
	sends := func(key []byte, accept ...[]byte) func(*Config) {
		return func(cfg *Config) { cfg.Key, cfg.AcceptKeys = key, accept }
	}
	for _, phase := range []struct {
		name  string
		nodes []func(*Config)
	}{
		{"installing", []func(*Config){sends(old), sends(old, nw), sends(old, nw)}},
		{"switching", []func(*Config){sends(old, nw), sends(nw, old), sends(nw, old)}},
		{"dropping", []func(*Config){sends(nw, old), sends(nw), sends(nw)}},
	} {
		t.Run(phase.name, func(t *testing.T) {
			c := newRaftCluster(t, nil)
			var nodes []*raftNode
			var want []string
			for i, keys := range phase.nodes {
				c.gossipMod = keys
				var seeds []string
				if i > 0 {
					seeds = []string{memAddrOf(0)}
				}
				nodes = append(nodes, c.startRaft(i, len(phase.nodes), "", seeds...))
			}
			waitLeader(t, nodes, len(nodes))
			for _, rn := range nodes {
				mustApply(t, rn, "from "+rn.name())
				want = append(want, "from "+rn.name())
			}
			waitSameState(t, nodes, want)
		})
	}
}
