package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ClusterNodeTimeout is the cluster-node-timeout of StartCluster's nodes: a master that does
// not answer for this long is failed over to its replica, about two seconds after it died.
const ClusterNodeTimeout = time.Second

// clusterReadyTimeout bounds how long a new cluster may take to agree on its slots, replicas
// and replication links, and a failover to finish.
const clusterReadyTimeout = 30 * time.Second

// Cluster is a Redis Cluster of real redis-server processes on 127.0.0.1, all with one
// password, created by redis-cli --cluster create.
type Cluster struct {
	t        testing.TB
	password string
	// Nodes are every node, in the order they were created; which of them are masters changes
	// with failovers (Masters, MasterOf).
	Nodes []*Server
}

// StartCluster starts masters x (1 + replicas) cluster nodes, joins them into one cluster
// with replicas replicas per master, and waits until every node agrees that all 16384 slots
// are served and every replica is in sync. Every process and directory is removed when the
// test ends, whether it passed or not. Skipped under -short, as Start.
func StartCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	cli := lookPath(t, "redis-cli")
	c := &Cluster{t: t, password: randomHex(16)}
	for range masters * (1 + replicas) {
		c.Nodes = append(c.Nodes, Start(t, Password(c.password), func(cf *config) { cf.clusterBus = true },
			Args("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
				"--cluster-node-timeout", strconv.FormatInt(ClusterNodeTimeout.Milliseconds(), 10),
				"--masterauth", c.password)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterReadyTimeout)
	defer cancel()
	args := append([]string{"-a", c.password, "--no-auth-warning", "--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	c.waitReady(masters, replicas)
	return c
}

// Addrs are every node's host:port: any of them is a seed for a cluster client.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr()
	}
	return out
}

// Password is every node's requirepass (and masterauth).
func (c *Cluster) Password() string { return c.password }

// clusterNode is one line of CLUSTER NODES.
type clusterNode struct {
	id, addr, flags, master string // master: the id a replica follows ("-" for a master)
	link                    string // "connected" or "disconnected"
	slots                   []string
}

func (n clusterNode) is(flag string) bool { return slices.Contains(strings.Split(n.flags, ","), flag) }

// nodesView is CLUSTER NODES as node s sees the cluster.
func (s *Server) nodesView() ([]clusterNode, error) {
	r, err := s.Do("CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	text, _ := r.(string)
	var out []clusterNode
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("CLUSTER NODES line %q", line)
		}
		addr, _, _ := strings.Cut(f[1], "@") // ip:port@busport
		out = append(out, clusterNode{id: f[0], addr: addr, flags: f[2], master: f[3], link: f[7], slots: f[8:]})
	}
	return out, nil
}

// byAddr is the node listening on addr, or nil.
func (c *Cluster) byAddr(addr string) *Server {
	for _, n := range c.Nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// waitReady polls every node until each says the cluster is ok with all its nodes, sees
// masters masters each followed by replicas connected replicas, and every replica's
// replication link is up.
func (c *Cluster) waitReady(masters, replicas int) {
	c.t.Helper()
	c.poll(clusterReadyTimeout, "the cluster to be ready", func() error {
		for _, n := range c.Nodes {
			if err := clusterOK(n, len(c.Nodes)); err != nil {
				return err
			}
			view, err := n.nodesView()
			if err != nil {
				return err
			}
			follow := map[string]int{}
			nm := 0
			for _, v := range view {
				switch {
				case v.is("fail") || v.is("fail?") || v.link != "connected":
					return fmt.Errorf("%s sees %s as %s, %s", n.Addr(), v.addr, v.flags, v.link)
				case v.is("master"):
					nm++
				default:
					follow[v.master]++
				}
			}
			if nm != masters {
				return fmt.Errorf("%s sees %d masters, want %d", n.Addr(), nm, masters)
			}
			for _, v := range view {
				if v.is("master") && follow[v.id] != replicas {
					return fmt.Errorf("%s sees %d replicas of %s, want %d", n.Addr(), follow[v.id], v.addr, replicas)
				}
			}
			if role, err := n.Info("replication", "role"); err != nil {
				return err
			} else if role == "slave" {
				if link, err := n.Info("replication", "master_link_status"); err != nil || link != "up" {
					return fmt.Errorf("%s: replication link %q (%v)", n.Addr(), link, err)
				}
			}
		}
		return nil
	})
}

// clusterOK checks that n says the cluster is ok, with every slot served and known nodes.
func clusterOK(n *Server, known int) error {
	r, err := n.Do("CLUSTER", "INFO")
	if err != nil {
		return err
	}
	text, _ := r.(string)
	if st := infoField(text, "cluster_state"); st != "ok" {
		return fmt.Errorf("%s: cluster_state %q", n.Addr(), st)
	}
	if ok := infoField(text, "cluster_slots_ok"); ok != "16384" {
		return fmt.Errorf("%s: %s slots ok", n.Addr(), ok)
	}
	if k := infoField(text, "cluster_known_nodes"); k != strconv.Itoa(known) {
		return fmt.Errorf("%s: knows %s nodes, want %d", n.Addr(), k, known)
	}
	return nil
}

// poll calls check until it returns nil, failing the test with its last error after within.
func (c *Cluster) poll(within time.Duration, what string, check func() error) {
	c.t.Helper()
	poll(c.t, within, what, check)
}

func poll(t testing.TB, within time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: waiting for %s: still not after %v: %v", what, within, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// live is the first running node.
func (c *Cluster) live() *Server {
	for _, n := range c.Nodes {
		if n.Running() {
			return n
		}
	}
	c.t.Fatal("redistest: no cluster node runs")
	return nil
}

// Slot is the cluster slot of key, as Redis computes it (hash tags included).
func (c *Cluster) Slot(key string) int {
	c.t.Helper()
	r, err := c.live().Do("CLUSTER", "KEYSLOT", key)
	if err != nil {
		c.t.Fatalf("redistest: CLUSTER KEYSLOT: %v", err)
	}
	return int(r.(int64))
}

// MasterOf is the node that serves key's slot, as a running node sees it now.
func (c *Cluster) MasterOf(key string) *Server {
	c.t.Helper()
	m, err := c.masterOfSlot(c.live(), c.Slot(key))
	if err != nil {
		c.t.Fatalf("redistest: %v", err)
	}
	return m
}

// masterOfSlot is the node that view's owner says serves slot.
func (c *Cluster) masterOfSlot(from *Server, slot int) (*Server, error) {
	view, err := from.nodesView()
	if err != nil {
		return nil, err
	}
	for _, v := range view {
		if !v.is("master") {
			continue
		}
		for _, r := range v.slots {
			lo, hi, found := strings.Cut(r, "-")
			if !found {
				hi = lo
			}
			a, errA := strconv.Atoi(lo)
			b, errB := strconv.Atoi(hi)
			if errA == nil && errB == nil && a <= slot && slot <= b {
				if s := c.byAddr(v.addr); s != nil {
					return s, nil
				}
				return nil, fmt.Errorf("slot %d is served by %s, not a node of this cluster", slot, v.addr)
			}
		}
	}
	return nil, fmt.Errorf("%s: no master serves slot %d", from.Addr(), slot)
}

// Masters are the nodes that serve slots now, as a running node sees it.
func (c *Cluster) Masters() []*Server {
	c.t.Helper()
	view, err := c.live().nodesView()
	if err != nil {
		c.t.Fatalf("redistest: %v", err)
	}
	var out []*Server
	for _, v := range view {
		if v.is("master") && !v.is("fail") && len(v.slots) > 0 {
			if s := c.byAddr(v.addr); s != nil {
				out = append(out, s)
			}
		}
	}
	return out
}

// WaitFailover waits until key's slot is served by a running node other than old (after the
// test killed old, a replica takes over about two seconds later) and every running node
// agrees on it and says the cluster is ok. It returns the new master.
func (c *Cluster) WaitFailover(key string, old *Server) *Server {
	c.t.Helper()
	slot := c.Slot(key)
	var m *Server
	c.poll(clusterReadyTimeout, "a failover of "+old.Addr(), func() error {
		m = nil
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			got, err := c.masterOfSlot(n, slot)
			if err != nil {
				return err
			}
			if got == old || !got.Running() {
				return fmt.Errorf("%s still sees %s serve slot %d", n.Addr(), got.Addr(), slot)
			}
			if m != nil && got != m {
				return fmt.Errorf("nodes disagree: %s and %s serve slot %d", m.Addr(), got.Addr(), slot)
			}
			m = got
			if r, err := n.Do("CLUSTER", "INFO"); err != nil {
				return err
			} else if st := infoField(r.(string), "cluster_state"); st != "ok" {
				return fmt.Errorf("%s: cluster_state %q", n.Addr(), st)
			}
		}
		if role, err := m.Info("replication", "role"); err != nil || role != "master" {
			return fmt.Errorf("%s: role %q (%v)", m.Addr(), role, err)
		}
		return nil
	})
	return m
}
