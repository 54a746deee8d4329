// Package strict is the cluster's strict limit mode: a deployment's rpm and tpm are rights that
// nodes hold, and a node admits a request only against rights it holds, so the whole cluster
// never admits more than the limit in any 60-second interval, whatever the network does.
//
// # Rights
//
// Think of a limit R as R units. A unit, once spent on a request, stays busy for cooldown (a
// window, the arrival margin and a bucket: state.Span plus one) on the clock of the node that
// spent it, then is free again. Every use of a unit is therefore more than a window after its
// previous use, also as the upstream sees them arrive (state.ArrivalMargin), so no 60-second
// interval holds more uses than there are units: the limit holds as long as no unit is ever in
// two places.
// Tokens are the same with tpm units, spent by the reservation and corrected by the settle.
//
// Units live with homes: the raft-replicated table of home nodes (cluster.Homes) splits every
// limit into shares, one per home, in name order. A home spends its own share, and lends units
// of it to other nodes for a short loan; a node whose own share does not cover its demand
// borrows. A loan is the only way a unit moves, and it ends by itself: the borrower may spend
// the units until its request time plus loanFor (its own clock), and the home takes them back
// at its grant time plus loanFor plus cooldown (its own clock), or earlier when the borrower
// closes the loan and reports what it spent. Since the request leaves before the grant, the
// borrower's deadline always falls before the home's; nothing depends on the two clocks
// agreeing, only on their rates being alike (see cooldownMargin). A lost grant or close only
// keeps units idle until that timeout.
//
// # Faults
//
//   - Partition: every side keeps serving with the shares and loans it holds; loans across the
//     cut end on their own. A home cut off from the raft leader for longer than Options.Fence
//     stops spending and lending its share, because the leader may then remove it from the
//     table (see Homes below).
//   - Kill and restart: a home whose incarnation is not the one the table names (it restarted)
//     does not touch its share until loanFor+cooldown after it started: by then every unit its
//     previous life spent has cooled and every loan it granted has ended.
//   - Pause: clocks here are monotonic, so a paused node finds its loans expired on waking. A
//     request admitted before the pause and written to the upstream after it is caught by
//     Confirm, which the proxy calls just before the request leaves: it restarts the unit's
//     cooldown (own share) or refuses the send (an expired loan).
//   - Clock skew: strict mode never compares two nodes' clocks. Wall-clock steps and offsets do
//     not matter; a clock running faster than another by more than cooldownMargin/cooldown
//     (1.6 %) could.
//
// # Homes
//
// When the table changes, a home's share of a limit may shrink or grow. Shrinking applies at
// once. Growth waits until every other home provably stopped using what it gave up: the fence
// (a home without raft contact stops), plus a loan and a cooldown; until then a home gets the
// smallest of its shares under every table version applied within that grace. The first table
// is free of this: before it nobody held anything.
//
// # Fairness
//
// Nodes broadcast their demand per deployment. Each node's fair part of a limit is its share of
// the cluster's demand; a home whose share exceeds its fair part keeps the surplus for the nodes
// short of theirs, in proportion, and spends beyond its part only what nobody else wants.
package strict

import (
	"crypto/rand"
	"encoding/binary"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/registry"
)

const (
	// cooldown is how long a spent unit stays busy: the span plus a bucket, as every backend
	// counts a reservation at most. Of the span, state.ArrivalMargin absorbs the spread of
	// requests' ways to the upstream; cooldownMargin, the bucket beyond it, the two clocks'
	// rate difference.
	cooldown       = state.Span + cooldownMargin
	cooldownMargin = state.BucketWidth

	// defaultLoan is how long a borrower may spend a loan: short, so units of a borrower that
	// died come back soon, long enough that a steady borrower asks a few times a second.
	defaultLoan = 2 * time.Second
	// defaultFence is how long a home keeps using its share without contact with a raft
	// leader: how long a home cut off from the cluster goes on serving on its own share.
	defaultFence = 60 * time.Second
	// defaultWait bounds how long a request without rights waits for a loan.
	defaultWait = 5 * time.Millisecond
	// confirmSlack is how long after a loan's deadline a request admitted on it may still be
	// written upstream: the time from admission to the first byte of the request.
	confirmSlack = 500 * time.Millisecond
	// tick is the background loop's period while the fence is closed (it opens on the first
	// refresh after raft contact) or a counter has loans, wants, waiting admissions or units
	// lent out (see period): loans are closed, wants timed out, lent units counted back.
	tick = 50 * time.Millisecond
	// quietTick is its period in strict mode otherwise: demand is aged and announced (every
	// announceEvery), fairness recomputed, rights asked for ahead of demand, the fence
	// refreshed (well within gapAfter). Ticking every 50 ms regardless woke every idle node 20
	// times a second: an idle lone herd spent 7.0-7.7 ms of CPU a second, 2.5 ms with the loop
	// at fastTick. Work that begins between two quiet ticks waits at most quietTick for the
	// loop, no longer than a want waits for its answer (wantTimeout) anyway.
	quietTick = 250 * time.Millisecond
	// fastTick is its period while strict mode is off: no right is used then, and ticking
	// every 50 ms woke every node of a fast-mode cluster 20 times a second for nothing (an
	// idle 9-node fast-mode cluster spent 69-70 ms of CPU a second in all with it, 48-57
	// without). Loans and wants left from strict mode still close within it.
	fastTick = time.Second
	// announceEvery is how often demand is broadcast, and demandTTL how long a peer's counts.
	announceEvery = 250 * time.Millisecond
	demandTTL     = 2 * time.Second
	// wantTimeout is how long a want waits for its grant before it is abandoned.
	wantTimeout = 250 * time.Millisecond
	// growthSlack covers the lag between a table change's commit and its application on a
	// home still in contact with the leader, and how much later than the truth raft may
	// report a leader contact (up to two leader leases, cluster.Raft.LeaderContact).
	growthSlack = 3 * time.Second
)

// Options configures a Backend. Node, Inner and Send are required.
type Options struct {
	Node  string        // this node's name, as in the homes table
	Epoch uint64        // this process's incarnation, as published to the raft leader
	Inner state.Backend // counts usage for routing and status (state/crdt or state/redis)
	// CheckInner has Inner check a strict admission's rpm and tpm too, after the rights: a
	// Redis checks every admission as in Redis mode, and the rights hold the limit where it
	// cannot (an outage, a restart that lost the window). Without it Inner sees MaxParallel
	// only: gossip counts lag, and would refuse what the rights allow.
	CheckInner bool
	// Now is the clock durations are measured on. It must be monotonic: cmd passes time.Now,
	// never a skewed test clock. nil means time.Now.
	Now func() time.Time
	// Network carries messages to the other nodes; nil until SetNetwork (cmd connects it once
	// the cluster has started).
	Network Network
	// LeaderContact is when this node last knew a raft leader (cluster.Raft.LeaderContact);
	// SetLeaderContact replaces it. nil means always now (tests of one node).
	LeaderContact func() time.Time

	Wait  time.Duration // how long a request may wait for a loan; 0 means defaultWait, negative none
	Loan  time.Duration // loan length; 0 means defaultLoan
	Fence time.Duration // see defaultFence; 0 means defaultFence

	// OnReject, if not nil, is told why a peer's message was dropped.
	OnReject func(reason string)

	noLoop bool // tests: no background goroutine; they call Tick
}

// Network is what the backend needs from the cluster (cluster.Node implements it): best-effort
// packets to one node or to all others. Neither may block on a slow peer or keep msg.
type Network interface {
	SendTo(name string, msg []byte) bool
	SendToAll(msg []byte)
}

// Backend is the strict-mode state backend. It implements state.Backend; a counter admits on
// rights while Strict is on, and like Inner otherwise.
type Backend struct {
	o      Options
	base   time.Time // the clock's reading at New: mono counts from it
	wall   int64     // base as Unix ns, so mono's buckets line up with the wall clock's
	strict atomic.Bool

	net     atomic.Pointer[netBox]
	contact atomic.Pointer[func() time.Time]
	wait    atomic.Int64 // Options.Wait, as SetWait changes it

	homes    atomic.Pointer[homesView]
	tabled   chan struct{} // closed when the first table with homes arrives
	tableOne sync.Once
	fenceEnd atomic.Int64 // mono ns until which the own share may be used (LeaderContact + Fence)
	// fenceMu guards refreshFence's memory of its last run.
	fenceMu       sync.Mutex
	lastRefresh   int64
	distrustUntil int64
	ids           atomic.Uint64

	counters registry.Map[counter]

	demandMu sync.Mutex
	demand   map[string]map[string]peerDemand // deployment -> node -> its last announced demand

	kick  chan struct{} // strict mode came on: the loop ticks at once
	ticks atomic.Int64  // the loop's, for tests
	// lastTick is the mono ns of Tick's last run: demand is announced when a tick crosses a
	// multiple of announceEvery since it.
	lastTick atomic.Int64
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
}

// peerDemand is a node's announced demand for one deployment, in units per second.
type peerDemand struct {
	req, tok float64
	at       int64 // mono ns of receipt
}

var (
	_ state.Backend   = (*Backend)(nil)
	_ state.Counter   = (*counter)(nil)
	_ state.Confirmer = (*counter)(nil)
)

// New returns a backend and starts its background loop.
func New(o Options) *Backend {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Wait == 0 {
		o.Wait = defaultWait
	}
	if o.Loan <= 0 {
		o.Loan = defaultLoan
	}
	if o.Fence <= 0 {
		o.Fence = defaultFence
	}
	base := o.Now()
	b := &Backend{o: o, base: base, wall: base.UnixNano(), tabled: make(chan struct{}), demand: map[string]map[string]peerDemand{}, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	b.ids.Store(binary.LittleEndian.Uint64(seed[:]) &^ (rightsMask << 56)) // IDs of this incarnation, unlike any other's
	b.homes.Store(&homesView{})
	b.SetNetwork(o.Network)
	if o.LeaderContact != nil {
		b.SetLeaderContact(o.LeaderContact)
	}
	b.wait.Store(int64(o.Wait))
	b.Strict(true)
	b.refreshFence()
	if o.noLoop {
		close(b.done)
	} else {
		go b.loop()
	}
	return b
}

// netBox lets an interface value live in an atomic.Pointer.
type netBox struct{ n Network }

// SetNetwork connects the backend to the cluster (nil disconnects).
func (b *Backend) SetNetwork(n Network) {
	if n == nil {
		b.net.Store(nil)
		return
	}
	b.net.Store(&netBox{n: n})
}

// SetLeaderContact sets where the fence reads the last raft leader contact (cmd: once raft runs).
func (b *Backend) SetLeaderContact(fn func() time.Time) {
	b.contact.Store(&fn)
	b.refreshFence()
}

// SetWait changes how long a request without rights may wait for a loan (negative: never).
func (b *Backend) SetWait(d time.Duration) { b.wait.Store(int64(d)) }

func (b *Backend) send(to string, msg []byte) {
	if box := b.net.Load(); box != nil {
		box.n.SendTo(to, msg)
	}
}

func (b *Backend) sendAll(msg []byte) {
	if box := b.net.Load(); box != nil {
		box.n.SendToAll(msg)
	}
}

// Strict turns strict admission on or off (router_settings.cluster_limit_mode). Turned on, a
// counter starts with its share charged for the usage the cluster already counted (Inner).
//
// While it is off the fence is not refreshed (nothing uses it), so turning it on refreshes
// the fence as New does, without taking the time since the last refresh for a pause.
func (b *Backend) Strict(on bool) {
	if b.strict.Swap(on) == on || !on {
		return
	}
	for _, c := range b.counters.Append(nil) {
		c.mu.Lock()
		c.active = false
		c.before = nil // what the cluster counts now, fast mode's admissions included
		c.mu.Unlock()
	}
	b.fenceMu.Lock()
	b.lastRefresh = 0
	b.fenceMu.Unlock()
	b.refreshFence()
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Mode is "strict" or "fast", as Strict last set it.
func (b *Backend) Mode() string {
	if b.strict.Load() {
		return "strict"
	}
	return "fast"
}

// NotReady says why this node cannot admit on any rights yet ("" when it can): in strict mode,
// until the first homes table arrives, no node holds any share.
func (b *Backend) NotReady() string {
	if b.strict.Load() && len(b.homes.Load().names) == 0 {
		return "strict limits: waiting for the raft leader's homes table"
	}
	return ""
}

// Close stops the background loop.
func (b *Backend) Close() {
	b.once.Do(func() { close(b.stop) })
	<-b.done
}

// mono is the backend's clock in Unix nanoseconds: the wall clock's reading at New plus the
// (monotonic) time elapsed since, so its buckets line up with state/local's and Inner's while
// no later step of the wall clock moves it.
func (b *Backend) mono() int64 { return b.at(b.o.Now()) }

func (b *Backend) at(t time.Time) int64 { return b.wall + int64(t.Sub(b.base)) }

// Counter returns deployment id's counter.
func (b *Backend) Counter(id string) state.Counter {
	c := b.counter(id)
	// Inner may have collected the counter it gave out before (a deployment dropped from the
	// config and added back): the caller takes counters again on every config change, and so
	// does this one.
	c.inner.Store(&innerBox{b.o.Inner.Counter(id)})
	return c
}

func (b *Backend) counter(id string) *counter {
	return b.counters.Get(id, func() *counter { return newCounter(b, id) })
}

func (b *Backend) newID() uint64 { return b.ids.Add(1) &^ (rightsMask << 56) }

// refreshFence records how long the own share may be used after the last leader contact.
//
// A process that was paused (or stalled) for a while cannot trust raft's word at once: a
// leader paused past its lease still believes it leads, and says "contact: now", until its own
// lease check makes it step down (within two leases, cluster.Raft.LeaderContact). So after a
// gap between refreshes longer than gapAfter, the fence keeps its value from before the gap
// for distrustFor: a pause longer than the fence finds it closed, and it opens again only on
// contact raft reports once that window has passed.
func (b *Backend) refreshFence() {
	fn := b.contact.Load()
	if fn == nil {
		b.fenceEnd.Store(1<<63 - 1)
		return
	}
	now := b.mono()
	b.fenceMu.Lock()
	defer b.fenceMu.Unlock()
	if b.lastRefresh != 0 && now-b.lastRefresh > int64(gapAfter) {
		b.distrustUntil = now + int64(distrustFor)
	}
	b.lastRefresh = now
	if now < b.distrustUntil {
		return
	}
	c := (*fn)()
	if c.IsZero() {
		b.fenceEnd.Store(0)
		return
	}
	b.fenceEnd.Store(b.at(c) + int64(b.o.Fence))
}

const (
	// gapAfter is a gap between fence refreshes (every tick, at most quietTick apart) that
	// means this process stood still, and distrustFor how long raft's word is not taken after
	// one: more than two leader leases (500 ms each).
	gapAfter    = time.Second
	distrustFor = 3 * time.Second
)

func (b *Backend) loop() {
	defer close(b.done)
	t := time.NewTimer(b.period())
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-b.kick:
		case <-t.C:
		}
		b.Tick()
		b.ticks.Add(1)
		t.Reset(b.period())
	}
}

// period is the loop's next wait: fastTick while strict mode is off, tick while the fence is
// closed (waiting for raft contact) or a counter has work for it, quietTick otherwise.
func (b *Backend) period() time.Duration {
	if !b.strict.Load() {
		return fastTick
	}
	now := b.mono()
	if now >= b.fenceEnd.Load() {
		return tick
	}
	for _, c := range b.counters.Append(nil) {
		if c.hasWork(now) {
			return tick
		}
	}
	return quietTick
}

// Tick does the background work once: fence (in strict mode), loans, demand. The loop calls it
// every tick.
func (b *Backend) Tick() {
	if b.strict.Load() {
		b.refreshFence()
	}
	now := b.mono()
	announce := now/int64(announceEvery) != b.lastTick.Swap(now)/int64(announceEvery)
	var enc encoder
	for _, c := range b.counters.Append(nil) {
		c.housekeep(now)
		if announce {
			c.announce(&enc)
		}
	}
	if announce {
		for _, msg := range enc.flush(b.o.Node) {
			b.sendAll(msg)
		}
	}
	b.expireDemand(now)
}

func (b *Backend) expireDemand(now int64) {
	b.demandMu.Lock()
	defer b.demandMu.Unlock()
	for dep, m := range b.demand {
		for n, d := range m {
			if now-d.at > int64(demandTTL) {
				delete(m, n)
			}
		}
		if len(m) == 0 {
			delete(b.demand, dep)
		}
	}
}

// clusterDemand returns every other node's recent demand for dep.
func (b *Backend) clusterDemand(dep string, now int64, into map[string]peerDemand) {
	b.demandMu.Lock()
	defer b.demandMu.Unlock()
	for n, d := range b.demand[dep] {
		if now-d.at <= int64(demandTTL) {
			into[n] = d
		}
	}
}

func (b *Backend) noteDemand(node, dep string, req, tok float64, now int64) {
	if node == b.o.Node {
		return
	}
	b.demandMu.Lock()
	defer b.demandMu.Unlock()
	m := b.demand[dep]
	if m == nil {
		if len(b.demand) >= maxDemandDeployments {
			return
		}
		m = map[string]peerDemand{}
		b.demand[dep] = m
	}
	if _, ok := m[node]; !ok && len(m) >= maxPeers {
		return
	}
	m[node] = peerDemand{req: req, tok: tok, at: now}
}

// Bounds on what peers can make this node keep.
const (
	maxPeers             = 1024
	maxDemandDeployments = 65536
)

func (b *Backend) reject(reason string) {
	if b.o.OnReject != nil {
		b.o.OnReject(reason)
	}
}

// homesView is the homes table as this node applied it, with what growth still waits for.
type homesView struct {
	version uint64
	names   []string // sorted
	self    int      // this node's index in names, -1 if not a home
	// usableAt is when this node may first use its share (mono ns): after a restart, its
	// previous life's loans and spends must have ended first.
	usableAt int64
	// recent are the earlier tables applied within the growth grace: until then this node's
	// share is the smallest of its shares under any of them.
	recent []pastTable
}

type pastTable struct {
	until int64 // mono ns after which it no longer limits growth
	self  int
	n     int
}

// Home is one row of the homes table.
type Home struct {
	Name  string
	Epoch uint64
}

// SetHomes applies a new homes table (cmd calls it from cluster.ConfigStore.OnHomes, in log
// order). homes must be sorted by name. It reads the leader contact (the fence opens with the
// table), so its caller must not hold what LeaderContact needs.
func (b *Backend) SetHomes(version uint64, homes []Home) {
	now := b.mono()
	old := b.homes.Load()
	if version != 0 && version <= old.version {
		return
	}
	v := &homesView{version: version, self: -1}
	for i, h := range homes {
		v.names = append(v.names, h.Name)
		if h.Name == b.o.Node {
			v.self = i
			if h.Epoch != b.o.Epoch {
				// The table names an earlier life of this node: it may have spent and lent
				// until it died, at most a loan ago, and its spends cool for a cooldown.
				v.usableAt = b.wall + int64(b.o.Loan+cooldown)
			}
		}
	}
	grace := int64(b.o.Fence + b.o.Loan + cooldown + growthSlack)
	if old.version != 0 || len(old.names) > 0 {
		// Growth after a change waits for the grace; the very first table has no past.
		v.recent = append(v.recent, pastTable{until: now + grace, self: old.self, n: len(old.names)})
	}
	for _, p := range old.recent {
		if p.until > now {
			v.recent = append(v.recent, p)
		}
	}
	if old.usableAt > v.usableAt {
		v.usableAt = old.usableAt
	}
	if b.strict.Load() {
		// The table comes through raft: the fence opens with it, not a tick later (a node's
		// first contact and first table often come together, and its first requests wait
		// for the table).
		b.refreshFence()
	}
	b.homes.Store(v)
	if len(v.names) > 0 {
		b.tableOne.Do(func() { close(b.tabled) })
	}
}

// startWait bounds how long a request waits for the first homes table, at a node's start:
// raft elects and the leader writes it within a second or two, and a request held that long
// is better served than refused (readiness says "starting" meanwhile).
const startWait = 10 * time.Second

// awaitTable waits up to startWait for the first homes table; false if it did not come.
func (b *Backend) awaitTable() bool {
	select {
	case <-b.tabled:
		return true
	default:
	}
	t := time.NewTimer(startWait)
	defer t.Stop()
	select {
	case <-b.tabled:
		return true
	case <-t.C:
		return false
	case <-b.stop:
		return false
	}
}

// share is this node's part of limit under the table, as of now; 0 when it is no home or may
// not use its share yet.
func (b *Backend) share(limit int64, now int64) int64 {
	v := b.homes.Load()
	if v.self < 0 || now < v.usableAt || now >= b.fenceEnd.Load() {
		return 0
	}
	s := part(limit, v.self, len(v.names))
	for _, p := range v.recent {
		if p.until > now {
			if p.self < 0 {
				return 0
			}
			s = min(s, part(limit, p.self, p.n))
		}
	}
	return s
}

// part is home i's share of limit among n homes: floor(limit*(i+1)/n) - floor(limit*i/n), so
// the shares add up to exactly limit.
func part(limit int64, i, n int) int64 {
	if n <= 0 || i < 0 || i >= n || limit <= 0 {
		return 0
	}
	return cut(limit, i+1, n) - cut(limit, i, n)
}

func cut(limit int64, k, n int) int64 {
	hi, lo := bits.Mul64(uint64(limit), uint64(k))
	q, _ := bits.Div64(hi, lo, uint64(n))
	return int64(q)
}

// Rights is one deployment's strict-mode rights on this node, for /cluster/status: requests
// (rpm units) and tokens (tpm units) alike.
type Rights struct {
	Home     bool  // this node holds a share
	Share    int64 // its share of the rpm limit now (0 while restarting, fenced or growing)
	Busy     int64 // own-share units spent and cooling
	Lent     int64 // own-share units out on loan (or cooling after one)
	Borrowed int64 // unspent units of the loans this node holds
	Tokens   struct{ Share, Busy, Lent, Borrowed int64 }
}

// Rights returns deployment id's rights on this node; false when strict mode is off or the
// deployment has not been admitted on in strict mode.
func (b *Backend) Rights(id string) (Rights, bool) {
	c := b.counters.Lookup(id)
	if c == nil || !b.strict.Load() {
		return Rights{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.active {
		return Rights{}, false
	}
	now := b.mono()
	c.busy.Advance(bucket(now))
	var r Rights
	r.Home = b.homes.Load().self >= 0
	r.Share, r.Tokens.Share = b.share(c.lim.RPM, now), b.share(c.lim.TPM, now)
	r.Busy, r.Tokens.Busy = c.busy.Sums()
	r.Lent, r.Tokens.Lent = c.lentReq, c.lentTok
	for _, l := range c.loans {
		if !l.closed && now < l.deadline {
			r.Borrowed += l.req - l.spentReq
			r.Tokens.Borrowed += l.tok - l.spentTok
		}
	}
	return r, true
}

// Homes returns the table as this node applied it: its version and the homes' names.
func (b *Backend) Homes() (version uint64, names []string) {
	v := b.homes.Load()
	return v.version, slices.Clone(v.names)
}
