package chaos

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// usageWindow is what one deployment received in [Start, Start+LimitWindow) of history time.
type usageWindow struct {
	Start    int64
	Requests int64
	Tokens   int64
}

// windowBound is what a mode allowed in one window.
type windowBound struct {
	M        int   // the fault factor: views that could each admit up to the limit
	Requests int64 // 0 when the deployment has no rpm limit
	Tokens   int64 // 0 when the deployment has no tpm limit
	Flight   int64 // the requests of the bound allowed for propagation (M x inFlight)
}

// depUsage is one deployment's arrivals in history time, sorted, and the most it received while
// usage was still propagating.
type depUsage struct {
	Info   DeploymentInfo
	Times  []int64
	Tokens []int64 // Tokens[i] belongs to Times[i]
	// InFlight and InFlightTokens are the most requests and tokens the deployment received in
	// any interval of length Propagation: what a view could admit before hearing of it.
	InFlight, InFlightTokens int64
}

// CheckLimits checks, from the upstream's log (the ground truth), that no deployment received
// more in any 60 s than the run's mode promises for the faults in force: see limitBound.
func CheckLimits(r *Run) (CheckResult, []DeploymentResult) {
	if res, ok := limitsUncheckable(r); !ok {
		return res, nil
	}
	tl := NewTimeline(r)
	refused := refusedByGroup(r.History)
	usage, unlisted := usageByDeployment(r)
	var probs problemList
	results := make([]DeploymentResult, 0, len(r.Info.Deployments))
	for _, d := range r.Info.Deployments {
		u := usage[d.ID]
		dr := checkDeployment(tl, u, &probs)
		dr.Refused = refused[d.Group]
		results = append(results, dr)
	}
	res := CheckResult{Valid: True, Problems: probs.list(), Figures: limitFigures(r.Info.Mode, results)}
	res.Figures["unlisted_arrivals"] = unlisted
	res.Figures["orphan_fault_stops"] = countOrphans(tl)
	if len(probs.lines) > 0 {
		res.Valid = False
	}
	res.Summary = limitsSummary(r.Info.Mode, results, res.Valid)
	return res, results
}

// limitsUncheckable is the verdict when the run cannot be checked at all.
func limitsUncheckable(r *Run) (CheckResult, bool) {
	unknown := func(why string) (CheckResult, bool) {
		return CheckResult{Valid: Unknown, Summary: "Limits could not be checked: " + why + ".", Problems: []string{why}}, false
	}
	switch {
	case !slices.Contains([]string{"fast", "strict", "redis"}, r.Info.Mode):
		return unknown(fmt.Sprintf("run.json names no known mode (%q)", r.Info.Mode))
	case len(r.Info.Deployments) == 0:
		return unknown("run.json lists no chat deployments")
	case len(r.Upstream) == 0 && hasOKChat(r.History):
		return unknown("the upstream log is empty although clients got 200s: it is missing")
	}
	return CheckResult{}, true
}

func hasOKChat(h []Op) bool {
	return slices.ContainsFunc(h, func(op Op) bool { return op.F == FChat && op.Type == OK })
}

// refusedByGroup counts the 429s answered per model group.
func refusedByGroup(h []Op) map[string]int64 {
	calls, _ := chatCalls(h)
	out := map[string]int64{}
	for _, c := range calls {
		if c.Done != nil && c.Done.Type == Fail && c.Done.Value.Status == 429 {
			out[c.Model()]++
		}
	}
	return out
}

// usageByDeployment sorts the arrivals per listed deployment and counts those for deployments
// run.json does not list.
func usageByDeployment(r *Run) (map[string]*depUsage, int) {
	usage := map[string]*depUsage{}
	for _, d := range r.Info.Deployments {
		usage[d.ID] = &depUsage{Info: d}
	}
	sorted := slices.Clone(r.Upstream)
	slices.SortStableFunc(sorted, func(a, b Arrival) int { return compareInt64(a.T, b.T) })
	unlisted := 0
	for _, a := range sorted {
		u, ok := usage[a.Deployment]
		if !ok {
			unlisted++
			continue
		}
		u.Times = append(u.Times, a.T-r.Info.Start)
		u.Tokens = append(u.Tokens, a.Tokens)
	}
	for _, u := range usage {
		u.InFlight, u.InFlightTokens = busiest(u.Times, u.Tokens, int64(r.Info.Propagation))
	}
	return usage, unlisted
}

func compareInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// busiest is the most arrivals, and separately the most tokens, in any interval [t, t+length):
// each is reached by an interval starting at an arrival.
func busiest(times, tokens []int64, length int64) (requests, toks int64) {
	var sum int64
	j := 0
	for i := range times {
		if j < i { // an empty interval (length 0) left j behind
			j, sum = i, 0
		}
		for ; j < len(times) && times[j] < times[i]+length; j++ {
			sum += tokens[j]
		}
		requests, toks = max(requests, int64(j-i)), max(toks, sum)
		if j > i {
			sum -= tokens[i]
		}
	}
	return requests, toks
}

// windows is every 60 s window anchored at an arrival: the one starting at it, and the one
// ending just after it. Any window holds the same arrivals as one of these, and the two
// anchors matter because the bound depends on where the window lies: a burst just before a
// fault must not be excused by the fault in the tail of a window that starts at the burst.
func windows(times, tokens []int64) []usageWindow {
	out := make([]usageWindow, 0, 2*len(times))
	var sum int64
	j := 0
	for i := range times { // [t_i, t_i+60s)
		for ; j < len(times) && times[j] < times[i]+LimitWindow; j++ {
			sum += tokens[j]
		}
		out = append(out, usageWindow{Start: times[i], Requests: int64(j - i), Tokens: sum})
		sum -= tokens[i]
	}
	sum, i := 0, 0
	for j := range times { // (t_j-60s, t_j]
		sum += tokens[j]
		for ; times[i] <= times[j]-LimitWindow; i++ {
			sum -= tokens[i]
		}
		out = append(out, usageWindow{Start: times[j] - LimitWindow + 1, Requests: int64(j - i + 1), Tokens: sum})
	}
	return out
}

// limitBound is what the mode allows a deployment in a window with fault factor m:
//
//   - strict: exactly the limit, rpm requests and tpm tokens.
//   - fast and redis: m x limit + m x in-flight, where in-flight is the most the deployment
//     received in any Propagation-long interval of the run: each of the m views may have
//     admitted that much more before it heard of the others' admissions.
func limitBound(mode string, u *depUsage, m int) windowBound {
	if mode == "strict" {
		return windowBound{M: m, Requests: u.Info.RPM, Tokens: u.Info.TPM}
	}
	b := windowBound{M: m, Flight: int64(m) * u.InFlight}
	if u.Info.RPM > 0 {
		b.Requests = u.Info.RPM*int64(m) + b.Flight
	}
	if u.Info.TPM > 0 {
		b.Tokens = u.Info.TPM*int64(m) + int64(m)*u.InFlightTokens
	}
	return b
}

// over reports how far w went past b, in requests and tokens (<= 0: within it). A missing
// limit is never exceeded.
func over(w usageWindow, b windowBound) (requests, tokens int64) {
	requests, tokens = math.MinInt64, math.MinInt64
	if b.Requests > 0 {
		requests = w.Requests - b.Requests
	}
	if b.Tokens > 0 {
		tokens = w.Tokens - b.Tokens
	}
	return requests, tokens
}

// furthest remembers the window that went furthest over (or came closest to) something.
type furthest struct {
	i  int // -1: none yet
	by int64
}

func (f *furthest) see(i int, by int64) {
	if f.i < 0 || by > f.by {
		f.i, f.by = i, by
	}
}

// checkDeployment measures one deployment's windows against their bounds and adds a problem
// line for its worst request and token violations.
func checkDeployment(tl *Timeline, u *depUsage, probs *problemList) DeploymentResult {
	d := u.Info
	dr := DeploymentResult{ID: d.ID, LimitRPM: d.RPM, LimitTPM: d.TPM, Admitted: int64(len(u.Times))}
	// With no arrivals there is no window: report the bound of a window with no fault.
	b1 := limitBound(tl.Mode, u, 1)
	dr.Bound, dr.TokenBound, dr.FaultFactorInWorst = b1.Requests, b1.Tokens, 1
	worst, worstReq, worstTok := furthest{i: -1}, furthest{i: -1}, furthest{i: -1}
	ws := windows(u.Times, u.Tokens)
	bounds := make([]windowBound, len(ws))
	for i, w := range ws {
		dr.MaxIn60s = max(dr.MaxIn60s, w.Requests)
		dr.MaxTokensIn60s = max(dr.MaxTokensIn60s, w.Tokens)
		if (d.RPM > 0 && w.Requests > d.RPM) || (d.TPM > 0 && w.Tokens > d.TPM) {
			dr.OverLimitWindows++
		}
		bounds[i] = limitBound(tl.Mode, u, tl.FaultFactor(w.Start, w.Start+LimitWindow))
		req, tok := over(w, bounds[i])
		if req > 0 || tok > 0 {
			dr.OverBoundWindows++
		}
		if d.RPM > 0 {
			worst.see(i, req)
		} else {
			worst.see(i, tok) // no rpm limit: the tokens decide which window is worst
		}
		if req > 0 {
			worstReq.see(i, req)
		}
		if tok > 0 {
			worstTok.see(i, tok)
		}
	}
	if i := worst.i; i >= 0 {
		dr.Bound, dr.TokenBound = bounds[i].Requests, bounds[i].Tokens
		dr.WorstWindowStart, dr.FaultFactorInWorst = ws[i].Start, bounds[i].M
	}
	if i := worstReq.i; i >= 0 {
		probs.addf("%s", overLine(tl.Mode, d, ws[i], bounds[i], false))
	}
	if i := worstTok.i; i >= 0 {
		probs.addf("%s", overLine(tl.Mode, d, ws[i], bounds[i], true))
	}
	return dr
}

// overLine describes a window over its bound, e.g. "dep alpha-1: 671 requests in the 60 s from
// 12.3 s, bound 606 (limit 600 x 1 view + 6 in flight)".
func overLine(mode string, d DeploymentInfo, w usageWindow, b windowBound, tokens bool) string {
	what, n, bound, limit, flight := "requests", w.Requests, b.Requests, d.RPM, b.Flight
	if tokens {
		what, n, bound, limit, flight = "tokens", w.Tokens, b.Tokens, d.TPM, b.Tokens-d.TPM*int64(b.M)
	}
	why := "strict: exactly the limit"
	if mode != "strict" {
		why = fmt.Sprintf("limit %d x %d %s + %d in flight", limit, b.M, plural(b.M, "view"), flight)
	}
	return fmt.Sprintf("dep %s: %d %s in the 60 s from %s, bound %d (%s)",
		d.ID, n, what, fmtHistoryTime(w.Start), bound, why)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// limitFigures are the per-deployment ratios of the most received in 60 s to the limit.
func limitFigures(mode string, results []DeploymentResult) map[string]any {
	ratio, overshoot, tokRatio := map[string]float64{}, map[string]int64{}, map[string]float64{}
	maxM := 1
	for _, d := range results {
		if d.LimitRPM > 0 {
			ratio[d.ID] = round3(float64(d.MaxIn60s) / float64(d.LimitRPM))
			overshoot[d.ID] = max(0, d.MaxIn60s-d.LimitRPM)
		}
		if d.LimitTPM > 0 {
			tokRatio[d.ID] = round3(float64(d.MaxTokensIn60s) / float64(d.LimitTPM))
		}
		maxM = max(maxM, d.FaultFactorInWorst)
	}
	return map[string]any{
		"mode": mode, "max_over_limit": ratio, "overshoot": overshoot,
		"max_tokens_over_limit": tokRatio, "fault_factor_in_worst_max": maxM,
	}
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

func countOrphans(tl *Timeline) int {
	n := 0
	for _, f := range tl.Faults {
		if f.Orphan {
			n++
		}
	}
	return n
}

// limitsSummary says the verdict in plain words: what went over, or how close the closest came.
func limitsSummary(mode string, results []DeploymentResult, v Valid) string {
	if v == False {
		var over []string
		for _, d := range results {
			if d.OverBoundWindows > 0 {
				over = append(over, fmt.Sprintf("%s (%d windows over it; the most in any 60 s was %d requests, rpm %d%s)",
					d.ID, d.OverBoundWindows, d.MaxIn60s, d.LimitRPM, tokensNote(d)))
			}
		}
		return fmt.Sprintf("%d of %d deployments went over the %s-mode bound: %s.",
			len(over), len(results), mode, strings.Join(over, "; "))
	}
	closest := results[0]
	for _, d := range results[1:] {
		if ratioOf(d) > ratioOf(closest) {
			closest = d
		}
	}
	s := fmt.Sprintf("Every deployment stayed within its %s-mode bound: the most requests in any 60 s was %d against rpm %d (%s).",
		mode, closest.MaxIn60s, closest.LimitRPM, closest.ID)
	var overLimit int64
	for _, d := range results {
		overLimit += d.OverLimitWindows
	}
	if overLimit > 0 {
		s += fmt.Sprintf(" %d windows went over the limit itself, within what the faults allowed.", overLimit)
	}
	return s
}

func tokensNote(d DeploymentResult) string {
	if d.LimitTPM <= 0 {
		return ""
	}
	return fmt.Sprintf(", and %d tokens, tpm %d", d.MaxTokensIn60s, d.LimitTPM)
}

func ratioOf(d DeploymentResult) float64 {
	if d.LimitRPM <= 0 {
		return 0
	}
	return float64(d.MaxIn60s) / float64(d.LimitRPM)
}
