package chaos

import (
	"fmt"
	"strings"
)

// availCount is how many chat requests a node (or phase) got and answered.
type availCount struct {
	Total    int     `json:"total"`
	Answered int     `json:"answered"` // 200 or 429: herd gave a definite answer
	Share    float64 `json:"share"`    // Answered / Total
}

func (c *availCount) add(answered bool) {
	c.Total++
	if answered {
		c.Answered++
	}
	c.Share = round3(float64(c.Answered) / float64(c.Total))
}

// phaseOrder is how phases are listed, from the best placed.
var phaseOrder = []string{PhaseHealthy, PhaseMajority, PhaseMinority, PhaseDown}

// CheckAvailability reports how many chat requests were answered (200 or 429) per node and per
// phase (healthy, majority or minority side of a partition, or down), and fails the run only on
// errors herd must never give: a 5xx on a chat (no upstream faults are injected, so it is
// herd's own), a 5xx on a config read, or a 5xx other than 503 (no raft quorum) on a config
// write. Timeouts and refused connections are availability: reported, not judged.
func CheckAvailability(r *Run) CheckResult {
	tl := NewTimeline(r)
	calls, _ := chatCalls(r.History)
	phases := map[string]*availCount{}
	nodes := map[string]map[string]*availCount{}
	for _, c := range calls {
		if c.Done == nil {
			continue // the requests checker reports it
		}
		phase := tl.PhaseAt(c.Node(), c.Invoke.Time)
		answered := c.Done.Value.Status == 200 || c.Done.Value.Status == 429
		countIn(phases, phase, answered)
		if nodes[c.Node()] == nil {
			nodes[c.Node()] = map[string]*availCount{}
		}
		countIn(nodes[c.Node()], phase, answered)
	}
	var probs problemList
	herd5xx, quorum503 := unexpected5xx(r.History, &probs)
	res := CheckResult{
		Valid:    True,
		Problems: probs.list(),
		Figures: map[string]any{
			"phases": phases, "nodes": nodes, "herd_5xx": herd5xx, "config_503": quorum503,
		},
	}
	switch {
	case herd5xx > 0:
		res.Valid = False
	case len(phases) == 0:
		res.Valid = Unknown
		res.Problems = append(res.Problems, "the history holds no answered chat request")
	}
	res.Summary = availabilitySummary(phases, herd5xx, quorum503)
	return res
}

func countIn(m map[string]*availCount, key string, answered bool) {
	if m[key] == nil {
		m[key] = &availCount{}
	}
	m[key].add(answered)
}

// unexpected5xx counts the 5xx answers herd must not give, with a problem line each, and the
// documented 503s of config writes without a raft quorum.
func unexpected5xx(h []Op, probs *problemList) (bad, quorum int) {
	for _, op := range h {
		st := op.Value.Status
		if op.Type == Invoke || op.Process == NemesisProcess || st < 500 || st > 599 {
			continue
		}
		switch op.F {
		case FAdd, FUpdate, FDelete:
			if st == 503 {
				quorum++
				continue
			}
		case FChat, FRead:
		default:
			continue
		}
		bad++
		probs.addf("%s answered %s by process %d with %d at %s%s",
			orUnknown(op.Node), describeOp(op), op.Process, st, fmtHistoryTime(op.Time), errorSuffix(op.Error))
	}
	return bad, quorum
}

func describeOp(op Op) string {
	if op.F == FChat {
		return fmt.Sprintf("chat %q", op.Value.RequestID)
	}
	return op.F
}

func orUnknown(node string) string {
	if node == "" {
		return "an unknown node"
	}
	return node
}

func errorSuffix(err string) string {
	if err == "" {
		return ""
	}
	return ": " + err
}

// availabilitySummary says, per phase, the share of requests answered.
func availabilitySummary(phases map[string]*availCount, bad, quorum int) string {
	names := map[string]string{
		PhaseHealthy: "Healthy", PhaseMajority: "in a majority", PhaseMinority: "in a minority", PhaseDown: "on a down node",
	}
	var parts []string
	for _, p := range phaseOrder {
		if c := phases[p]; c != nil {
			parts = append(parts, fmt.Sprintf("%s: %.1f %% of %d", names[p], 100*c.Share, c.Total))
		}
	}
	s := "No chat request was answered"
	if len(parts) > 0 {
		parts[0] = strings.ToUpper(parts[0][:1]) + parts[0][1:] + " requests answered (200 or 429)"
		s = strings.Join(parts, "; ")
	}
	if bad > 0 {
		s += fmt.Sprintf(". %d unexpected 5xx from herd", bad)
	} else {
		s += ". No unexpected 5xx"
	}
	if quorum > 0 {
		s += fmt.Sprintf(" (%d config writes got 503 without a raft quorum, as documented)", quorum)
	}
	return s + "."
}
