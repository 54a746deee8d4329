// Package crdt is the cluster state backend: every node admits against its in-memory merged view
// of the whole cluster's usage, and spreads its own counts to the other nodes as CRDT deltas.
//
// # Data model
//
// Per deployment and per 1-second bucket of the 61-bucket window (see state/local), each node
// incarnation owns one cell of four counters: requests as a PN pair (admissions add to P,
// releases to N) and tokens as a PN pair (reservations and settles above the estimate add to P,
// settles below it and releases to N). Only the owner ever writes its cell, and each counter
// only grows, so merge is the per-key maximum of each counter and a bucket's value is the sum
// over incarnations of P-N. In-flight calls go up and down, so each incarnation's in-flight
// count is a single value with a version: the higher version wins. Admission checks and reserves
// under the counter's mutex against own counts plus every peer's last known counts: no network
// on the request path.
//
// # Restarts
//
// Every New starts a fresh incarnation (node name plus a start-time epoch), which is the key of
// its cells. A restarted node therefore never overwrites what its previous incarnation counted:
// peers keep that old incarnation's cells, the new process learns them back at its first
// push-pull, and they leave the window with their buckets like any others. Learning our own old
// counts back under the old key would instead require a round trip before the first admission,
// and a lost race would reset the count; a fresh key makes the order irrelevant. cmd should
// still join (push-pull) before serving, or the new node admits against a view without peers.
//
// # Transport
//
// Each node sends only its own changed cells, batched, as best-effort packets, each under
// maxMessage (1200) bytes so it fits one UDP datagram: to every peer itself up to directMax
// peers (Network.SendToAll), over a ring of fingers beyond (relay.go), compressed there
// (wire.go). Flushes follow changes, not a clock: the first change after a flush arms a timer,
// and the flush runs FlushEvery (1 ms) later, but no sooner than FlushGap (10 ms, or 2.5 ms per
// peer sent to, whichever is longer) after the last flush, with every change made meanwhile;
// so a quiet node's delta waits FlushEvery, a busy node sends at most 400 delta packets a
// second, and an idle node does not wake. A node that relays waits RelayWait (50 ms) instead
// of FlushEvery, for everything to ride one flush (loop). Only the in-flight re-announcement,
// the repeats below and garbage collection run periodically, once per bucket (1 s, see
// housekeepEvery).
// Gossip piggybacking would cut the fan-out but spread a delta in O(log n) gossip rounds of
// 200 ms, and the admission overshoot grows with that delay.
//
// Packets get lost, and a burst loses the worst ones: memberlist's receive queue drops the
// newest message once 1024 wait, and since a cell carries totals, the newest is the one that
// matters. So once per bucket a node sends again the cells (and in-flight count) it changed in
// the two buckets before: a lost delta heals within one or two seconds, before the next burst
// meets a view short of it. Each origin's digests (antientropy.go) find and repair, pair by
// pair, whatever a view still lacks; memberlist's push-pull (LocalState / MergeRemoteState)
// seeds a joining node and repairs the counts of nodes that are gone.
//
// # Overshoot
//
// The cluster is eventually consistent: a node admits against peers' counts as of their last
// delta, so near a limit every node sees the same free slots for one propagation delay. Alone,
// that bounds the excess by the admissions the rest of the cluster makes during one delay:
// aggregate request rate x (FlushEvery + network delay), 2 requests at 1000 req/s x 2 ms, but
// 28 % of an rpm-600 limit when a burst of 450 requests reached 3 nodes at once.
//
// So near a limit each node admits only its share of what remains (share.go). The recent
// counts are what was admitted within the last horizon H (2.15 s, on a time grid every node
// shares; peers' counts by the send time their delta carries), the base is everything older,
// and a node admits while its own recent admissions stay within its share of limit - base:
// a quarter split evenly over the live nodes, three quarters by each node's admissions in the
// window's buckets older than H. Every node knows the same base and the same shares, and the
// shares add up to 1, so while deltas arrive within H the cluster's admissions within a horizon
// stay within what the base leaves: no overshoot, in a burst or a steady stream. The exceptions
// are small: a node that saw no admission for a horizon and refused none may admit one request
// on the merged window alone (else a share below one request would strand the last units of a
// small limit), so a burst that meets a nearly full window can go n-1 over; and under
// contention up to n-1 units (4n-1 if all demand sits on a node that has none in the window)
// stay unused until the window slides. The share check only ever refuses more than the merged
// window: while deltas take longer than H or are lost (until repeated) the excess grows towards
// what it was without it, and under a k-way partition each side still admits up to the limit
// on its own, k x limit in all.
//
// # Trust
//
// Peers' messages are checked, not trusted (check.go): a record whose cells release more than
// they reserved or exceed what one node counts in a second is dropped, and so are counts for
// deployments the current config does not have (SetDeployments) and incarnations beyond
// defaultMaxNodes names and maxIncsPerNode restarts each. Every drop is reported to
// Options.OnReject. Memory is therefore bounded by the config, not by what peers send: at most
// configured deployments x 1024 peer incarnations x ~2.5 KB (a window of cells), and in an
// honest cluster configured deployments x nodes x ~2.5 KB.
//
// # Clocks
//
// Bucket numbers are Unix seconds of each node's own clock, and clocks disagree. A peer 10 s
// behind would have its counts leave this node's window 10 s early, and a peer ahead would have
// them counted too long (or, before, ignored until this node's clock caught up). So every peer
// incarnation's cells are kept under its own bucket numbers and counted in this node's bucket
// b - shift, where shift = floor(offset / 1 s) and offset is the peer's clock minus this node's
// as the cluster estimates it from heartbeats (Options.Offset). The estimate errs low by the
// network delay, and floor rounds down, so a count is never placed earlier than it belongs: it
// is counted from its arrival until at least a window after it was made, and leaves at most a
// bucket (plus the estimate's error) after this node's own count of the same moment would. A
// cell that maps beyond this node's newest bucket (a peer a little ahead, or one whose offset
// is not known yet) counts in the newest bucket and moves to its own when that begins, instead
// of moving the window forward. When the estimate changes, the peer's cells move at the next
// housekeeping (once per bucket). Peers' cells are relayed in push-pull under their owner's
// numbers, so every receiver aligns them by its own estimate. The share check's time grid
// (share.go) runs on each node's own clock: nodes whose clocks differ draw the horizon's line
// up to a slot (268 ms) apart, and that check loosens by what the cluster admits in that time
// (the window's check does not).
//
// Offsets are accepted up to maxOffset (30 s); beyond it a peer is aligned by 30 s only, and
// every message from it is reported (OnReject, clock_offset). What alignment cannot fix is a
// clock that steps. A node whose clock steps forward by s drops s seconds of its window at once,
// and its peers align all of its cells by the new offset, those made before the step too, so
// those leave their windows s early as well. A step back keeps counts longer, which is safe (the
// estimate, the largest of the last few samples, follows it within five heartbeats; until then
// the peer's new counts sit s buckets early, still counted, and then move).
package crdt

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/registry"
	"github.com/herd-proxy/herd/state/internal/window"
)

// Options configures a Backend. Only Node is required.
type Options struct {
	Node       string           // this node's name, unique in the cluster; part of every cell's key
	Now        func() time.Time // clock every counter reads; nil means time.Now
	Network    Network          // where deltas go; nil means not connected yet (see SetNetwork)
	FlushEvery time.Duration    // delay from a change to its flush; 0 means 1ms, negative means no background loop (tests call Flush)
	FlushGap   time.Duration    // least time from one flush to the next, so changes batch under load, and at least gapPerPeer per peer sent to (flushGap); 0 means defaultFlushGap, negative none
	RelayWait  time.Duration    // longest a record to relay waits for a flush of this node's own changes to ride with (relay.go); 0 means defaultRelayWait
	LatencyTTL time.Duration    // latency samples older than this are ignored; 0 means 1h, as state/local

	// OnDelay, if not nil, is called for every delta message received (HandleMessage) with the
	// time from the oldest change it carries (the one that armed the sender's flush, so the
	// batching wait is included) to its receipt, by the two nodes' clocks (0 if the sender's
	// clock is ahead). Full-state push-pull is not a delta and is not reported. It runs on the
	// receiving goroutine and must not block.
	OnDelay func(d time.Duration)

	// Deployments are the deployment IDs of this node's config at start (cmd passes its config
	// file's); SetDeployments replaces them. Peers' counts for any other ID are dropped. nil
	// means none known yet: any ID is kept, for at most defaultMaxCounters deployments.
	Deployments []string

	// OnReject, if not nil, is called once per reason (RejectReasons) for every peer message
	// dropped in whole or in part because it failed a check (see check.go). It runs on the
	// receiving goroutine and must not block.
	OnReject func(reason string)

	// Offset, if not nil, returns a peer node's clock minus this node's and whether it is
	// known (cmd: the cluster's estimate from heartbeats). Peers' cells are aligned by it (see
	// "# Clocks"); nil aligns nothing. It is called at most once per node and bucket, never
	// under a counter's lock, and must not block.
	Offset func(node string) (time.Duration, bool)

	maxNodes, maxCounters int           // tests only: the caps; 0 means defaultMaxNodes, defaultMaxCounters
	housekeepEvery        time.Duration // tests only: the periodic flush interval; 0 means housekeepEvery
	shareHorizon          time.Duration // tests only: the share check's horizon, at least this (slots are powers of two); 0 means shareHorizon
}

const (
	// defaultFlushEvery trades packets for freshness: at 5 ms a burst of 1500 requests over
	// 3 nodes overshot an rpm-600 limit by 28%, at 1 ms by 5.5% (herdbench cluster), while a
	// busy node still sends at most 1000 small packets per peer per second.
	defaultFlushEvery = 1 * time.Millisecond
	// defaultFlushGap batches under load: a node flushes at most every 10 ms, so a busy node
	// sends each peer at most 100 packets a second whatever its request rate, while a change
	// on a quiet node still leaves after FlushEvery. A change waits at most FlushGap, far inside
	// the share check's horizon (share.go), so overshoot does not grow with it.
	defaultFlushGap = 10 * time.Millisecond
	// gapPerPeer lengthens the gap of a node that sends to every peer itself by this much per
	// peer, beyond 4 peers (flushGap): a busy node then sends, and each node receives, at most
	// 400 delta packets a second whatever the cluster's size, where a 10 ms gap had each node
	// of 9 send and receive 800, and packets were most of a busy node's cost of sharing. At 9
	// nodes and 1,000 admitted requests a second (herdbench cluster --modes strict --rate
	// 1000) CPU per request fell 11-15 % and propagation p99 rose from 15 to 30 ms
	// (docs/architecture.md, "Batching sized to load and to the peers").
	gapPerPeer = 2500 * time.Microsecond
	// defaultRelayWait bounds what a relay hop adds to a delta's delay (relay.go).
	defaultRelayWait  = 50 * time.Millisecond
	defaultLatencyTTL = state.DefaultLatencyTTL
	// inFlightRefresh is how often (in buckets) a node re-announces its in-flight count of a
	// deployment it has used, so that a lost update heals and peers can expire the count of a
	// node that died with calls in flight: a remote count not refreshed for a window is dropped.
	inFlightRefresh = 10
	// housekeepEvery is how often the background loop flushes even without changes, so that
	// in-flight counts are re-announced (inFlightRefresh) and dead incarnations collected.
	housekeepEvery = state.BucketWidth
)

// Backend is the CRDT state backend. It implements state.Backend.
type Backend struct {
	now     func() time.Time
	ttl     int64
	self    incKey
	onDelay func(time.Duration)

	onReject    func(string)
	maxNodes    int
	maxCounters int
	// deps is the configured deployment set; never nil (ids nil until one is known).
	deps atomic.Pointer[deploymentSet]
	// incs caps the peer incarnations merged across every deployment.
	incs *incTable
	// offsets aligns peers' buckets by their clock offsets.
	offsets offsets
	pauses  pauses // in each origin's deltas (LastPause)
	// horizon is how long an admission counts as recent for the share check (ns), and a slot
	// of the time grid it is counted in is 2^slotShift ns (share.go).
	horizon   int64
	slotShift uint

	news atomic.Uint64 // full-state records that changed a cell (StateNews)
	ae   antiEntropy   // peers' views of this node's counts checked (antientropy.go)
	net  atomic.Pointer[netBox]
	ring atomic.Pointer[ring] // the members as membership last said (SetMembers); nil before

	counters registry.Map[counter]

	flushMu sync.Mutex // serialises Flush; guards its scratch space below
	enc     encoder    // direct sending; fingers' encoders for relaying
	fingers []encoder
	packed  [][]byte // relayed messages compressed (sendFinger)
	out     outbox
	cells   []cell
	visit   []*counter
	gcAt    int64 // bucket of the last collection of incarnations and counters, and visit of all
	// pending are the counters changed, or given records to relay, since the flush that last
	// visited them (counter.queue). A flush visits only these, and every counter once per
	// bucket (repeats, in-flight refreshes, housekeeping): with 500 deployments, visiting all
	// of them in each of 30 flushes a second was most of a relaying node's flush CPU.
	pendMu  sync.Mutex
	pending []*counter
	offAt   int64 // bucket of the last refresh of clock offsets

	// armed is set by the first change after a flush, which then wakes the loop (nil without a
	// loop) to start the flush timer; the loop clears it just before that flush.
	armed atomic.Bool
	// relayArmed is set by the first record to relay after a flush, which wakes the loop to
	// flush within RelayWait unless a change of this node's own arms an earlier flush.
	relayArmed atomic.Bool
	// armedAt is when the change that armed the pending flush was made (UnixNano, 0 for none):
	// the flush stamps its packets with it, so a receiver measures change-to-merge delay.
	armedAt atomic.Int64
	// peers is how many other members are alive, as membership last said (SetPeers); -1 until
	// told, which means send. With none there is nobody to send deltas to, so changes arm no
	// flush: a node that joins later gets everything by push-pull.
	peers atomic.Int64
	wake  chan struct{}
	loops atomic.Int64 // background flushes run, for tests

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// netBox lets an interface value live in an atomic.Pointer.
type netBox struct{ n Network }

var (
	_ state.Backend = (*Backend)(nil)
	_ state.Counter = (*counter)(nil)
)

// lastEpoch makes epochs strictly increasing within one process, so two Backends with the same
// node name (a restart in a test) never share an incarnation even on a coarse clock.
var lastEpoch atomic.Uint64

// newEpoch returns an incarnation epoch from the real clock (not Options.Now: a fake clock
// reads the same time in every incarnation).
func newEpoch() uint64 {
	e := uint64(time.Now().UnixNano())
	for {
		last := lastEpoch.Load()
		if e <= last {
			e = last + 1
		}
		if lastEpoch.CompareAndSwap(last, e) {
			return e
		}
	}
}

// New returns an empty backend with a fresh incarnation and starts its flush loop.
func New(opts Options) *Backend {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.LatencyTTL <= 0 {
		opts.LatencyTTL = defaultLatencyTTL
	}
	if opts.FlushEvery == 0 {
		opts.FlushEvery = defaultFlushEvery
	}
	if opts.FlushGap == 0 {
		opts.FlushGap = defaultFlushGap
	}
	if opts.RelayWait <= 0 {
		opts.RelayWait = defaultRelayWait
	}
	if opts.maxNodes <= 0 {
		opts.maxNodes = defaultMaxNodes
	}
	if opts.maxCounters <= 0 {
		opts.maxCounters = defaultMaxCounters
	}
	b := &Backend{
		now:         opts.Now,
		ttl:         int64(opts.LatencyTTL),
		self:        incKey{node: opts.Node, epoch: newEpoch()},
		onDelay:     opts.OnDelay,
		onReject:    opts.OnReject,
		maxNodes:    opts.maxNodes,
		maxCounters: opts.maxCounters,
		incs:        newIncTable(opts.maxNodes),
		offsets:     offsets{fn: opts.Offset, m: map[string]alignment{}},
		pauses:      pauses{max: opts.maxNodes},
		slotShift:   slotShift,
		enc:         encoder{limit: maxMessage},
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	if opts.shareHorizon > 0 {
		b.slotShift = uint(bits.Len64(uint64(opts.shareHorizon/(recentSlots-1) - 1))) // rounded up
	}
	b.horizon = (recentSlots - 1) << b.slotShift
	b.deps.Store(&deploymentSet{gen: 1})
	if opts.Deployments != nil {
		b.SetDeployments(opts.Deployments)
	}
	b.SetNetwork(opts.Network)
	b.peers.Store(-1)
	if opts.FlushEvery > 0 {
		if opts.housekeepEvery <= 0 {
			opts.housekeepEvery = housekeepEvery
		}
		b.wake = make(chan struct{}, 1)
		go b.loop(opts.FlushEvery, max(opts.FlushGap, 0), opts.RelayWait, opts.housekeepEvery)
	} else {
		close(b.done)
	}
	return b
}

// SetNetwork connects the backend to the cluster (nil disconnects). cmd calls it once both exist.
func (b *Backend) SetNetwork(n Network) {
	if n == nil {
		b.net.Store(nil)
		return
	}
	b.net.Store(&netBox{n: n})
}

// changed is called (under a counter's mutex) on every change of this node's counts: the first
// one after a flush wakes the loop to schedule the next flush. It does not block or allocate.
func (b *Backend) changed() {
	if b.wake == nil || b.armed.Load() || b.peers.Load() == 0 || !b.armed.CompareAndSwap(false, true) {
		return
	}
	b.armedAt.Store(b.now().UnixNano()) // once per flush, not per change
	select {
	case b.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// relayed is called (under a counter's mutex) when a peer's record to relay arrived: the first
// one after a flush wakes the loop to flush within RelayWait. It does not block or allocate.
func (b *Backend) relayed() {
	if b.wake == nil || b.relayArmed.Load() || !b.relayArmed.CompareAndSwap(false, true) {
		return
	}
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// loop flushes FlushEvery after the first change since the last flush, or relayWait after the
// first record to relay, whichever is sooner, but no sooner than flushGap(gap) after the last
// flush; and every housekeep regardless. An idle backend sleeps until housekeep. A node that
// relays (relay.go) flushes relayWait after the first of either.
//
// Records to relay wait for this node's own changes because a relay's packets per flush grow
// with the ring (one per finger): flushing for every record relayed would have a node of a
// large cluster flush as often as the whole cluster changes, and send log2 N packets each
// time. Its own changes wait for the records to relay for the same reason: in a large cluster
// records to relay arrive all the time, and a flush for each change besides would have a node
// at 25 requests a second flush 26 times a second, not 15 (cluster/sim_test.go, 50 nodes). So
// a relaying node sends at most log2 N packets (more if they overflow; see sendFinger) every
// relayWait, and a hop adds at most relayWait, the origin's own wait included.
func (b *Backend) loop(every, gap, relayWait, housekeep time.Duration) {
	defer close(b.done)
	flush := time.NewTimer(every)
	flush.Stop()
	defer flush.Stop()
	tick := time.NewTicker(housekeep)
	defer tick.Stop()
	var last, due time.Time // of the last flush; of the pending one (zero: none)
	doFlush := func() {
		// Cleared before the flush takes the changes: a change made from here on either is
		// in this flush or arms the next one.
		b.armed.Store(false)
		b.relayArmed.Store(false)
		b.loops.Add(1)
		last, due = time.Now(), time.Time{}
		b.Flush()
	}
	for {
		select {
		case <-b.stop:
			return
		case <-b.wake:
			wait := relayWait
			if b.armed.Load() && b.ring.Load().direct() {
				wait = every
			}
			at := time.Now().Add(max(wait, b.flushGap(gap)-time.Since(last)))
			if due.IsZero() || at.Before(due) {
				due = at
				flush.Reset(time.Until(at))
			}
		case <-flush.C:
			doFlush()
		case <-tick.C:
			doFlush()
			b.antiEntropyTick(b.now().UnixNano())
		}
	}
}

// flushGap is the least time from one flush to the next: gap, or while this node sends to
// every peer itself, gapPerPeer for each peer if that is longer. A relaying node's packets per
// flush do not grow with the peers (relay.go), and it waits RelayWait anyway.
func (b *Backend) flushGap(gap time.Duration) time.Duration {
	if gap <= 0 || !b.ring.Load().direct() {
		return gap
	}
	return max(gap, time.Duration(b.peers.Load())*gapPerPeer)
}

// SetMembers tells the backend the names of the alive members, this node's among them
// (membership's callback calls it on every change): whom it sends to when relaying (relay.go),
// and how many peers it has (SetPeers).
func (b *Backend) SetMembers(names []string) {
	r := newRing(b.self.node, names)
	b.ring.Store(r)
	b.SetPeers(len(r.names) - 1)
}

// SetPeers tells the backend how many other cluster members are alive (SetMembers calls it).
// While there are none, changes are not flushed: on a single node the flush timer's wake-ups
// would cost CPU on every request for nothing.
func (b *Backend) SetPeers(n int) {
	was := b.peers.Swap(int64(n))
	if was == 0 && n > 0 {
		b.changed() // send what accumulated while alone (push-pull has it too)
	}
}

// Close stops the flush loop after sending what is pending. The backend stays usable.
func (b *Backend) Close() {
	b.closeOnce.Do(func() { close(b.stop) })
	<-b.done
	b.Flush()
}

// Counter returns deployment id's usage, creating it on first use. The same id yields the same
// Counter as long as the id stays configured (or its counts are in the window), so a config
// change never resets counts; see SetDeployments for when a removed ID's counter goes.
func (b *Backend) Counter(id string) state.Counter {
	for {
		c := b.counter(id)
		// Marked in use under the current set, then confirmed still registered: a collection
		// either saw the mark or removed c before the check, and then we take the new one.
		c.used.Store(b.deps.Load().gen)
		if b.counters.Lookup(id) == c {
			return c
		}
	}
}

// SetDeployments tells the backend the deployment IDs of the config now applied (cmd calls it
// after every config change). Peers' counts for other IDs are dropped from then on; the
// counter of an ID no longer configured is collected once it holds nothing (about a window
// after its last use), so an ID removed and added back within a window keeps its counts.
//
// Nodes apply a config change at slightly different moments: counts a peer sends for an ID
// this node does not have yet are dropped (unknown_deployment), and the next push-pull, which
// carries the peer's whole window, repairs them. Call it after the proxy has taken the
// config's counters (Counter), so none of them is collected in between.
func (b *Backend) SetDeployments(ids []string) {
	set := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		set[id] = struct{}{}
	}
	for {
		old := b.deps.Load()
		if b.deps.CompareAndSwap(old, &deploymentSet{ids: set, gen: old.gen + 1}) {
			return
		}
	}
}

// wanted reports whether c must stay registered although it may hold nothing: its ID is
// configured, or this node handed it out (Counter) since the set last changed.
func (b *Backend) wanted(c *counter) bool {
	d := b.deps.Load()
	return c.used.Load() == d.gen || (d.ids != nil && d.has(c.id))
}

// collect forgets peer incarnations not heard of for a window and the counters of
// deployments no longer wanted that hold nothing. Flush calls it once per bucket.
func (b *Backend) collect(now int64, cs []*counter) {
	b.incs.expire(now)
	for _, c := range cs {
		if !b.wanted(c) {
			b.counters.DeleteIf(c.id, c, func(c *counter) bool { return !b.wanted(c) && c.idle(now) })
		}
	}
}

func (b *Backend) counter(id string) *counter {
	return b.counters.Get(id, func() *counter { return newCounter(b, id) })
}

// all appends every counter to cs, so callers can visit them without holding a lock.
func (b *Backend) all(cs []*counter) []*counter { return b.counters.Append(cs) }

// Flush sends this node's changed cells and in-flight counts, and what it relays (relay.go),
// to the members now, split into packets under maxMessage bytes. Without a network it only
// forgets what changed: a node that connects later is seeded by push-pull.
func (b *Backend) Flush() {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	ns := b.now().UnixNano()
	now := window.BucketOf(ns)
	stamp := ns
	if first := b.armedAt.Swap(0); first != 0 && first < ns {
		stamp = first
	}
	if now != b.offAt {
		// Before the counters' housekeeping, which moves peers' cells by these estimates.
		b.offAt = now
		b.offsets.refresh(b.incs.nodeNames(), now)
	}
	b.out.reset()
	b.pendMu.Lock()
	every := now != b.gcAt
	if every {
		b.visit = b.all(b.visit[:0])
	} else {
		b.visit = append(b.visit[:0], b.pending...)
	}
	clear(b.pending)
	b.pending = b.pending[:0]
	b.pendMu.Unlock()
	for _, c := range b.visit {
		b.cells = c.takeDelta(now, stamp, b.cells[:0], &b.out)
	}
	if every {
		b.gcAt = now
		b.collect(now, b.visit)
		b.pauses.forget(ns - int64(pauseForget))
	}
	clear(b.visit)
	box := b.net.Load()
	if box == nil || len(b.out.recs) == 0 {
		return
	}
	r := b.ring.Load()
	if r.direct() {
		b.enc.reset(false, 0)
		b.out.encode(&b.enc, 0, 0)
		for _, msg := range b.enc.messages() {
			box.n.SendToAll(msg)
		}
		return
	}
	b.out.sort()
	n := len(r.names)
	for i, d := 0, 1; d < n; i, d = i+1, d*2 {
		if i == len(b.fingers) {
			b.fingers = append(b.fingers, encoder{})
		}
		b.sendFinger(box.n, &b.fingers[i], n, d, r.finger(d))
	}
}

// sendFinger sends to the finger d places on what b.out holds for it (sendPacked).
func (b *Backend) sendFinger(n Network, enc *encoder, ring, d int, name string) {
	sendPacked(n, name, 0, enc, &b.packed, func(enc *encoder) { b.out.encode(enc, ring, d) })
}

// sendPacked sends to member name what fill encodes, in messages of up to packLimit bytes,
// compressed (wireFlate) from packMin; if one of them compresses to more than maxMessage, in
// messages of up to maxMessage bytes instead. A non-zero kind goes before each message (a
// repair, antientropy.go). packed is scratch space for the compressed messages.
func sendPacked(n Network, name string, kind byte, enc *encoder, packed *[][]byte, fill func(*encoder)) {
	frame := 0
	if kind != 0 {
		frame = 1
	}
	for _, limit := range [...]int{packLimit, maxMessage} {
		enc.limit = limit - frame
		enc.reset(false, 0)
		fill(enc)
		msgs := enc.messages()
		for len(*packed) < len(msgs) {
			*packed = append(*packed, nil)
		}
		fits := true
		for j, msg := range msgs {
			p := &(*packed)[j]
			*p = (*p)[:0]
			if kind != 0 {
				*p = append(*p, kind)
			}
			if len(msg) >= packMin {
				*p = compress(*p, msg)
				fits = fits && len(*p) <= maxMessage
			}
		}
		if !fits && limit != maxMessage {
			continue
		}
		for j, msg := range msgs {
			p := (*packed)[j]
			switch {
			case len(p) > frame && len(p) < len(msg)+frame:
				msg = p // compressed, and smaller
			case kind != 0:
				msg = append(p[:0], kind)
				msg = append(msg, enc.messages()[j]...)
				(*packed)[j] = msg
			}
			n.SendTo(name, msg)
		}
		return
	}
}

// LocalState returns the state for a push-pull (memberlist's LocalState) as one compressed
// message (see compressState), which the caller may keep; it is not size-limited: push-pull
// runs over TCP. Deployments no longer configured are left out: peers that still have them
// hold their own counts.
//
// With join (a node joining, or resyncing after a partition: cluster's resync joins) it holds
// every cell this node knows, its own and its peers'. Otherwise, for the periodic push-pull
// between members, it holds this node's own cells only: every node's counts reach the others
// in its deltas and their repeats, the periodic exchange only repairs what those lost, and
// what a node lost of an origin's counts the origin repairs in its own push-pulls. Relaying
// everyone's cells there made every push-pull as large as the whole cluster's window (at 50
// nodes x 500 busy deployments 6.8 MB compressed, twice every 30 s per node) to carry again
// what the deltas had carried. Either way it holds this node's own in-flight counts.
func (b *Backend) LocalState(join bool) []byte { return compressState(b.fullState(!join)) }

// fullState is LocalState uncompressed: this node's own cells only, if own.
func (b *Backend) fullState(own bool) []byte {
	now := window.BucketOf(b.now().UnixNano())
	deps := b.deps.Load()
	enc := encoder{}
	var cells []cell
	for _, c := range b.all(nil) {
		if deps.accepts(c.id) {
			cells = c.encodeAll(now, own, cells[:0], &enc)
		}
	}
	msgs := enc.messages()
	if len(msgs) == 0 {
		return []byte{wireVersion}
	}
	return msgs[0]
}

// MergeRemoteState merges a peer's LocalState, either kind. Garbage is ignored as a whole, records that fail
// a check one by one (see check.go).
func (b *Backend) MergeRemoteState(buf []byte) {
	msg, err := expandState(buf, maxState)
	if err != nil {
		b.reject(1 << reasonMalformed)
		return
	}
	b.merge(msg, kindState)
}

// Resend has the next flush send again every cell of this node's own from the bucket of since
// on, and its in-flight counts, as if they had just changed: members that come back after a
// silence (a partition healed, a node woke) missed what it sent meanwhile (cluster calls it).
// They go once more a bucket later, so a member whose view of the cluster still lagged when
// they first went out gets them too, but not on the repeats' whole schedule: a heal calls for
// resends from every node, and five rounds of each cost five times the repair. Each
// origin repairing its own makes a heal cost the cluster about one full state's worth of
// deltas; a full-state exchange per node, which carries every node's cells, cost N of them.
func (b *Backend) Resend(since time.Time) {
	from := window.BucketOf(since.UnixNano())
	for _, c := range b.all(nil) {
		c.resend(from)
	}
}

// StateNews counts the records of merged full states (MergeRemoteState) that changed a count
// here: cluster's resync tells by it whether an exchange brought what this node lacked.
func (b *Backend) StateNews() uint64 { return b.news.Load() }

// HandleMessage takes a peer's packet: a delta, which it merges and reports the delay of to
// Options.OnDelay, or an anti-entropy message (antientropy.go). Garbage is ignored as a whole,
// records that fail a check one by one (see check.go).
func (b *Backend) HandleMessage(msg []byte) {
	ok := len(msg) > 0
	if ok {
		switch msg[0] {
		case msgDigest:
			ok = b.takeDigest(msg)
		case msgAsk:
			ok = b.takeAsk(msg)
		case msgRepair:
			b.mergePacket(msg[1:], kindRepair)
		default:
			b.mergePacket(msg, kindDelta)
		}
	}
	if !ok {
		b.reject(1 << reasonMalformed)
	}
}

// mergePacket merges a packet's message, expanding it first if it is compressed (wireFlate).
func (b *Backend) mergePacket(msg []byte, kind mergeKind) {
	if len(msg) == 0 || msg[0] != wireFlate {
		b.merge(msg, kind)
		return
	}
	p := deltaBufs.Get().(*[]byte)
	defer deltaBufs.Put(p)
	full, err := expand(*p, msg, maxDelta)
	if err != nil {
		b.reject(1 << reasonMalformed)
		return
	}
	*p = full
	b.merge(full, kind)
}

// deltaBufs keeps buffers for compressed packets to expand into (mergePacket).
var deltaBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2*packLimit); return &b }}

// mergeKind is what a merged message is: its limits, and whether its counts are recent and
// relayed.
type mergeKind uint8

const (
	kindDelta  mergeKind = iota // a delta packet: recent, relayed as its span asks
	kindState                   // a push-pull state (MergeRemoteState): large
	kindRepair                  // an origin's repair (antientropy.go): a packet merged as a state
)

// merge validates buf's structure completely before applying any of it, so a corrupt packet
// changes nothing, then merges each record that passes its checks.
func (b *Backend) merge(buf []byte, kind mergeKind) {
	delta := kind == kindDelta
	limit, maxIncs := maxState, maxMessageIncs
	if kind != kindState {
		limit, maxIncs = maxDelta, maxDeltaIncs
	}
	if len(buf) > limit {
		b.reject(1 << reasonTooLarge)
		return
	}
	if err := decode(buf, maxIncs, nil); err != nil {
		b.reject(1 << reasonMalformed)
		return
	}
	ns := b.now().UnixNano()
	now := window.BucketOf(ns)
	deps := b.deps.Load()
	var bad reasons
	var reported int64 // the send time last reported to onDelay
	var origin string  // of the last record merged, for pauses: a message groups records by origin
	_ = decode(buf, maxIncs, func(m meta, k incKey, id string, ifVer uint64, inFlight int64, cells []cell) {
		var a alignment
		if k != b.self {
			a = b.offsets.of(k.node, now)
		}
		if a.capped {
			bad.add(reasonClockOffset)
		}
		at, span := int64(-1), 0 // not a delta: nothing in it is recent, nothing to relay
		if delta {
			// When the origin flushed, in this node's time (a peer 10 s behind sent 10 s later
			// than its stamp says); a delta without a stamp counts as sent now.
			at, span = ns, m.span
			if m.sent != 0 {
				at = m.sent - a.ns
				if b.onDelay != nil && m.sent != reported {
					reported = m.sent
					b.onDelay(time.Duration(max(ns-m.sent, 0)))
				}
			}
		}
		r, ok := b.mergeRecord(now, ns, at, deps, k, a, id, ifVer, inFlight, cells, m.sent, span)
		if !ok {
			bad.add(r)
		} else if delta && k.node != origin && k != b.self {
			origin = k.node
			b.pauses.heard(origin, ns)
		}
	})
	b.reject(bad)
}

// mergeRecord checks one record and merges it, or returns why not. The checks that need no
// state come first, so a record that fails them costs no lookup and takes no table slot.
func (b *Backend) mergeRecord(now, ns, sent int64, deps *deploymentSet, k incKey, a alignment, id string, ifVer uint64, inFlight int64, cells []cell, stamp int64, span int) (reason, bool) {
	if k == b.self {
		// Our own cells and in-flight count are ours alone: a peer's copy is at best an echo.
		return 0, true
	}
	if r, ok := checkRecord(now, inFlight, cells); !ok {
		return r, false
	}
	if !deps.accepts(id) {
		return reasonUnknownDeployment, false
	}
	if deps.ids == nil && b.counters.Lookup(id) == nil && b.counters.Len() >= b.maxCounters {
		return reasonTooManyDeployments, false
	}
	if !b.incs.admit(k, now) {
		return reasonTooManyNodes, false
	}
	for {
		c := b.counter(id)
		if !c.merge(now, ns, sent, k, a, ifVer, inFlight, cells, b.maxNodes*maxIncsPerNode, relay{sent: stamp, span: span}) {
			return reasonTooManyNodes, false
		}
		// A collection may have removed c (holding nothing) since the lookup: merge again
		// into its successor, which is idempotent if it did not.
		if b.counters.Lookup(id) == c {
			return 0, true
		}
	}
}

// reject reports each reason in rs to Options.OnReject.
func (b *Backend) reject(rs reasons) {
	if rs == 0 || b.onReject == nil {
		return
	}
	for r := range numReasons {
		if rs&(1<<r) != 0 {
			b.onReject(reasonNames[r])
		}
	}
}

// Snapshot returns deployment id's merged cluster-wide counts as of now, for /cluster/status.
func (b *Backend) Snapshot(id string) (requests, tokens, inFlight int64) {
	l := b.counter(id).Load()
	return l.Requests, l.Tokens, l.InFlight
}
