package chaos

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// cfgHist builds a config history in memory. Times are in milliseconds since the run started;
// each helper adds an invoke and its completion, and run() sorts them as the recorder would.
type cfgHist struct {
	h []Op
}

func cfgMS(t int) int64 { return int64(t) * int64(time.Millisecond) }

// write adds a write by client p from call to ret (ms). version is the acknowledged version
// for OK; status is the HTTP status for fail and info.
func (b *cfgHist) write(p Process, f, id string, rpm int64, call, ret int, typ OpType, version uint64, status int) {
	b.h = append(b.h,
		Op{Type: Invoke, F: f, Process: p, Node: "n1", Time: cfgMS(call), Value: Value{ID: id, RPM: rpm}},
		Op{Type: typ, F: f, Process: p, Node: "n1", Time: cfgMS(ret), Value: Value{ID: id, RPM: rpm, Version: version, Status: status}})
}

func (b *cfgHist) add(p Process, id string, rpm int64, call, ret int, v uint64) {
	b.write(p, FAdd, id, rpm, call, ret, OK, v, 200)
}

// read adds an ok read of node by client p showing version v and models.
func (b *cfgHist) read(p Process, node string, call, ret int, v uint64, models map[string]int64) {
	b.h = append(b.h,
		Op{Type: Invoke, F: FRead, Process: p, Node: node, Time: cfgMS(call)},
		Op{Type: OK, F: FRead, Process: p, Node: node, Time: cfgMS(ret), Value: Value{Version: v, Models: models}})
}

func (b *cfgHist) nemesis(f, kind string, t int, nodes ...string) {
	b.h = append(b.h, Op{Type: Info, F: f, Process: NemesisProcess, Time: cfgMS(t), Value: Value{Fault: &Fault{Kind: kind, Nodes: nodes}}})
}

// settle heals at t and has every node serve version v with models 100 ms later.
func (b *cfgHist) settle(t int, v uint64, models map[string]int64) {
	b.nemesis(FStop, KindPartition, t)
	for i, n := range []string{"n1", "n2", "n3"} {
		b.read(Process(90+i), n, t+10, t+100, v, models)
	}
}

func (b *cfgHist) run(t *testing.T) *Run {
	sort.SliceStable(b.h, func(i, j int) bool { return b.h[i].Time < b.h[j].Time })
	for i := range b.h {
		b.h[i].Index = i
	}
	return &Run{
		Info: RunInfo{
			Nodes:          []NodeInfo{{Name: "n1"}, {Name: "n2"}, {Name: "n3"}},
			ConvergeWithin: 30 * time.Second,
		},
		History: b.h,
	}
}

func cfgWant(t *testing.T, r *Run, want Valid, problem string) CheckResult {
	t.Helper()
	res := CheckConfig(r)
	t.Logf("%s\nproblems: %q\nfigures: %v", res.Summary, res.Problems, res.Figures)
	if res.Valid != want {
		t.Fatalf("valid = %v, want %v", res.Valid, want)
	}
	if problem != "" && !strings.Contains(strings.Join(res.Problems, "\n"), problem) {
		t.Fatalf("no problem mentions %q", problem)
	}
	return res
}

type cfgModels = map[string]int64

func TestConfigValidConcurrentHistory(t *testing.T) {
	var b cfgHist
	// Clients 0 and 1 add concurrently; 1 committed first though 0 was invoked first.
	b.add(0, "cfg-1", 10, 0, 50, 3)
	b.add(1, "cfg-2", 20, 5, 40, 2)
	// An update of cfg-1 refused with 400 before cfg-1 could exist: consistent.
	b.write(2, FUpdate, "cfg-1", 30, 1, 3, Fail, 0, 400)
	// A 409 claims nothing.
	b.write(2, FDelete, "cfg-3", 0, 4, 6, Fail, 0, 409)
	// A stale read on n2 after both adds finished: version 2 (cfg-2 only) is allowed, as reads
	// may show any committed version up to the current one.
	b.read(3, "n2", 60, 70, 2, cfgModels{"cfg-2": 20})
	b.read(3, "n3", 71, 75, 3, cfgModels{"cfg-1": 10, "cfg-2": 20})
	// A read concurrent with the adds may show the state between them.
	b.read(4, "n1", 10, 45, 2, cfgModels{"cfg-2": 20})
	b.write(0, FUpdate, "cfg-1", 40, 80, 90, OK, 4, 200)
	b.write(1, FDelete, "cfg-2", 0, 85, 95, OK, 5, 200)
	// n3 restarted and serves its file: version 0 after version 3 is fine across a kill.
	b.nemesis(FStart, KindKill, 96, "n3")
	b.nemesis(FStop, KindKill, 98, "n3")
	b.read(4, "n3", 100, 105, 0, nil)
	b.write(0, FAdd, "cfg-1", 50, 110, 120, Fail, 0, 400) // exists
	b.settle(200, 5, cfgModels{"cfg-1": 40})
	res := cfgWant(t, b.run(t), True, "")
	if !strings.Contains(res.Summary, "is linearizable") || res.Figures["versions_committed"] != uint64(5) {
		t.Fatalf("summary or figures: %s %v", res.Summary, res.Figures)
	}
}

func TestConfigTwoWritesSameVersion(t *testing.T) {
	var b cfgHist
	b.add(0, "cfg-1", 10, 0, 10, 2)
	b.add(1, "cfg-2", 10, 5, 15, 2)
	b.settle(100, 2, cfgModels{"cfg-1": 10})
	cfgWant(t, b.run(t), False, "both acknowledged as version 2")
}

func TestConfigWriteVersionGoesBack(t *testing.T) {
	var b cfgHist
	b.add(0, "cfg-1", 10, 0, 10, 2)
	b.write(1, FAdd, "cfg-2", 10, 5, 15, Info, 0, 503) // applied: it explains version 4
	b.add(2, "cfg-3", 10, 20, 30, 4)
	b.add(3, "cfg-4", 10, 40, 50, 3) // lower than version 4, acknowledged before it started
	b.settle(100, 4, cfgModels{"cfg-1": 10, "cfg-2": 10, "cfg-3": 10})
	cfgWant(t, b.run(t), False, "add cfg-4 rpm=10 -> v3")
}

func TestConfigReadContentNeverExisted(t *testing.T) {
	var b cfgHist
	b.add(0, "cfg-1", 10, 0, 10, 2)
	b.read(1, "n2", 20, 30, 2, cfgModels{"cfg-1": 20})
	b.settle(100, 2, cfgModels{"cfg-1": 10})
	cfgWant(t, b.run(t), False, "read n2 -> v2 {cfg-1:20}")
}

func TestConfigReadFromTheFuture(t *testing.T) {
	var b cfgHist
	b.read(1, "n2", 0, 10, 2, cfgModels{"cfg-1": 10})
	b.add(0, "cfg-1", 10, 20, 30, 2)
	b.settle(100, 2, cfgModels{"cfg-1": 10})
	cfgWant(t, b.run(t), False, "read n2 -> v2")
}

func TestConfigAddRefusedWithoutCause(t *testing.T) {
	var b cfgHist
	b.write(0, FAdd, "cfg-1", 10, 0, 10, Fail, 0, 400)
	b.settle(100, 1, cfgModels{})
	cfgWant(t, b.run(t), False, "add cfg-1 rpm=10 -> refused (HTTP 400)")

	// The same refusal is fine when a concurrent add could have created cfg-1 first.
	b = cfgHist{}
	b.write(0, FAdd, "cfg-1", 10, 0, 10, Fail, 0, 400)
	b.add(1, "cfg-1", 20, 2, 12, 2)
	b.settle(100, 2, cfgModels{"cfg-1": 20})
	cfgWant(t, b.run(t), True, "")
}

func TestConfigInfoWriteEitherWay(t *testing.T) {
	// Applied, and seen only after the client gave up on it.
	var b cfgHist
	b.write(0, FAdd, "cfg-1", 10, 0, 10, Info, 0, 0)
	b.read(1, "n1", 20, 30, 1, cfgModels{})
	b.read(1, "n2", 40, 50, 2, cfgModels{"cfg-1": 10})
	b.add(2, "cfg-2", 10, 60, 70, 3)
	b.settle(100, 3, cfgModels{"cfg-1": 10, "cfg-2": 10})
	cfgWant(t, b.run(t), True, "")

	// Never applied.
	b = cfgHist{}
	b.write(0, FAdd, "cfg-1", 10, 0, 10, Info, 0, 503)
	b.add(2, "cfg-2", 10, 60, 70, 2)
	b.settle(100, 2, cfgModels{"cfg-2": 10})
	cfgWant(t, b.run(t), True, "")

	// Answered 503, yet it landed after two later writes were acknowledged: herd's
	// compare-and-set should make that impossible, but the spec allows it, so only the
	// first pass of the check objects and the second, with open intervals, stands.
	b = cfgHist{}
	b.write(0, FAdd, "cfg-1", 10, 0, 10, Info, 0, 503)
	b.add(1, "cfg-2", 10, 20, 30, 2)
	b.add(1, "cfg-3", 10, 40, 50, 3)
	b.read(2, "n1", 60, 70, 4, cfgModels{"cfg-1": 10, "cfg-2": 10, "cfg-3": 10})
	b.settle(100, 4, cfgModels{"cfg-1": 10, "cfg-2": 10, "cfg-3": 10})
	cfgWant(t, b.run(t), True, "")

	// A write whose completion the history never got counts as info as well.
	b = cfgHist{}
	b.add(2, "cfg-2", 10, 0, 10, 2)
	b.settle(100, 3, cfgModels{"cfg-1": 10, "cfg-2": 10})
	b.h = append(b.h, Op{Type: Invoke, F: FAdd, Process: 5, Node: "n1", Time: cfgMS(20), Value: Value{ID: "cfg-1", RPM: 10}})
	cfgWant(t, b.run(t), True, "")
}

func TestConfigMonotonicReads(t *testing.T) {
	build := func(kill bool) *Run {
		var b cfgHist
		b.add(0, "cfg-1", 10, 0, 10, 2)
		b.add(0, "cfg-2", 10, 20, 30, 3)
		b.read(1, "n2", 40, 50, 3, cfgModels{"cfg-1": 10, "cfg-2": 10})
		if kill {
			b.nemesis(FStart, KindKill, 55, "n2")
			b.nemesis(FStop, KindKill, 58, "n2")
		}
		// Stale but linearizable on its own: version 2 was committed.
		b.read(1, "n2", 60, 70, 2, cfgModels{"cfg-1": 10})
		b.settle(100, 3, cfgModels{"cfg-1": 10, "cfg-2": 10})
		return b.run(t)
	}
	cfgWant(t, build(false), False, "n2: a read at 0.060 s to 0.070 s served version 2")
	cfgWant(t, build(true), True, "")
}

func TestConfigConvergence(t *testing.T) {
	base := func() *cfgHist {
		var b cfgHist
		b.add(0, "cfg-1", 10, 0, 10, 2)
		b.nemesis(FStart, KindPartition, 20)
		b.nemesis(FStop, KindPartition, 1000)
		return &b
	}
	on := cfgModels{"cfg-1": 10}

	// Agreement 2 s after the heal.
	b := base()
	b.read(1, "n1", 1100, 1110, 2, on)
	b.read(2, "n2", 1100, 1110, 2, on)
	b.read(3, "n3", 1100, 1110, 1, cfgModels{})
	b.read(3, "n3", 2900, 3000, 2, on)
	res := cfgWant(t, b.run(t), True, "")
	if res.Figures["convergence_s"] != 2.0 {
		t.Fatalf("convergence_s = %v, want 2", res.Figures["convergence_s"])
	}

	// Agreement 45 s after the heal: too slow.
	b = base()
	b.read(1, "n1", 1100, 1110, 2, on)
	b.read(2, "n2", 1100, 1110, 2, on)
	b.read(3, "n3", 1100, 1110, 1, cfgModels{})
	b.read(3, "n3", 45900, 46000, 2, on)
	cfgWant(t, b.run(t), False, "nodes n1,n2,n3 served versions 2,2,1 for 45.0 s until they agreed on version 2; promised within 30 s")

	// Never: n3 keeps serving version 1.
	b = base()
	b.read(1, "n1", 1100, 1110, 2, on)
	b.read(2, "n2", 1100, 1110, 2, on)
	for at := 1100; at < 60000; at += 5000 {
		b.read(3, "n3", at, at+10, 1, cfgModels{})
	}
	cfgWant(t, b.run(t), False, "never agreed")

	// Agreement on a version older than an acknowledged write is not convergence.
	b = base()
	b.add(0, "cfg-2", 10, 500, 600, 3)
	for i, n := range []string{"n1", "n2", "n3"} {
		b.read(Process(i+1), n, 1100, 1110, 2, on)
	}
	cfgWant(t, b.run(t), False, "at least version 3")
}

func TestConfigWritesHTML(t *testing.T) {
	var b cfgHist
	b.add(0, "cfg-1", 10, 0, 10, 2)
	b.read(1, "n2", 20, 30, 2, cfgModels{"cfg-1": 10})
	b.nemesis(FStart, KindKill, 40, "n3")
	b.settle(100, 2, cfgModels{"cfg-1": 10})
	r := b.run(t)
	r.Dir = t.TempDir()
	cfgWant(t, r, True, "")
	// The page embeds its data as JSON, which escapes "->": look for the rest.
	page, err := os.ReadFile(filepath.Join(r.Dir, ConfigHTML))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"add cfg-1 rpm=10", "read n2", "v2 {cfg-1:10}", "start kill n3"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("%s lacks %q", ConfigHTML, want)
		}
	}
}

func TestConfigNoOps(t *testing.T) {
	if res := CheckConfig(&Run{}); res.Valid != Unknown {
		t.Fatalf("valid = %v, want unknown", res.Valid)
	}
}

// cfgSimCluster generates the history of a correct cluster: writes commit at a random moment
// inside their interval (info writes possibly later, or never), followers apply committed
// versions with a lag, and reads show what their node had applied at a random moment.
func cfgSimCluster(seed uint64, clients int, dur time.Duration) *Run {
	rng := rand.New(rand.NewPCG(seed, 1))
	nodes := []string{"n1", "n2", "n3"}
	versions := []map[string]int64{{}, {}} // content at each committed version (0 and 1 empty)
	applied := map[string]int{"n1": 1, "n2": 1, "n3": 1}
	type pending struct {
		op      Op  // the invoke
		at, end int // tick of the commit or snapshot, and of the completion
		info    bool
		result  Op
	}
	var h []Op
	var late []*pending // info writes that may still commit after their completion
	busy := make([]*pending, clients)
	procs := make([]Process, clients)
	nextProc := Process(clients)
	for i := range procs {
		procs[i] = Process(i)
	}
	ticks := int(dur / time.Millisecond)
	for t := 0; t < ticks+3000; t++ {
		cur := len(versions) - 1
		for _, n := range nodes {
			if applied[n] < cur && rng.IntN(50) == 0 {
				applied[n]++
			}
		}
		commit := func(p *pending) Op {
			v := versions[len(versions)-1]
			_, exists := v[p.op.Value.ID]
			res := Op{Type: Fail, F: p.op.F, Process: p.op.Process, Node: p.op.Node, Value: p.op.Value}
			res.Value.Status = 400
			if exists != (p.op.F == FAdd) {
				next := maps.Clone(v)
				if p.op.F == FDelete {
					delete(next, p.op.Value.ID)
				} else {
					next[p.op.Value.ID] = p.op.Value.RPM
				}
				versions = append(versions, next)
				res.Type, res.Value.Status, res.Value.Version = OK, 200, uint64(len(versions)-1)
			}
			return res
		}
		for i, l := range late {
			if l != nil && l.at == t {
				commit(l)
				late[i] = nil
			}
		}
		for c := 0; c < clients; c++ {
			p := busy[c]
			if p == nil {
				if t >= ticks || rng.IntN(300) != 0 {
					continue
				}
				node := nodes[rng.IntN(len(nodes))]
				id := fmt.Sprintf("cfg-%d", 1+rng.IntN(4))
				p = &pending{op: Op{Type: Invoke, Process: procs[c], Node: node, Time: cfgMS(t)}}
				switch x := rng.IntN(10); {
				case x < 4:
					p.op.F = FRead
				case x < 6:
					p.op.F, p.op.Value = FAdd, Value{ID: id, RPM: int64(10 * (1 + rng.IntN(9)))}
				case x < 8:
					p.op.F, p.op.Value = FUpdate, Value{ID: id, RPM: int64(10 * (1 + rng.IntN(9)))}
				default:
					p.op.F, p.op.Value = FDelete, Value{ID: id}
				}
				d := 1 + rng.IntN(200)
				p.at, p.end = t+rng.IntN(d), t+d
				p.info = p.op.F != FRead && rng.IntN(8) == 0
				busy[c] = p
				h = append(h, p.op)
			}
			if t == p.at && !p.info {
				if p.op.F == FRead {
					n := p.op.Node
					p.result = Op{Type: OK, F: FRead, Process: p.op.Process, Node: n,
						Value: Value{Version: uint64(applied[n]), Models: versions[applied[n]]}}
				} else {
					p.result = commit(p)
				}
			}
			if t == p.end {
				res := p.result
				if p.info {
					res = Op{Type: Info, F: p.op.F, Process: p.op.Process, Node: p.op.Node, Value: p.op.Value}
					// Answered 503: it committed before the answer, or never. Unanswered: it
					// may commit a little after the client gave up.
					res.Value.Status = 503
					lag := 0
					if rng.IntN(2) == 0 {
						res.Value.Status, lag = 0, rng.IntN(300)
					}
					if rng.IntN(2) == 0 {
						if lag == 0 {
							commit(p) // at the answer, the last moment it can
						} else {
							p.at = t + lag
							late = append(late, p)
						}
					}
					procs[c], nextProc = nextProc, nextProc+1
				}
				res.Time = cfgMS(t)
				h = append(h, res)
				busy[c] = nil
			}
		}
	}
	// Everyone catches up after the workload; the runner reads until they agree.
	end := ticks + 3000
	h = append(h, Op{Type: Info, F: FStop, Process: NemesisProcess, Time: cfgMS(end), Value: Value{Fault: &Fault{Kind: KindPartition}}})
	last := len(versions) - 1
	for i, n := range nodes {
		p := nextProc + Process(i)
		h = append(h, Op{Type: Invoke, F: FRead, Process: p, Node: n, Time: cfgMS(end + 10)},
			Op{Type: OK, F: FRead, Process: p, Node: n, Time: cfgMS(end + 20), Value: Value{Version: uint64(last), Models: versions[last]}})
	}
	return &Run{Info: RunInfo{Nodes: []NodeInfo{{Name: "n1"}, {Name: "n2"}, {Name: "n3"}}, ConvergeWithin: 30 * time.Second}, History: h}
}

func TestConfigSimulatedCluster(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		cfgWant(t, cfgSimCluster(seed, 10, 60*time.Second), True, "")
	}
}

// One wrong read among many writes of unknown outcome: the spec's open-ended check cannot
// finish, the check with those writes closed promptly finds it.
func TestConfigSimulatedClusterWrongRead(t *testing.T) {
	saved := configCheckTimeout
	configCheckTimeout = 2 * time.Second
	t.Cleanup(func() { configCheckTimeout = saved })
	r := cfgSimCluster(1, 3, 60*time.Second)
	n := 0
	for i := range r.History {
		if op := &r.History[i]; op.F == FRead && op.Type == OK && op.Value.Version > 5 {
			if n++; n == 50 {
				op.Value.Models = map[string]int64{"cfg-9": 1}
				break
			}
		}
	}
	res := cfgWant(t, r, False, "{cfg-9:1}")
	if !strings.Contains(res.Summary, "land promptly") {
		t.Fatalf("the summary should say the verdict rests on writes of unknown outcome landing promptly: %s", res.Summary)
	}
}

// The first pass closes a write of unknown outcome at the answer of the first acknowledged
// write sent after its node stopped handling it.
func TestConfigInfoBounds(t *testing.T) {
	var b cfgHist
	b.write(0, FAdd, "cfg-1", 10, 0, 10, Info, 0, 503) // answered: stopped at 10 ms
	b.write(1, FAdd, "cfg-2", 10, 0, 10, Info, 0, 0)   // unanswered: stopped by 2.01 s
	b.write(2, FAdd, "cfg-3", 10, 0, 10, Info, 0, 0)   // on n2, paused until 5 s: stopped by 7 s
	b.h[len(b.h)-1].Node, b.h[len(b.h)-2].Node = "n2", "n2"
	b.nemesis(FStart, KindPause, 5, "n2")
	b.nemesis(FStop, KindPause, 5000, "n2")
	b.add(3, "cfg-4", 10, 5, 1500, 2)    // sent before any stopped: closes none
	b.add(3, "cfg-5", 10, 1600, 1700, 3) // closes the first
	b.add(3, "cfg-6", 10, 2100, 2200, 4) // closes the second
	b.add(3, "cfg-7", 10, 7100, 7200, 5) // closes the third
	r := b.run(t)
	ops := cfgOps(r.History)
	bound := cfgInfoBounds(r.History, ops, cfgMS(9000))
	want := map[string]int64{"cfg-1": cfgMS(1700), "cfg-2": cfgMS(2200), "cfg-3": cfgMS(7200)}
	for _, o := range ops {
		if w, ok := want[o.in.ID]; ok && o.typ == Info {
			if got := bound(o); got != w {
				t.Errorf("%s closes at %d ms, want %d ms", o.in.ID, got/int64(time.Millisecond), w/int64(time.Millisecond))
			}
		}
	}
}
