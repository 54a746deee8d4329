package chaos

import (
	"context"
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
	needRoot(t)
	ctx := context.Background()
	n, err := NewNet(ctx, []string{"n1", "n2"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
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

// TestCleanStaleRemovesDeadRunsOnly: a namespace named for a process that is gone is removed,
// with what runs in it; one of a live process is left alone.
func TestCleanStaleRemovesDeadRunsOnly(t *testing.T) {
	needRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := nsPrefix + strconv.Itoa(dead.Process.Pid) + "-beef-n1"
	live := nsPrefix + strconv.Itoa(os.Getppid()) + "-beef-n1"
	for _, name := range []string{stale, live} {
		if err := ip(context.Background(), "netns", "add", name); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = ip(context.Background(), "netns", "delete", name) }()
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
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Error("the process in the dead run's namespace was not killed")
	}
}
