package chaos

import (
	"fmt"
	"testing"
	"time"
)

// Fixtures shared by the checker tests: runs built in memory, times in seconds of history time.

// fxStart is the unix time (ns) of history time 0 in every fixture run.
const fxStart = int64(1_700_000_000_000_000_000)

func fxSec(s float64) int64 { return int64(s * float64(time.Second)) }

// fxRun is an empty run in mode over nodes n1..nN, with a 50 ms propagation allowance and a
// 5 s repair time.
func fxRun(mode string, n int) *Run {
	r := &Run{Info: RunInfo{
		Mode: mode, Start: fxStart, Propagation: 50 * time.Millisecond, Repair: 5 * time.Second,
		Deployments: []DeploymentInfo{{ID: "alpha-1", Group: "alpha", RPM: 600}},
	}}
	for i := 1; i <= n; i++ {
		r.Info.Nodes = append(r.Info.Nodes, NodeInfo{Name: fmt.Sprintf("n%d", i)})
	}
	return r
}

// fxOp appends an op, numbering it.
func (r *Run) fxOp(op Op) {
	op.Index = len(r.History)
	r.History = append(r.History, op)
}

// fxFault injects f from `from` to `to` seconds (to < 0: never stopped).
func (r *Run) fxFault(f *Fault, from, to float64) {
	r.fxOp(Op{Type: Info, F: FStart, Process: NemesisProcess, Time: fxSec(from), Value: Value{Fault: f}})
	if to >= 0 {
		r.fxOp(Op{Type: Info, F: FStop, Process: NemesisProcess, Time: fxSec(to), Value: Value{Fault: f}})
	}
}

// fxPartition is a partition between the groups: every node grudges every node of the other
// groups.
func fxPartition(shape string, groups ...[]string) *Fault {
	f := &Fault{Kind: KindPartition, Shape: shape, Grudge: map[string][]string{}}
	for i, g := range groups {
		for j, h := range groups {
			if i != j {
				for _, a := range g {
					f.Grudge[a] = append(f.Grudge[a], h...)
				}
			}
		}
	}
	return f
}

// fxGrudge is a partition given as pairs that cannot talk ("n1-n3").
func fxGrudge(shape string, pairs ...[2]string) *Fault {
	f := &Fault{Kind: KindPartition, Shape: shape, Grudge: map[string][]string{}}
	for _, p := range pairs {
		f.Grudge[p[0]] = append(f.Grudge[p[0]], p[1])
		f.Grudge[p[1]] = append(f.Grudge[p[1]], p[0])
	}
	return f
}

func fxNodes(kind string, nodes ...string) *Fault { return &Fault{Kind: kind, Nodes: nodes} }

// fxArrivals spreads n arrivals for dep evenly over [from, to) seconds, each of tokens tokens,
// with request ids prefix-0, prefix-1, ...
func (r *Run) fxArrivals(dep, prefix string, n int, from, to float64, tokens int64) {
	span := fxSec(to) - fxSec(from)
	for i := 0; i < n; i++ {
		r.Upstream = append(r.Upstream, Arrival{
			T: fxStart + fxSec(from) + int64(i)*span/int64(n), Deployment: dep,
			RequestID: fmt.Sprintf("%s-%d", prefix, i), Tokens: tokens,
		})
	}
}

// fxChat records one chat by process p to node: invoked at t0, completed at t1 with typ and
// status (and dep, the x-litellm-model-id of a 200).
func (r *Run) fxChat(p Process, node, id string, t0, t1 float64, typ OpType, status int, dep string) {
	r.fxOp(Op{Type: Invoke, F: FChat, Process: p, Node: node, Time: fxSec(t0), Value: Value{RequestID: id, Model: "alpha"}})
	r.fxOp(Op{Type: typ, F: FChat, Process: p, Node: node, Time: fxSec(t1), Value: Value{RequestID: id, Model: "alpha", Status: status, Deployment: dep}})
}

func TestFaultFactorShapes(t *testing.T) {
	halves := fxPartition("halves", []string{"n1", "n2"}, []string{"n3", "n4", "n5"})
	isolate := fxPartition("isolate", []string{"n3"}, []string{"n1", "n2", "n4", "n5"})
	// Majorities ring: each node hears only its two ring neighbours, so the hears graph is the
	// cycle n1-n2-n3-n4-n5-n1. Its largest cliques are edges, so 5 nodes need at least 3
	// cliques, and {n1,n2} {n3,n4} {n5} is 3.
	ring := fxGrudge("ring", [2]string{"n1", "n3"}, [2]string{"n1", "n4"}, [2]string{"n2", "n4"},
		[2]string{"n2", "n5"}, [2]string{"n3", "n5"})
	// Bridge: n3 hears everyone, {n1,n2} and {n4,n5} do not hear each other: {n1,n2,n3} {n4,n5}.
	bridge := fxGrudge("bridge", [2]string{"n1", "n4"}, [2]string{"n1", "n5"}, [2]string{"n2", "n4"},
		[2]string{"n2", "n5"})
	tests := []struct {
		name   string
		faults []*Fault
		want   int
	}{
		{"no fault", nil, 1},
		{"halves", []*Fault{halves}, 2},
		{"isolate one", []*Fault{isolate}, 2},
		{"majorities ring", []*Fault{ring}, 3},
		{"bridge", []*Fault{bridge}, 2},
		{"loss among three", []*Fault{{Kind: KindLoss, Nodes: []string{"n1", "n2", "n3"}, Loss: 0.3}}, 3},
		{"pause one", []*Fault{fxNodes(KindPause, "n2")}, 2},
		{"clock one", []*Fault{{Kind: KindClock, Nodes: []string{"n4"}, Offset: time.Minute}}, 2},
		{"kill one removes no edge", []*Fault{fxNodes(KindKill, "n1")}, 1},
		{"halves and a pause on the big side", []*Fault{halves, fxNodes(KindPause, "n5")}, 3},
		{"redis fault in fast mode", []*Fault{{Kind: KindRedis}}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := fxRun("fast", 5)
			for _, f := range tc.faults {
				r.fxFault(f, 10, 20)
			}
			tl := NewTimeline(r)
			if got := tl.FaultFactorAt(fxSec(15)); got != tc.want {
				t.Errorf("m(15 s) = %d, want %d", got, tc.want)
			}
			if got := tl.FaultFactorAt(fxSec(5)); got != 1 {
				t.Errorf("m(5 s), before any fault = %d, want 1", got)
			}
		})
	}
}

func TestCliqueCover(t *testing.T) {
	complete := func(n int) []uint64 {
		adj := make([]uint64, n)
		for i := range adj {
			adj[i] = (1<<n - 1) &^ (1 << i)
		}
		return adj
	}
	tests := []struct {
		name string
		adj  []uint64
		want int
	}{
		{"empty graph", nil, 0},
		{"one node", []uint64{0}, 1},
		{"complete 9", complete(9), 1},
		{"4 isolated nodes", make([]uint64, 4), 4},
		{"path a-b-c", []uint64{0b010, 0b101, 0b010}, 2},
		{"complete 14 (greedy)", complete(14), 1},
		{"14 isolated nodes (greedy)", make([]uint64, 14), 14},
	}
	for _, tc := range tests {
		if got := CliqueCover(tc.adj); got != tc.want {
			t.Errorf("%s: CliqueCover = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestFaultFactorRepairAndWindows(t *testing.T) {
	r := fxRun("fast", 5) // Repair 5 s
	r.fxFault(fxPartition("halves", []string{"n1", "n2"}, []string{"n3", "n4", "n5"}), 100, 120)
	tl := NewTimeline(r)
	at := []struct {
		t    float64
		want int
	}{{99.999, 1}, {100, 2}, {119.9, 2}, {120, 2}, {124.999, 2}, {125, 1}, {500, 1}}
	for _, c := range at {
		if got := tl.FaultFactorAt(fxSec(c.t)); got != c.want {
			t.Errorf("m(%v s) = %d, want %d", c.t, got, c.want)
		}
	}
	win := []struct {
		s    float64
		want int
	}{
		{40, 1},     // [40, 100): ends as the partition starts
		{40.001, 2}, // reaches its first instant
		{110, 2},
		{124.9, 2}, // starts while it still lingers (healed < Repair ago)
		{125, 1},   // starts once it is repaired
	}
	for _, c := range win {
		if got := tl.FaultFactor(fxSec(c.s), fxSec(c.s)+LimitWindow); got != c.want {
			t.Errorf("m([%v s, +60 s)) = %d, want %d", c.s, got, c.want)
		}
	}
}

func TestFaultFactorModes(t *testing.T) {
	redis := func() *Run {
		r := fxRun("redis", 3)
		r.fxFault(&Fault{Kind: KindRedis}, 100, 130)
		r.fxFault(fxPartition("isolate", []string{"n1"}, []string{"n2", "n3"}), 0, 300)
		return r
	}
	win := []struct {
		s    float64
		want int
	}{
		{0, 1},   // before the outage only (the partition does not count in redis mode)
		{50, 2},  // before and during
		{90, 3},  // before, during and after
		{100, 3}, // during and after, and the first second, when escrow blocks reserved before may still admit
		{101, 2}, // during and after
		{110, 2},
		{130, 2}, // just after: a node's breaker may not have seen Redis back yet (redisRecovery)
		{132, 1}, // after only
	}
	tl := NewTimeline(redis())
	for _, c := range win {
		if got := tl.FaultFactor(fxSec(c.s), fxSec(c.s)+LimitWindow); got != c.want {
			t.Errorf("redis: m([%v s, +60 s)) = %d, want %d", c.s, got, c.want)
		}
	}

	// Redis frozen from 100 s to 130 s and from 260 s to 400 s, keeping its data: the nodes push
	// what they admitted alone before they admit through it again, so the start and the return
	// of one outage are one disturbance, and a window inside an outage has one view.
	pause := fxRun("redis", 3)
	pause.fxFault(&Fault{Kind: KindRedisPause}, 100, 130)
	pause.fxFault(&Fault{Kind: KindRedisPause}, 260, 400)
	for _, c := range []struct {
		s    float64
		want int
	}{
		{0, 1},     // before the first outage only
		{50, 2},    // before and during
		{90, 2},    // before, during and after: one disturbance, not two
		{100, 2},   // during and after
		{131, 2},   // after, while a node may not have pushed yet
		{132, 1},   // after only
		{150, 1},   // after the first, before the second (ends at 210 s)
		{201, 2},   // touches the second's start
		{260.5, 2}, // blocks reserved before the second may still admit
		{261, 1},   // inside the second: the fair shares alone
		{270, 1},
		{340, 1}, // still inside: [340 s, 400 s) ends as it returns
		{341, 2}, // and its return
		{402, 1},
	} {
		if got := NewTimeline(pause).FaultFactor(fxSec(c.s), fxSec(c.s)+LimitWindow); got != c.want {
			t.Errorf("redis-pause: m([%v s, +60 s)) = %d, want %d", c.s, got, c.want)
		}
	}
	if got := NewTimeline(pause).FaultFactor(fxSec(90), fxSec(300)); got != 3 {
		t.Errorf("redis-pause: m over both outages = %d, want 3", got)
	}
	// One that never ended.
	open := fxRun("redis", 3)
	open.fxFault(&Fault{Kind: KindRedisPause}, 100, -1)
	if got := NewTimeline(open).FaultFactor(fxSec(90), fxSec(150)); got != 2 {
		t.Errorf("redis-pause never healed: m over its start = %d, want 2", got)
	}

	// A master's death in a setup that fails over: the new master's epoch may start anywhere
	// in the outage, so a window that ends during it gets 3, not 2.
	for _, setup := range []string{RedisCluster, RedisSentinel} {
		r := redis()
		r.Info.Redis = setup
		tl := NewTimeline(r)
		for _, c := range []struct {
			s    float64
			want int
		}{{0, 1}, {40, 1}, {41, 3}, {50, 3}, {90, 3}, {100, 3}, {101, 2}, {131, 2}, {132, 1}} {
			if got := tl.FaultFactor(fxSec(c.s), fxSec(c.s)+LimitWindow); got != c.want {
				t.Errorf("redis %s: m([%v s, +60 s)) = %d, want %d", setup, c.s, got, c.want)
			}
		}
	}
	// Still open at the end of the run: single has seen only the kill, failover may have
	// happened before the end.
	for setup, want := range map[string]int{RedisSingle: 2, RedisCluster: 3} {
		r := fxRun("redis", 3)
		r.Info.Redis = setup
		r.fxFault(&Fault{Kind: KindRedis}, 100, -1)
		r.fxArrivals("alpha-1", "a", 10, 0, 200, 1)
		if got := NewTimeline(r).FaultFactor(fxSec(50), fxSec(110)); got != want {
			t.Errorf("redis %s, outage never healed: m([50 s, 110 s)) = %d, want %d", setup, got, want)
		}
	}
	// A master paused in a setup that fails over: as a kill, and its return is a third
	// disturbance, as the replaced master may take writes until it learns it is a replica.
	for _, setup := range []string{RedisCluster, RedisSentinel} {
		r := fxRun("redis", 3)
		r.Info.Redis = setup
		r.fxFault(&Fault{Kind: KindRedisPause}, 100, 130)
		tl := NewTimeline(r)
		for _, c := range []struct {
			s    float64
			want int
		}{
			{40, 1},  // ends as the pause starts
			{41, 3},  // its start, and a replica may have taken over
			{70, 3},  // [70 s, 130 s) ends as it resumes
			{71, 4},  // start, failover and resume
			{100, 4}, // the first second, when escrow blocks reserved before may still admit
			{101, 3}, // failover and resume
			{131, 3},
			{132, 1},
		} {
			if got := tl.FaultFactor(fxSec(c.s), fxSec(c.s)+LimitWindow); got != c.want {
				t.Errorf("redis-pause %s: m([%v s, +60 s)) = %d, want %d", setup, c.s, got, c.want)
			}
		}
	}
	strict := fxRun("strict", 5)
	strict.fxFault(fxPartition("halves", []string{"n1", "n2"}, []string{"n3", "n4", "n5"}), 0, -1)
	if got := NewTimeline(strict).FaultFactor(0, fxSec(600)); got != 1 {
		t.Errorf("strict: m = %d under a partition, want 1", got)
	}
}

func TestFaultSpans(t *testing.T) {
	r := fxRun("fast", 5)
	r.fxOp(Op{Type: Info, F: FStart, Process: NemesisProcess, Time: fxSec(10), Value: Value{Fault: fxNodes(KindKill, "n1")}})
	r.fxOp(Op{Type: Info, F: FStart, Process: NemesisProcess, Time: fxSec(12), Value: Value{Fault: fxNodes(KindKill, "n2")}})
	r.fxOp(Op{Type: Info, F: FStop, Process: NemesisProcess, Time: fxSec(15), Value: Value{Fault: fxNodes(KindKill, "n1")}})
	r.fxOp(Op{Type: Info, F: FStop, Process: NemesisProcess, Time: fxSec(20), Value: Value{Fault: fxNodes(KindKill, "n2")}})
	r.fxOp(Op{Type: Info, F: FStop, Process: NemesisProcess, Time: fxSec(30), Value: Value{Fault: fxNodes(KindPause, "n3")}})
	r.fxOp(Op{Type: Info, F: FStart, Process: NemesisProcess, Time: fxSec(40), Value: Value{Fault: &Fault{Kind: KindLoss, Nodes: []string{"n1", "n2"}}}})
	r.fxOp(Op{Type: OK, F: FChat, Process: 1, Time: fxSec(50)})
	got := NewTimeline(r).Faults
	want := []FaultSpan{
		{Fault: *fxNodes(KindPause, "n3"), Start: 0, End: fxSec(30), Orphan: true},
		{Fault: *fxNodes(KindKill, "n1"), Start: fxSec(10), End: fxSec(15)},
		{Fault: *fxNodes(KindKill, "n2"), Start: fxSec(12), End: fxSec(20)},
		{Fault: Fault{Kind: KindLoss, Nodes: []string{"n1", "n2"}}, Start: fxSec(40), End: fxSec(50), Open: true},
	}
	if len(got) != len(want) {
		t.Fatalf("spans = %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Fault.Kind != w.Fault.Kind || fmt.Sprint(g.Fault.Nodes) != fmt.Sprint(w.Fault.Nodes) ||
			g.Start != w.Start || g.End != w.End || g.Open != w.Open || g.Orphan != w.Orphan {
			t.Errorf("span %d = %+v, want %+v", i, g, w)
		}
	}
}

func TestPhaseAt(t *testing.T) {
	r := fxRun("fast", 5)
	r.fxFault(fxPartition("halves", []string{"n1", "n2"}, []string{"n3", "n4", "n5"}), 10, 20)
	r.fxFault(fxNodes(KindKill, "n4"), 15, 20)
	r.fxFault(&Fault{Kind: KindLoss, Nodes: []string{"n1", "n2", "n3"}}, 30, 40)
	tl := NewTimeline(r)
	tests := []struct {
		node string
		t    float64
		want string
	}{
		{"n1", 5, PhaseHealthy},
		{"n1", 12, PhaseMinority},
		{"n3", 12, PhaseMajority},
		{"n3", 16, PhaseMinority}, // n4 is down: n3 and n5 are 2 of 5 live
		{"n4", 16, PhaseDown},
		{"n1", 20, PhaseHealthy}, // a stop ends the fault at once for availability
		{"n1", 35, PhaseMajority},
	}
	for _, tc := range tests {
		if got := tl.PhaseAt(tc.node, fxSec(tc.t)); got != tc.want {
			t.Errorf("phase of %s at %v s = %s, want %s", tc.node, tc.t, got, tc.want)
		}
	}
}
