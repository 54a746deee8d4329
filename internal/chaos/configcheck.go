package chaos

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// configCheckTimeout bounds each of porcupine's searches (see cfgLinearizable): checking
// linearizability is NP-hard, and writes of unknown outcome make the search explode. Past it
// the verdict is Unknown rather than a guess.
var configCheckTimeout = 60 * time.Second

// maxConfigProblems caps Problems: past a few lines the reader needs config.html, not more text.
const maxConfigProblems = 20

// CheckConfig checks the config history: (1) the writes and reads are linearizable against a
// versioned map, with stale reads allowed as long as each read shows a version that existed
// during the read with exactly that version's content; (2) reads on one node never go back to
// an older version unless the node was killed or restarted in between; (3) after the last heal
// every node serves the same version and content, at least the newest acknowledged write,
// within Info.ConvergeWithin. It writes porcupine's visualisation to ConfigHTML in r.Dir.
func CheckConfig(r *Run) CheckResult {
	ops := cfgOps(r.History)
	var writes, reads []*cfgOp
	count := map[OpType]int{}
	readsOK := 0
	var maxOK uint64 // the newest version a write was acknowledged with
	for _, o := range ops {
		switch {
		case o.f == FRead:
			reads = append(reads, o)
			if o.typ == OK {
				readsOK++
			}
		default:
			writes = append(writes, o)
			count[o.typ]++
			if o.typ == OK {
				maxOK = max(maxOK, o.out.Version)
			}
		}
	}
	figs := map[string]any{"versions_committed": maxOK, "writes_ok": count[OK], "writes_fail": count[Fail],
		"writes_info": count[Info], "reads": len(reads), "reads_ok": readsOK}
	if len(ops) == 0 {
		return CheckResult{Valid: Unknown, Summary: "The history has no config operations, so there was nothing to check.", Figures: figs}
	}

	valid := True
	var problems, parts []string
	note := func(p ...string) {
		for _, s := range p {
			if len(problems) < maxConfigProblems {
				problems = append(problems, s)
			}
		}
	}

	// Two acknowledged writes with one version cannot both be in a total order that adds one per
	// change. Porcupine finds this too, but says less, and its search in every order is then
	// not worth waiting for.
	dups := cfgDuplicates(writes)
	if len(dups) > 0 {
		valid = False
		note(dups...)
	}

	lin := cfgLinearizable(r.Dir, r.History, ops, len(dups) == 0)
	figs["linearizable"] = strings.ToLower(string(lin.res))
	switch lin.res {
	case porcupine.Ok:
		parts = append(parts, "is linearizable (stale reads allowed, each matching a committed version)")
	case porcupine.Illegal:
		valid = False
		if lin.bounded {
			parts = append(parts, "is not linearizable if writes of unknown outcome land promptly (see "+ConfigHTML+")")
		} else {
			parts = append(parts, "is not linearizable (no order of the writes explains every answer; see "+ConfigHTML+")")
		}
	default:
		valid = valid.And(Unknown)
		parts = append(parts, fmt.Sprintf("could not be checked for linearizability within %g s", configCheckTimeout.Seconds()))
	}
	note(lin.problems...)

	mono := cfgMonotonic(r.History, reads)
	figs["monotonic_violations"] = len(mono)
	if len(mono) == 0 {
		parts = append(parts, "no node's reads went back to an older version except across a restart")
	} else {
		valid = False
		parts = append(parts, fmt.Sprintf("%s went back to an older version on a node that was not restarted", cfgCount(len(mono), "read")))
		note(mono...)
	}

	conv := cfgConvergence(r, writes, reads, maxOK)
	figs["converge_within_s"] = r.Info.ConvergeWithin.Seconds()
	if conv.converged {
		figs["convergence_s"] = cfgSec(conv.took)
		figs["converged_version"] = conv.version
	}
	parts = append(parts, conv.summary)
	valid = valid.And(conv.valid)
	if conv.problem != "" {
		note(conv.problem)
	}

	summary := fmt.Sprintf("The config history of %s and %s %s.", cfgCount(len(writes), "write"), cfgCount(len(reads), "read"), cfgJoin(parts))
	if lin.htmlErr != nil {
		summary += fmt.Sprintf(" (%s could not be written: %v)", ConfigHTML, lin.htmlErr)
	}
	return CheckResult{Valid: valid, Summary: summary, Problems: problems, Figures: figs}
}

// cfgOp is one config operation: an invoke paired with its completion.
type cfgOp struct {
	f       string
	process Process
	node    string
	in, out Value  // the invoke's value and the completion's
	typ     OpType // OK, Fail or Info; Info too when the history ends before a completion
	done    bool   // a completion was recorded
	call    int64
	ret     int64 // the completion's time, or the history's end if none
}

// cfgOps pairs each config invoke with the next completion of the same process. A write
// left without a completion counts as info: it may have been committed.
func cfgOps(h []Op) []*cfgOp {
	var ops []*cfgOp
	open := map[Process]*cfgOp{}
	var end int64
	for i := range h {
		op := &h[i]
		end = max(end, op.Time)
		if op.Process == NemesisProcess || (op.F != FAdd && op.F != FUpdate && op.F != FDelete && op.F != FRead) {
			continue
		}
		if op.Type == Invoke {
			o := &cfgOp{f: op.F, process: op.Process, node: op.Node, in: op.Value, typ: Info, call: op.Time, ret: -1}
			open[op.Process] = o
			ops = append(ops, o)
			continue
		}
		if o := open[op.Process]; o != nil && o.f == op.F {
			o.typ, o.out, o.ret, o.done = op.Type, op.Value, op.Time, true
			delete(open, op.Process)
		}
	}
	for _, o := range ops {
		if o.ret < 0 {
			o.ret = end
		}
	}
	return ops
}

// cfgDuplicates names acknowledged writes that share a version.
func cfgDuplicates(writes []*cfgOp) []string {
	first := map[uint64]*cfgOp{}
	var out []string
	for _, w := range writes {
		if w.typ != OK {
			continue
		}
		if p := first[w.out.Version]; p != nil {
			out = append(out, fmt.Sprintf("two writes were both acknowledged as version %d: %s and %s",
				w.out.Version, describeCfgOp(p), describeCfgOp(w)))
			continue
		}
		first[w.out.Version] = w
	}
	return out
}

// infoSettle is how long after its client gave up without an answer a node may still be
// handling a write: the server notices the closed connection and stops within milliseconds,
// so this is generous. A node that answered (503, ...) had stopped when it answered.
const infoSettle = 2 * time.Second

// cfgLin is the linearizability verdict.
type cfgLin struct {
	res      porcupine.CheckResult
	bounded  bool // Illegal only with info writes closed early (see cfgLinearizable)
	problems []string
	htmlErr  error
}

// cfgLinearizable runs porcupine over the config ops and writes config.html into dir (when
// dir is set). Failed and info reads are left out: they say nothing about the config.
//
// An info write may take effect at any time after it was sent, so the spec gives it an
// interval that never ends. Checked that way, every unanswered write stays a candidate at
// every later point, and proving a history wrong means trying every subset of them
// everywhere: with a few dozen, porcupine times out instead of finding the bug. So the check
// runs twice. First with each info write closed at the answer of the first acknowledged
// write sent after its node stopped handling it (when the node answered; else when the client
// gave up plus infoSettle, or plus a pause of that node): herd's writes are compare-and-set on
// the version the node had applied when it proposed, so such a write can only land before any
// write proposed later. Shorter intervals only remove linearizations, so Ok there is Ok. If
// that pass finds none and confirm is set, the second pass uses the spec's open intervals and
// its verdict stands; if it times out, the first pass's stands, saying what it rests on.
func cfgLinearizable(dir string, h []Op, ops []*cfgOp, confirm bool) cfgLin {
	var end int64
	reads := cfgReads{}
	for _, o := range ops {
		end = max(end, o.ret)
		if o.f == FRead && o.typ == OK {
			reads[o.out.Version] = max(reads[o.out.Version], o.ret)
		}
	}
	model := cfgModel(reads)
	hist := cfgHistory(ops, cfgInfoBounds(h, ops, end))
	res, info := porcupine.CheckOperationsVerbose(model, hist, configCheckTimeout)
	out := cfgLin{res: res}
	closed := slices.ContainsFunc(hist, func(op porcupine.Operation) bool {
		return op.Output.(cfgOutput).typ == Info && op.Return <= end
	})
	if res == porcupine.Illegal && closed {
		out.bounded = true
		if confirm {
			open := cfgHistory(ops, func(*cfgOp) int64 { return end + 1 })
			if res2, info2 := porcupine.CheckOperationsVerbose(model, open, configCheckTimeout); res2 != porcupine.Unknown {
				out.res, out.bounded, info, hist = res2, false, info2, open
			}
		}
	}
	if dir != "" {
		info.AddAnnotations(cfgNemesisMarks(h))
		out.htmlErr = porcupine.VisualizePath(model, info, filepath.Join(dir, ConfigHTML))
	}
	switch {
	case out.res == porcupine.Illegal:
		out.problems = cfgExplain(model, hist, info)
		if out.bounded {
			out.problems = append(out.problems, fmt.Sprintf("this rests on each write of unknown outcome landing, if ever, before any write sent after its node answered it (or %g s after its client gave up unanswered) was acknowledged, as herd's compare-and-set writes must; without that limit porcupine gave up after %g s",
				infoSettle.Seconds(), configCheckTimeout.Seconds()))
		}
	case out.res == porcupine.Unknown:
		out.problems = []string{fmt.Sprintf("porcupine gave up after %g s: too many orders of the writes of unknown outcome to try", configCheckTimeout.Seconds())}
	}
	return out
}

// cfgNemesisMarks marks the faults on config.html, where stale reads and unknown outcomes
// cluster around them.
func cfgNemesisMarks(h []Op) []porcupine.Annotation {
	var marks []porcupine.Annotation
	for i := range h {
		op := &h[i]
		if op.Process != NemesisProcess {
			continue
		}
		what := op.F + " " + op.Node
		if f := op.Value.Fault; f != nil {
			what = strings.TrimSpace(fmt.Sprintf("%s %s %s", op.F, f.Kind, strings.Join(f.Nodes, ",")))
		}
		marks = append(marks, porcupine.Annotation{Tag: "nemesis", Start: op.Time, Description: what,
			Details: fmt.Sprintf("%.3f s", cfgSec(op.Time))})
	}
	return marks
}

// cfgInfoBounds returns, for each info write, when it must have taken effect if it ever did:
// the answer of the first acknowledged write sent after the node stopped handling it (see
// cfgLinearizable); end+1 when there is none.
func cfgInfoBounds(h []Op, ops []*cfgOp, end int64) func(*cfgOp) int64 {
	// Pauses per node: a paused node resumes handling its requests when the pause stops.
	type span struct{ from, to int64 }
	pauses := map[string][]span{}
	for i := range h {
		op := &h[i]
		if op.Process != NemesisProcess || op.Value.Fault == nil || op.Value.Fault.Kind != KindPause {
			continue
		}
		for _, n := range op.Value.Fault.Nodes {
			ps := pauses[n]
			switch {
			case op.F == FStart:
				pauses[n] = append(ps, span{op.Time, math.MaxInt64})
			case op.F == FStop && len(ps) > 0 && ps[len(ps)-1].to == math.MaxInt64:
				ps[len(ps)-1].to = op.Time
			}
		}
	}
	// Acknowledged writes by invoke time, with the earliest answer among those sent later.
	var acked []*cfgOp
	for _, o := range ops {
		if o.f != FRead && o.typ == OK {
			acked = append(acked, o)
		}
	}
	sort.Slice(acked, func(i, j int) bool { return acked[i].call < acked[j].call })
	earliest := make([]int64, len(acked)+1)
	earliest[len(acked)] = end + 1
	for i := len(acked) - 1; i >= 0; i-- {
		earliest[i] = min(earliest[i+1], acked[i].ret)
	}
	return func(o *cfgOp) int64 {
		if !o.done {
			return end + 1 // the client never gave up: no telling when the node did
		}
		stopped := o.ret // it answered, so its handler had returned
		if o.out.Status == 0 {
			stopped += int64(infoSettle)
			for _, p := range pauses[o.node] {
				if p.from <= stopped && p.to >= o.call {
					if p.to == math.MaxInt64 {
						return end + 1
					}
					stopped = max(stopped, p.to+int64(infoSettle))
				}
			}
		}
		i := sort.Search(len(acked), func(i int) bool { return acked[i].call > stopped })
		return earliest[i]
	}
}

// cfgHistory turns the ops into porcupine's, info writes ending at infoRet.
func cfgHistory(ops []*cfgOp, infoRet func(*cfgOp) int64) []porcupine.Operation {
	// Rows of the visualisation: one per client process, but a process whose op ended in info
	// moves to a new row, as that op stays open past its next ones.
	rows := map[Process]int{}
	nextRow := 0
	var hist []porcupine.Operation
	for i, o := range ops {
		if o.f == FRead && o.typ != OK {
			continue
		}
		row, ok := rows[o.process]
		if !ok {
			row = nextRow
			nextRow++
			rows[o.process] = row
		}
		ret := o.ret
		if o.typ == Info {
			ret = max(o.ret, infoRet(o))
			delete(rows, o.process)
		}
		hist = append(hist, porcupine.Operation{
			ClientId: row,
			Input:    cfgInput{f: o.f, id: o.in.ID, rpm: o.in.RPM, node: o.node, call: o.call},
			Call:     o.call,
			Output:   cfgOutput{typ: o.typ, status: o.out.Status, version: o.out.Version, models: cfgKey(o.out.Models)},
			Return:   ret,
			Metadata: cfgMeta{index: i, text: describeCfgMeta(o)},
		})
	}
	return hist
}

// cfgExplain names the operation porcupine could not place: the earliest-returning one
// missing from the longest order it found, and the state that order reached. It is a pointer
// into config.html, which shows every partial order.
func cfgExplain(model porcupine.Model, hist []porcupine.Operation, info porcupine.LinearizationInfo) []string {
	// No partial order at all means not even the first operation could be placed.
	var longest []porcupine.Operation
	if partitions := info.PartialLinearizationsOperations(); len(partitions) > 0 {
		for _, p := range partitions[0] {
			if len(p) > len(longest) {
				longest = p
			}
		}
	}
	placed := map[int]bool{}
	state := model.Init()
	for _, op := range longest {
		placed[op.Metadata.(cfgMeta).index] = true
		_, state = model.Step(state, op.Input, op.Output)
	}
	var stuck *porcupine.Operation
	for i := range hist {
		if !placed[hist[i].Metadata.(cfgMeta).index] && (stuck == nil || hist[i].Return < stuck.Return) {
			stuck = &hist[i]
		}
	}
	if stuck == nil {
		return []string{"see " + ConfigHTML}
	}
	return []string{fmt.Sprintf("no order of the writes explains %q (%s): the longest consistent order places %d of %d operations and reaches %s; see %s",
		model.DescribeOperation(stuck.Input, stuck.Output), stuck.Metadata.(cfgMeta).text,
		len(longest), len(hist), model.DescribeState(state), ConfigHTML)}
}

// --- the model ---

// cfgInput and cfgOutput are an op's invoke and completion as the model sees them.
type cfgInput struct {
	f, id string
	rpm   int64
	node  string // reads: the node read
	call  int64  // when it was invoked: every op that returned before is already placed
}

type cfgOutput struct {
	typ     OpType
	status  int
	version uint64
	models  string // reads: cfgKey of the content served
}

// cfgMeta is porcupine's per-op metadata: the op's index, to find it again, and a line for the page.
type cfgMeta struct {
	index int
	text  string
}

// cfgState is the model's state: the current version and content, and the content of those
// earlier versions a stale read not yet placed may still show. Keeping every past version
// would be exact too, but then two orders of the same writes would differ forever in some
// version nobody reads, and porcupine could never merge them: its search would grow with
// every ambiguous write in the run. A version is dropped once every read showing it returned
// before the op being placed was invoked, as porcupine has placed all of those already.
// States are never modified once built.
type cfgState struct {
	v       uint64
	content map[string]int64
	key     string   // cfgKey(content)
	old     []cfgOld // earlier versions still wanted, ascending
	hash    uint64
}

type cfgOld struct {
	v   uint64
	key string
}

// cfgReads is, per version, the latest return of an ok read showing it: how long the model
// must remember that version's content.
type cfgReads map[uint64]int64

func newCfgState(v uint64, content map[string]int64, key string, old []cfgOld) *cfgState {
	h := fnv.New64a()
	put := func(o cfgOld) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], o.v)
		h.Write(b[:])
		h.Write([]byte(o.key))
		h.Write([]byte{0})
	}
	for _, o := range old {
		put(o)
	}
	put(cfgOld{v, key})
	return &cfgState{v: v, content: content, key: key, old: old, hash: h.Sum64()}
}

// allows reports whether in's precondition holds: add needs the id absent, update and delete
// need it present. herd answers 400 exactly when it does not.
func (s *cfgState) allows(in cfgInput) bool {
	_, exists := s.content[in.id]
	return exists == (in.f != FAdd)
}

// forget drops the versions no read placed from now on can show.
func (s *cfgState) forget(now int64, reads cfgReads) *cfgState {
	done := func(o cfgOld) bool { return reads[o.v] < now }
	if !slices.ContainsFunc(s.old, done) {
		return s
	}
	return newCfgState(s.v, s.content, s.key, slices.DeleteFunc(slices.Clone(s.old), done))
}

// apply returns the version in makes of s (whose precondition holds).
func (s *cfgState) apply(in cfgInput, reads cfgReads) *cfgState {
	c := maps.Clone(s.content)
	if in.f == FDelete {
		delete(c, in.id)
	} else {
		c[in.id] = in.rpm
	}
	old := s.old
	if reads[s.v] >= in.call {
		old = append(slices.Clip(old), cfgOld{s.v, s.key})
	}
	return newCfgState(s.v+1, c, cfgKey(c), old)
}

// shows reports whether version v with content key existed up to now.
func (s *cfgState) shows(v uint64, key string) bool {
	switch {
	case v == 0:
		return key == "" // a node serving its file, which has no managed deployment
	case v == s.v:
		return key == s.key
	}
	i, found := slices.BinarySearchFunc(s.old, v, func(o cfgOld, v uint64) int { return cmp.Compare(o.v, v) })
	return found && s.old[i].key == key
}

func cfgEqual(a, b *cfgState) bool {
	return a == b || a.hash == b.hash && a.v == b.v && a.key == b.key && slices.Equal(a.old, b.old)
}

// cfgStep is the sequential spec. It returns every state the op can leave: none when the op's
// answer is impossible here, two for an info write (not applied, or applied).
func cfgStep(s *cfgState, in cfgInput, out cfgOutput, reads cfgReads) []*cfgState {
	s = s.forget(in.call, reads)
	switch {
	case in.f == FRead:
		// A read may be stale: any version up to the current one, with exactly its content.
		if s.shows(out.version, out.models) {
			return []*cfgState{s}
		}
		return nil
	case out.typ == OK:
		if s.allows(in) && out.version == s.v+1 {
			return []*cfgState{s.apply(in, reads)}
		}
		return nil
	case out.typ == Fail:
		// Not applied. A 400 also claims the precondition failed; other refusals (409
		// conflict, ...) claim nothing about the content.
		if out.status == 400 && s.allows(in) {
			return nil
		}
		return []*cfgState{s}
	default:
		// Info: committed or not, we cannot tell. If its precondition fails it cannot commit.
		if s.allows(in) {
			return []*cfgState{s, s.apply(in, reads)}
		}
		return []*cfgState{s}
	}
}

// cfgModel is the spec for porcupine. It starts at version 1, the file's config seeded as the
// cluster's first version, which holds no managed deployment.
func cfgModel(reads cfgReads) porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Init: func() []any { return []any{newCfgState(1, map[string]int64{}, "", nil)} },
		Step: func(state, input, output any) []any {
			var out []any
			for _, s := range cfgStep(state.(*cfgState), input.(cfgInput), output.(cfgOutput), reads) {
				out = append(out, s)
			}
			return out
		},
		Equal: func(a, b any) bool { return cfgEqual(a.(*cfgState), b.(*cfgState)) },
		Hash:  func(s any) uint64 { return s.(*cfgState).hash },
		DescribeOperation: func(input, output any) string {
			in, out := input.(cfgInput), output.(cfgOutput)
			var op string
			switch in.f {
			case FRead:
				return fmt.Sprintf("read %s -> v%d {%s}", in.node, out.version, out.models)
			case FDelete:
				op = "delete " + in.id
			default:
				op = fmt.Sprintf("%s %s rpm=%d", in.f, in.id, in.rpm)
			}
			switch {
			case out.typ == OK:
				return fmt.Sprintf("%s -> v%d", op, out.version)
			case out.typ == Fail:
				return fmt.Sprintf("%s -> refused (%s)", op, cfgStatus(out.status))
			}
			return fmt.Sprintf("%s -> ? (%s)", op, cfgStatus(out.status))
		},
		DescribeState: func(state any) string {
			s := state.(*cfgState)
			return fmt.Sprintf("v%d {%s}", s.v, s.key)
		},
		DescribeOperationMetadata: func(m any) string {
			if m == nil {
				return ""
			}
			return m.(cfgMeta).text
		},
	}
	return nm.ToModel()
}

// cfgKey is a content's canonical form, also how the page shows it: "cfg-1:40 cfg-3:20".
func cfgKey(m map[string]int64) string {
	var b []byte
	for i, id := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendInt(append(append(b, id...), ':'), m[id], 10)
	}
	return string(b)
}

func cfgStatus(s int) string {
	if s == 0 {
		return "no answer"
	}
	return fmt.Sprintf("HTTP %d", s)
}

func describeCfgMeta(o *cfgOp) string {
	when := fmt.Sprintf("%.3f s to %.3f s", cfgSec(o.call), cfgSec(o.ret))
	switch {
	case !o.done:
		when = fmt.Sprintf("sent at %.3f s, never answered", cfgSec(o.call))
	case o.typ == Info:
		when += fmt.Sprintf(", %s: outcome unknown", cfgStatus(o.out.Status))
	}
	return fmt.Sprintf("client %d on %s, %s", o.process, o.node, when)
}

func describeCfgOp(o *cfgOp) string {
	if o.f == FDelete {
		return fmt.Sprintf("delete %s (%s)", o.in.ID, describeCfgMeta(o))
	}
	return fmt.Sprintf("%s %s rpm=%d (%s)", o.f, o.in.ID, o.in.RPM, describeCfgMeta(o))
}

// --- monotonic reads per node ---

// cfgMonotonic checks that a read on a node never shows a lower version than a read on the
// same node that finished before it started, unless the node was killed, restarted or exited
// between the first read's start and the second's end: a restarted node serves its file
// (version 0) until raft replays, which the linearizability check already allows.
func cfgMonotonic(h []Op, reads []*cfgOp) []string {
	type event struct {
		t    int64
		kind int // 0 read invoked, 1 node restarted, 2 read completed: invokes first at equal times, so equal times count as overlapping
		read *cfgOp
		node string
	}
	var evs []event
	for _, o := range reads {
		if o.typ == OK {
			evs = append(evs, event{o.call, 0, o, o.node}, event{o.ret, 2, o, o.node})
		}
	}
	for i := range h {
		op := &h[i]
		if op.Process != NemesisProcess {
			continue
		}
		switch {
		case op.F == FExit && op.Node != "":
			evs = append(evs, event{t: op.Time, kind: 1, node: op.Node})
		case (op.F == FStart || op.F == FStop) && op.Value.Fault != nil && op.Value.Fault.Kind == KindKill:
			for _, n := range op.Value.Fault.Nodes {
				evs = append(evs, event{t: op.Time, kind: 1, node: n})
			}
		}
	}
	sort.SliceStable(evs, func(i, j int) bool {
		if evs[i].t != evs[j].t {
			return evs[i].t < evs[j].t
		}
		return evs[i].kind < evs[j].kind
	})

	// Per node: the highest version among reads completed since the last restart that also
	// started after it, and which read showed it.
	best := map[string]*cfgOp{}
	inFlight := map[*cfgOp]bool{} // reads running; false once a restart overlaps them
	floor := map[*cfgOp]*cfgOp{}  // what each read must not go below, fixed when it starts
	var out []string
	for _, e := range evs {
		switch e.kind {
		case 0:
			inFlight[e.read] = true
			floor[e.read] = best[e.node]
		case 1:
			delete(best, e.node)
			for r := range inFlight {
				if r.node == e.node {
					inFlight[r] = false
				}
			}
		case 2:
			clean := inFlight[e.read]
			delete(inFlight, e.read)
			if !clean {
				continue
			}
			if f := floor[e.read]; f != nil && e.read.out.Version < f.out.Version {
				out = append(out, fmt.Sprintf("%s: a read at %.3f s to %.3f s served version %d after a read that finished at %.3f s had served version %d, with no kill or restart of %s in between",
					e.node, cfgSec(e.read.call), cfgSec(e.read.ret), e.read.out.Version, cfgSec(f.ret), f.out.Version, e.node))
			}
			if b := best[e.node]; b == nil || e.read.out.Version > b.out.Version {
				best[e.node] = e.read
			}
		}
	}
	return out
}

// --- convergence after the last heal ---

type cfgConv struct {
	valid     Valid
	converged bool
	took      int64 // ns from the heal to agreement
	version   uint64
	summary   string // a clause for the summary
	problem   string
}

// cfgConvergence finds when, after the last heal, every node's latest ok read showed one version
// and content, at least the newest acknowledged write. The clock starts at the last nemesis
// stop, or at the last write's completion if writes went on after it (nothing can settle while
// writes still arrive); with no heal at all, at the first read after the last write.
func cfgConvergence(r *Run, writes, reads []*cfgOp, maxOK uint64) cfgConv {
	var lastStop, lastWrite int64 = -1, -1
	for i := range r.History {
		if op := &r.History[i]; op.Process == NemesisProcess && op.F == FStop {
			lastStop = max(lastStop, op.Time)
		}
	}
	for _, w := range writes {
		// A write the history never saw complete (the run ended first) ended, for this
		// purpose, when it was sent: otherwise it would push the clock past every read.
		if w.done {
			lastWrite = max(lastWrite, w.ret)
		} else {
			lastWrite = max(lastWrite, w.call)
		}
	}
	from, what := max(lastStop, lastWrite), "the last heal"
	if lastStop < 0 || lastWrite > lastStop {
		what = "the last write"
	}
	if lastStop < 0 {
		from = math.MaxInt64
		for _, o := range reads {
			if o.call >= lastWrite {
				from = min(from, o.call)
			}
		}
	}
	var after []*cfgOp
	tried := 0
	for _, o := range reads {
		if o.call >= from {
			tried++
			if o.typ == OK {
				after = append(after, o)
			}
		}
	}
	within := r.Info.ConvergeWithin
	promise := "no time was promised"
	if within > 0 {
		promise = fmt.Sprintf("promised within %g s", within.Seconds())
	}
	if tried == 0 {
		return cfgConv{valid: Unknown,
			summary: fmt.Sprintf("no node was read after %s, so convergence could not be checked", what),
			problem: fmt.Sprintf("no read was made after %s: the runner must keep reading every node until they agree", what)}
	}

	nodes := make([]string, 0, len(r.Info.Nodes))
	for _, n := range r.Info.Nodes {
		nodes = append(nodes, n.Name)
	}
	if len(nodes) == 0 {
		for _, o := range reads {
			if !slices.Contains(nodes, o.node) {
				nodes = append(nodes, o.node)
			}
		}
		slices.Sort(nodes)
	}

	sort.SliceStable(after, func(i, j int) bool { return after[i].ret < after[j].ret })
	latest := map[string]*cfgOp{}
	// served lists what each node last served by time t, for the problem line.
	served := func(t int64) string {
		at := map[string]*cfgOp{}
		for _, o := range after {
			if o.ret <= t {
				at[o.node] = o
			}
		}
		vs := make([]string, len(nodes))
		for i, n := range nodes {
			vs[i] = "none"
			if o := at[n]; o != nil {
				vs[i] = fmt.Sprint(o.out.Version)
			}
		}
		return fmt.Sprintf("nodes %s served versions %s", strings.Join(nodes, ","), strings.Join(vs, ","))
	}
	var end int64
	for i := range r.History {
		end = max(end, r.History[i].Time)
	}
	for _, o := range after {
		latest[o.node] = o
		if !cfgAgreed(nodes, latest, maxOK) {
			continue
		}
		took := o.ret - from
		c := cfgConv{valid: True, converged: true, took: took, version: o.out.Version}
		if within > 0 && time.Duration(took) > within {
			c.valid = False
			c.summary = fmt.Sprintf("all %d nodes served version %d only %.1f s after %s (%s)", len(nodes), o.out.Version, cfgSec(took), what, promise)
			c.problem = fmt.Sprintf("after %s (at %.1f s), %s for %.1f s until they agreed on version %d; %s",
				what, cfgSec(from), served(from+int64(within)), cfgSec(took), o.out.Version, promise)
			return c
		}
		c.summary = fmt.Sprintf("all %d nodes served version %d %.1f s after %s (%s)", len(nodes), o.out.Version, cfgSec(took), what, promise)
		return c
	}
	return cfgConv{valid: False,
		summary: fmt.Sprintf("the %d nodes never agreed on one version after %s (%s)", len(nodes), what, promise),
		problem: fmt.Sprintf("after %s (at %.1f s), %s for %.1f s and never agreed on one version and content of at least version %d; %s",
			what, cfgSec(from), served(end), cfgSec(end-from), maxOK, promise)}
}

// cfgAgreed reports whether every node's latest read shows one version, no older than least,
// and one content.
func cfgAgreed(nodes []string, latest map[string]*cfgOp, least uint64) bool {
	var first *cfgOp
	for _, n := range nodes {
		o := latest[n]
		if o == nil || o.out.Version < least {
			return false
		}
		if first == nil {
			first = o
		} else if o.out.Version != first.out.Version || cfgKey(o.out.Models) != cfgKey(first.out.Models) {
			return false
		}
	}
	return first != nil
}

func cfgSec(ns int64) float64 { return float64(ns) / 1e9 }

func cfgCount(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// cfgJoin joins clauses as "a, b and c".
func cfgJoin(p []string) string {
	if len(p) <= 1 {
		return strings.Join(p, "")
	}
	return strings.Join(p[:len(p)-1], ", ") + " and " + p[len(p)-1]
}
