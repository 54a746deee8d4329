package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herd-proxy/herd/cluster"
	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/proxy"
	"github.com/herd-proxy/herd/state/crdt"
)

// clusterFlags are the command line's cluster settings; "" means not given.
type clusterFlags struct {
	nodeName      string
	gossipAddr    string
	advertiseAddr string
	join          string // comma-separated seeds
	insecure      bool   // --cluster-insecure
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
	// config resolved gossip_key into cluster_key; HERD_CLUSTER_KEY suits container platforms
	// that hand secrets over as environment variables.
	key, err := cluster.ParseKey(pick(cs.ClusterKey.Reveal(), getenv("HERD_CLUSTER_KEY")))
	if err != nil {
		return c, fmt.Errorf("cluster_settings.cluster_key: %w", err)
	}
	c.Key = key
	for i, s := range cs.AcceptKeys {
		k, err := cluster.ParseKey(s.Reveal())
		if err != nil {
			return c, fmt.Errorf("cluster_settings.accept_keys[%d]: %w", i, err)
		}
		c.AcceptKeys = append(c.AcceptKeys, k)
	}
	c.TLSFiles = cluster.TLSFiles{CAFile: cs.TLSCAFile, CertFile: cs.TLSCertFile, KeyFile: cs.TLSKeyFile}
	return c, nil
}

// checkExposure refuses cluster ports beyond loopback without a cluster key: anyone who can
// reach them could otherwise read and change every node's config, upstream keys included.
// cluster_settings.insecure (or --cluster-insecure) opts out, loudly at every start.
func checkExposure(c cluster.Config, raftAddr string, insecure bool, log *slog.Logger) error {
	var open string
	addrs := append([]string{c.BindAddr, c.AdvertiseAddr, raftAddr}, c.Join...)
	for _, a := range addrs {
		if a != "" && !loopbackAddr(a) {
			open = a
			break
		}
	}
	switch {
	case open == "" || len(c.Key) > 0:
		return nil
	case insecure:
		log.Warn("cluster ports are open beyond loopback WITHOUT a cluster key: anyone who can reach them can read and change this cluster's config and counts",
			"addr", open, "key", "cluster_settings.insecure")
		return nil
	}
	return fmt.Errorf("cluster_settings.cluster_key is required to use the cluster address %s beyond loopback: give every node the same key (make one with `herd keygen`; os.environ/NAME and HERD_CLUSTER_KEY work), or set cluster_settings.insecure: true (or --cluster-insecure) to run the cluster unauthenticated", open)
}

// loopbackAddr reports whether HOST[:PORT] names only this machine: a loopback IP or
// "localhost". Unspecified addresses (0.0.0.0, ::) and other names are not.
func loopbackAddr(a string) bool {
	host, _, err := net.SplitHostPort(a)
	if err != nil {
		host = strings.Trim(a, "[]")
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// keygen prints a fresh cluster key.
func keygen(out io.Writer) error {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	_, err := fmt.Fprintln(out, base64.StdEncoding.EncodeToString(k))
	return err
}

// membership adapts a cluster node to what /cluster/status shows.
type membership struct{ n *cluster.Node }

func (m membership) Members() []proxy.Member {
	ms := m.n.Members()
	out := make([]proxy.Member, len(ms))
	for i, x := range ms {
		out[i] = proxy.Member{Name: x.Name, Addr: x.Addr, Status: x.Status, Self: x.Self, LastHeard: x.LastHeard}
		if x.ServedKnown {
			v := x.ServedConfig
			out[i].ServedConfigVersion = &v
		}
		if x.OffsetKnown {
			s := x.ClockOffset.Seconds()
			out[i].ClockOffsetSeconds = &s
		}
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

// registerRepairMetrics exports the anti-entropy repairs of usage counts (state/crdt): those
// this node asked peers for because its view of their counts fell short of their digests,
// and those it sent. In a healthy cluster both stay flat; they climb while packets are lost.
func registerRepairMetrics(reg prometheus.Registerer, b *crdt.Backend) {
	for _, dir := range []string{"asked", "sent"} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "herd_cluster_usage_repairs_total",
			Help:        "Repairs of usage counts between peers: asked (this node's view of a peer's counts was short of the peer's digest) and sent.",
			ConstLabels: prometheus.Labels{"direction": dir},
		}, func() float64 {
			_, asks, repairs := b.AntiEntropy()
			if dir == "asked" {
				return float64(asks)
			}
			return float64(repairs)
		}))
	}
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
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_gossip_sent_packets_total",
			Help: "Datagrams this node sent to peers (memberlist's probes and gossip, and each usage delta once per peer).",
		}, func() float64 { return float64(n.PacketsSent()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_gossip_received_packets_total",
			Help: "Datagrams this node received from peers.",
		}, func() float64 { return float64(n.PacketsReceived()) }),
		clockOffsets{n},
	)
}

// clockOffsets exports every alive peer's estimated clock offset.
type clockOffsets struct{ n *cluster.Node }

var clockOffsetDesc = prometheus.NewDesc("herd_cluster_clock_offset_seconds",
	"A peer's clock minus this node's, estimated from heartbeats (within the network delay).", []string{"peer"}, nil)

func (c clockOffsets) Describe(ch chan<- *prometheus.Desc) { ch <- clockOffsetDesc }

func (c clockOffsets) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.n.Members() {
		if m.OffsetKnown && m.Status != cluster.StatusDead && m.Status != cluster.StatusLeft && m.Name != c.n.Name() {
			ch <- prometheus.MustNewConstMetric(clockOffsetDesc, prometheus.GaugeValue, m.ClockOffset.Seconds(), m.Name)
		}
	}
}

// rejectLogEvery is how often at most a node logs that it dropped peers' messages.
const rejectLogEvery = time.Minute

// rejectLog counts peers' messages dropped because they failed a check, by reason, and says so
// at WARN: at once for the first, then at most once per rejectLogEvery with what was dropped
// since, so that a flood of forged packets does not become a flood of log lines.
type rejectLog struct {
	counts *prometheus.CounterVec
	log    *slog.Logger
	now    func() time.Time

	mu     sync.Mutex
	last   time.Time      // when the last line was logged; zero before the first
	since  map[string]int // reasons dropped since then, not yet logged
	sinceT time.Time      // first of those
}

// newRejectCounter registers herd_cluster_rejected_messages_total and returns the function
// every cluster receiver reports a dropped message to (state/crdt's Options.OnReject; the
// transport's reasons go through the same function). It must not block, and does not.
func newRejectCounter(reg prometheus.Registerer, log *slog.Logger, now func() time.Time) func(reason string) {
	r := &rejectLog{
		counts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_cluster_rejected_messages_total",
			Help: "Messages from cluster peers dropped, in whole or in part, because they failed a check, by reason.",
		}, []string{"reason"}),
		log: log, now: now, since: map[string]int{},
	}
	for _, reason := range append(crdt.RejectReasons(), cluster.RejectReasons()...) {
		r.counts.WithLabelValues(reason) // shown at 0 until the first
	}
	reg.MustRegister(r.counts)
	return r.reject
}

func (r *rejectLog) reject(reason string) {
	r.counts.WithLabelValues(reason).Inc()
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if len(r.since) == 0 {
		r.sinceT = now
	}
	r.since[reason]++
	if !r.last.IsZero() && now.Sub(r.last) < rejectLogEvery {
		return
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r.since)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.since[k]))
	}
	r.log.Warn("dropped cluster messages or connections that failed checks: unauthenticated means no or another cluster key; the usage-state reasons mean a peer with a different herd version, a clock off by a minute, or forged traffic from a key holder",
		"dropped", strings.Join(parts, ","), "since", r.sinceT.Format(time.RFC3339), "metric", "herd_cluster_rejected_messages_total")
	r.last = now
	clear(r.since)
}
