package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herd-proxy/herd/cluster"
	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/proxy"
)

// clusterFlags are the command line's cluster settings; "" means not given.
type clusterFlags struct {
	nodeName      string
	gossipAddr    string
	advertiseAddr string
	join          string // comma-separated seeds
}

// clusterConfig merges cluster settings: flags, then environment (HERD_JOIN), then the config
// file's cluster_settings, then defaults.
func clusterConfig(f clusterFlags, cfg *config.Config, getenv func(string) string, log *slog.Logger) (cluster.Config, error) {
	cs := cfg.ClusterSettings
	pick := func(vals ...string) string {
		for _, v := range vals {
			if v != "" {
				return v
			}
		}
		return ""
	}
	c := cluster.Config{
		NodeName:      pick(f.nodeName, cs.NodeName),
		BindAddr:      pick(f.gossipAddr, cs.GossipAddr),
		AdvertiseAddr: pick(f.advertiseAddr, cs.AdvertiseAddr),
		Label:         cs.ClusterLabel,
		Logger:        log,
	}
	if c.NodeName == "" {
		host, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("--node-name: no hostname to default to: %w", err)
		}
		c.NodeName = host
	}
	if seeds := pick(f.join, getenv("HERD_JOIN")); seeds != "" {
		for _, s := range strings.Split(seeds, ",") {
			if s = strings.TrimSpace(s); s != "" {
				c.Join = append(c.Join, s)
			}
		}
	} else {
		c.Join = cs.Join
	}
	if c.BindAddr == "" {
		// A node that was given no seeds and no address to be reached at is a cluster of one:
		// its gossip and raft ports (raft takes gossip's host) stay on loopback, so plain herd
		// opens nothing but its HTTP port to the network.
		c.BindAddr = "0.0.0.0:7946"
		if len(c.Join) == 0 && c.AdvertiseAddr == "" {
			c.BindAddr = "127.0.0.1:7946"
		}
	}
	key, err := cluster.ParseGossipKey(cs.GossipKey.Reveal())
	if err != nil {
		return c, fmt.Errorf("cluster_settings.gossip_key: %w", err)
	}
	c.GossipKey = key
	return c, nil
}

// membership adapts a cluster node to what /cluster/status shows.
type membership struct{ n *cluster.Node }

func (m membership) Members() []proxy.Member {
	ms := m.n.Members()
	out := make([]proxy.Member, len(ms))
	for i, x := range ms {
		out[i] = proxy.Member{Name: x.Name, Addr: x.Addr, Status: x.Status}
	}
	return out
}

// newPropagationHistogram measures how long usage deltas take from a peer's flush to this node
// (the delay that bounds how far the cluster can overshoot a limit).
func newPropagationHistogram(reg prometheus.Registerer) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "herd_cluster_propagation_delay_seconds",
		Help:    "Time from a usage change on a peer (the oldest in a delta, so batching is included) to this node merging it; needs peer clocks in sync.",
		Buckets: []float64{.0005, .001, .002, .003, .004, .005, .006, .008, .01, .015, .02, .03, .05, .1, .25, .5, 1},
	})
	reg.MustRegister(h)
	return h
}

// registerClusterMetrics exports membership and gossip traffic.
func registerClusterMetrics(reg prometheus.Registerer, n *cluster.Node) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herd_cluster_members",
			Help: "Cluster members this node sees alive, itself included.",
		}, func() float64 { return float64(n.NumAlive()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_gossip_sent_bytes_total",
			Help: "Bytes this node sent to peers (gossip, usage deltas, push-pull).",
		}, func() float64 { return float64(n.BytesSent()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_gossip_received_bytes_total",
			Help: "Bytes this node received from peers.",
		}, func() float64 { return float64(n.BytesReceived()) }),
	)
}
