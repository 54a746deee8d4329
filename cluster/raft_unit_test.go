package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func TestRaftRealSockets(t *testing.T) {
	if testing.Short() {
		t.Skip("binds real TCP/UDP sockets on 127.0.0.1")
	}
	log := testLogger(t)
	var nodes []*raftNode
	for i := range 3 {
		cfg := Config{
			NodeName: fmt.Sprintf("real%d", i), BindAddr: "127.0.0.1:0", Logger: log,
			tune: fastGossip, heartbeat: fastHeartbeat, RetryJoinEvery: 50 * time.Millisecond,
		}
		if i > 0 {
			cfg.Join = []string{nodes[0].node.Addr()}
		}
		n, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Shutdown() })
		fsm := &listFSM{}
		// The raft address defaults to the gossip host with port 0: a free TCP port.
		r, err := n.StartRaft(RaftConfig{DataDir: t.TempDir(), BootstrapExpect: 3, timers: &fastTimers}, fsm)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Shutdown() })
		nodes = append(nodes, &raftNode{i: i, node: n, raft: r, fsm: fsm})
	}
	leader := waitLeader(t, nodes, 3)
	f := follower(nodes, leader)
	if _, _, err := f.raft.Apply(context.Background(), []byte("over tcp")); err != nil {
		t.Fatalf("Apply on follower: %v", err)
	}
	waitSameState(t, nodes, []string{"over tcp"})
	if _, _, err := f.raft.Apply(context.Background(), []byte("bad")); !errors.Is(err, ErrRejected) {
		t.Errorf("forwarded rejected command: %v", err)
	}
}

func TestRaftConfig(t *testing.T) {
	for _, tc := range []struct{ gossip, want string }{
		{"0.0.0.0:7946", "0.0.0.0:7947"},
		{"127.0.0.1:0", "127.0.0.1:0"},
		{"10.0.0.5", "10.0.0.5:7947"},
	} {
		var c RaftConfig
		c.defaultAddrs(tc.gossip)
		if c.BindAddr != tc.want {
			t.Errorf("gossip %s: raft bind %q, want %q", tc.gossip, c.BindAddr, tc.want)
		}
	}
	for _, tc := range []struct {
		name string
		cfg  RaftConfig
		bad  string
	}{
		{"ok", RaftConfig{BindAddr: ":7947", DataDir: "/x"}, ""},
		{"in memory on a test network", RaftConfig{BindAddr: ":7947", streams: NewNetwork().raftStreams}, ""},
		{"in memory over TCP", RaftConfig{BindAddr: ":7947"}, ""},
		{"negative expect", RaftConfig{BindAddr: ":7947", DataDir: "/x", BootstrapExpect: -1}, "negative"},
		{"advertise name", RaftConfig{BindAddr: ":7947", DataDir: "/x", AdvertiseAddr: "herd-0:7947"}, "must be an IP"},
		{"bad bind", RaftConfig{BindAddr: "nope", DataDir: "/x"}, "raft address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.SetDefaults()
			err := tc.cfg.Validate()
			if (tc.bad == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.bad)) {
				t.Errorf("Validate = %v, want error containing %q", err, tc.bad)
			}
		})
	}
}

func TestRaftMetaKeepsLeavingFlag(t *testing.T) {
	var g gossipRaft
	if got := g.encode(false, 512); got != nil {
		t.Errorf("no raft, not leaving: %q", got)
	}
	if got := g.encode(true, 512); string(got) != "L" {
		t.Errorf("no raft, leaving: %q", got)
	}
	g.setLocal(&raftMeta{Addr: "10.0.0.1:7947", HasState: true, Expect: 3})
	for _, leaving := range []bool{false, true} {
		b := g.encode(leaving, 512)
		if (b[0] == metaLeaving) != leaving {
			t.Errorf("leaving=%v: flag %q", leaving, b[0])
		}
		m := decodeRaftMeta(b)
		if m == nil || *m != (raftMeta{Addr: "10.0.0.1:7947", HasState: true, Expect: 3}) {
			t.Errorf("leaving=%v: decoded %+v from %q", leaving, m, b)
		}
	}
	if decodeRaftMeta([]byte("L")) != nil || decodeRaftMeta([]byte("Rnot json")) != nil {
		t.Error("decoded garbage")
	}
	g.observe("peer", g.encode(true, 512), StatusLeft)
	if p := g.snapshot()["peer"]; p.status != StatusLeft || p.meta == nil || p.meta.Addr != "10.0.0.1:7947" {
		t.Errorf("observed %+v", p)
	}
}

func TestHclogAdapterLevels(t *testing.T) {
	var buf strings.Builder
	h := newHclogAdapter(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), "raft")
	h.Info("pipelining replication", "peer", "x")
	h.Debug("some detail")
	h.Named("net").Info("entering leader state", "leader", "node0")
	h.With("k", "v").Warn("failed to contact", "server-id", "node1")
	h.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "", "last-leader-id", "")
	h.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "10.0.0.1:7947", "last-leader-id", "node2")
	out := buf.String()
	if strings.Contains(out, "pipelining") || strings.Contains(out, "some detail") {
		t.Errorf("routine raft logs at INFO:\n%s", out)
	}
	for _, want := range []string{`level=INFO msg="entering leader state" component=raft.net`, `level=WARN msg="failed to contact" component=raft k=v`,
		`level=INFO msg="heartbeat timeout reached, starting election" component=raft last-leader-addr="" last-leader-id=""`, // a new group's first election
		`level=WARN msg="heartbeat timeout reached, starting election" component=raft last-leader-addr=10.0.0.1:7947 last-leader-id=node2`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if h.GetLevel() != hclog.Warn {
		t.Errorf("GetLevel = %v with an INFO handler", h.GetLevel())
	}
}
