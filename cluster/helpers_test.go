package cluster

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"
)

// testLogger sends logs to t.Log and goes quiet once the test is over, because memberlist's
// goroutines may outlive Shutdown by a moment.
func testLogger(t *testing.T) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: testLogLevel}))
}

type tWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}

// fakeSync records what the cluster delivers.
type fakeSync struct {
	state []byte

	mu     sync.Mutex
	msgs   [][]byte
	merged [][]byte
}

func (f *fakeSync) HandleMessage(msg []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, msg)
}

func (f *fakeSync) LocalState(bool) []byte { return f.state }

func (f *fakeSync) MergeRemoteState(buf []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.merged = append(f.merged, slices.Clone(buf))
}

func (f *fakeSync) got(list *[][]byte, want string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(*list, func(b []byte) bool { return string(b) == want })
}

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not a wait for an event
	}
}

const converge = 15 * time.Second

type testCluster struct {
	t   *testing.T
	net *Network
	log *slog.Logger
}

func newTestCluster(t *testing.T) *testCluster {
	return &testCluster{t: t, net: NewNetwork(), log: testLogger(t)}
}

func memAddrOf(i int) string { return fmt.Sprintf("127.0.0.1:%d", 7000+i) }

// start runs node i at memAddrOf(i), letting mod adjust its config.
func (c *testCluster) start(i int, sync StateSync, mod func(*Config)) *Node {
	c.t.Helper()
	cfg := Config{
		NodeName:       fmt.Sprintf("node%d", i),
		BindAddr:       memAddrOf(i),
		Logger:         c.log,
		transport:      c.net.Node(memAddrOf(i)),
		RetryJoinEvery: 50 * time.Millisecond,
		tune:           fastGossip,
		heartbeat:      fastHeartbeat,
	}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg, sync)
	if err != nil {
		c.t.Fatalf("start node%d: %v", i, err)
	}
	c.t.Cleanup(func() { _ = n.Shutdown() })
	return n
}

func seed(addrs ...string) func(*Config) { return func(c *Config) { c.Join = addrs } }

// statuses returns name -> status as n sees it.
func statuses(n *Node) map[string]string {
	out := map[string]string{}
	for _, m := range n.Members() {
		out[m.Name] = m.Status
	}
	return out
}

// allSee checks that every node in nodes sees each name in names with status.
func allSee(nodes []*Node, names []string, status string) error {
	for _, n := range nodes {
		st := statuses(n)
		for _, name := range names {
			if st[name] != status {
				return fmt.Errorf("%s sees %s as %q, want %q (all: %v)", n.Name(), name, st[name], status, st)
			}
		}
	}
	return nil
}

func names(nodes []*Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Name()
	}
	return out
}

var testLogLevel = slog.LevelInfo
