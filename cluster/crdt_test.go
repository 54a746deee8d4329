package cluster

import (
	"errors"
	"fmt"
	"testing"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/crdt"
)

// The two halves of the cluster fit: the CRDT backend is a StateSync, a Node is its Network.
var (
	_ StateSync    = (*crdt.Backend)(nil)
	_ crdt.Network = (*Node)(nil)
)

// TestCRDTOverMembership runs the cluster state backend over memberlist on the in-memory
// network: three nodes' admissions converge to one count on every node, and once the cluster
// has used a deployment's rpm, every node refuses.
func TestCRDTOverMembership(t *testing.T) {
	c := newTestCluster(t)
	var backends []*crdt.Backend
	var nodes []*Node
	for i := range 3 {
		b := crdt.New(crdt.Options{Node: fmt.Sprintf("node%d", i)})
		t.Cleanup(b.Close)
		var mod func(*Config)
		if i > 0 {
			mod = seed(memAddrOf(0))
		}
		n := c.start(i, b, mod)
		b.SetNetwork(n)
		backends, nodes = append(backends, b), append(nodes, n)
	}
	waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })

	lim := state.Limits{RPM: 30}
	for _, b := range backends {
		for range 10 {
			if _, err := b.Counter("d").Admit(lim, state.Reservation{Requests: 1}); err != nil {
				t.Fatalf("%v with the cluster at most two-thirds full", err)
			}
		}
	}
	waitFor(t, converge, func() error {
		for i, b := range backends {
			if req, _, _ := b.Snapshot("d"); req != 30 {
				return fmt.Errorf("node%d sees %d requests, want 30", i, req)
			}
		}
		return nil
	})
	for i, b := range backends {
		if _, err := b.Counter("d").Admit(lim, state.Reservation{Requests: 1}); !errors.Is(err, state.ErrNoCapacity) {
			t.Errorf("node%d admitted beyond the cluster's rpm: %v", i, err)
		}
	}
}
