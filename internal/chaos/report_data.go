package chaos

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// This file turns a run's raw logs into the series the report plots: fault intervals, chat
// latencies, completions per second and each deployment's trailing-60 s usage. Times are
// seconds of history time (since the run started).

// repSpan is one fault from its start op to its stop op (or to the end of the run).
type repSpan struct {
	Key        string // colour key: the fault kind, or KindLeader for a kill of the raft leader
	Label      string // short text drawn on the bar: the shape, loss rate or clock offset
	Start, End float64
	Lanes      []string // the nodes it affected ("redis" for a redis fault)
	Open       bool     // no stop was recorded: it lasted to the end of the run
}

// repExit is a node exit the nemesis did not cause.
type repExit struct {
	T    float64
	Node string
	How  string
}

// repFaultKey is the colour a fault is drawn in: a kill of the leader is told apart from a kill.
func repFaultKey(f *Fault) string {
	if f.Kind == KindKill && f.Leader {
		return KindLeader
	}
	return f.Kind
}

func repFaultLabel(f *Fault) string {
	switch f.Kind {
	case KindPartition:
		return f.Shape
	case KindLoss:
		return strconv.FormatFloat(f.Loss*100, 'g', 3, 64) + "% loss"
	case KindClock:
		d := f.Offset.Round(time.Millisecond)
		if d >= 0 {
			return "+" + d.String()
		}
		return d.String()
	case KindKill:
		if f.Leader {
			return "leader"
		}
	}
	return ""
}

// repLanes are the lanes a fault is drawn on: the nodes it cut off, stopped or skewed.
func repLanes(f *Fault, all []string) []string {
	var lanes []string
	switch f.Kind {
	case KindPartition:
		for n, cut := range f.Grudge {
			if len(cut) > 0 {
				lanes = append(lanes, n)
			}
		}
	case KindRedis, KindRedisPause:
		lanes = []string{KindRedis}
	default:
		lanes = append(lanes, f.Nodes...)
	}
	if len(lanes) == 0 {
		lanes = append(lanes, all...)
	}
	sort.Strings(lanes)
	return slices.Compact(lanes)
}

// repFaults turns the faults the checkers see (faultSpans, so bands and bounds agree) into
// bars, and collects the exits the nemesis did not cause; end is the end of the run.
func repFaults(r *Run, end float64) ([]repSpan, []repExit) {
	var nodes []string
	for _, n := range r.Info.Nodes {
		nodes = append(nodes, n.Name)
	}
	var spans []repSpan
	for _, fs := range faultSpans(r.History, int64(end*1e9)) {
		f := fs.Fault
		spans = append(spans, repSpan{Key: repFaultKey(&f), Label: repFaultLabel(&f),
			Start: repSeconds(fs.Start), End: max(repSeconds(fs.End), repSeconds(fs.Start)), Open: fs.Open,
			Lanes: repLanes(&f, nodes)})
	}
	var exits []repExit
	for _, op := range r.History {
		if op.Process == NemesisProcess && op.F == FExit {
			exits = append(exits, repExit{T: repSeconds(op.Time), Node: op.Node, How: op.Value.Exit})
		}
	}
	return spans, exits
}

// repLaneNames lists the timeline's lanes: every node in run order, then any other lane a
// fault or exit names.
func repLaneNames(r *Run, spans []repSpan, exits []repExit) []string {
	var lanes []string
	seen := map[string]bool{}
	add := func(n string) {
		if n != "" && !seen[n] {
			seen[n] = true
			lanes = append(lanes, n)
		}
	}
	for _, n := range r.Info.Nodes {
		add(n.Name)
	}
	var extra []string
	for _, s := range spans {
		for _, l := range s.Lanes {
			if !seen[l] {
				extra = append(extra, l)
			}
		}
	}
	for _, e := range exits {
		if !seen[e.Node] {
			extra = append(extra, e.Node)
		}
	}
	sort.Strings(extra)
	for _, n := range extra {
		add(n)
	}
	return lanes
}

// repUnion merges the spans of each colour key into disjoint intervals, so that shading
// does not darken where two faults of one kind overlap (two nodes paused at once).
func repUnion(spans []repSpan) []repSpan {
	byKey := map[string][]repSpan{}
	var keys []string
	for _, s := range spans {
		if _, ok := byKey[s.Key]; !ok {
			keys = append(keys, s.Key)
		}
		byKey[s.Key] = append(byKey[s.Key], s)
	}
	var out []repSpan
	for _, k := range keys {
		ss := byKey[k]
		sort.Slice(ss, func(i, j int) bool { return ss[i].Start < ss[j].Start })
		cur := ss[0]
		for _, s := range ss[1:] {
			if s.Start <= cur.End {
				cur.End = max(cur.End, s.End)
				continue
			}
			out = append(out, cur)
			cur = s
		}
		out = append(out, cur)
	}
	return out
}

// repChat is one completed chat request.
type repChat struct {
	Invoke, Done float64 // seconds
	LatencyMS    float64
	Type         OpType
}

// repChats pairs chat invokes with their completions: by request ID, else (an op written
// without one) by process, as Jepsen pairs them.
func repChats(r *Run) (done []repChat, pending int) {
	byID := map[string]int64{}
	byProc := map[Process]int64{}
	for i := range r.History {
		op := &r.History[i]
		if op.F != FChat || op.Process == NemesisProcess {
			continue
		}
		if op.Type == Invoke {
			if op.Value.RequestID != "" {
				byID[op.Value.RequestID] = op.Time
			} else {
				byProc[op.Process] = op.Time
			}
			pending++
			continue
		}
		t0, ok := byID[op.Value.RequestID]
		if ok && op.Value.RequestID != "" {
			delete(byID, op.Value.RequestID)
		} else if t0, ok = byProc[op.Process]; ok {
			delete(byProc, op.Process)
		} else {
			continue
		}
		pending--
		done = append(done, repChat{
			Invoke: repSeconds(t0), Done: repSeconds(op.Time), Type: op.Type,
			LatencyMS: float64(op.Time-t0) / 1e6,
		})
	}
	return done, pending
}

// repPerBucket counts completions of each type in each bucket [i*width, (i+1)*width) seconds.
func repPerBucket(done []repChat, end, width float64) map[OpType][]float64 {
	n := max(int(math.Ceil(end/width)), 1)
	out := map[OpType][]float64{OK: make([]float64, n), Fail: make([]float64, n), Info: make([]float64, n)}
	for _, s := range done {
		b, ok := out[s.Type]
		if !ok {
			continue
		}
		b[min(max(int(s.Done/width), 0), n-1)]++
	}
	return out
}

// repArrivals is one deployment's upstream arrivals, in history seconds, sorted.
type repArrivals struct {
	T      []float64
	Tokens []int64
}

func repArrivalsByDeployment(r *Run) map[string]*repArrivals {
	out := map[string]*repArrivals{}
	idx := make([]int, len(r.Upstream))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return r.Upstream[idx[a]].T < r.Upstream[idx[b]].T })
	for _, i := range idx {
		a := &r.Upstream[i]
		s := out[a.Deployment]
		if s == nil {
			s = &repArrivals{}
			out[a.Deployment] = s
		}
		s.T = append(s.T, repSeconds(a.T-r.Info.Start))
		s.Tokens = append(s.Tokens, a.Tokens)
	}
	return out
}

// repWindow is 60 s: the window rpm and tpm limits are counted over.
const repWindow = 60.0

// trailing evaluates, every step seconds from 0 to end, the requests and tokens that
// arrived in the trailing window (t-60 s, t].
func (s *repArrivals) trailing(end, step float64) (xs, reqs, toks []float64) {
	var lo, hi int
	var tok int64
	for i := 0; float64(i)*step <= end+step/2; i++ {
		t := float64(i) * step
		for hi < len(s.T) && s.T[hi] <= t {
			tok += s.Tokens[hi]
			hi++
		}
		for lo < hi && s.T[lo] <= t-repWindow {
			tok -= s.Tokens[lo]
			lo++
		}
		xs = append(xs, t)
		reqs = append(reqs, float64(hi-lo))
		toks = append(toks, float64(tok))
	}
	return xs, reqs, toks
}

// maxIn60s is the most requests and tokens in any window [t, t+60 s), for a deployment the
// checkers did not report on.
func (s *repArrivals) maxIn60s() (reqs, toks int64) {
	var hi int
	var tok int64
	for lo := range s.T {
		for hi < len(s.T) && s.T[hi] < s.T[lo]+repWindow {
			tok += s.Tokens[hi]
			hi++
		}
		reqs = max(reqs, int64(hi-lo))
		toks = max(toks, tok)
		tok -= s.Tokens[lo]
	}
	return reqs, toks
}

func repSeconds(ns int64) float64 { return float64(ns) / 1e9 }

// repEnd is the end of the plots' time axis: the workload's duration or the last thing
// recorded, whichever is later.
func repEnd(r *Run) float64 {
	end := r.Info.Duration.Seconds()
	for i := range r.History {
		end = max(end, repSeconds(r.History[i].Time))
	}
	for i := range r.Upstream {
		end = max(end, repSeconds(r.Upstream[i].T-r.Info.Start))
	}
	if end <= 0 {
		end = 1
	}
	return end
}

// repCommand is the herd-chaos command line that repeats the run.
func repCommand(info *RunInfo) string {
	var b strings.Builder
	fmt.Fprintf(&b, "herd-chaos run --nodes %d --time %s", len(info.Nodes), info.Duration)
	nemeses := strings.Join(info.Nemeses, ",")
	if nemeses == "" {
		nemeses = "none" // the flag's default is all
	}
	fmt.Fprintf(&b, " --nemesis %s --mode %s", nemeses, info.Mode)
	if info.Redis != "" && (info.Redis != RedisSingle || info.Mode != ModeRedis) {
		fmt.Fprintf(&b, " --redis %s", info.Redis)
	}
	if info.Provider != "" && info.Provider != "openai" {
		fmt.Fprintf(&b, " --provider %s", info.Provider)
	}
	if len(info.Deployments) > 0 {
		fmt.Fprintf(&b, " --rpm %d", info.Deployments[0].RPM)
	}
	if len(info.Deployments) > 1 && info.Deployments[1].TPM > 0 {
		fmt.Fprintf(&b, " --tpm %d", info.Deployments[1].TPM)
	}
	if info.ClockSkew > 0 && slices.Contains(info.Nemeses, KindClock) {
		fmt.Fprintf(&b, " --clock-skew %s", info.ClockSkew)
	}
	fmt.Fprintf(&b, " --demand %s --seed %d", strconv.FormatFloat(info.Demand, 'g', -1, 64), info.Seed)
	return b.String()
}
