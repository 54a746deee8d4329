package chaos

import (
	"strings"
	"testing"
)

// fxRedisRun is a redis-mode run whose Redis is down from 100 s to 130 s, with 600 arrivals in
// the 10 s before, `during` arrivals during the outage and 600 in the 20 s after.
func fxRedisRun(during int) *Run { return fxRedisOutage(KindRedis, during) }

// fxRedisOutage is fxRedisRun with an outage of kind: redis (restarted empty) or redis-pause
// (kept its data).
func fxRedisOutage(kind string, during int) *Run {
	r := fxRun("redis", 3)
	r.fxFault(&Fault{Kind: kind}, 100, 130)
	r.fxArrivals("alpha-1", "b", 600, 90, 100, 1)
	r.fxArrivals("alpha-1", "d", during, 100, 130, 1)
	r.fxArrivals("alpha-1", "a", 600, 130, 150, 1)
	return r
}

// fxFailoverRun is a redis-mode run on setup whose master is killed at 100 s and healed at
// `to` (-1: never): 600 arrivals in the 50 s before, then `after` in the 9 s after the kill
// (the nodes' local shares, and what the new master admits once a replica took over).
func fxFailoverRun(setup string, to float64, after int) *Run {
	r := fxRun("redis", 3)
	r.Info.Redis = setup
	r.fxFault(&Fault{Kind: KindRedis, Target: "198.51.100.1:7001"}, 100, to)
	r.fxArrivals("alpha-1", "b", 600, 50, 100, 1)
	r.fxArrivals("alpha-1", "a", after, 100, 109, 1)
	return r
}

var fxHalves = fxPartition("halves", []string{"n1", "n2"}, []string{"n3", "n4", "n5"})

func TestCheckLimitsVerdicts(t *testing.T) {
	tests := []struct {
		name    string
		build   func() *Run
		want    Valid
		problem string // a substring of the first problem line
		m       int    // the fault factor of the worst window (0: not checked)
	}{
		{
			name:  "600 in 60 s at rpm 600",
			build: func() *Run { r := fxRun("fast", 5); r.fxArrivals("alpha-1", "a", 600, 10, 70, 1); return r },
			want:  True, m: 1,
		},
		{
			name: "601 in 60 s, no propagation allowance",
			build: func() *Run {
				r := fxRun("fast", 5)
				r.Info.Propagation = 0
				r.fxArrivals("alpha-1", "a", 601, 10, 70, 1)
				return r
			},
			want: False, problem: "dep alpha-1: 601 requests in the 60 s from 10.0 s, bound 600 (limit 600 x 1 view + 0 in flight)", m: 1,
		},
		{
			name:  "601 in 60 s in strict mode",
			build: func() *Run { r := fxRun("strict", 5); r.fxArrivals("alpha-1", "a", 601, 10, 70, 1); return r },
			want:  False, problem: "601 requests in the 60 s from 10.0 s, bound 600 (strict: exactly the limit)", m: 1,
		},
		{
			// Evenly spread, one arrival falls in any 50 ms: the slack is 1, far below 10 %.
			name:  "10 % too many, spread evenly",
			build: func() *Run { r := fxRun("fast", 5); r.fxArrivals("alpha-1", "a", 660, 10, 70, 1); return r },
			want:  False, problem: "660 requests in the 60 s from 10.0 s, bound 601 (limit 600 x 1 view + 1 in flight)", m: 1,
		},
		{
			name: "1200 in 60 s under halves, fast",
			build: func() *Run {
				r := fxRun("fast", 5)
				r.fxFault(fxHalves, 90, 200)
				r.fxArrivals("alpha-1", "a", 1200, 100, 160, 1)
				return r
			},
			want: True, m: 2,
		},
		{
			name: "1200 in 60 s under halves, strict",
			build: func() *Run {
				r := fxRun("strict", 5)
				r.fxFault(fxHalves, 90, 200)
				r.fxArrivals("alpha-1", "a", 1200, 100, 160, 1)
				return r
			},
			want: False, problem: "1200 requests in the 60 s from 100.0 s, bound 600", m: 1,
		},
		{
			name: "1200 in 60 s under a partition that never stopped",
			build: func() *Run {
				r := fxRun("fast", 5)
				r.fxFault(fxHalves, 90, -1)
				r.fxArrivals("alpha-1", "a", 1200, 100, 160, 1)
				return r
			},
			want: True, m: 2,
		},
		{
			// Healed at 20 s, repaired by 25 s; the first window touching the burst starts at 40 s.
			name: "1200 in 60 s after the partition was repaired",
			build: func() *Run {
				r := fxRun("fast", 5)
				r.fxFault(fxHalves, 0, 20)
				r.fxArrivals("alpha-1", "a", 1200, 100, 160, 1)
				return r
			},
			want: False, problem: "bound 601 (limit 600 x 1 view + 1 in flight)", m: 1,
		},
		{
			// The window starting at the burst reaches into the partition, the one ending with it
			// does not: the burst happened with one view and must be judged so.
			name: "1200 in 10 s just before a partition",
			build: func() *Run {
				r := fxRun("fast", 5)
				r.fxFault(fxHalves, 130, 200)
				r.fxArrivals("alpha-1", "a", 1200, 100, 110, 1)
				return r
			},
			want: False, problem: "1200 requests in the 60 s from 50.0 s, bound 606 (limit 600 x 1 view + 6 in flight)", m: 1,
		},
		{
			// Before, during and after a Redis outage: 3 epochs, each up to the limit.
			name:  "600 before, during and after a redis outage",
			build: func() *Run { return fxRedisRun(600) },
			want:  True,
		},
		{
			// 700 during (from 2 s in: no escrow block reserved before is left) and 600 after
			// within [102 s, 162 s): 2 views allow 1200 + 2 x 2.
			name: "700 during a redis outage",
			build: func() *Run {
				r := fxRun("redis", 3)
				r.fxFault(&Fault{Kind: KindRedis}, 100, 130)
				r.fxArrivals("alpha-1", "d", 700, 102, 130, 1)
				r.fxArrivals("alpha-1", "a", 600, 130, 150, 1)
				return r
			},
			want: False, problem: "1300 requests in the 60 s from 102.0 s, bound 1204 (limit 600 x 2 views + 4 in flight)", m: 2,
		},
		{
			// Redis kept its data: what the nodes admitted alone is pushed into it before they
			// admit through it again, so after the outage Redis refuses what the window holds.
			// Before, during and after are at most 2 views, not 3.
			name:  "600 before, during and after a redis-pause",
			build: func() *Run { return fxRedisOutage(KindRedisPause, 600) },
			want:  False, problem: "1800 requests in the 60 s from 90.0 s, bound 1206 (limit 600 x 2 views + 6 in flight)", m: 2,
		},
		{
			name: "600 before a redis-pause, 300 during, 300 after",
			build: func() *Run {
				r := fxRun("redis", 3)
				r.fxFault(&Fault{Kind: KindRedisPause}, 100, 130)
				r.fxArrivals("alpha-1", "b", 600, 90, 100, 1)
				r.fxArrivals("alpha-1", "d", 300, 100, 130, 1)
				r.fxArrivals("alpha-1", "a", 300, 130, 150, 1)
				return r
			},
			want: True,
		},
		{
			// A window inside a long outage has only the fair shares: one view.
			name: "700 within a long redis-pause",
			build: func() *Run {
				r := fxRun("redis", 3)
				r.fxFault(&Fault{Kind: KindRedisPause}, 100, 300)
				r.fxArrivals("alpha-1", "d", 700, 150, 210, 1)
				return r
			},
			want: False, problem: "700 requests in the 60 s from 150.0 s, bound 601 (limit 600 x 1 view + 1 in flight)", m: 1,
		},
		{
			// The old master's 600, the local shares' 600 and a new master's 600 that lost
			// every write it had not received: 3 epochs before the outage ends.
			name:  "1800 in a window ending 10 s into a cluster failover",
			build: func() *Run { return fxFailoverRun(RedisCluster, 130, 1200) },
			want:  True,
		},
		{
			name:  "1800 in a window ending 10 s into a sentinel failover that never healed",
			build: func() *Run { return fxFailoverRun(RedisSentinel, -1, 1200) },
			want:  True,
		},
		{
			// A single Redis comes back only at the restart (130 s): 2 epochs in that window.
			name:  "1800 in a window ending 10 s into a single Redis's outage",
			build: func() *Run { return fxFailoverRun(RedisSingle, 130, 1200) },
			want:  False, problem: "1800 requests in the 60 s from 50.0 s, bound 1214 (limit 600 x 2 views + 14 in flight)", m: 2,
		},
		{
			// 1400 after the kill's first second (when escrow blocks reserved in the old master
			// may still admit): more than the local shares and a new master together.
			name: "2000 in a window ending 10 s into a cluster failover",
			build: func() *Run {
				r := fxRun("redis", 3)
				r.Info.Redis = RedisCluster
				r.fxFault(&Fault{Kind: KindRedis, Target: "198.51.100.1:7001"}, 100, 130)
				r.fxArrivals("alpha-1", "b", 600, 50, 100, 1)
				r.fxArrivals("alpha-1", "a", 1400, 101, 110, 1)
				return r
			},
			want: False, problem: "1400 requests in the 60 s from 101.0 s, bound 1216 (limit 600 x 2 views + 16 in flight)", m: 2,
		},
		{
			// After the kill there is no old master's epoch: the local shares and the new
			// master's, 2.
			name: "1300 in 60 s after a master was killed",
			build: func() *Run {
				r := fxRun("redis", 3)
				r.Info.Redis = RedisSentinel
				r.fxFault(&Fault{Kind: KindRedis}, 100, 130)
				r.fxArrivals("alpha-1", "a", 1300, 101, 125, 1)
				return r
			},
			want: False, problem: "1300 requests in the 60 s from 101.0 s, bound 1206 (limit 600 x 2 views + 6 in flight)", m: 2,
		},
		{
			name: "1200 in 60 s in redis mode under a partition",
			build: func() *Run {
				r := fxRun("redis", 5)
				r.fxFault(fxHalves, 90, 200)
				r.fxArrivals("alpha-1", "a", 1200, 100, 160, 1)
				return r
			},
			want: False, problem: "limit 600 x 1 view", m: 1,
		},
		{
			// 100 requests of 100 tokens: within rpm, 10000 tokens against tpm 6000.
			name: "tokens over tpm",
			build: func() *Run {
				r := fxRun("fast", 5)
				r.Info.Deployments[0].TPM = 6000
				r.fxArrivals("alpha-1", "a", 100, 10, 70, 100)
				return r
			},
			want: False, problem: "dep alpha-1: 10000 tokens in the 60 s from 10.0 s, bound 6100 (limit 6000 x 1 view + 100 in flight)", m: 1,
		},
		{
			name:  "tokens without a tpm limit",
			build: func() *Run { r := fxRun("fast", 5); r.fxArrivals("alpha-1", "a", 100, 10, 70, 100); return r },
			want:  True, m: 1,
		},
		{
			name: "ok chats but no upstream log",
			build: func() *Run {
				r := fxRun("fast", 5)
				r.fxChat(1, "n1", "a-0", 1, 2, OK, 200, "alpha-1")
				return r
			},
			want: Unknown, problem: "upstream log is empty",
		},
		{
			name:  "unknown mode",
			build: func() *Run { r := fxRun("eventual", 5); r.fxArrivals("alpha-1", "a", 10, 10, 70, 1); return r },
			want:  Unknown, problem: "no known mode",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, deps := CheckLimits(tc.build())
			if res.Valid != tc.want {
				t.Fatalf("valid = %v, want %v; summary %q, problems %q", res.Valid, tc.want, res.Summary, res.Problems)
			}
			if tc.problem != "" && (len(res.Problems) == 0 || !strings.Contains(res.Problems[0], tc.problem)) {
				t.Errorf("problems = %q, want the first to hold %q", res.Problems, tc.problem)
			}
			if tc.want == Unknown {
				return
			}
			if len(deps) != 1 || (tc.m != 0 && deps[0].FaultFactorInWorst != tc.m) {
				t.Errorf("deployments = %+v, want one with fault factor %d", deps, tc.m)
			}
		})
	}
}

// TestCheckLimitsHandCount checks every figure against a count done by hand.
func TestCheckLimitsHandCount(t *testing.T) {
	r := fxRun("fast", 3)
	r.Info.Propagation = 0
	r.Info.Deployments = []DeploymentInfo{
		{ID: "a-1", Group: "a", RPM: 3, TPM: 100},
		{ID: "b-1", Group: "b", RPM: 10},
	}
	for i, s := range []float64{0, 10, 20, 30, 100} {
		r.Upstream = append(r.Upstream, Arrival{T: fxStart + fxSec(s), Deployment: "a-1", RequestID: string(rune('p' + i)), Tokens: 20})
	}
	r.Upstream = append(r.Upstream, Arrival{T: fxStart + fxSec(5), Deployment: "z-9", RequestID: "z"})
	r.fxOp(Op{Type: Invoke, F: FChat, Process: 1, Time: 1, Value: Value{RequestID: "q1", Model: "a"}})
	r.fxOp(Op{Type: Fail, F: FChat, Process: 1, Time: 2, Value: Value{RequestID: "q1", Status: 429}})
	r.fxOp(Op{Type: Invoke, F: FChat, Process: 1, Time: 3, Value: Value{RequestID: "q2", Model: "a"}})
	r.fxOp(Op{Type: Fail, F: FChat, Process: 1, Time: 4, Value: Value{RequestID: "q2", Status: 400}})

	// a-1's windows, anchored at each arrival's start: [0,60) 4, [10,70) 3, [20,80) 2, [30,90) 1,
	// [100,160) 1; and at its end: (-60,0] 1, (-50,10] 2, (-40,20] 3, (-30,30] 4, (40,100] 1.
	// Over rpm 3: two windows of 4, 80 tokens each, within tpm 100.
	res, deps := CheckLimits(r)
	if res.Valid != False {
		t.Fatalf("valid = %v, want false: %q", res.Valid, res.Problems)
	}
	want := []DeploymentResult{
		{ID: "a-1", LimitRPM: 3, LimitTPM: 100, MaxIn60s: 4, MaxTokensIn60s: 80, Bound: 3, TokenBound: 100,
			WorstWindowStart: 0, Admitted: 5, Refused: 1, OverLimitWindows: 2, OverBoundWindows: 2, FaultFactorInWorst: 1},
		{ID: "b-1", LimitRPM: 10, Bound: 10, FaultFactorInWorst: 1},
	}
	if len(deps) != len(want) {
		t.Fatalf("deployments = %+v, want %+v", deps, want)
	}
	for i := range want {
		if deps[i] != want[i] {
			t.Errorf("deployment %d = %+v\nwant %+v", i, deps[i], want[i])
		}
	}
	wantProblems := []string{"dep a-1: 4 requests in the 60 s from 0.0 s, bound 3 (limit 3 x 1 view + 0 in flight)"}
	if strings.Join(res.Problems, "\n") != strings.Join(wantProblems, "\n") {
		t.Errorf("problems = %q, want %q", res.Problems, wantProblems)
	}
	if got := res.Figures["max_over_limit"].(map[string]float64)["a-1"]; got != 1.333 {
		t.Errorf("max/limit of a-1 = %v, want 1.333", got)
	}
	if got := res.Figures["overshoot"].(map[string]int64); got["a-1"] != 1 || got["b-1"] != 0 {
		t.Errorf("overshoot = %v, want a-1 1, b-1 0", got)
	}
	if got := res.Figures["unlisted_arrivals"]; got != 1 {
		t.Errorf("unlisted arrivals = %v, want 1", got)
	}
	if !strings.Contains(res.Summary, "1 of 2 deployments went over") {
		t.Errorf("summary %q does not say one deployment went over", res.Summary)
	}
}

func TestCheckLimitsSummaryWithinBound(t *testing.T) {
	r := fxRun("fast", 5)
	r.fxFault(fxHalves, 90, 200)
	r.fxArrivals("alpha-1", "a", 1200, 100, 160, 1)
	res, deps := CheckLimits(r)
	if res.Valid != True {
		t.Fatalf("valid = %v: %q", res.Valid, res.Problems)
	}
	if deps[0].Bound != 1202 || deps[0].MaxIn60s != 1200 || deps[0].OverBoundWindows != 0 || deps[0].OverLimitWindows == 0 {
		t.Errorf("deployment = %+v, want bound 1202 (600 x 2 + 2 x 1), 1200 max, windows over the limit only", deps[0])
	}
	for _, want := range []string{"Every deployment stayed within its fast-mode bound", "1200 against rpm 600 (alpha-1)", "over the limit itself"} {
		if !strings.Contains(res.Summary, want) {
			t.Errorf("summary %q lacks %q", res.Summary, want)
		}
	}
}

func TestBusiest(t *testing.T) {
	times := []int64{0, 10, 20, 20, 100}
	tokens := []int64{1, 2, 3, 4, 50}
	tests := []struct {
		length         int64
		requests, toks int64
	}{{0, 0, 0}, {1, 2, 50}, {11, 3, 50}, {21, 4, 50}, {101, 5, 60}}
	for _, tc := range tests {
		req, tok := busiest(times, tokens, tc.length)
		if req != tc.requests || tok != tc.toks {
			t.Errorf("busiest(length %d) = %d, %d; want %d, %d", tc.length, req, tok, tc.requests, tc.toks)
		}
	}
}
