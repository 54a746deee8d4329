package chaos

import (
	"fmt"
	"sort"
)

// maxProblems caps a checker's Problems: a few examples say what went wrong; the figures say
// how often.
const maxProblems = 20

// chatCall is one chat request: its invoke and the completion that answered it.
type chatCall struct {
	Invoke Op
	Done   *Op // nil: the history holds no completion
}

// Model is the model group the request asked for.
func (c chatCall) Model() string {
	if c.Done != nil && c.Done.Value.Model != "" {
		return c.Done.Value.Model
	}
	return c.Invoke.Value.Model
}

// Node is the node the client talked to.
func (c chatCall) Node() string {
	if c.Invoke.Node == "" && c.Done != nil {
		return c.Done.Node
	}
	return c.Invoke.Node
}

// chatCalls pairs every chat invoke with its completion: the next chat op of the same process,
// which must carry the same RequestID when it carries one. A process has one request in flight
// at a time, so a second invoke before a completion leaves the first without one. Completions
// that match no open invoke are returned as strays.
func chatCalls(h []Op) (calls []chatCall, strays []Op) {
	open := map[Process]int{} // process -> index in calls
	for i := range h {
		op := h[i]
		if op.F != FChat || op.Process == NemesisProcess {
			continue
		}
		if op.Type == Invoke {
			open[op.Process] = len(calls)
			calls = append(calls, chatCall{Invoke: op})
			continue
		}
		k, ok := open[op.Process]
		if !ok || (op.Value.RequestID != "" && op.Value.RequestID != calls[k].Invoke.Value.RequestID) {
			strays = append(strays, op)
			continue
		}
		calls[k].Done = &h[i]
		delete(open, op.Process)
	}
	return calls, strays
}

// problemList collects a checker's problem lines, keeping the first maxProblems.
type problemList struct {
	lines   []string
	dropped int
}

func (p *problemList) addf(format string, args ...any) {
	if len(p.lines) >= maxProblems {
		p.dropped++
		return
	}
	p.lines = append(p.lines, fmt.Sprintf(format, args...))
}

// list is the lines, with a last line saying how many more there were.
func (p *problemList) list() []string {
	if p.dropped == 0 {
		return p.lines
	}
	return append(p.lines, fmt.Sprintf("... and %d more", p.dropped))
}

// requestTally is what CheckRequests counts.
type requestTally struct {
	ok, fail, info, retried, infoReached int
	// Violations, each making the verdict false.
	lost, duplicated, phantom, missing, stray, failReached, wrongDeployment, badType int
	// Request ids several invokes carried: their arrivals cannot be judged (unknown).
	reused int
}

// violations is how many things went wrong.
func (t requestTally) violations() int {
	return t.lost + t.duplicated + t.phantom + t.missing + t.stray + t.failReached + t.wrongDeployment + t.badType
}

// CheckRequests checks that no request was lost or duplicated, against the upstream's log:
// every chat invoke was answered exactly once; a 200 reached the upstream, exactly once per
// deployment it tried, including the one that answered; a refusal never reached it; and the
// upstream saw no request no client sent. A timeout or 5xx (info) may have reached it any number
// of times: that is counted, not judged.
func CheckRequests(r *Run) CheckResult {
	calls, strays := chatCalls(r.History)
	arrivals := map[string][]Arrival{}
	for _, a := range r.Upstream {
		arrivals[a.RequestID] = append(arrivals[a.RequestID], a)
	}
	var t requestTally
	var probs problemList
	sent := map[string]int{} // RequestID -> invokes carrying it
	for _, c := range calls {
		sent[c.Invoke.Value.RequestID]++
	}
	for _, op := range strays {
		t.stray++
		probs.addf("%s %s by process %d at %s (request %q) answers no open invoke",
			op.F, op.Type, op.Process, fmtHistoryTime(op.Time), op.Value.RequestID)
	}
	for _, c := range calls {
		id := c.Invoke.Value.RequestID
		if sent[id] > 1 {
			continue // counted below: its arrivals cannot be told apart
		}
		checkCall(c, arrivals[id], &t, &probs)
	}
	for id, n := range sent {
		if n > 1 {
			t.reused++
			probs.addf("request id %q was sent by %d invokes: their arrivals cannot be told apart", id, n)
		}
	}
	t.phantom = phantoms(r.Upstream, sent, &probs)
	return requestsResult(t, len(r.Upstream), probs.list())
}

// checkCall judges one request by its completion and the upstream arrivals carrying its id.
func checkCall(c chatCall, arr []Arrival, t *requestTally, probs *problemList) {
	id := c.Invoke.Value.RequestID
	if c.Done == nil {
		t.missing++
		probs.addf("request %q (process %d, invoked at %s) has no completion",
			id, c.Invoke.Process, fmtHistoryTime(c.Invoke.Time))
		return
	}
	switch c.Done.Type {
	case OK:
		t.ok++
		checkOK(c, arr, t, probs)
	case Fail:
		t.fail++
		if len(arr) > 0 {
			t.failReached++
			probs.addf("request %q failed (status %d) but reached the upstream %d time(s), first on %s",
				id, c.Done.Value.Status, len(arr), arr[0].Deployment)
		}
	case Info:
		t.info++
		if len(arr) > 0 {
			t.infoReached++
		}
	default:
		t.badType++
		probs.addf("request %q completed with type %q", id, c.Done.Type)
	}
}

// checkOK judges a 200: it reached the upstream, at most once per deployment (one on each
// deployment herd retried to), and the deployment that answered is one it reached.
func checkOK(c chatCall, arr []Arrival, t *requestTally, probs *problemList) {
	id := c.Invoke.Value.RequestID
	if len(arr) == 0 {
		t.lost++
		probs.addf("request %q was answered 200 by %s but never reached the upstream", id, c.Node())
		return
	}
	perDep := map[string]int{}
	for _, a := range arr {
		perDep[a.Deployment]++
	}
	deps := make([]string, 0, len(perDep))
	for d, n := range perDep {
		deps = append(deps, d)
		if n > 1 {
			t.duplicated++
			probs.addf("request %q reached deployment %s %d times", id, d, n)
		}
	}
	sort.Strings(deps)
	if len(perDep) > 1 {
		t.retried++
	}
	if perDep[c.Done.Value.Deployment] == 0 {
		t.wrongDeployment++
		probs.addf("request %q was answered by deployment %q, but it reached only %v", id, c.Done.Value.Deployment, deps)
	}
}

// phantoms counts arrivals that no client sent.
func phantoms(upstream []Arrival, sent map[string]int, probs *problemList) int {
	n := 0
	for _, a := range upstream {
		if sent[a.RequestID] == 0 {
			n++
			probs.addf("the upstream received request %q on %s, which no client sent", a.RequestID, a.Deployment)
		}
	}
	return n
}

// requestsResult turns the tally into the verdict.
func requestsResult(t requestTally, arrivals int, problems []string) CheckResult {
	res := CheckResult{
		Valid:    True,
		Problems: problems,
		Figures: map[string]any{
			"ok": t.ok, "fail": t.fail, "info": t.info, "retried": t.retried, "lost": t.lost,
			"duplicated": t.duplicated, "phantom": t.phantom, "arrivals": arrivals,
			"indeterminate": t.info, "indeterminate_reached_upstream": t.infoReached,
			"missing_completion": t.missing, "stray_completion": t.stray, "reused_request_id": t.reused,
			"failed_but_reached_upstream": t.failReached, "answered_by_unreached_deployment": t.wrongDeployment,
		},
	}
	switch {
	case t.violations() > 0:
		res.Valid = False
	case t.reused > 0:
		res.Valid = Unknown
	}
	res.Summary = requestsSummary(t, res.Valid)
	return res
}

// requestsSummary says the verdict in plain words.
func requestsSummary(t requestTally, v Valid) string {
	s := fmt.Sprintf("%d requests answered 200, %d refused, %d indeterminate (%d of them reached the upstream); %d answered after a retry to another deployment.",
		t.ok, t.fail, t.info, t.infoReached, t.retried)
	switch v {
	case True:
		return "No request was lost or duplicated: " + s
	case Unknown:
		return fmt.Sprintf("Could not tell: %d request ids were sent more than once. ", t.reused) + s
	}
	return fmt.Sprintf("Requests went wrong: %d lost, %d duplicated, %d phantom, %d without a completion, %d refused after reaching the upstream, %d answered by a deployment they never reached. ",
		t.lost, t.duplicated, t.phantom, t.missing, t.failReached, t.wrongDeployment) + s
}

// fmtHistoryTime writes a history time (ns since the run started) in seconds.
func fmtHistoryTime(ns int64) string { return fmt.Sprintf("%.1f s", float64(ns)/1e9) }
