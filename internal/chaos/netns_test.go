package chaos

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needRoot skips tests that create namespaces, except in CI, which runs as root and must run them.
func needRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("creates network namespaces; skipped under -short")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run the namespace tests as root")
		}
		t.Skip("needs root to create network namespaces")
	}
}

// testNet is NewNet for a test that needs root, closed at its end.
func testNet(t *testing.T, nodes ...string) *Net {
	t.Helper()
	needRoot(t)
	n, err := NewNet(context.Background(), nodes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func namespaces(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// TestNetConnectsNodesAndIsRemoved: the controller reaches every node over the bridge, nodes
// reach each other, the root namespace has none of the addresses, and Close leaves nothing.
func TestNetConnectsNodesAndIsRemoved(t *testing.T) {
	n := testNet(t, "n1", "n2")
	ctx := context.Background()
	ln, err := ListenIn(n.NS("n2"), NodeAddr(2)+":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, c.RemoteAddr().String())
			c.Close()
		}
	}()
	for _, from := range []string{n.Ctl, n.NS("n1")} {
		c, err := DialerIn(from)(ctx, "tcp", NodeAddr(2)+":9000")
		if err != nil {
			t.Fatalf("dial n2 from %s: %v", from, err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if !strings.HasPrefix(string(got), subnet) {
			t.Errorf("n2 saw a connection from %q, want a %s0/24 address", got, subnet)
		}
	}
	// The run's addresses exist only inside its namespaces (checked without sending anything:
	// from here such a packet would leave the machine).
	if out, err := exec.Command("ip", "-o", "addr").Output(); err != nil || strings.Contains(string(out), subnet) {
		t.Errorf("the root namespace has a %s0/24 address (%v):\n%s", subnet, err, out)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range namespaces(t) {
		if strings.HasPrefix(name, n.prefix) {
			t.Errorf("namespace %s is left after Close", name)
		}
	}
}

// TestNetHostsResolveNamesAndAreRemoved: after WriteHosts, a process ip netns exec starts in a
// node's or the controller's namespace resolves the names to their addresses (and localhost
// still to loopback); Close removes the /etc/netns directories it wrote.
func TestNetHostsResolveNamesAndAreRemoved(t *testing.T) {
	n := testNet(t, "n1", "n2")
	if err := n.WriteHosts(map[string]string{"alpha": NodeAddr(1), "beta": NodeAddr(2)}); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{n.Ctl, n.NS("n1"), n.NS("n2")} {
		out, err := exec.Command("ip", "netns", "exec", ns, "getent", "hosts", "beta", "localhost").Output()
		if err != nil {
			t.Fatalf("getent in %s: %v", ns, err)
		}
		if got := strings.Fields(string(out)); len(got) < 4 || got[0] != NodeAddr(2) || got[1] != "beta" || got[2] != "127.0.0.1" && got[2] != "::1" {
			t.Errorf("in %s: getent hosts beta localhost = %q, want beta at %s and localhost on loopback", ns, out, NodeAddr(2))
		}
	}
	if err := n.WriteHosts(map[string]string{"bad name": NodeAddr(1)}); err == nil {
		t.Error("WriteHosts took a name with a space")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(etcNetns)
	for _, e := range left {
		if strings.HasPrefix(e.Name(), n.prefix) {
			t.Errorf("%s%s is left after Close", etcNetns, e.Name())
		}
	}
}

// TestCleanStaleRemovesDeadRunsOnly: a namespace named for a process that is gone is removed,
// with what runs in it and its /etc/netns directory; one of a live process is left alone.
func TestCleanStaleRemovesDeadRunsOnly(t *testing.T) {
	needRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(etcNetns); errors.Is(err, os.ErrNotExist) {
		defer os.Remove(etcNetns) // made below; removed unless another run has put its own there
	}
	stale := nsPrefix + strconv.Itoa(dead.Process.Pid) + "-beef-n1"
	live := nsPrefix + strconv.Itoa(os.Getppid()) + "-beef-n1"
	for _, name := range []string{stale, live} {
		if err := ip(context.Background(), "netns", "add", name); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = ip(context.Background(), "netns", "delete", name) }()
		if err := os.MkdirAll(etcNetns+name, 0o755); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(etcNetns + name)
	}
	sleeper := exec.Command("ip", "netns", "exec", stale, "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()
	if err := CleanStale(); err != nil {
		t.Fatal(err)
	}
	names := namespaces(t)
	for _, name := range names {
		if name == stale {
			t.Error("the dead run's namespace is still there")
		}
	}
	found := false
	for _, name := range names {
		found = found || name == live
	}
	if !found {
		t.Error("a live process's namespace was removed")
	}
	if _, err := os.Stat(etcNetns + stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dead run's %s%s is still there (%v)", etcNetns, stale, err)
	}
	if _, err := os.Stat(etcNetns + live); err != nil {
		t.Errorf("a live process's %s%s was removed: %v", etcNetns, live, err)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Error("the process in the dead run's namespace was not killed")
	}
}
