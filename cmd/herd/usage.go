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
	inner    state.Backend                              // what backend (state/strict) wraps: *crdt.Backend or *redis.Backend
	name     string                                     // "redis" or "gossip", for readiness and /cluster/status
	mode     func() string                              // the backend's current mode for readiness; nil = name
	health   func() proxy.BackendHealth                 // limit mode and degradation, for /cluster/status
	sync     cluster.StateSync                          // what gossip carries for it
	joined   func(*cluster.Node)                        // connects it to membership once the node has started
	raft     func(*cluster.Raft, *cluster.ConfigStore)  // connects it to raft once raft runs; nil if it needs none
	rights   func(id string) (proxy.RightsStatus, bool) // strict mode's rights per deployment
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
// Either way usage is counted by state/strict wrapped around the backend: while
// router_settings.cluster_limit_mode is strict it admits on rights, which move over gossip,
// and otherwise passes every call through. Strict mode measures durations on the real
// monotonic clock, never on now: the test-only skew of now must not, and a real clock step
// cannot, shorten a cooldown. epoch is this process's incarnation (cluster.Config.Epoch).
func newSharedUsage(cfg *config.Config, node string, epoch uint64, now func() time.Time, reg prometheus.Registerer, log *slog.Logger, onReject func(string)) (*sharedUsage, error) {
	src, useRedis, err := redisSettings(cfg)
	if err != nil {
		return nil, err
	}
	if useRedis {
		return newRedisUsage(cfg, src, node, epoch, now, reg, log, onReject)
	}
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
	registerRepairMetrics(reg, cb)
	sb, u := withRights(cfg, node, epoch, cb, false, onReject)
	u.name, u.sync = "gossip", gossipSync{cb, sb}
	u.mode = sb.Mode
	u.flush, u.close = cb.Close, func() { sb.Close(); cb.Close() }
	applied, joined := u.applied, u.joined
	u.applied = func(c *config.Config) {
		cb.SetDeployments(deploymentIDs(c))
		applied(c)
	}
	u.joined = func(peers *cluster.Node) {
		members.Store(peers)
		cb.SetNetwork(peers)
		joined(peers)
		peers.OnMembersChanged(func(alive []cluster.Member) {
			names := make([]string, len(alive))
			for i, m := range alive {
				names[i] = m.Name
			}
			cb.SetMembers(names)
		})
	}
	return u, nil
}

// newRedisUsage counts usage in Redis, which checks every admission; in strict mode rights
// are checked first, and hold the limit where Redis cannot (an outage, a restart that lost
// the window).
func newRedisUsage(cfg *config.Config, src redisSource, node string, epoch uint64, now func() time.Time, reg prometheus.Registerer, log *slog.Logger, onReject func(string)) (*sharedUsage, error) {
	ropts, from := src.opts, src.from
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
	sb, u := withRights(cfg, node, epoch, rb, true, onReject)
	// ropts logs without its password.
	log.Info("state backend: redis", "from", from, "redis", ropts, "mode", rb.Mode(), "cluster_limit_mode", sb.Mode())
	u.name, u.sync = "redis", rightsSync{sb}
	u.mode = func() string { return redisMode(sb.Mode(), rb.Mode()) }
	u.health = func() proxy.BackendHealth {
		return proxy.BackendHealth{LimitMode: sb.Mode(), Degraded: rb.Mode() == redis.ModeDegraded}
	}
	u.flush, u.close = func() {}, func() { sb.Close(); _ = rb.Close() }
	joined := u.joined
	u.joined = func(peers *cluster.Node) {
		joined(peers)
		peers.OnMembersChanged(func(alive []cluster.Member) { rb.SetNodes(fairShareNodes(len(alive), configured)) })
	}
	return u, nil
}

// redisMode is readiness's state_backend_mode in Redis mode: Redis's own ("redis", or
// "degraded" while unreachable), prefixed "strict-" under strict rights.
func redisMode(limitMode, redisMode string) string {
	if limitMode == config.ClusterLimitStrict {
		return "strict-" + redisMode
	}
	return redisMode
}

// withRights wraps inner in state/strict and returns the sharedUsage parts every backend
// shares: the cluster limit mode and wait from the config, rights status, the network its
// messages take and the raft homes table. checkInner: see strict.Options.CheckInner.
func withRights(cfg *config.Config, node string, epoch uint64, inner state.Backend, checkInner bool, onReject func(string)) (*strict.Backend, *sharedUsage) {
	sb := strict.New(strict.Options{Node: node, Epoch: epoch, Inner: inner, CheckInner: checkInner, OnReject: onReject,
		Wait: limitWait(cfg), LeaderContact: func() time.Time { return time.Time{} }})
	limitMode(sb, cfg)
	return sb, &sharedUsage{
		backend: sb, inner: inner,
		health: func() proxy.BackendHealth { return proxy.BackendHealth{LimitMode: sb.Mode()} },
		rights: func(id string) (proxy.RightsStatus, bool) {
			r, ok := sb.Rights(id)
			return proxy.RightsStatus{Home: r.Home, Share: r.Share, Busy: r.Busy, Lent: r.Lent, Borrowed: r.Borrowed,
				ShareTokens: r.Tokens.Share, BusyTokens: r.Tokens.Busy, LentTokens: r.Tokens.Lent, BorrowedTokens: r.Tokens.Borrowed}, ok
		},
		applied: func(c *config.Config) {
			limitMode(sb, c)
			sb.SetWait(limitWait(c))
		},
		joined: func(peers *cluster.Node) { sb.SetNetwork(peers) },
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
	}
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

func (g gossipSync) LocalState(join bool) []byte                 { return g.cb.LocalState(join) }
func (g gossipSync) MergeRemoteState(buf []byte)                 { g.cb.MergeRemoteState(buf) }
func (g gossipSync) StateNews() uint64                           { return g.cb.StateNews() }
func (g gossipSync) Resend(since time.Time)                      { g.cb.Resend(since) }
func (g gossipSync) LastPause(node string) (time.Duration, bool) { return g.cb.LastPause(node) }

// rightsSync is what memberlist carries in Redis mode: strict mode's messages only (usage
// itself is in Redis). Anything else a peer sends is dropped.
type rightsSync struct{ sb *strict.Backend }

func (r rightsSync) HandleMessage(msg []byte) {
	if len(msg) > 0 && msg[0] == strict.Magic {
		r.sb.HandleMessage(msg)
	}
}

func (rightsSync) LocalState(bool) []byte  { return nil }
func (rightsSync) MergeRemoteState([]byte) {}

// deploymentIDs lists cfg's deployment IDs, never nil: an empty config has no deployments.
func deploymentIDs(cfg *config.Config) []string {
	ids := make([]string, 0, len(cfg.ModelList))
	for _, d := range cfg.ModelList {
		ids = append(ids, d.ID)
	}
	return ids
}
