package main

import (
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herd-proxy/herd/cluster"
	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/crdt"
	"github.com/herd-proxy/herd/state/redis"
)

// sharedUsage is the shared-state backend this node counts into, and how it hooks into the cluster.
type sharedUsage struct {
	backend state.Backend
	name    string               // "redis" or "gossip", for readiness and /cluster/status
	mode    func() string        // the backend's current mode for readiness; nil = name
	sync    cluster.StateSync    // what gossip carries for it; nil for Redis
	joined  func(*cluster.Node)  // connects it to membership once the node has started
	applied func(*config.Config) // tells it the deployments of the config now served
	flush   func()               // sends the last counts before leaving
	close   func()
}

// newSharedUsage picks where usage is shared: Redis when the config names one (LiteLLM's documented
// switch), else gossip-merged counters carried by membership.
// now is the clock the counters read (skewed only by the test-only offset file); onReject is told
// of every peer message the gossip backend drops (newRejectCounter).
func newSharedUsage(cfg *config.Config, node string, now func() time.Time, reg prometheus.Registerer, log *slog.Logger, onReject func(string)) (*sharedUsage, error) {
	src, useRedis, err := redisSettings(cfg)
	if err != nil {
		return nil, err
	}
	ropts, from := src.opts, src.from
	if !useRedis {
		delay := newPropagationHistogram(reg)
		// The file's deployments are known before the node joins, so the join's push-pull keeps
		// their counts; deployments only the cluster's config has are learned at the first
		// push-pull after raft applies it.
		// Peers' buckets are aligned by the clock offsets membership estimates from heartbeats
		// (which carry this same clock); none are known before the node has joined.
		var members atomic.Pointer[cluster.Node]
		offset := func(peer string) (time.Duration, bool) {
			if m := members.Load(); m != nil {
				return m.ClockOffset(peer)
			}
			return 0, false
		}
		cb := crdt.New(crdt.Options{Node: node, LatencyTTL: latencyTTL(cfg), Now: now,
			Deployments: deploymentIDs(cfg), OnReject: onReject, Offset: offset,
			OnDelay: func(d time.Duration) { delay.Observe(d.Seconds()) }})
		return &sharedUsage{
			backend: cb, name: "gossip", sync: cb, flush: cb.Close, close: cb.Close,
			applied: func(c *config.Config) { cb.SetDeployments(deploymentIDs(c)) },
			joined: func(peers *cluster.Node) {
				members.Store(peers)
				cb.SetNetwork(peers)
				peers.OnMembersChanged(func(alive []cluster.Member) { cb.SetPeers(len(alive) - 1) })
			},
		}, nil
	}
	configured := ropts.FairShareNodes
	ropts.Logger, ropts.LatencyTTL, ropts.Now = log, latencyTTL(cfg), now
	ropts.SetDefaults()
	redis.RouteClientLogs(log)
	if src.verify == "none" {
		log.Warn("TLS to Redis without certificate verification: anyone on the network path can read and change usage counts and the Redis password",
			"key", src.keys+"ssl_cert_reqs")
	}
	rb, err := redis.New(ropts)
	if err != nil {
		return nil, src.startError(err)
	}
	registerRedisMetrics(reg, rb)
	// ropts logs without its password.
	log.Info("state backend: redis", "from", from, "redis", ropts, "mode", rb.Mode())
	return &sharedUsage{
		backend: rb, name: "redis", mode: rb.Mode, flush: func() {}, close: func() { _ = rb.Close() },
		applied: func(*config.Config) {},
		joined: func(peers *cluster.Node) {
			peers.OnMembersChanged(func(alive []cluster.Member) { rb.SetNodes(fairShareNodes(len(alive), configured)) })
		},
	}, nil
}

// deploymentIDs lists cfg's deployment IDs, never nil: an empty config has no deployments.
func deploymentIDs(cfg *config.Config) []string {
	ids := make([]string, 0, len(cfg.ModelList))
	for _, d := range cfg.ModelList {
		ids = append(ids, d.ID)
	}
	return ids
}
