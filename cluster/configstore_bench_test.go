package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
)

// BenchmarkConfigCommit measures config changes on three nodes over real loopback sockets with
// durable raft-wal logs and LAN timers: commit latency as the admin API sees it (validate,
// forward to the leader when needed, commit, apply on the writer) and how long after that reply
// the last node has applied the change.
//
//	go test -run '^$' -bench ConfigCommit -benchtime 300x ./cluster
func BenchmarkConfigCommit(b *testing.B) {
	static, dyn, err := config.Split([]byte(storeFile))
	if err != nil {
		b.Fatal(err)
	}
	type node struct {
		n     *Node
		r     *Raft
		store *ConfigStore
	}
	var (
		mu      sync.Mutex
		applied = map[uint64][]time.Time{} // version -> when each node applied it
	)
	var nodes []node
	for i := range 3 {
		cfg := Config{NodeName: fmt.Sprintf("bench%d", i), BindAddr: "127.0.0.1:0", RetryJoinEvery: 100 * time.Millisecond}
		if i > 0 {
			cfg.Join = []string{nodes[0].n.Addr()}
		}
		n, err := New(cfg, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = n.Shutdown() })
		store := NewConfigStore(static, dyn, config.MapEnv{"KEY": "k"}, nil)
		store.OnChange(func(_ *config.Config, v uint64) {
			mu.Lock()
			applied[v] = append(applied[v], time.Now())
			mu.Unlock()
		})
		r, err := n.StartRaft(RaftConfig{DataDir: b.TempDir(), BootstrapExpect: 3}, store.FSM())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = r.Shutdown() })
		store.Attach(r)
		nodes = append(nodes, node{n, r, store})
	}
	deadline := time.Now().Add(time.Minute)
	for {
		ok := true
		for _, x := range nodes {
			ok = ok && x.store.Version() >= 1 && len(x.r.Status().Voters) == 3
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("cluster did not form")
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}

	for _, from := range []string{"leader", "follower"} {
		b.Run("from="+from, func(b *testing.B) {
			var writer node
			for _, x := range nodes {
				if x.r.IsLeader() == (from == "leader") {
					writer = x
					break
				}
			}
			commit := make([]time.Duration, 0, b.N)
			allAfter := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				v, err := writer.store.UpdateRouterSettings(context.Background(), map[string]any{"num_retries": float64(i%7 + 2)})
				if err != nil {
					b.Fatal(err)
				}
				replied := time.Now()
				commit = append(commit, replied.Sub(start))
				for {
					mu.Lock()
					ts := slices.Clone(applied[v])
					mu.Unlock()
					if len(ts) == 3 {
						allAfter = append(allAfter, max(slices.MaxFunc(ts, func(a, b time.Time) int { return a.Compare(b) }).Sub(replied), 0))
						break
					}
					time.Sleep(20 * time.Microsecond) // poll interval; the followers apply within a heartbeat
				}
			}
			b.StopTimer()
			q := func(ds []time.Duration, p float64) float64 {
				s := slices.Clone(ds)
				slices.Sort(s)
				return float64(s[min(int(p*float64(len(s))), len(s)-1)].Microseconds())
			}
			b.ReportMetric(q(commit, 0.5), "commit-p50-µs")
			b.ReportMetric(q(commit, 0.99), "commit-p99-µs")
			b.ReportMetric(q(allAfter, 0.5), "all-applied-after-p50-µs")
			b.ReportMetric(q(allAfter, 0.99), "all-applied-after-p99-µs")
		})
	}
}
