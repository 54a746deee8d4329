package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
)

// streamReport is everything `herdbench streams` measured.
type streamReport struct {
	Command string         `json:"command"`
	Machine machineInfo    `json:"machine"`
	Options map[string]any `json:"options"`
	Samples []streamSample `json:"samples"`
}

// readStreamReport reads a run saved with --json.
func readStreamReport(path string) (streamReport, error) {
	var r streamReport
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", path, err)
	}
	// JSON gives the target list back as []any.
	if ts, ok := r.Options["targets"].([]any); ok {
		names := make([]string, 0, len(ts))
		for _, t := range ts {
			if n, ok := t.(string); ok {
				names = append(names, n)
			}
		}
		r.Options["targets"] = names
	}
	return r, nil
}

func streamOptionsJSON(o streamOptions) map[string]any {
	return map[string]any{
		"concurrency": o.concurrency, "duration": o.duration.String(), "warmup": o.warmup.String(), "rounds": o.rounds,
		"targets": o.targets, "upstream_ttft": o.ttft.String(), "upstream_gap": o.gap.String(), "events": o.events,
		"together": o.together, "fresh": o.fresh,
	}
}

// overRounds is a figure over rounds: the median and the range.
type overRounds struct{ med, lo, hi float64 }

func roundsOf(v []float64) overRounds {
	if len(v) == 0 {
		return overRounds{math.NaN(), math.NaN(), math.NaN()}
	}
	return overRounds{median(v), slices.Min(v), slices.Max(v)}
}

// fmtRounds prints a figure over rounds with format f: "med (lo–hi)", or just the median for one round.
func fmtRounds(s overRounds, f string) string {
	if math.IsNaN(s.med) {
		return "n/a"
	}
	if s.lo == s.hi {
		return fmt.Sprintf(f, s.med)
	}
	return fmt.Sprintf(f+" ("+f+"–"+f+")", s.med, s.lo, s.hi)
}

// streamCell is one target at one concurrency, over its rounds.
type streamCell struct {
	perSecond, success, ttftP50, ttftP99, addedP50, addedP99, addedGapP99 []float64
	cpu, hwm, kib, writes                                                 []float64
	// vsFloor holds, per round, this target's figure over the floor's in the same round:
	// CPU, KiB per stream, added TTFT p99, streams/s, writes per event.
	vsFloor [5][]float64
}

// streamCells groups samples by concurrency and target. Added figures subtract the direct
// upstream's from the same round, so both saw the same machine moment as nearly as possible.
func streamCells(samples []streamSample) map[int]map[string]*streamCell {
	direct, floor := map[[2]int]streamSample{}, map[[2]int]streamSample{}
	for _, s := range samples {
		switch s.Target {
		case streamDirect:
			direct[[2]int{s.Concurrency, s.Round}] = s
		case streamFloor:
			floor[[2]int{s.Concurrency, s.Round}] = s
		}
	}
	out := map[int]map[string]*streamCell{}
	for _, s := range samples {
		if out[s.Concurrency] == nil {
			out[s.Concurrency] = map[string]*streamCell{}
		}
		c := out[s.Concurrency][s.Target]
		if c == nil {
			c = &streamCell{}
			out[s.Concurrency][s.Target] = c
		}
		c.perSecond = append(c.perSecond, s.PerSecond)
		if n := s.Completed + s.Failed; n > 0 {
			c.success = append(c.success, 100*float64(s.Completed)/float64(n))
		}
		c.ttftP50, c.ttftP99 = append(c.ttftP50, s.TTFT.P50/1000), append(c.ttftP99, s.TTFT.P99/1000)
		if d, ok := direct[[2]int{s.Concurrency, s.Round}]; ok && s.Target != streamDirect {
			c.addedP50 = append(c.addedP50, (s.TTFT.P50-d.TTFT.P50)/1000)
			c.addedP99 = append(c.addedP99, (s.TTFT.P99-d.TTFT.P99)/1000)
			c.addedGapP99 = append(c.addedGapP99, (s.Gap.P99-d.Gap.P99)/1000)
		}
		if s.Target != streamDirect {
			c.cpu, c.kib, c.writes = append(c.cpu, s.CPUPer1000), append(c.kib, s.KiBPerStream), append(c.writes, s.WritesPerEvent)
			c.hwm = append(c.hwm, float64(s.HWMKB)/1024)
		}
		f, ok := floor[[2]int{s.Concurrency, s.Round}]
		if ok && s.Target != streamFloor && s.Target != streamDirect {
			var added, floorAdded float64 = math.NaN(), math.NaN()
			if d, ok := direct[[2]int{s.Concurrency, s.Round}]; ok {
				added, floorAdded = s.TTFT.P99-d.TTFT.P99, f.TTFT.P99-d.TTFT.P99
			}
			for i, r := range []*float64{ratio(s.CPUPer1000, f.CPUPer1000), ratio(s.KiBPerStream, f.KiBPerStream),
				ratio(added, floorAdded), ratio(s.PerSecond, f.PerSecond), ratio(s.WritesPerEvent, f.WritesPerEvent)} {
				if r != nil {
					c.vsFloor[i] = append(c.vsFloor[i], *r)
				}
			}
		}
	}
	return out
}

// figure is one of the five figures compared with the floor, in vsFloor's order: CPU, KiB per
// stream, added TTFT p99, streams/s, writes per event.
func (c *streamCell) figure(i int) []float64 {
	return [...][]float64{c.cpu, c.kib, c.addedP99, c.perSecond, c.writes}[i]
}

// streamCriterion is one of issue 16's criteria ("Done when"): a herd target's figure, as the
// median over rounds, against the floor's at the concurrencies named (all when none).
type streamCriterion struct {
	what   string
	figure int    // streamCell.figure's index
	at     []int  // the concurrencies it applies to; nil: every one
	atMost bool   // herd's must be at most the floor's (else at least)
	format string // how one value prints
}

// holds reports whether a herd-over-floor ratio meets the criterion.
func (cr streamCriterion) holds(r float64) bool {
	if cr.atMost {
		return r <= 1
	}
	return r >= 1
}

var streamCriteria = []streamCriterion{
	{what: "CPU per stream", figure: 0, at: []int{500}, atMost: true, format: "%.3f s per 1000 streams"},
	{what: "KiB per stream", figure: 1, at: []int{500}, atMost: true, format: "%.0f KiB"},
	{what: "added TTFT p99", figure: 2, at: []int{2000, 5000}, atMost: true, format: "%+.2f ms"},
	{what: "streams/s", figure: 3, at: []int{2000, 5000}, format: "%.0f"},
	{what: "writes per event", figure: 4, atMost: true, format: "%.2f"},
}

// streamChecks evaluates issue 16's criteria for one herd target at every concurrency
// measured: the verdict on the medians over rounds, as the issue asks, and round by round in
// the detail, to show how steady it is on this machine.
func streamChecks(cells map[int]map[string]*streamCell, concs []int, target string) []check {
	var checks []check
	for _, cr := range streamCriteria {
		for _, c := range concs {
			h, f := cells[c][target], cells[c][streamFloor]
			if h == nil || f == nil || (cr.at != nil && !slices.Contains(cr.at, c)) {
				continue
			}
			cmp := "≥"
			if cr.atMost {
				cmp = "≤"
			}
			ch := check{What: fmt.Sprintf("%s %s at C=%d %s the floor's", target, cr.what, c, cmp)}
			hv, fv := median(h.figure(cr.figure)), median(f.figure(cr.figure))
			switch {
			case math.IsNaN(hv) || math.IsNaN(fv):
				continue
			case fv <= 0:
				ch.Verdict = "INCONCLUSIVE"
				ch.Detail = fmt.Sprintf("the floor's is "+cr.format+", so no ratio; %s's is "+cr.format, fv, target, hv)
			default:
				r := hv / fv
				ch.Verdict = verdict(cr.holds(r))
				ch.Detail = fmt.Sprintf(cr.format+" against "+cr.format+": %.3f×", hv, fv, r)
			}
			if rs := h.vsFloor[cr.figure]; len(rs) > 1 {
				held := 0
				for _, r := range rs {
					if cr.holds(r) {
						held++
					}
				}
				ch.Detail += fmt.Sprintf("; round by round %s, holding in %d of %d", fmtRounds(roundsOf(rs), "%.2f×"), held, len(rs))
			}
			checks = append(checks, ch)
		}
	}
	return checks
}

// writeStreamChecks prints the checks of each herd target (herd-baseline is a reference, not
// judged) and a line that says whether all of them hold.
func writeStreamChecks(w io.Writer, cells map[int]map[string]*streamCell, concs []int, targets []string, rounds int) {
	for _, t := range targets {
		if t != streamHerd && t != streamHerdLimits {
			continue
		}
		checks := streamChecks(cells, concs, t)
		if len(checks) == 0 {
			continue
		}
		fmt.Fprintf(w, "### Checks for %s (issue 16)\n\n", t)
		failed := 0
		for _, c := range checks {
			fmt.Fprintf(w, "- **%s** %s: %s\n", c.Verdict, c.What, c.Detail)
			if c.Verdict != "PASS" {
				failed++
			}
		}
		if failed > 0 {
			fmt.Fprintf(w, "\n%d of %d checks do not pass.", failed, len(checks))
		} else {
			fmt.Fprintf(w, "\nAll %d checks pass.", len(checks))
		}
		if rounds < 3 {
			fmt.Fprintf(w, " The issue asks for medians of at least 3 rounds; this run had %d.", rounds)
		}
		fmt.Fprintf(w, "\n\n")
	}
}

// medianRatio is a's median over b's, "n/a" when either is missing or b's is not positive.
func medianRatio(a, b []float64) string { return fmtRatio(ratio(median(a), median(b))) }

func writeStreamMarkdown(out io.Writer, r streamReport) error {
	w := bufio.NewWriter(out)
	m := r.Machine
	fmt.Fprintf(w, "## Streams: herd vs a bare httputil.ReverseProxy (the floor) vs direct\n\n")
	fmt.Fprintf(w, "- Date: %s\n- Machine: %s, nproc %d (GOMAXPROCS %d), Linux %s, %s; herd built with %s at %s\n",
		m.Date, m.CPUModel, m.NumCPU, m.GOMAXPROCS, m.Kernel, m.MemTotal, m.HerdGoVersion, m.HerdRevision)
	fmt.Fprintf(w, "- Command: `%s`\n", r.Command)
	fmt.Fprintf(w, "- Upstream: first event after %v, then %v content events %v apart (plus usage and [DONE]); the client keeps C streams in flight and does not ask for usage.\n",
		r.Options["upstream_ttft"], r.Options["events"], r.Options["upstream_gap"])
	fmt.Fprintf(w, "- Each cell: the median over %v rounds, the range in parentheses. Added = the target's figure minus direct's in the same round. The C clients start spread over the first stream's length. CPU is the proxy process's per 1,000 completed streams; peak RSS is its VmHWM over the load (warm-up included), and KiB per stream that peak above its RSS at start, divided by C; writes per event are its write syscalls (/proc/PID/io syscw) per event the client received.\n\n",
		r.Options["rounds"])
	if fresh, _ := r.Options["fresh"].(bool); fresh {
		fmt.Fprintf(w, "- Fresh: the fake upstream and every proxy were started anew for each round, so no process's state carried from one round to the next.\n\n")
	}
	if together, _ := r.Options["together"].(bool); together {
		fmt.Fprintf(w, "- Together: in each round the proxy targets were loaded at the same time, each with its own C streams (direct alone, before them), so the machine was busier than C alone makes it; compare the proxies with each other, round by round.\n\n")
	}
	cells := streamCells(r.Samples)
	concs := make([]int, 0, len(cells))
	for c := range cells {
		concs = append(concs, c)
	}
	slices.Sort(concs)
	targets, _ := r.Options["targets"].([]string)
	for _, c := range concs {
		fmt.Fprintf(w, "### C = %d\n\n", c)
		fmt.Fprintln(w, "| target | streams/s | success | TTFT p50 | TTFT p99 | added TTFT p50 | added TTFT p99 | added gap p99 | CPU s / 1000 streams | peak RSS | KiB / stream | writes / event |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
		for _, t := range targets {
			x := cells[c][t]
			if x == nil {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", t,
				fmtRounds(roundsOf(x.perSecond), "%.0f"), fmtRounds(roundsOf(x.success), "%.2f %%"),
				fmtRounds(roundsOf(x.ttftP50), "%.1f ms"), fmtRounds(roundsOf(x.ttftP99), "%.1f ms"),
				fmtRounds(roundsOf(x.addedP50), "%+.2f ms"), fmtRounds(roundsOf(x.addedP99), "%+.2f ms"),
				fmtRounds(roundsOf(x.addedGapP99), "%+.2f ms"),
				fmtRounds(roundsOf(x.cpu), "%.3f"), fmtRounds(roundsOf(x.hwm), "%.0f MiB"), fmtRounds(roundsOf(x.kib), "%.0f"),
				fmtRounds(roundsOf(x.writes), "%.2f"))
		}
		floor := cells[c][streamFloor]
		for _, t := range targets {
			x := cells[c][t]
			if x == nil || floor == nil || !strings.HasPrefix(t, "herd") {
				continue
			}
			fmt.Fprintf(w, "\n%s ÷ floor at C=%d: CPU %s, KiB/stream %s, added TTFT p99 %s, streams/s %s, writes/event %s\n", t, c,
				medianRatio(x.cpu, floor.cpu), medianRatio(x.kib, floor.kib), medianRatio(x.addedP99, floor.addedP99), medianRatio(x.perSecond, floor.perSecond),
				medianRatio(x.writes, floor.writes))
			if len(x.vsFloor[0]) > 1 {
				v := x.vsFloor
				fmt.Fprintf(w, "Round by round, each over the same round's floor (median, range): CPU %s, KiB/stream %s, added TTFT p99 %s, streams/s %s, writes/event %s\n",
					fmtRounds(roundsOf(v[0]), "%.2f×"), fmtRounds(roundsOf(v[1]), "%.2f×"), fmtRounds(roundsOf(v[2]), "%.2f×"),
					fmtRounds(roundsOf(v[3]), "%.2f×"), fmtRounds(roundsOf(v[4]), "%.2f×"))
			}
		}
		fmt.Fprintln(w)
	}
	rounds := 0
	for _, s := range r.Samples {
		rounds = max(rounds, s.Round)
	}
	writeStreamChecks(w, cells, concs, targets, rounds)
	return w.Flush()
}
