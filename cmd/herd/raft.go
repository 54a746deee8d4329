package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herd-proxy/herd/cluster"
	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/proxy"
)

// raftFlags are the command line's raft settings; zero values mean not given.
type raftFlags struct {
	raftAddr        string
	dataDir         string
	bootstrapExpect int // -1: not given
}

// raftConfig merges raft settings: flags, then cluster_settings, then defaults (the raft
// address defaults to the gossip host and port + 1 inside cluster).
func raftConfig(f raftFlags, cs config.ClusterSettings, log *slog.Logger) cluster.RaftConfig {
	rc := cluster.RaftConfig{
		BindAddr:        cs.RaftAddr,
		DataDir:         cs.DataDir,
		BootstrapExpect: cs.BootstrapExpect,
		Logger:          log,
	}
	if f.raftAddr != "" {
		rc.BindAddr = f.raftAddr
	}
	if f.dataDir != "" {
		rc.DataDir = f.dataDir
	}
	if f.bootstrapExpect >= 0 {
		rc.BootstrapExpect = f.bootstrapExpect
	}
	return rc
}

// warnNoBootstrap says, when a node has seeds but no bootstrap_expect, that it will only
// ever join a raft group some other node bootstrapped: if no node has the setting, no group
// forms and every config change answers 503.
func warnNoBootstrap(rc cluster.RaftConfig, join []string, log *slog.Logger) {
	if rc.BootstrapExpect > 0 || len(join) == 0 {
		return
	}
	log.Warn("seeds given but no bootstrap_expect: this node only joins a raft group another node bootstrapped; "+
		"if none does, config changes (/model/new, /model/update, /model/delete, /config/update) answer 503. "+
		"Start the first nodes with --bootstrap-expect N (the number of nodes)",
		"key", "cluster_settings.bootstrap_expect")
}

// configAdmin adapts the cluster's config store to the admin API, translating consensus errors
// into the API's.
type configAdmin struct{ store *cluster.ConfigStore }

var _ proxy.ConfigAdmin = configAdmin{}

func (a configAdmin) AddModel(ctx context.Context, entry map[string]any) (string, uint64, error) {
	id, v, err := a.store.AddModel(ctx, entry)
	return id, v, adminErr(err)
}

func (a configAdmin) UpdateModel(ctx context.Context, id string, patch map[string]any) (uint64, error) {
	v, err := a.store.UpdateModel(ctx, id, patch)
	return v, adminErr(err)
}

func (a configAdmin) DeleteModel(ctx context.Context, id string) (uint64, error) {
	v, err := a.store.DeleteModel(ctx, id)
	return v, adminErr(err)
}

func (a configAdmin) UpdateRouterSettings(ctx context.Context, patch map[string]any) (uint64, error) {
	v, err := a.store.UpdateRouterSettings(ctx, patch)
	return v, adminErr(err)
}

func adminErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cluster.ErrNoQuorum), errors.Is(err, cluster.ErrNoLeader), errors.Is(err, cluster.ErrRaftShutdown):
		return fmt.Errorf("%w: %v", proxy.ErrConfigUnavailable, err)
	case errors.Is(err, cluster.ErrConfigConflict):
		return fmt.Errorf("%w: %v", proxy.ErrConfigConflict, err)
	default:
		return err
	}
}

// registerConfigMetrics exports the committed and the served config version, and whether this
// node holds a committed version it cannot serve.
func registerConfigMetrics(reg prometheus.Registerer, store *cluster.ConfigStore) {
	version := func(kind string, v func(cluster.ConfigStatus) uint64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "herd_config_version",
			Help:        "Cluster config version on this node: committed (applied to the replicated state) and served (what requests are routed with); served stays behind when a version cannot be built here.",
			ConstLabels: prometheus.Labels{"kind": kind},
		}, func() float64 { return float64(v(store.Status())) })
	}
	reg.MustRegister(
		version("committed", func(st cluster.ConfigStatus) uint64 { return st.Committed }),
		version("served", func(st cluster.ConfigStatus) uint64 { return st.Served }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herd_config_unservable",
			Help: "1 while this node holds a committed config version it cannot serve (see config_error in /cluster/status), else 0.",
		}, func() float64 {
			if store.Status().Error != "" {
				return 1
			}
			return 0
		}),
	)
}

// consensusStatus reports raft for /cluster/status; r may not be started yet.
func consensusStatus(r *atomic.Pointer[cluster.Raft], store *cluster.ConfigStore) func() proxy.ConsensusStatus {
	return func() proxy.ConsensusStatus {
		st := store.Status()
		cs := proxy.ConsensusStatus{ConfigVersion: st.Committed, ConfigError: st.Error, Homes: st.Homes.Names(), HomesVersion: st.Homes.Version}
		if raft := r.Load(); raft != nil {
			st := raft.Status()
			cs.Leader, cs.Term, cs.Voters, cs.NonVoters = st.Leader, st.Term, st.Voters, st.NonVoters
		}
		return cs
	}
}
