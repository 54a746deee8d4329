package cluster

import (
	"time"

	"github.com/hashicorp/memberlist"
)

// Test timings: probe, gossip, push-pull, elections and the leader's membership checks in tens
// of milliseconds instead of LAN defaults. Set through Config.tune/heartbeat and
// RaftConfig.timers, which production code never sets.

const fastHeartbeat = 100 * time.Millisecond

func fastGossip(mc *memberlist.Config) {
	mc.ProbeInterval = 200 * time.Millisecond
	mc.ProbeTimeout = 100 * time.Millisecond
	mc.GossipInterval = 20 * time.Millisecond
	mc.PushPullInterval = 500 * time.Millisecond
	mc.TCPTimeout = time.Second
	mc.SuspicionMult = 2
	mc.SuspicionMaxTimeoutMult = 2
	mc.GossipToTheDeadTime = 5 * time.Second
	mc.DeadNodeReclaimTime = time.Second
}

var fastTimers = timers{
	heartbeat: 150 * time.Millisecond, election: 150 * time.Millisecond,
	leaderLease: 100 * time.Millisecond, commit: 5 * time.Millisecond,
	reconcile: 50 * time.Millisecond, bootstrapFor: 300 * time.Millisecond,
	stabilize: 300 * time.Millisecond, rpc: 2 * time.Second,
	homesEvery: 300 * time.Millisecond, homeGone: time.Second, homesFormWait: 500 * time.Millisecond,
}

// streams is RaftConfig.streams for this network: a node's raft port lives on the network
// under its gossip address, so a partition cuts both.
func (n *Network) raftStreams(owner string) streamNet { return memStreams{net: n, owner: owner} }
