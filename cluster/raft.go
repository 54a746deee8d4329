package cluster

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
)

// Errors a write can end with; test them with errors.Is.
var (
	// ErrNoQuorum: the write was not committed within the timeout because no leader could
	// reach a majority. If it reached a leader's log before that, it may still be applied
	// later, so re-check the state before retrying a command that is not idempotent.
	ErrNoQuorum = errors.New("cluster: no raft quorum")
	// ErrNoLeader: no leader was known or reachable until the timeout. Every ErrNoLeader
	// error is also an ErrNoQuorum error; the command was not applied.
	ErrNoLeader = errors.New("cluster: no raft leader")
	// ErrRejected: the state machine's Apply returned an error; the state is unchanged.
	ErrRejected = errors.New("cluster: command rejected by the state machine")
	// ErrRaftShutdown: this node's raft is shut down.
	ErrRaftShutdown = errors.New("cluster: raft is shut down")
)

// quorumError is an ErrNoQuorum, and an ErrNoLeader when no leader was known.
type quorumError struct {
	msg      string
	noLeader bool
	cause    error // e.g. context.DeadlineExceeded; may be nil
}

func (e *quorumError) Error() string { return e.msg }
func (e *quorumError) Unwrap() error { return e.cause }

func (e *quorumError) Is(target error) bool {
	return target == ErrNoQuorum || (e.noLeader && target == ErrNoLeader)
}

var errNoGossipAddr = errors.New("cluster: no raft address in gossip")

// RaftConfig says how a node takes part in the replicated state (hashicorp/raft).
// SetDefaults fills the rest; StartRaft derives the addresses from the gossip ones.
type RaftConfig struct {
	BindAddr        string        // HOST:PORT (TCP) for raft and forwarded writes; default the gossip bind host and gossip port + 1 (port 0 if gossip's is 0)
	AdvertiseAddr   string        // IP:PORT peers use to reach BindAddr; default the gossip advertise IP and the bound port
	DataDir         string        // directory for the raft log, stable store and snapshots (created); "" keeps them in memory: a restarted node starts empty and catches up from the others
	BootstrapExpect int           // nodes that bootstrap raft together once they see each other in gossip; 0 or 1: a node without seeds bootstraps alone; default 0
	DeadServerGrace time.Duration // how long gossip must report a server dead before the leader removes it (a node that left goes at once); default 30s
	ApplyTimeout    time.Duration // bound on one write, forwarding to the leader included; default 5s
	Logger          *slog.Logger  // default the Node's logger

	// Only this package's tests set these (testnet_test.go): streams over an in-memory
	// network, shorter timings, and snapshots sooner to exercise their installation.
	streams           func(owner string) streamNet // owner: the node's gossip address; nil = TCP
	timers            *timers                      // nil = productionTimers()
	snapshotThreshold uint64
	trailingLogs      uint64
}

// SetDefaults fills unset fields that do not depend on the node (see StartRaft).
func (c *RaftConfig) SetDefaults() {
	if c.DeadServerGrace <= 0 {
		c.DeadServerGrace = 30 * time.Second
	}
	if c.ApplyTimeout <= 0 {
		c.ApplyTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first invalid field. Call after SetDefaults.
func (c *RaftConfig) Validate() error {
	if _, _, err := net.SplitHostPort(c.BindAddr); err != nil {
		return fmt.Errorf("cluster: raft address %q: %w", c.BindAddr, err)
	}
	if c.AdvertiseAddr != "" {
		host, _, err := net.SplitHostPort(c.AdvertiseAddr)
		if err != nil {
			return fmt.Errorf("cluster: raft advertise address %q: %w", c.AdvertiseAddr, err)
		}
		if net.ParseIP(host) == nil {
			return fmt.Errorf("cluster: raft advertise address %q: host must be an IP", c.AdvertiseAddr)
		}
	}
	if c.BootstrapExpect < 0 {
		return fmt.Errorf("cluster: bootstrap_expect %d is negative", c.BootstrapExpect)
	}
	return nil
}

// defaultAddrs derives the raft addresses from the gossip ones.
func (c *RaftConfig) defaultAddrs(gossipBind string) {
	if c.BindAddr != "" {
		return
	}
	host, port, err := splitHostPort(gossipBind)
	if err != nil {
		return // Validate reports the empty address
	}
	if port != 0 {
		port++
	}
	c.BindAddr = net.JoinHostPort(host, strconv.Itoa(port))
}

// RaftStatus is this node's view of raft.
type RaftStatus struct {
	Leader      string   // leader's node name, "" when none is known
	Term        uint64   // current term
	Voters      []string // names of the voting servers, sorted
	NonVoters   []string // names of the servers that replicate without voting, sorted
	State       string   // "leader", "follower", "candidate" or "shutdown"
	LastIndex   uint64   // last index in this node's log
	LastApplied uint64   // the FSM reflects every log entry up to this index (LastApplied >= LastIndex: caught up with its log)
}

// timers are the raft and membership-check timings.
type timers struct {
	heartbeat, election, leaderLease, commit time.Duration

	reconcile    time.Duration // leader's membership check, also run on every gossip change
	bootstrapFor time.Duration // how long the bootstrap view must stay unchanged
	stabilize    time.Duration // how long a non-voter must be alive before promotion
	rpc          time.Duration // raft transport I/O and peer status calls

	homesEvery, homeGone, homesFormWait time.Duration // the homes table's upkeep (homes.go)
}

// idleCommitEvery is raft's CommitTimeout: how often an idle leader sends each follower an
// AppendEntries to tell it the commit index, on top of its heartbeats. raft's default, 50 ms,
// had an idle 9-node cluster's leader send 160 RPCs a second, a third of the idle CPU of the
// whole cluster. Nothing waits for it: a write is followed by a barrier (applyLocal), which
// carries the new commit index to the followers at once.
const idleCommitEvery = time.Second

func productionTimers() timers {
	d := raft.DefaultConfig()
	return timers{
		heartbeat: d.HeartbeatTimeout, election: d.ElectionTimeout,
		leaderLease: d.LeaderLeaseTimeout, commit: idleCommitEvery,
		reconcile: time.Second, bootstrapFor: 3 * time.Second,
		stabilize: 10 * time.Second, rpc: 10 * time.Second,
		homesEvery: homesEvery, homeGone: homeGone, homesFormWait: homesFormWait,
	}
}

// Raft is this node's raft server with the FSM it replicates.
type Raft struct {
	node   *Node
	cfg    RaftConfig
	log    *slog.Logger
	timers timers
	raft   *raft.Raft
	fsm    *fsmAdapter
	mux    *mux
	addr   string    // advertised raft address
	store  io.Closer // raft-wal, nil in memory
	logs   raft.LogStore
	hlog   *hclogAdapter

	mu          sync.Mutex
	onLeader    func(isLeader bool)
	isLeader    bool
	leaderNote  chan struct{} // cap 1: leadership changed or callback set
	metaNote    chan struct{} // cap 1: gossip our metadata again
	stop        chan struct{}
	wg          sync.WaitGroup
	stopOnce    sync.Once
	shutdownErr error

	// owned by the run goroutine
	bootstrapDone bool
	view          string               // bootstrap: the candidate set seen last
	viewSince     time.Time            // and since when
	missingSince  map[string]time.Time // servers the leader cannot find in gossip, since when
	warned        map[string]time.Time
}

// StartRaft starts this node's raft server over its raft port and replicates fsm. Raft
// state survives restarts in cfg.DataDir. Membership comes from gossip: BootstrapExpect
// nodes bootstrap together, later nodes are added by the leader, first as non-voters. Call
// Shutdown before the Node's Leave or Shutdown.
func (n *Node) StartRaft(cfg RaftConfig, fsm FSM) (*Raft, error) {
	if fsm == nil {
		return nil, errors.New("cluster: StartRaft needs an FSM")
	}
	cfg.defaultAddrs(n.cfg.BindAddr)
	if cfg.Logger == nil {
		cfg.Logger = n.log
	} else {
		cfg.Logger = cfg.Logger.With("node", n.Name())
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Raft{
		node:         n,
		cfg:          cfg,
		log:          cfg.Logger,
		timers:       productionTimers(),
		fsm:          &fsmAdapter{fsm: fsm},
		leaderNote:   make(chan struct{}, 1),
		metaNote:     make(chan struct{}, 1),
		stop:         make(chan struct{}),
		missingSince: map[string]time.Time{},
	}
	if cfg.timers != nil {
		r.timers = *cfg.timers
	}
	var streams streamNet = tcpStreams{}
	if cfg.streams != nil {
		streams = cfg.streams(n.addr)
	}
	ln, err := streams.listen(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster: raft listen on %s: %w", cfg.BindAddr, err)
	}
	r.addr = cfg.AdvertiseAddr
	if r.addr == "" {
		gossipHost, _, _ := net.SplitHostPort(n.addr)
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		r.addr = net.JoinHostPort(gossipHost, port)
	}
	r.mux = newMux(ln, streams, r.addr, r.log, n.tlsServer, n.tlsClient, n.cfg.OnReject)
	if err := r.start(); err != nil {
		_ = r.mux.close()
		if r.store != nil {
			_ = r.store.Close()
		}
		return nil, err
	}
	return r, nil
}

func (r *Raft) start() error {
	hlog := newHclogAdapter(r.log, "raft")
	r.hlog = hlog
	var (
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
	)
	if r.cfg.DataDir == "" {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, raft.NewInmemSnapshotStore()
	} else {
		dir := filepath.Join(r.cfg.DataDir, "raft")
		if err := os.MkdirAll(filepath.Join(dir, "wal"), 0o700); err != nil {
			return fmt.Errorf("cluster: raft data dir: %w", err)
		}
		// raft-wal v0.4.0's Close leaves its metadata DB (and its file lock) open, so we own it.
		meta := &metadb.BoltMetaDB{}
		w, err := wal.Open(filepath.Join(dir, "wal"), wal.WithMetaStore(meta), wal.WithLogger(hlog.Named("wal")),
			wal.WithSegmentSize(walSegmentSize))
		if err != nil {
			_ = meta.Close()
			return fmt.Errorf("cluster: open raft log: %w", err)
		}
		r.store = walStore{w, meta}
		logs, stable = w, w
		fss, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hlog.Named("snapshots"))
		if err != nil {
			return fmt.Errorf("cluster: raft snapshots: %w", err)
		}
		snaps = fss
	}
	r.logs = logs
	hasState, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return fmt.Errorf("cluster: read raft state: %w", err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(r.node.Name())
	rc.Logger = hlog
	rc.HeartbeatTimeout = r.timers.heartbeat
	rc.ElectionTimeout = r.timers.election
	rc.LeaderLeaseTimeout = r.timers.leaderLease
	rc.CommitTimeout = r.timers.commit
	// A removed node keeps running: the leader adds it back when gossip shows it again.
	rc.ShutdownOnRemove = false
	if r.cfg.snapshotThreshold > 0 {
		rc.SnapshotThreshold = r.cfg.snapshotThreshold
		rc.SnapshotInterval = 50 * time.Millisecond
	}
	if r.cfg.trailingLogs > 0 {
		rc.TrailingLogs = r.cfg.trailingLogs
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		ServerAddressProvider: gossipAddrs{&r.node.raftGossip},
		Logger:                hlog.Named("net"),
		Stream:                &raftLayer{r.mux},
		MaxPool:               3,
		Timeout:               r.timers.rpc,
	})
	r.raft, err = raft.NewRaft(rc, r.fsm, logs, stable, snaps, trans)
	if err != nil {
		_ = trans.Close()
		return fmt.Errorf("cluster: start raft: %w", err)
	}
	r.mux.serve(r.serveForward)

	r.node.raftGossip.setLocal(&raftMeta{Addr: r.addr, HasState: hasState, Expect: r.cfg.BootstrapExpect, Proto: raftProto, Epoch: r.node.cfg.Epoch})
	r.bootstrapDone = hasState
	if !hasState && r.cfg.BootstrapExpect <= 1 {
		r.bootstrapDone = true
		if len(r.node.cfg.Join) == 0 {
			r.bootstrap([]raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(r.node.Name()), Address: raft.ServerAddress(r.addr)}})
		} else {
			r.log.Info("raft has no state: waiting for the leader to add this node")
		}
	}
	r.log.Info("raft started", "addr", r.addr, "existing_state", hasState, "bootstrap_expect", r.cfg.BootstrapExpect, "data_dir", r.cfg.DataDir)

	r.wg.Add(3)
	go r.run()
	go r.leaderLoop()
	go r.metaLoop()
	r.publishMeta()
	return nil
}

// walSegmentSize is the size raft-wal preallocates for each log segment file. Its default,
// 64 MiB, is sized for Consul's write rates; herd's log holds config changes of a few hundred
// bytes each (one deployment, see configOp), so that much disk per node would sit unused.
// A larger entry still fits: the segment then grows past it. Existing segments keep the size
// they were made with.
const walSegmentSize = 4 << 20

type walStore struct {
	w    *wal.WAL
	meta *metadb.BoltMetaDB
}

func (s walStore) Close() error { return errors.Join(s.w.Close(), s.meta.Close()) }

// bootstrap writes the first configuration. raft allows every member of it to do so with the
// identical configuration.
func (r *Raft) bootstrap(servers []raft.Server) {
	err := r.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
	if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		r.log.Error("raft bootstrap failed", "err", err)
		return
	}
	ids := make([]string, len(servers))
	for i, s := range servers {
		ids[i] = string(s.ID)
	}
	r.log.Info("raft bootstrapped", "voters", ids)
	if m := r.node.raftGossip.localMeta(); m != nil {
		m.HasState, m.Boot = true, bootHash(servers)
		r.node.raftGossip.setLocal(m)
		r.publishMeta()
	}
}

func (r *Raft) setHasState() {
	m := r.node.raftGossip.localMeta()
	if m == nil || m.HasState {
		return
	}
	m.HasState = true
	r.node.raftGossip.setLocal(m)
	r.publishMeta()
}

// setServed publishes the config version this node now serves.
func (r *Raft) setServed(v uint64) {
	if r.node.raftGossip.setServed(v) {
		r.publishMeta()
	}
}

func (r *Raft) publishMeta() {
	select {
	case r.metaNote <- struct{}{}:
	default:
	}
}

// metaUpdateWait bounds the wait for a metadata broadcast; push-pull spreads it anyway.
const metaUpdateWait = time.Second

// metaLoop gossips our metadata again after a change. memberlist waits for the broadcast,
// so it runs apart from the raft loop.
func (r *Raft) metaLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.stop:
			return
		case <-r.metaNote:
		}
		if err := r.node.ml.UpdateNode(metaUpdateWait); err != nil {
			r.log.Debug("gossip metadata update not confirmed", "err", err)
		}
	}
}

// run drives bootstrap and, on the leader, membership: it wakes on gossip changes,
// leadership changes and a ticker.
func (r *Raft) run() {
	defer r.wg.Done()
	tick := time.NewTicker(r.timers.reconcile)
	defer tick.Stop()
	obsCh := make(chan raft.Observation, 8)
	obs := raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.raft.RegisterObserver(obs)
	defer r.raft.DeregisterObserver(obs)
	gossip := r.node.raftGossip.changes()
	leaderCh := r.raft.LeaderCh()
	for {
		select {
		case <-r.stop:
			return
		case o := <-obsCh:
			lo := o.Data.(raft.LeaderObservation)
			if lo.LeaderID == "" {
				r.log.Info("raft leader lost")
			} else {
				r.log.Info("raft leader elected", "leader", string(lo.LeaderID))
			}
			continue
		case isLeader := <-leaderCh:
			r.mu.Lock()
			r.isLeader = isLeader
			r.mu.Unlock()
			select {
			case r.leaderNote <- struct{}{}:
			default:
			}
			if isLeader {
				clear(r.missingSince)
			}
		case <-gossip:
		case <-tick.C:
		}
		if !r.bootstrapDone {
			r.maybeBootstrap()
		}
		if r.raft.State() == raft.Leader {
			// One configuration change per pass; keep going while there is work.
			for i := 0; i < 8 && !r.isShutdown() && r.reconcile(); i++ {
			}
		} else if r.raft.LastIndex() > 0 {
			r.setHasState()
		}
	}
}

// leaderLoop calls the OnLeader callback, never concurrently with itself, with the latest
// leadership state. Before reporting leadership it waits for a barrier, so the FSM holds
// every committed entry when the callback runs.
func (r *Raft) leaderLoop() {
	defer r.wg.Done()
	reported := false
	for {
		select {
		case <-r.stop:
			return
		case <-r.leaderNote:
		}
		r.mu.Lock()
		fn, isLeader := r.onLeader, r.isLeader
		r.mu.Unlock()
		if isLeader {
			if err := r.raft.Barrier(r.cfg.ApplyTimeout).Error(); err != nil {
				r.log.Warn("raft barrier after election failed", "err", err)
				continue // leadership lost meanwhile: a new note follows
			}
		}
		if fn != nil && (isLeader || reported) {
			fn(isLeader)
			reported = isLeader
		}
	}
}

// OnLeader sets the callback told when this node gains (true) or loses (false) raft
// leadership; if it is the leader already, the callback hears so at once. It runs on its own
// goroutine, may call Apply, and sees an FSM holding every committed entry when told true.
func (r *Raft) OnLeader(fn func(isLeader bool)) {
	r.mu.Lock()
	r.onLeader = fn
	r.mu.Unlock()
	select {
	case r.leaderNote <- struct{}{}:
	default:
	}
}

// IsLeader reports whether this node is the raft leader now.
func (r *Raft) IsLeader() bool { return r.raft.State() == raft.Leader }

// LeaderContact is when this node last knew a raft leader that had it in its configuration:
// now while it is leader itself, else raft's LastContact() (zero when never). state/strict
// stops spending a node's own share once this is older than its fence.
//
// It can be optimistic by up to about twice LeaderLeaseTimeout (500 ms by default): a leader
// cut off from its quorum notices only at its next lease check, then steps down with its last
// contact set to that moment, and until then its followers on the same side of the partition
// keep hearing from it. A follower's value is refreshed by every AppendEntries (heartbeats come
// every HeartbeatTimeout/10) and snapshot install, and by a vote it grants.
func (r *Raft) LeaderContact() time.Time {
	if r.raft.State() == raft.Leader {
		return time.Now()
	}
	return r.raft.LastContact()
}

// Status returns this node's view of raft.
func (r *Raft) Status() RaftStatus {
	_, leader := r.raft.LeaderWithID()
	st := RaftStatus{
		Leader:      string(leader),
		Term:        r.raft.CurrentTerm(),
		State:       stateName(r.raft.State()),
		LastIndex:   r.raft.LastIndex(),
		LastApplied: r.lastApplied(),
	}
	if f := r.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.Suffrage == raft.Voter {
				st.Voters = append(st.Voters, string(s.ID))
			} else {
				st.NonVoters = append(st.NonVoters, string(s.ID))
			}
		}
	}
	slices.Sort(st.Voters)
	slices.Sort(st.NonVoters)
	return st
}

// serversSpeak reports whether every server in the raft configuration (voters and the rest:
// all apply the log) publishes command format proto or newer through gossip. A server this
// node has no gossip record of counts as not speaking it.
func (r *Raft) serversSpeak(proto int) bool {
	f := r.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	peers := r.node.raftGossip.snapshot()
	for _, srv := range f.Configuration().Servers {
		var m *raftMeta
		if string(srv.ID) == r.node.Name() {
			m = r.node.raftGossip.localMeta()
		} else if p, ok := peers[string(srv.ID)]; ok {
			m = p.meta
		}
		if m == nil || m.Proto < proto {
			return false
		}
	}
	return true
}

// maxAppliedScan bounds the log entries lastApplied reads.
const maxAppliedScan = 1024

// lastApplied is the index up to which the FSM reflects the log. raft's AppliedIndex runs
// ahead of the FSM (it counts entries handed to the FSM goroutine), and the FSM never sees
// raft's own entries (no-ops, configuration changes), so: start from the last command the
// FSM applied and move past entries that are not commands, up to AppliedIndex.
func (r *Raft) lastApplied() uint64 {
	done := r.fsm.applied.Load() // read before AppliedIndex: the result can only be low
	upTo := r.raft.AppliedIndex()
	if upTo <= done || upTo-done > maxAppliedScan {
		return done
	}
	var l raft.Log
	for i := done + 1; i <= upTo; i++ {
		err := r.logs.GetLog(i, &l)
		if err == nil && l.Type == raft.LogCommand {
			return i - 1 // handed to the FSM, maybe not applied yet
		}
		// Not a command, or compacted into a snapshot the FSM restored: nothing to wait for.
	}
	return upTo
}

func stateName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	default:
		return "shutdown"
	}
}

// Shutdown stops raft on this node (peers see it as unreachable until gossip reports it
// dead or left) and closes its storage. A leader hands leadership over first, so the others
// need not wait for an election timeout.
func (r *Raft) Shutdown() error {
	r.stopOnce.Do(func() {
		if r.raft.State() == raft.Leader && r.numVoters() > 1 {
			if err := r.raft.LeadershipTransfer().Error(); err != nil {
				r.log.Debug("raft leadership transfer before shutdown failed", "err", err)
			}
		}
		close(r.stop)
		r.hlog.closing.Store(true)
		// Raft first: it fails the futures our goroutines and forwarded writes wait on, and
		// closes the raft port (the mux) on its way out.
		err := r.raft.Shutdown().Error()
		r.wg.Wait()
		err = errors.Join(err, r.mux.close())
		if r.store != nil {
			err = errors.Join(err, r.store.Close())
		}
		r.node.raftGossip.setLocal(nil)
		r.shutdownErr = err
		r.log.Info("raft stopped")
	})
	return r.shutdownErr
}

func (r *Raft) numVoters() int {
	f := r.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	n := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			n++
		}
	}
	return n
}

func (r *Raft) isShutdown() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}
