package main

import (
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herd-proxy/herd/cluster"
	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/proxy"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/crdt"
	"github.com/herd-proxy/herd/state/redis"
	"github.com/herd-proxy/herd/state/strict"
)

// sharedUsage is the shared-state backend this node counts into, and how it hooks into the cluster.
type sharedUsage struct {
	backend  state.Backend
	name     string                                     // "redis" or "gossip", for readiness and /cluster/status
	mode     func() string                              // the backend's current mode for readiness; nil = name
	sync     cluster.StateSync                          // what gossip carries for it; nil for Redis
	joined   func(*cluster.Node)                        // connects it to membership once the node has started
	raft     func(*cluster.Raft, *cluster.ConfigStore)  // connects it to raft once raft runs; nil if it needs none
	rights   func(id string) (proxy.RightsStatus, bool) // strict mode's rights per deployment; nil for Redis
	notReady func() string                              // why it cannot admit yet; nil for Redis
	applied  func(*config.Config)                       // tells it the deployments of the config now served
	flush    func()                                     // sends the last counts before leaving
	close    func()
}

// newSharedUsage picks where usage is shared: Redis when the config names one (LiteLLM's documented
// switch), else gossip-merged counters carried by membership.
// now is the clock the counters read (skewed only by the test-only offset file); onReject is told
// of every peer message the gossip backend drops (newRejectCounter).
//
// Gossip mode counts usage in state/crdt, wrapped by state/strict, which admits on rights while
// router_settings.cluster_limit_mode is strict. Strict mode measures durations on the real
// monotonic clock, never on now: the test-only skew of now must not, and a real clock step
// cannot, shorten a cooldown. epoch is this process's incarnation (cluster.Config.Epoch).
func newSharedUsage(cfg *config.Config, node string, epoch uint64, now func() time.Time, reg prometheus.Registerer, log *slog.Logger, onReject func(string)) (*sharedUsage, error) {
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
		sb := strict.New(strict.Options{Node: node, Epoch: epoch, Inner: cb, OnReject: onReject,
			Wait: limitWait(cfg), LeaderContact: func() time.Time { return time.Time{} }})
		limitMode(sb, cfg)
		return &sharedUsage{
			backend: sb, name: "gossip", sync: gossipSync{cb, sb},
			mode: func() string { return sb.Mode() },
			rights: func(id string) (proxy.RightsStatus, bool) {
				r, ok := sb.Rights(id)
				return proxy.RightsStatus{Home: r.Home, Share: r.Share, Busy: r.Busy, Lent: r.Lent, Borrowed: r.Borrowed,
					ShareTokens: r.Tokens.Share, BusyTokens: r.Tokens.Busy, LentTokens: r.Tokens.Lent, BorrowedTokens: r.Tokens.Borrowed}, ok
			},
			flush: cb.Close, close: func() { sb.Close(); cb.Close() },
			applied: func(c *config.Config) {
				cb.SetDeployments(deploymentIDs(c))
				limitMode(sb, c)
				sb.SetWait(limitWait(c))
			},
			joined: func(peers *cluster.Node) {
				members.Store(peers)
				cb.SetNetwork(peers)
				sb.SetNetwork(peers)
				peers.OnMembersChanged(func(alive []cluster.Member) { cb.SetPeers(len(alive) - 1) })
			},
			raft: func(r *cluster.Raft, store *cluster.ConfigStore) {
				sb.SetLeaderContact(r.LeaderContact)
				store.OnHomes(func(h cluster.Homes) {
					homes := make([]strict.Home, len(h.Homes))
					for i, x := range h.Homes {
						homes[i] = strict.Home{Name: x.Name, Epoch: x.Epoch}
					}
					sb.SetHomes(h.Version, homes)
				})
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

// limitMode applies router_settings.cluster_limit_mode.
func limitMode(sb *strict.Backend, cfg *config.Config) {
	sb.Strict(cfg.RouterSettings.ClusterLimitMode == config.ClusterLimitStrict)
}

// limitWait is router_settings.cluster_limit_wait for strict.Options.Wait: 0 means never wait.
func limitWait(cfg *config.Config) time.Duration {
	if w := cfg.RouterSettings.ClusterLimitWait; w != nil && w.Duration() > 0 {
		return w.Duration()
	}
	return -1
}

// gossipSync routes what memberlist carries: strict mode's messages to state/strict, the
// rest (counter deltas and full state) to state/crdt.
type gossipSync struct {
	cb *crdt.Backend
	sb *strict.Backend
}

func (g gossipSync) HandleMessage(msg []byte) {
	if len(msg) > 0 && msg[0] == strict.Magic {
		g.sb.HandleMessage(msg)
		return
	}
	g.cb.HandleMessage(msg)
}

func (g gossipSync) LocalState() []byte          { return g.cb.LocalState() }
func (g gossipSync) MergeRemoteState(buf []byte) { g.cb.MergeRemoteState(buf) }

// deploymentIDs lists cfg's deployment IDs, never nil: an empty config has no deployments.
func deploymentIDs(cfg *config.Config) []string {
	ids := make([]string, 0, len(cfg.ModelList))
	for _, d := range cfg.ModelList {
		ids = append(ids, d.ID)
	}
	return ids
}
