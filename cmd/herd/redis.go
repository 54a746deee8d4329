package main

import (
	"fmt"
	"net"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state/redis"
)

// redisSettings returns the Redis a LiteLLM config names for shared usage, and where it was
// named: router_settings (redis_url, else redis_host/redis_port/redis_password), else
// litellm_settings.cache_params with type redis (LiteLLM users rely on the cache's Redis being
// used by the router too). ok is false when the config names none.
func redisSettings(cfg *config.Config) (opts redis.Options, from string, ok bool, err error) {
	rs := cfg.RouterSettings
	switch {
	case rs.RedisURL != "":
		opts, err = redis.OptionsFromURL(rs.RedisURL.Reveal())
		from = "router_settings.redis_url"
	case rs.RedisHost != "":
		opts = redis.Options{Addrs: redisAddrs(rs.RedisHost, rs.RedisPort), Password: rs.RedisPassword.Reveal()}
		from = "router_settings.redis_host"
	default:
		cp := cfg.LiteLLMSettings.CacheParams
		if cp == nil || (cp.Type != "" && cp.Type != "redis") || (cp.URL == "" && cp.Host == "") {
			return redis.Options{}, "", false, nil
		}
		from = "litellm_settings.cache_params"
		if cp.URL != "" {
			opts, err = redis.OptionsFromURL(cp.URL.Reveal())
		} else {
			opts = redis.Options{Addrs: redisAddrs(cp.Host, cp.Port), Password: cp.Password.Reveal()}
		}
		if err == nil && cp.DB != nil {
			opts.DB = *cp.DB
		}
	}
	if err != nil {
		return opts, from, true, fmt.Errorf("%s: %w", from, err)
	}
	if rs.RedisDB != nil {
		opts.DB = *rs.RedisDB
	}
	opts.MasterName = rs.RedisSentinelMaster
	opts.ClusterMode = rs.RedisCluster
	if n := rs.RedisFairShareNodes; n != nil {
		opts.FairShareNodes = *n
	}
	return opts, from, true, nil
}

// redisAddrs turns redis_host (one host, or a comma-separated list of host[:port] for Redis
// Cluster seeds or Sentinels) and redis_port (the default port) into addresses.
func redisAddrs(hosts, port string) []string {
	if port == "" {
		port = "6379"
	}
	var addrs []string
	for _, h := range strings.Split(hosts, ",") {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(h, port)
		}
		addrs = append(addrs, h)
	}
	return addrs
}

// fairShareNodes is how many nodes share a limit while Redis is unreachable: the alive gossip
// members, but never fewer than redis_fair_share_nodes (nodes that do not gossip with each
// other cannot count each other).
func fairShareNodes(alive, configured int) int { return max(alive, configured, 1) }

// registerRedisMetrics exports the Redis backend's mode and error counts.
func registerRedisMetrics(reg prometheus.Registerer, b *redis.Backend) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herd_state_backend_degraded",
			Help: "1 while Redis is unreachable and this node counts locally at a fair share of each limit.",
		}, func() float64 {
			if b.Mode() == redis.ModeDegraded {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_redis_errors_total",
			Help: "Redis calls that failed, timeouts included.",
		}, func() float64 { return float64(b.Stats().Errors) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_redis_local_admissions_total",
			Help: "Admissions decided locally because Redis was unreachable.",
		}, func() float64 { return float64(b.Stats().LocalAdmits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_redis_block_admissions_total",
			Help: "Admissions taken from escrow blocks reserved in Redis (no round trip).",
		}, func() float64 { return float64(b.Stats().BlockAdmits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_redis_block_reservations_total",
			Help: "Escrow blocks reserved in Redis.",
		}, func() float64 { return float64(b.Stats().BlockReserves) }),
	)
}
