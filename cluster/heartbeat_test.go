package cluster

import (
	"testing"
	"time"
)

func TestStatusFromHeartbeats(t *testing.T) {
	n := &Node{cfg: Config{NodeName: "me", heartbeat: heartbeatEvery}}
	now := time.Now()
	beat := n.heartbeatInterval()
	tests := []struct {
		name string
		m    memberState
		want string
	}{
		{"heard just now", memberState{Member: Member{Name: "a", Status: StatusAlive}, since: now.Add(-time.Hour), heard: now.Add(-beat)}, StatusAlive},
		{"silent for long", memberState{Member: Member{Name: "a", Status: StatusAlive}, since: now.Add(-time.Hour), heard: now.Add(-4 * beat)}, StatusSuspect},
		{"never heard, joined just now", memberState{Member: Member{Name: "a", Status: StatusAlive}, since: now.Add(-beat)}, StatusAlive},
		{"never heard, joined long ago", memberState{Member: Member{Name: "a", Status: StatusAlive}, since: now.Add(-time.Hour)}, StatusSuspect},
		{"self is never suspect", memberState{Member: Member{Name: "me", Status: StatusAlive}, since: now.Add(-time.Hour)}, StatusAlive},
		{"dead stays dead", memberState{Member: Member{Name: "a", Status: StatusDead}, since: now.Add(-time.Hour)}, StatusDead},
		{"left stays left", memberState{Member: Member{Name: "a", Status: StatusLeft}, heard: now}, StatusLeft},
	}
	for _, tt := range tests {
		if got := n.statusLocked(&tt.m, now); got != tt.want {
			t.Errorf("%s: status %q, want %q", tt.name, got, tt.want)
		}
	}
}

// A member cut off from the others is shown as suspect before memberlist declares it dead,
// and healthy members never are.
func TestSilentMemberIsSuspectBeforeDead(t *testing.T) {
	c := newTestCluster(t)
	var nodes []*Node
	for i := range 3 {
		nodes = append(nodes, c.start(i, nil, seed(memAddrOf(0))))
	}
	waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })
	// Every member has been heard from: all alive, for several heartbeat periods.
	for range 3 {
		waitFor(t, converge, func() error { return allSee(nodes, names(nodes), StatusAlive) })
	}

	c.net.Partition([]string{memAddrOf(0), memAddrOf(1)}, []string{memAddrOf(2)})
	var seen []string
	deadline := time.Now().Add(converge)
	for time.Now().Before(deadline) {
		st := statuses(nodes[0])
		if len(seen) == 0 || seen[len(seen)-1] != st["node2"] {
			seen = append(seen, st["node2"])
		}
		if st["node1"] != StatusAlive {
			t.Fatalf("healthy node1 shown as %q", st["node1"])
		}
		if st["node2"] == StatusDead {
			break
		}
		time.Sleep(2 * time.Millisecond) // poll interval: the suspect phase lasts a few hundred ms
	}
	if len(seen) < 3 || seen[0] != StatusAlive || seen[1] != StatusSuspect || seen[len(seen)-1] != StatusDead {
		t.Fatalf("node2's statuses over the partition = %v, want alive, suspect, ..., dead", seen)
	}
}
