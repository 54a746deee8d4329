package strict

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/local"
	"github.com/herd-proxy/herd/state/statetest"
)

// simStart is the fake clock's start, not on a bucket edge.
var simStart = time.Date(2026, 3, 1, 9, 0, 0, 430_000_000, time.UTC)

// cluster is nodes on an in-memory network the test controls: messages are delivered at once
// (inside Send), dropped across a cut or by loss, and queued for a paused node.
type cluster struct {
	t     *testing.T
	clock *statetest.Clock
	rng   *rand.Rand

	mu     sync.Mutex
	nodes  map[string]*simNode
	names  []string
	side   map[string]int // partition: nodes talk only within a side
	loss   float64
	leader string // the node whose side has raft contact (with a majority)
	sent   int
	table  []Home // the homes table the leader last committed
	tver   uint64
	// delay, when positive, holds every message for a random time up to it: delivered by
	// advance, so a grant can arrive long after its want.
	delay   time.Duration
	flights []flight
}

type flight struct {
	at       time.Time
	from, to string
	msg      []byte
}

type simNode struct {
	name    string
	b       *Backend
	epoch   uint64
	paused  bool
	queue   [][]byte
	contact time.Time
	next    time.Time // when its loop's timer fires next: Backend.loop's schedule, on the test clock
}

func newCluster(t *testing.T, n int, seed uint64, tune func(*Options)) *cluster {
	return newClusterHomes(t, n, n, seed, tune)
}

// newClusterHomes is newCluster whose first table names only the first homes nodes.
func newClusterHomes(t *testing.T, n, homeCount int, seed uint64, tune func(*Options)) *cluster {
	cl := &cluster{t: t, clock: statetest.NewClock(simStart), rng: rand.New(rand.NewPCG(seed, seed^0x9e37)), nodes: map[string]*simNode{}, side: map[string]int{}}
	var homes []Home
	for i := range n {
		name := fmt.Sprintf("node%d", i)
		cl.names = append(cl.names, name)
		sn := &simNode{name: name, epoch: uint64(i + 1), contact: cl.clock.Now()}
		cl.nodes[name] = sn
		if i < homeCount {
			homes = append(homes, Home{Name: name, Epoch: sn.epoch})
		}
	}
	cl.leader = cl.names[0]
	for _, name := range cl.names {
		cl.start(name, tune)
	}
	cl.table, cl.tver = homes, 1
	for _, name := range cl.names {
		cl.nodes[name].b.SetHomes(1, homes)
	}
	return cl
}

// start runs a fresh incarnation of node name (a restart when one ran before).
func (cl *cluster) start(name string, tune func(*Options)) {
	sn := cl.nodes[name]
	o := Options{
		Node:          name,
		Epoch:         sn.epoch,
		Inner:         local.New(local.Options{Now: cl.clock.Now}),
		Now:           cl.clock.Now,
		Network:       netFuncs{to: func(to string, msg []byte) bool { return cl.send(name, to, msg) }, all: func(msg []byte) { cl.sendAll(name, msg) }},
		LeaderContact: func() time.Time { cl.mu.Lock(); defer cl.mu.Unlock(); return sn.contact },
		Wait:          -1,
		noLoop:        true,
	}
	if tune != nil {
		tune(&o)
	}
	old := sn.b
	sn.b = New(o)
	sn.paused, sn.queue, sn.next = false, nil, time.Time{}
	if old != nil {
		v := old.homes.Load()
		var homes []Home
		for _, h := range v.names {
			homes = append(homes, Home{Name: h, Epoch: cl.nodes[h].epochInTable()})
		}
		sn.b.SetHomes(v.version, homes)
	}
}

// epochInTable is the epoch the homes table was written with: the first incarnation's.
func (sn *simNode) epochInTable() uint64 {
	var i int
	_, _ = fmt.Sscanf(sn.name, "node%d", &i)
	return uint64(i + 1)
}

// commitHomes is the leader committing a new homes table, if its side has a majority; the
// nodes it reaches apply it at their next step.
func (cl *cluster) commitHomes(homes []Home) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	count := 0
	for _, n := range cl.names {
		if cl.linked(n, cl.leader) && !cl.nodes[n].paused {
			count++
		}
	}
	if count*2 <= len(cl.names) {
		return false
	}
	cl.tver++
	cl.table = homes
	return true
}

func (cl *cluster) restart(name string) {
	cl.nodes[name].epoch += 100
	cl.start(name, nil)
}

func (cl *cluster) linked(a, b string) bool { return cl.side[a] == cl.side[b] }

func (cl *cluster) send(from, to string, msg []byte) bool {
	cl.mu.Lock()
	dst := cl.nodes[to]
	if dst == nil || !cl.linked(from, to) || (cl.loss > 0 && cl.rng.Float64() < cl.loss) {
		cl.mu.Unlock()
		return dst != nil
	}
	cl.sent++
	if cl.delay > 0 {
		cl.flights = append(cl.flights, flight{at: cl.clock.Now().Add(time.Duration(cl.rng.Int64N(int64(cl.delay)))), from: from, to: to, msg: slices.Clone(msg)})
		cl.mu.Unlock()
		return true
	}
	if dst.paused {
		dst.queue = append(dst.queue, slices.Clone(msg))
		cl.mu.Unlock()
		return true
	}
	b := dst.b
	cl.mu.Unlock()
	b.HandleMessage(msg)
	return true
}

// land delivers the delayed messages that are due (to paused nodes: into their queue).
func (cl *cluster) land() {
	cl.mu.Lock()
	now := cl.clock.Now()
	var due []flight
	cl.flights = slices.DeleteFunc(cl.flights, func(f flight) bool {
		if f.at.After(now) {
			return false
		}
		due = append(due, f)
		return true
	})
	type delivery struct {
		b   *Backend
		msg []byte
	}
	var now2 []delivery
	for _, f := range due {
		dst := cl.nodes[f.to]
		switch {
		case !cl.linked(f.from, f.to):
		case dst.paused:
			dst.queue = append(dst.queue, f.msg)
		default:
			now2 = append(now2, delivery{dst.b, f.msg})
		}
	}
	cl.mu.Unlock()
	for _, d := range now2 {
		d.b.HandleMessage(d.msg)
	}
}

func (cl *cluster) sendAll(from string, msg []byte) {
	for _, to := range cl.names {
		if to != from {
			cl.send(from, to, msg)
		}
	}
}

// partition splits the nodes into sides (nodes not named stay on side 0).
func (cl *cluster) partition(sides ...[]string) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	clear(cl.side)
	for i, s := range sides {
		for _, n := range s {
			cl.side[n] = i + 1
		}
	}
}

func (cl *cluster) heal() { cl.partition() }

func (cl *cluster) pause(name string) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.nodes[name].paused = true
}

func (cl *cluster) resume(name string) {
	cl.mu.Lock()
	sn := cl.nodes[name]
	sn.paused = false
	q := sn.queue
	sn.queue = nil
	b := sn.b
	cl.mu.Unlock()
	for _, m := range q {
		b.HandleMessage(m)
	}
}

// advance moves time by d in tick steps, running every live node's background work when its
// loop would (its period over, or kicked) and refreshing raft contact for the nodes on the
// leader's side (when it has a majority).
func (cl *cluster) advance(d time.Duration) {
	for d > 0 {
		step := min(d, tick)
		cl.clock.Advance(step)
		d -= step
		cl.land()
		cl.mu.Lock()
		count := 0
		for _, n := range cl.names {
			if cl.linked(n, cl.leader) && !cl.nodes[n].paused {
				count++
			}
		}
		var live, reached []*simNode
		for _, n := range cl.names {
			sn := cl.nodes[n]
			if sn.paused {
				continue
			}
			if count*2 > len(cl.names) && cl.linked(n, cl.leader) {
				sn.contact = cl.clock.Now()
				reached = append(reached, sn)
			}
			live = append(live, sn)
		}
		tver, table := cl.tver, cl.table
		cl.mu.Unlock()
		for _, sn := range reached {
			sn.b.SetHomes(tver, table) // raft replicates the table to whom it reaches (SetHomes reads the contact)
		}
		now := cl.clock.Now()
		for _, sn := range live {
			kicked := false
			select {
			case <-sn.b.kick:
				kicked = true
			default:
			}
			if kicked || !now.Before(sn.next) {
				sn.b.Tick()
				sn.next = now.Add(sn.b.period())
			}
		}
	}
}

func (cl *cluster) backend(name string) *Backend {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.nodes[name].b
}

// netFuncs is a Network of two functions.
type netFuncs struct {
	to  func(string, []byte) bool
	all func([]byte)
}

func (n netFuncs) SendTo(name string, msg []byte) bool { return n.to(name, msg) }
func (n netFuncs) SendToAll(msg []byte) {
	if n.all != nil {
		n.all(msg)
	}
}

// arrival is one request the upstream received (its Confirm), for the checker.
type arrival struct {
	at       time.Time
	requests int64
	tokens   int64
}

// maxInWindow is the most requests and the most tokens that arrived in any interval of length
// w: for each arrival, those in [its time, its time + w).
func maxInWindow(as []arrival, w time.Duration) (requests, tokens int64) {
	s := slices.Clone(as)
	sort.Slice(s, func(i, j int) bool { return s[i].at.Before(s[j].at) })
	j := 0
	var req, tok int64
	for i := range s {
		for j < len(s) && s[j].at.Sub(s[i].at) < w {
			req += s[j].requests
			tok += s[j].tokens
			j++
		}
		requests, tokens = max(requests, req), max(tokens, tok)
		req -= s[i].requests
		tok -= s[i].tokens
	}
	return requests, tokens
}

func TestMaxInWindowFindsTheBusiestInterval(t *testing.T) {
	at := func(s float64) time.Time { return simStart.Add(time.Duration(s * float64(time.Second))) }
	as := []arrival{{at(0), 1, 10}, {at(30), 1, 10}, {at(59.9), 1, 10}, {at(60), 1, 10}, {at(61), 1, 5}, {at(200), 1, 1}}
	req, tok := maxInWindow(as, time.Minute)
	// [0, 60) holds three; [30, 90) holds four: 30, 59.9, 60, 61.
	if req != 4 || tok != 35 {
		t.Fatalf("maxInWindow = %d requests, %d tokens; want 4, 35", req, tok)
	}
	if req, _ := maxInWindow(nil, time.Minute); req != 0 {
		t.Fatalf("empty: %d", req)
	}
}

// call is an admitted request the simulation will confirm and settle.
type call struct {
	node    string
	b       *Backend
	c       state.Counter
	t       state.Ticket
	confirm time.Time
	settle  time.Time
	sent    bool
}

// load admits up to n requests of tokens each on node, returning those admitted.
func (cl *cluster) load(node, dep string, lim state.Limits, n int, tokens int64) []*call {
	b := cl.backend(node)
	c := b.Counter(dep)
	var calls []*call
	for range n {
		t, err := c.Admit(lim, state.Reservation{Requests: 1, Tokens: tokens})
		if err != nil {
			continue
		}
		calls = append(calls, &call{node: node, b: b, c: c, t: t})
	}
	return calls
}

// confirmAll confirms calls now, as the proxy does before writing each request, and records
// the arrivals; a call whose rights lapsed is released.
func confirmAll(now time.Time, calls []*call, log *[]arrival) {
	for _, k := range calls {
		if err := k.c.(state.Confirmer).Confirm(&k.t); err != nil {
			k.c.Release(k.t)
			continue
		}
		k.sent = true
		*log = append(*log, arrival{at: now, requests: k.t.Reserved.Requests, tokens: k.t.Reserved.Tokens})
		k.c.Settle(k.t, state.Usage{PromptTokens: k.t.Reserved.Tokens})
	}
}
