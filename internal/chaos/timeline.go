package chaos

import (
	"math"
	"math/bits"
	"slices"
	"sort"
	"time"
)

// LimitWindow is the length of the sliding window every rpm and tpm limit is defined over.
const LimitWindow = int64(60 * time.Second)

// Phases of a node at one instant, as the availability checker reports them.
const (
	PhaseHealthy  = "healthy"  // no fault of any kind was active
	PhaseMajority = "majority" // in a partition component holding more than half of all nodes
	PhaseMinority = "minority" // in a component of at most half of the nodes
	PhaseDown     = "down"     // the node itself was killed or paused
)

// FaultSpan is one injected fault's life in history time (ns since the run started).
type FaultSpan struct {
	Fault Fault `json:"fault"`
	Start int64 `json:"start"` // the start op's time
	// End is the stop op's time, or the end of the history when no stop was recorded (Open).
	End  int64 `json:"end"`
	Open bool  `json:"open,omitempty"`
	// Orphan marks a stop with no start before it: Start is 0, the earliest it could have begun,
	// so the fault is never assumed shorter than it may have been.
	Orphan bool `json:"orphan,omitempty"`
}

// activeAt reports whether the fault was in force at t.
func (f FaultSpan) activeAt(t int64) bool { return t >= f.Start && (f.Open || t < f.End) }

// lingersAt reports whether the fault was in force at t or healed less than repair before t:
// a node may still miss counts it lost during the fault until gossip's full-state exchange has
// repaired them.
func (f FaultSpan) lingersAt(t, repair int64) bool {
	return t >= f.Start && (f.Open || t < f.End+repair)
}

// Timeline is a run's faults in history time, and what they allowed: the fault factor m (how
// many independent views of a deployment's usage could each admit up to its limit) and each
// node's phase.
type Timeline struct {
	Mode   string
	Nodes  []string
	Repair int64
	End    int64       // the last op or arrival, in history time
	Faults []FaultSpan // ordered by Start

	index map[string]int // node name -> bit in the hears graph
	segs  []mSegment     // fast mode: m(t), piecewise constant
	dists []disturbance  // redis mode: where Redis went away or came back
}

// mSegment is m on [From, the next segment's From).
type mSegment struct {
	From int64
	M    int
}

// NewTimeline builds r's fault timeline from its nemesis ops.
func NewTimeline(r *Run) *Timeline {
	tl := &Timeline{
		Mode:   r.Info.Mode,
		Repair: int64(r.Info.Repair),
		End:    historyEnd(r),
		index:  map[string]int{},
	}
	for _, n := range r.Info.Nodes {
		if _, dup := tl.index[n.Name]; !dup {
			tl.index[n.Name] = len(tl.Nodes)
			tl.Nodes = append(tl.Nodes, n.Name)
		}
	}
	tl.Faults = faultSpans(r.History, tl.End)
	switch tl.Mode {
	case "redis":
		tl.dists = redisDisturbances(tl.Faults, failsOver(r.Info.Redis))
	case "strict":
	default:
		tl.segs = tl.fastSegments()
	}
	return tl
}

// historyEnd is the latest time anything in the run happened.
func historyEnd(r *Run) int64 {
	var end int64
	for _, op := range r.History {
		end = max(end, op.Time)
	}
	for _, a := range r.Upstream {
		end = max(end, a.T-r.Info.Start)
	}
	return end
}

// faultSpans pairs the nemesis's start and stop ops. Faults of one kind never overlap in a run,
// except kill, pause and clock, which the runner may apply to different nodes at once: a stop
// closes the earliest open fault of its kind (and, for those three, of the same nodes).
func faultSpans(h []Op, end int64) []FaultSpan {
	var spans []FaultSpan
	open := []int{} // indexes into spans, in start order
	for _, op := range h {
		if op.Process != NemesisProcess || op.Value.Fault == nil {
			continue
		}
		f := *op.Value.Fault
		switch op.F {
		case FStart:
			open = append(open, len(spans))
			spans = append(spans, FaultSpan{Fault: f, Start: op.Time, End: end, Open: true})
		case FStop:
			k := slices.IndexFunc(open, func(i int) bool { return sameFault(spans[i].Fault, f) })
			if k < 0 {
				spans = append(spans, FaultSpan{Fault: f, Start: 0, End: op.Time, Orphan: true})
				continue
			}
			spans[open[k]].End, spans[open[k]].Open = op.Time, false
			open = slices.Delete(open, k, k+1)
		}
	}
	sort.SliceStable(spans, func(i, j int) bool { return spans[i].Start < spans[j].Start })
	return spans
}

// sameFault reports whether a stop's fault closes a started one.
func sameFault(started, stop Fault) bool {
	if started.Kind != stop.Kind {
		return false
	}
	switch started.Kind {
	case KindKill, KindPause, KindClock:
		a, b := slices.Clone(started.Nodes), slices.Clone(stop.Nodes)
		slices.Sort(a)
		slices.Sort(b)
		return slices.Equal(a, b)
	}
	return true
}

// ActiveAt is the faults in force at t (history time).
func (tl *Timeline) ActiveAt(t int64) []FaultSpan {
	var out []FaultSpan
	for _, f := range tl.Faults {
		if f.activeAt(t) {
			out = append(out, f)
		}
	}
	return out
}

// FaultFactorAt is m(t): how many independent views of usage the faults in force (or healed
// less than Repair ago) allowed at t. Strict mode is always 1. Redis mode is 1 at any instant;
// a window straddling a Redis outage gets more: see FaultFactor.
func (tl *Timeline) FaultFactorAt(t int64) int {
	if tl.segs == nil {
		return 1
	}
	i := sort.Search(len(tl.segs), func(i int) bool { return tl.segs[i].From > t }) - 1
	if i < 0 {
		return 1
	}
	return tl.segs[i].M
}

// FaultFactor is m(W) for the window W = [s, e) in history time: how many times a limit the
// cluster may have admitted in W.
//
//   - strict: 1. Rights never exceed the limit, whatever the fault.
//   - redis: 1 + the disturbances W touches. While Redis answers it counts every admission;
//     during an outage each node admits its fair share locally (together the limit), and pushes
//     those admissions into Redis, in the seconds it made them, before it admits through Redis
//     again (state/redis). Two views can then each admit up to the limit only around an
//     outage's start (Redis's window before it, and the escrow blocks reserved in it, used
//     until their second ends: redisBlockTail; the fair shares after) and its end (the nodes
//     back on Redis, which counts all but what nodes still local have not pushed yet, within
//     redisRecovery). When Redis kept its data (redis-pause), the start and the end of one
//     outage are one disturbance: a window over both holds at most the limit from what Redis
//     counts (the earlier admissions and the pushed ones) plus the limit from what was not
//     pushed yet, so 2, and a window inside the outage 1. When Redis restarted empty (redis),
//     they are two: what Redis counted before the outage is gone, so a window over the start,
//     the outage and the return may have the limit before, the limit of fair shares and, once
//     nodes are back, Redis's limit over the pushed counts: 3. Other faults do not change m:
//     Redis, not the network between nodes, holds the counts.
//     In a setup that fails over (cluster, sentinel) the outage is a master's death or pause,
//     and Redis comes back when a replica takes over, at a moment the history does not fix:
//     replication is asynchronous, so the new master may lack the writes it had not received
//     (all of them, at worst) and counts as anew. So that return may come anywhere from the
//     fault to its heal (the restart, when no replica took over), and is its own disturbance
//     beside the start. A paused master that was replaced may also take writes when it
//     resumes, until it learns it is a replica now, which the new master never sees: a third.
//     See redisDisturbances.
//   - fast: the most m(t) for any t in W (see fastFactor).
func (tl *Timeline) FaultFactor(s, e int64) int {
	switch tl.Mode {
	case "strict":
		return 1
	case "redis":
		m := 1
		for _, d := range tl.dists {
			if d.touches(s, e) {
				m++
			}
		}
		return m
	}
	m := tl.FaultFactorAt(s)
	i := sort.Search(len(tl.segs), func(i int) bool { return tl.segs[i].From > s })
	for ; i < len(tl.segs) && tl.segs[i].From < e; i++ {
		m = max(m, tl.segs[i].M)
	}
	return m
}

// redisRecovery is how long after Redis answers again a node may still admit locally, or not
// have pushed what it admitted locally: its breaker probes Redis once a second and pushes before
// it closes (state/redis).
const redisRecovery = int64(2 * time.Second)

// redisBlockTail is how long after Redis goes away a node may still admit from an escrow block
// reserved in it: until the block's second ends (state/redis).
const redisBlockTail = int64(time.Second)

// epochCut is where one view of the usage gives way to another: both may admit in [from, to].
type epochCut struct{ from, to int64 }

// disturbance is a stretch of time where two views may each admit up to the limit: a window that
// touches any of its cuts counts one more view.
type disturbance []epochCut

// touches reports whether the window [s, e) holds time on both sides of one of d's cuts.
func (d disturbance) touches(s, e int64) bool {
	return slices.ContainsFunc(d, func(c epochCut) bool { return s < c.to && c.from < e })
}

// redisDisturbances are the times Redis went away (nothing is reserved in it after, and what was
// is used within redisBlockTail) or came back (the nodes return to it, having pushed their local
// admissions, within redisRecovery): one disturbance each when a restart emptied it, one for
// both when it kept its data (see FaultFactor). With failover, Redis comes back when a replica
// takes over, which may be at any time before the heal is recorded (the nemesis records it
// once the setup serves again, or at the restart when no replica took over): that cut spans
// the whole outage, so every window that touches the outage may hold the new master's view.
func redisDisturbances(spans []FaultSpan, failover bool) []disturbance {
	var out []disturbance
	add := func(d disturbance) {
		if len(d) > 0 {
			out = append(out, d)
		}
	}
	for _, f := range spans {
		if f.Fault.Kind != KindRedis && f.Fault.Kind != KindRedisPause {
			continue
		}
		var gone, back disturbance
		if !f.Orphan {
			gone = disturbance{{f.Start, f.Start + redisBlockTail}}
		}
		if !f.Open {
			back = disturbance{{f.End, f.End + redisRecovery}}
		}
		switch {
		case failover:
			add(gone)
			add(disturbance{{f.Start, f.End + redisRecovery}})
			if f.Fault.Kind == KindRedisPause {
				add(back) // the replaced master resumes, and takes writes until it learns it is one no more
			}
		case f.Fault.Kind == KindRedisPause:
			add(append(gone, back...))
		default:
			add(gone)
			add(back)
		}
	}
	return out
}

// fastSegments evaluates m(t) once per stretch where it cannot change: m changes only where a
// fault starts, stops, or stops lingering (its stop + Repair).
func (tl *Timeline) fastSegments() []mSegment {
	var at []int64
	for _, f := range tl.Faults {
		at = append(at, f.Start)
		if !f.Open {
			at = append(at, f.End, f.End+tl.Repair)
		}
	}
	slices.Sort(at)
	at = slices.Compact(at)
	segs := []mSegment{{From: math.MinInt64, M: 1}}
	for _, t := range at {
		m := tl.fastFactor(t)
		if m != segs[len(segs)-1].M {
			segs = append(segs, mSegment{From: t, M: m})
		}
	}
	return segs
}

// fastFactor is fast mode's m(t): the clique cover number of the graph of nodes that hear each
// other at t.
//
// Nodes that hear each other see each other's admissions within one propagation delay, so the
// admissions of a clique of such nodes stay within the limit plus what the clique admitted
// while its usage was still propagating. Nodes that do not hear each other may each admit up to
// the limit on their own. Any partition of the nodes into cliques therefore bounds the total by
// (number of cliques) x limit (+ slack); the fewest cliques that partition the nodes, the clique
// cover number, is the tightest such bound that is still safe.
func (tl *Timeline) fastFactor(t int64) int {
	if len(tl.Nodes) == 0 {
		return 1
	}
	return CliqueCover(tl.hears(t))
}

// hears is the undirected graph, as adjacency bitmasks, of nodes that exchange usage at t.
// An edge a-b is missing while (or less than Repair after) a partition separates them, a loss
// fault affects both, or either is paused or has its clock skewed. Kills remove no edge: a
// restarted node must learn the cluster's counts before it serves, and that promise is checked
// at its tightest. A skewed clock still removes its node's edges although peers now align its
// buckets by the offset they estimate (state/crdt, "# Clocks"): the nemesis steps the clock,
// and a step is what alignment cannot fix (a node jumping ahead by s drops s seconds of its own
// window at once, and its peers move its earlier counts s seconds early with the new offset).
func (tl *Timeline) hears(t int64) []uint64 {
	n := len(tl.Nodes)
	adj := make([]uint64, n)
	for i := range adj {
		adj[i] = (uint64(1)<<n - 1) &^ (1 << i)
	}
	cut := func(a, b string) {
		i, okA := tl.index[a]
		j, okB := tl.index[b]
		if okA && okB && i != j {
			adj[i] &^= 1 << j
			adj[j] &^= 1 << i
		}
	}
	for _, f := range tl.Faults {
		if !f.lingersAt(t, tl.Repair) {
			continue
		}
		switch f.Fault.Kind {
		case KindPartition:
			for a, bs := range f.Fault.Grudge {
				for _, b := range bs {
					cut(a, b)
				}
			}
		case KindLoss:
			for _, a := range f.Fault.Nodes {
				for _, b := range f.Fault.Nodes {
					cut(a, b)
				}
			}
		case KindPause, KindClock:
			for _, a := range f.Fault.Nodes {
				for _, b := range tl.Nodes {
					cut(a, b)
				}
			}
		}
	}
	return adj
}

// exactCoverMax is the most nodes CliqueCover solves exactly (3^n subset pairs); above it a
// greedy cover, which can only be larger, keeps the bound safe.
const exactCoverMax = 12

// CliqueCover is the minimum number of cliques that partition the graph's nodes; adj[i] is the
// bitmask of i's neighbours. An empty graph needs 0 cliques.
func CliqueCover(adj []uint64) int {
	if len(adj) > exactCoverMax {
		return greedyCliqueCover(adj)
	}
	n := len(adj)
	full := 1<<n - 1
	clique := make([]bool, full+1)
	clique[0] = true
	for mask := 1; mask <= full; mask++ {
		i := bits.TrailingZeros(uint(mask))
		rest := mask &^ (1 << i)
		clique[mask] = clique[rest] && uint64(rest)&^adj[i] == 0
	}
	// cover[mask] is the fewest cliques partitioning mask; the clique holding mask's lowest node
	// is tried in every shape, so the minimum is exact.
	cover := make([]int, full+1)
	for mask := 1; mask <= full; mask++ {
		low := mask & -mask
		best := n + 1
		for sub := mask; sub > 0; sub = (sub - 1) & mask {
			if sub&low != 0 && clique[sub] {
				best = min(best, 1+cover[mask&^sub])
			}
		}
		cover[mask] = best
	}
	return cover[full]
}

// greedyCliqueCover puts each node in the first clique it fits; an upper bound of the cover
// number.
func greedyCliqueCover(adj []uint64) int {
	var cliques []uint64
	for i := range adj {
		placed := false
		for k, c := range cliques {
			if c&^adj[i] == 0 {
				cliques[k] |= 1 << i
				placed = true
				break
			}
		}
		if !placed {
			cliques = append(cliques, 1<<i)
		}
	}
	return len(cliques)
}

// PhaseAt is node's phase at t: down if it is killed or paused; healthy if no fault at all is
// in force; otherwise majority or minority by the live nodes in its component of the partition
// graph (only partitions remove edges there; killed and paused nodes are left out of it).
func (tl *Timeline) PhaseAt(node string, t int64) string {
	active := tl.ActiveAt(t)
	if len(active) == 0 {
		return PhaseHealthy
	}
	down := map[string]bool{}
	for _, f := range active {
		if f.Fault.Kind == KindKill || f.Fault.Kind == KindPause {
			for _, n := range f.Fault.Nodes {
				down[n] = true
			}
		}
	}
	if down[node] {
		return PhaseDown
	}
	if 2*tl.componentSize(node, active, down) > len(tl.Nodes) {
		return PhaseMajority
	}
	return PhaseMinority
}

// componentSize counts the live nodes node can reach through the active partitions.
func (tl *Timeline) componentSize(node string, active []FaultSpan, down map[string]bool) int {
	blocked := map[[2]string]bool{}
	for _, f := range active {
		if f.Fault.Kind != KindPartition {
			continue
		}
		for a, bs := range f.Fault.Grudge {
			for _, b := range bs {
				blocked[[2]string{a, b}], blocked[[2]string{b, a}] = true, true
			}
		}
	}
	seen := map[string]bool{node: true}
	queue := []string{node}
	for len(queue) > 0 {
		a := queue[0]
		queue = queue[1:]
		for _, b := range tl.Nodes {
			if !seen[b] && !down[b] && !blocked[[2]string{a, b}] {
				seen[b] = true
				queue = append(queue, b)
			}
		}
	}
	return len(seen)
}
