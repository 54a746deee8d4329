package cluster

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/herd-proxy/herd/config"
)

// benchNode is one node of startBenchCluster.
type benchNode struct {
	n     *Node
	r     *Raft
	store *ConfigStore
	dir   string // data_dir
}

// benchApplied records when each node applied each version.
type benchApplied struct {
	mu sync.Mutex
	at map[uint64][]time.Time // version -> when each node applied it
}

// startBenchCluster starts three nodes over real loopback sockets with durable raft-wal logs
// and LAN timers, and waits until they all hold config version 1.
func startBenchCluster(b *testing.B) ([]benchNode, *benchApplied) {
	static, dyn, err := config.Split([]byte(storeFile))
	if err != nil {
		b.Fatal(err)
	}
	applied := &benchApplied{at: map[uint64][]time.Time{}}
	var nodes []benchNode
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
		store.OnChange(func(_ *config.Config, v uint64) error {
			applied.mu.Lock()
			applied.at[v] = append(applied.at[v], time.Now())
			applied.mu.Unlock()
			return nil
		})
		dir := b.TempDir()
		r, err := n.StartRaft(RaftConfig{DataDir: dir, BootstrapExpect: 3}, store.FSM())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = r.Shutdown() })
		store.Attach(r)
		nodes = append(nodes, benchNode{n, r, store, dir})
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
	return nodes, applied
}

// BenchmarkConfigCommit measures config changes on three nodes over real loopback sockets with
// durable raft-wal logs and LAN timers: commit latency as the admin API sees it (validate,
// forward to the leader when needed, commit, apply on the writer) and how long after that reply
// the last node has applied the change.
//
//	go test -run '^$' -bench ConfigCommit -benchtime 300x ./cluster
func BenchmarkConfigCommit(b *testing.B) {
	nodes, applied := startBenchCluster(b)
	mu := &applied.mu

	for _, from := range []string{"leader", "follower"} {
		b.Run("from="+from, func(b *testing.B) {
			var writer benchNode
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
					ts := slices.Clone(applied.at[v])
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

// BenchmarkConfigAddModel adds b.N deployments one after another (/model/new's path, from a
// follower) on three durable nodes and reports what the growing config costs: the time of the
// first and of the last additions, and the raft log each node keeps for them, as entry bytes
// and as disk use of data_dir/raft/wal (raft-wal preallocates its segment files, so disk use
// moves in segment-sized steps).
//
//	go test -run '^$' -bench ConfigAddModel -benchtime 200x ./cluster
func BenchmarkConfigAddModel(b *testing.B) {
	nodes, _ := startBenchCluster(b)
	var writer benchNode
	for _, x := range nodes {
		if !x.r.IsLeader() {
			writer = x
			break
		}
	}
	took := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		_, _, err := writer.store.AddModel(context.Background(), map[string]any{
			"model_name":     fmt.Sprintf("group-%d", i%20),
			"litellm_params": map[string]any{"model": fmt.Sprintf("openai/model-%d", i), "api_base": fmt.Sprintf("http://10.0.%d.%d:8000/v1", i/250, i%250), "api_key": "os.environ/KEY", "rpm": 600.0, "tpm": 100000.0},
			"model_info":     map[string]any{"id": fmt.Sprintf("dep-%d", i), "mode": "chat", "max_input_tokens": 128000.0},
		})
		if err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
	}
	b.StopTimer()
	mean := func(ds []time.Duration) float64 {
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		return float64(sum.Microseconds()) / float64(len(ds))
	}
	k := min(10, len(took))
	b.ReportMetric(mean(took[:k]), "first10-add-µs")
	b.ReportMetric(mean(took[len(took)-k:]), "last10-add-µs")
	var entryBytes, diskBytes int64
	for _, x := range nodes {
		entryBytes = max(entryBytes, logEntryBytes(b, x.r))
		diskBytes = max(diskBytes, diskUse(b, filepath.Join(x.dir, "raft", "wal")))
	}
	b.ReportMetric(float64(entryBytes)/1024, "log-entries-KB")
	b.ReportMetric(float64(diskBytes)/(1<<20), "wal-disk-MB")
}

// logEntryBytes sums the data of every entry r's log still holds.
func logEntryBytes(b *testing.B, r *Raft) int64 {
	first, err := r.logs.FirstIndex()
	if err != nil {
		b.Fatal(err)
	}
	last, err := r.logs.LastIndex()
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for i := max(first, 1); i <= last; i++ {
		var l raft.Log
		if err := r.logs.GetLog(i, &l); err != nil {
			b.Fatal(err)
		}
		n += int64(len(l.Data))
	}
	return n
}

// diskUse is the space the files under dir take on disk (allocated blocks, not length).
func diskUse(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}
