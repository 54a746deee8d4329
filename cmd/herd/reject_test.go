package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/crdt"
)

// Every drop is counted by reason, every reason is exported from the start, and the log says
// so at once and then at most once a minute, with what was dropped meanwhile.
func TestRejectCounter(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	now := time.Date(2025, 6, 2, 12, 0, 0, 0, time.UTC)
	reject := newRejectCounter(reg, slog.New(slog.NewTextHandler(&logs, nil)), func() time.Time { return now })

	metric := func(reason string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "herd_cluster_rejected_messages_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
		t.Fatalf("no herd_cluster_rejected_messages_total{reason=%q}", reason)
		return 0
	}
	for _, reason := range crdt.RejectReasons() {
		if got := metric(reason); got != 0 {
			t.Fatalf("%s starts at %v", reason, got)
		}
	}
	lines := func() int { return strings.Count(logs.String(), "level=WARN") }

	reject("invariant")
	if lines() != 1 || !strings.Contains(logs.String(), `dropped="invariant=1"`) {
		t.Fatalf("first drop not logged at once:\n%s", logs.String())
	}
	for range 1000 {
		reject("malformed")
		now = now.Add(10 * time.Millisecond)
	}
	reject("unauthenticated") // a reason from the transport: counted all the same
	if lines() != 1 {
		t.Fatalf("%d lines for a burst within a minute, want 1", lines())
	}
	now = now.Add(time.Minute)
	reject("invariant")
	if lines() != 2 || !strings.Contains(logs.String(), `dropped="invariant=1,malformed=1000,unauthenticated=1"`) {
		t.Fatalf("second line does not sum up the minute:\n%s", logs.String())
	}
	if metric("malformed") != 1000 || metric("invariant") != 2 || metric("unauthenticated") != 1 {
		t.Fatalf("counts malformed %v, invariant %v, unauthenticated %v", metric("malformed"), metric("invariant"), metric("unauthenticated"))
	}
}

// The gossip backend keeps peers' counts only for the deployments of the config the node
// serves: its file's at start, then each config applied.
func TestGossipUsageKeepsConfiguredDeployments(t *testing.T) {
	reg := prometheus.NewRegistry()
	var rejected []string
	cfg := &config.Config{ModelList: []config.Deployment{{ID: "a"}}}
	shared, err := newSharedUsage(cfg, "n1", 1, time.Now, reg, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)),
		func(reason string) { rejected = append(rejected, reason) })
	if err != nil {
		t.Fatal(err)
	}
	defer shared.close()
	peer := crdt.New(crdt.Options{Node: "n2", FlushEvery: -1})
	for _, id := range []string{"a", "b"} {
		if _, err := peer.Counter(id).Admit(state.Limits{}, state.Reservation{Requests: 1}); err != nil {
			t.Fatal(err)
		}
	}
	requests := func(id string) int64 { return shared.backend.Counter(id).Load().Requests }

	shared.sync.MergeRemoteState(peer.LocalState(true))
	if requests("a") != 1 || requests("b") != 0 || len(rejected) != 1 || rejected[0] != "unknown_deployment" {
		t.Fatalf("a %d, b %d requests, rejected %v; want 1, 0, [unknown_deployment]", requests("a"), requests("b"), rejected)
	}
	shared.applied(&config.Config{ModelList: []config.Deployment{{ID: "a"}, {ID: "b"}}})
	shared.sync.MergeRemoteState(peer.LocalState(true))
	if requests("b") != 1 || len(rejected) != 1 {
		t.Fatalf("after the config added b: b %d requests, rejected %v", requests("b"), rejected)
	}
}
