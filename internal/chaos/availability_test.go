package chaos

import (
	"strings"
	"testing"
)

// fxConfigOp records a config op by process p answered with status at t seconds.
func (r *Run) fxConfigOp(p Process, f string, typ OpType, status int, t float64) {
	r.fxOp(Op{Type: Invoke, F: f, Process: p, Node: "n1", Time: fxSec(t), Value: Value{ID: "chaos-1", RPM: 5}})
	r.fxOp(Op{Type: typ, F: f, Process: p, Node: "n1", Time: fxSec(t + 0.1), Value: Value{ID: "chaos-1", Status: status}})
}

func TestCheckAvailabilityErrors(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(r *Run)
		want    Valid
		problem string
	}{
		{name: "200s, 429s and timeouts", mutate: func(r *Run) {}, want: True},
		{
			name:   "a 500 on a chat",
			mutate: func(r *Run) { r.fxChat(3, "n2", "boom", 6, 7, Info, 500, "") },
			want:   False, problem: `n2 answered chat "boom" by process 3 with 500 at 7.0 s`,
		},
		{
			name:   "a 502 on a chat: no upstream faults, so herd's own",
			mutate: func(r *Run) { r.fxChat(3, "n2", "gw", 6, 7, Info, 502, "") },
			want:   False, problem: "with 502",
		},
		{
			name:   "a 503 on an add: no raft quorum, documented",
			mutate: func(r *Run) { r.fxConfigOp(4, FAdd, Info, 503, 6) },
			want:   True,
		},
		{
			name:   "a 500 on an update",
			mutate: func(r *Run) { r.fxConfigOp(4, FUpdate, Info, 500, 6) },
			want:   False, problem: "n1 answered update by process 4 with 500 at 6.1 s",
		},
		{
			name:   "a 503 on a read",
			mutate: func(r *Run) { r.fxConfigOp(4, FRead, Info, 503, 6) },
			want:   False, problem: "n1 answered read by process 4 with 503",
		},
		{
			name: "no chat at all",
			mutate: func(r *Run) {
				r.History = nil
				r.fxConfigOp(4, FAdd, OK, 200, 6)
			},
			want: Unknown, problem: "no answered chat request",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := fxRun("fast", 3)
			r.fxChat(1, "n1", "a", 1, 2, OK, 200, "alpha-1")
			r.fxChat(1, "n1", "b", 2, 3, Fail, 429, "")
			r.fxChat(2, "n3", "c", 2, 5, Info, 0, "")
			tc.mutate(r)
			res := CheckAvailability(r)
			if res.Valid != tc.want {
				t.Fatalf("valid = %v, want %v; summary %q, problems %q", res.Valid, tc.want, res.Summary, res.Problems)
			}
			if tc.problem != "" && (len(res.Problems) != 1 || !strings.Contains(res.Problems[0], tc.problem)) {
				t.Errorf("problems = %q, want one holding %q", res.Problems, tc.problem)
			}
			if tc.want == True && !strings.Contains(res.Summary, "No unexpected 5xx") {
				t.Errorf("summary %q does not say there was no unexpected 5xx", res.Summary)
			}
		})
	}
}

func TestCheckAvailabilityPhases(t *testing.T) {
	r := fxRun("fast", 5)
	r.fxFault(fxPartition("halves", []string{"n1", "n2"}, []string{"n3", "n4", "n5"}), 10, 30)
	r.fxFault(fxNodes(KindKill, "n5"), 20, 30)
	r.fxChat(1, "n1", "h1", 1, 2, OK, 200, "alpha-1")   // healthy
	r.fxChat(1, "n1", "m1", 11, 12, Fail, 429, "")      // minority, answered
	r.fxChat(1, "n1", "m2", 12, 17, Info, 0, "")        // minority, timed out
	r.fxChat(2, "n3", "M1", 11, 12, OK, 200, "alpha-1") // majority
	r.fxChat(2, "n3", "M2", 21, 22, OK, 200, "alpha-1") // n5 killed: n3, n4 are 2 of 5
	r.fxChat(3, "n5", "d1", 21, 22, Info, 0, "")        // down
	r.fxChat(1, "n1", "h2", 30, 31, OK, 200, "alpha-1") // healed
	r.fxChat(4, "n4", "M3", 12, 13, Info, 0, "")        // majority, unanswered
	r.Upstream = nil
	res := CheckAvailability(r)
	if res.Valid != True {
		t.Fatalf("valid = %v: %q", res.Valid, res.Problems)
	}
	phases := res.Figures["phases"].(map[string]*availCount)
	want := map[string]availCount{
		PhaseHealthy:  {Total: 2, Answered: 2, Share: 1},
		PhaseMajority: {Total: 2, Answered: 1, Share: 0.5},
		PhaseMinority: {Total: 3, Answered: 2, Share: 0.667},
		PhaseDown:     {Total: 1, Answered: 0, Share: 0},
	}
	if len(phases) != len(want) {
		t.Errorf("phases = %v, want %v", phases, want)
	}
	for p, w := range want {
		if phases[p] == nil || *phases[p] != w {
			t.Errorf("phase %s = %+v, want %+v", p, phases[p], w)
		}
	}
	nodes := res.Figures["nodes"].(map[string]map[string]*availCount)
	if got := nodes["n1"][PhaseMinority]; got == nil || got.Total != 2 || got.Answered != 1 {
		t.Errorf("n1 in a minority = %+v, want 1 of 2 answered", got)
	}
	if got := nodes["n3"][PhaseMinority]; got == nil || got.Total != 1 || got.Answered != 1 {
		t.Errorf("n3 in a minority = %+v, want 1 of 1 answered", got)
	}
	wantSummary := "Healthy: 100.0 % of 2 requests answered (200 or 429); in a majority: 50.0 % of 2; " +
		"in a minority: 66.7 % of 3; on a down node: 0.0 % of 1. No unexpected 5xx."
	if res.Summary != wantSummary {
		t.Errorf("summary = %q\nwant      %q", res.Summary, wantSummary)
	}
}
