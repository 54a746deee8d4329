package chaos

import (
	"strings"
	"testing"
)

// fxArrive records that the upstream received request id on dep at t seconds.
func (r *Run) fxArrive(id, dep string, t float64) {
	r.Upstream = append(r.Upstream, Arrival{T: fxStart + fxSec(t), Deployment: dep, RequestID: id, Tokens: 10})
}

// fxCleanRequests is a history every request kept its promise in: a 200, a 200 after a retry
// to another deployment, a 429, a timeout that never reached the upstream and a 502 that
// reached it twice.
func fxCleanRequests() *Run {
	r := fxRun("fast", 3)
	r.fxChat(1, "n1", "ok", 1, 2, OK, 200, "alpha-1")
	r.fxArrive("ok", "alpha-1", 1.5)
	r.fxChat(2, "n2", "retried", 1, 3, OK, 200, "alpha-2")
	r.fxArrive("retried", "alpha-1", 1.5)
	r.fxArrive("retried", "alpha-2", 2)
	r.fxChat(1, "n1", "refused", 3, 4, Fail, 429, "")
	r.fxChat(3, "n3", "timeout", 3, 9, Info, 0, "")
	r.fxChat(2, "n2", "bad-gateway", 4, 5, Info, 502, "")
	r.fxArrive("bad-gateway", "alpha-1", 4.5)
	r.fxArrive("bad-gateway", "alpha-1", 4.6)
	return r
}

func TestCheckRequests(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(r *Run)
		want    Valid
		problem string
		figure  string // a figure that must be 1
	}{
		{name: "clean", mutate: func(r *Run) {}, want: True, figure: "retried"},
		{
			name:   "lost: a 200 that never reached the upstream",
			mutate: func(r *Run) { r.fxChat(4, "n1", "lost", 6, 7, OK, 200, "alpha-1") },
			want:   False, problem: `request "lost" was answered 200 by n1 but never reached the upstream`, figure: "lost",
		},
		{
			name:   "duplicate: a 200 that reached one deployment twice",
			mutate: func(r *Run) { r.fxArrive("ok", "alpha-1", 1.6) },
			want:   False, problem: `request "ok" reached deployment alpha-1 2 times`, figure: "duplicated",
		},
		{
			name:   "phantom: an arrival no client sent",
			mutate: func(r *Run) { r.fxArrive("ghost", "alpha-1", 5) },
			want:   False, problem: `the upstream received request "ghost" on alpha-1, which no client sent`, figure: "phantom",
		},
		{
			name:   "a refusal that reached the upstream",
			mutate: func(r *Run) { r.fxArrive("refused", "alpha-1", 3.5) },
			want:   False, problem: `request "refused" failed (status 429) but reached the upstream 1 time(s)`, figure: "failed_but_reached_upstream",
		},
		{
			name: "an invoke with no completion",
			mutate: func(r *Run) {
				r.fxOp(Op{Type: Invoke, F: FChat, Process: 5, Node: "n1", Time: fxSec(8), Value: Value{RequestID: "hung"}})
			},
			want: False, problem: `request "hung" (process 5, invoked at 8.0 s) has no completion`, figure: "missing_completion",
		},
		{
			name: "a completion with no invoke",
			mutate: func(r *Run) {
				r.fxOp(Op{Type: OK, F: FChat, Process: 6, Node: "n1", Time: fxSec(8), Value: Value{RequestID: "orphan", Status: 200}})
			},
			want: False, problem: `answers no open invoke`, figure: "stray_completion",
		},
		{
			name: "answered by a deployment it never reached",
			mutate: func(r *Run) {
				r.fxChat(4, "n1", "wrong", 6, 7, OK, 200, "alpha-2")
				r.fxArrive("wrong", "alpha-1", 6.5)
			},
			want: False, problem: `request "wrong" was answered by deployment "alpha-2", but it reached only [alpha-1]`, figure: "answered_by_unreached_deployment",
		},
		{
			name: "a request id sent twice",
			mutate: func(r *Run) {
				r.fxChat(4, "n1", "ok", 6, 7, OK, 200, "alpha-1")
				r.fxArrive("ok", "alpha-1", 6.5)
			},
			want: Unknown, problem: `request id "ok" was sent by 2 invokes`, figure: "reused_request_id",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := fxCleanRequests()
			tc.mutate(r)
			res := CheckRequests(r)
			if res.Valid != tc.want {
				t.Fatalf("valid = %v, want %v; summary %q, problems %q", res.Valid, tc.want, res.Summary, res.Problems)
			}
			if tc.problem != "" && (len(res.Problems) != 1 || !strings.Contains(res.Problems[0], tc.problem)) {
				t.Errorf("problems = %q, want one holding %q", res.Problems, tc.problem)
			}
			if tc.figure != "" && res.Figures[tc.figure] != 1 {
				t.Errorf("figure %s = %v, want 1 (figures %v)", tc.figure, res.Figures[tc.figure], res.Figures)
			}
		})
	}
}

func TestCheckRequestsFigures(t *testing.T) {
	res := CheckRequests(fxCleanRequests())
	want := map[string]int{
		"ok": 2, "fail": 1, "info": 2, "retried": 1, "lost": 0, "duplicated": 0, "phantom": 0,
		"arrivals": 5, "indeterminate": 2, "indeterminate_reached_upstream": 1, "missing_completion": 0,
	}
	for k, v := range want {
		if res.Figures[k] != v {
			t.Errorf("figure %s = %v, want %d", k, res.Figures[k], v)
		}
	}
	if !strings.HasPrefix(res.Summary, "No request was lost or duplicated: 2 requests answered 200, 1 refused, 2 indeterminate") {
		t.Errorf("summary = %q", res.Summary)
	}
}

func TestCheckRequestsCapsProblems(t *testing.T) {
	r := fxRun("fast", 1)
	for i := 0; i < 30; i++ {
		r.fxArrive("ghost", "alpha-1", float64(i))
	}
	res := CheckRequests(r)
	if res.Valid != False || len(res.Problems) != maxProblems+1 || res.Problems[maxProblems] != "... and 10 more" {
		t.Errorf("valid %v, %d problems ending %q; want false, %d ending with the count left out",
			res.Valid, len(res.Problems), res.Problems[len(res.Problems)-1], maxProblems+1)
	}
	if res.Figures["phantom"] != 30 {
		t.Errorf("phantom = %v, want 30", res.Figures["phantom"])
	}
}
