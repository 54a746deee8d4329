package main

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMedianAndSpread(t *testing.T) {
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("odd median = %v", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("even median = %v", got)
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing should be NaN")
	}
	if got := spread([]float64{5, 1, 3}); got != 4 {
		t.Errorf("spread = %v", got)
	}
}

func TestFormatting(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{fmtMs(5432.1), "5.432 ms"},
		{fmtUS(37.4), "37 µs"},
		{fmtUS(8.25), "8.2 µs"},
		{fmtAddedUS(37.4), "+37 µs"},
		{fmtAddedUS(-12), "-12 µs"},
		{fmtAddedUS(0.04), "+0.0 µs"},
		{fmtAddedUS(math.NaN()), "n/a"},
		{fmtRatio(nil), "n/a"},
		{fmtRatio(ratio(46, 40)), "1.15×"},
		{fmtSuccess(10, 10), "100 %"},
		{fmtSuccess(999999, 1000000), "99.999 %"}, // never rounds up to 100 when one failed
		{fmtSuccess(1, 2), "50.000 %"},
		{fmtSuccess(0, 0), "n/a"},
		{fmtMiB(20480), "20.0 MiB"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestRatio(t *testing.T) {
	if r := ratio(30, 20); r == nil || *r != 1.5 {
		t.Errorf("ratio(30, 20) = %v", r)
	}
	// A reverse proxy that adds nothing (or less than nothing: noise) gives no ratio.
	if ratio(30, 0) != nil || ratio(30, -5) != nil {
		t.Error("a non-positive denominator must give no ratio")
	}
}

func TestRatioCheck(t *testing.T) {
	p50 := func(l latencyUS) float64 { return l.P50 }
	mk := func(median float64, rounds ...float64) *cell {
		c := &cell{Added: &latencyUS{P50: median}}
		for i, a := range rounds {
			c.AddedRounds = append(c.AddedRounds, roundAdded{Round: i + 1, Added: latencyUS{P50: a}})
		}
		return c
	}
	pass := ratioCheck(3000, "p50", mk(45, 45, 50, 44), mk(40, 40, 40, 41), 1.15, p50)
	if pass.Verdict != "PASS" || !strings.Contains(pass.Detail, "ratio 1.12×") || !strings.Contains(pass.Detail, "1.0 µs to spare") {
		t.Errorf("pass: %+v", pass)
	}
	if !strings.Contains(pass.Detail, "holds in 2 of 3") { // 50 > 46 in round 2
		t.Errorf("per-round count: %+v", pass)
	}
	fail := ratioCheck(3000, "p50", mk(400), mk(100), 1.5, p50)
	if fail.Verdict != "FAIL" || !strings.Contains(fail.Detail, "over by 250 µs") || strings.Contains(fail.Detail, "round by round") {
		t.Errorf("fail: %+v", fail)
	}
	inc := ratioCheck(1000, "p50", mk(12), mk(-3), 1.15, p50)
	if inc.Verdict != "INCONCLUSIVE" || !strings.Contains(inc.Detail, "-3.0 µs") || !strings.Contains(inc.Detail, "+12 µs") {
		t.Errorf("inconclusive: %+v", inc)
	}
	// A 5µs median hop that was +307µs in one round and -297µs in the other: no ratio (7.4×).
	noisy := ratioCheck(1000, "p50", mk(37, 262, -188), mk(5, 307, -297), 1.15, p50)
	if noisy.Verdict != "INCONCLUSIVE" || !strings.Contains(noisy.Detail, "deviation (302 µs") ||
		!strings.Contains(noisy.Detail, "would be 7.40×") || !strings.Contains(noisy.Detail, "herd − reverseproxy is +32 µs") {
		t.Errorf("noisy baseline: %+v", noisy)
	}
}

// fakeSample is a measured attack with the given p50 and p99 (µs), all requests answered.
func fakeSample(rate, round int, target string, p50, p99 float64, hwmKB int64) sample {
	s := sample{
		Rate: rate, Round: round, Target: target,
		Result: attackResult{Sent: 100, OK: 100, Rate: float64(rate), Latency: latencyUS{P50: p50, P90: p50, P99: p99, Max: p99, Mean: p50}},
		CPU:    map[string]procCPU{"herdbench": {CorePct: 10, USPerReq: 50}},
		Mem:    map[string]memKB{},
	}
	if target != targetDirect {
		s.CPU[target] = procCPU{CorePct: 20, USPerReq: 70}
		s.Mem[target] = memKB{RSS: hwmKB - 100, HWM: hwmKB}
	}
	return s
}

func TestBuildReport(t *testing.T) {
	o := benchOptions{rates: []int{3000}, rounds: 2, targets: allTargets, duration: 10 * time.Second, warmup: 2 * time.Second, upstreamLatency: 5 * time.Millisecond}
	samples := []sample{
		fakeSample(3000, 1, targetDirect, 5000, 5500, 0),
		fakeSample(3000, 1, targetReverseProxy, 5040, 5600, 15000),
		fakeSample(3000, 1, targetHerd, 5050, 5700, 20000),
		// Round 2 is 100µs slower across the board: paired differences cancel that out.
		fakeSample(3000, 2, targetReverseProxy, 5140, 5700, 15100),
		fakeSample(3000, 2, targetHerd, 5160, 5900, 21000),
		fakeSample(3000, 2, targetDirect, 5100, 5600, 0),
	}
	samples[4].Result.OK = 99 // one failure in round 2
	samples[3].Other = 85     // someone else was busy
	rep := buildReport(o, machineInfo{CPUModel: "Test CPU", NumCPU: 2, GoVersion: "go1.26"}, samples)

	h := rep.cell(3000, targetHerd)
	if h.Rounds != 2 || h.Sent != 200 || h.OK != 199 {
		t.Fatalf("herd cell counts: %+v", h)
	}
	if h.Latency.P50 != 5105 || h.Spread.P50 != 110 {
		t.Errorf("herd p50 median/spread = %v/%v, want 5105/110", h.Latency.P50, h.Spread.P50)
	}
	if h.Added == nil || h.Added.P50 != 55 || h.Added.P99 != 250 {
		t.Errorf("herd added = %+v, want p50 55 (median of 50, 60), p99 250 (median of 200, 300)", h.Added)
	}
	if h.PeakHWMKB != 21000 || h.ProxyCPU == nil || h.ProxyCPU.USPerReq != 70 {
		t.Errorf("herd cell resources: %+v", h)
	}
	p := rep.cell(3000, targetReverseProxy)
	if p.Added.P50 != 40 || p.Added.P99 != 100 {
		t.Errorf("reverseproxy added = %+v, want p50 40, p99 100", p.Added)
	}
	if d := rep.cell(3000, targetDirect); d.Added != nil || d.ProxyCPU != nil {
		t.Errorf("direct has no added latency or proxy CPU: %+v", d)
	}
	if r := rep.Ratios[0]; r.P50 == nil || *r.P50 != 55.0/40 || r.P99 == nil || *r.P99 != 2.5 {
		t.Errorf("ratios = %+v", r)
	}

	verdicts := map[string]string{}
	for _, c := range rep.Checks {
		verdicts[c.What] = c.Verdict
	}
	want := map[string]string{
		"herd added p50 ≤ 1.15× reverseproxy's at 3000 req/s": "FAIL", // 55 > 46
		"herd added p99 ≤ 1.5× reverseproxy's at 3000 req/s":  "FAIL", // 250 > 150
		"herd 100% success at 3000 req/s":                     "FAIL",
		"herd peak RSS < 64 MiB":                              "PASS",
	}
	for what, v := range want {
		if verdicts[what] != v {
			t.Errorf("%s: %q, want %q (all: %v)", what, verdicts[what], v, verdicts)
		}
	}

	var md bytes.Buffer
	if err := writeMarkdown(&md, rep); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"Test CPU, nproc 2",
		"### 3000 req/s",
		"| herd | 5.105 ms |",
		"99.500 %",
		"+55 µs | +250 µs",
		"p50 1.38× (+55 µs vs +40 µs), p99 2.50× (+250 µs vs +100 µs)",
		"**FAIL** herd added p50",
		"20.5 MiB",
		"more than 20 % of a CPU during: 3000 req/s round 2 reverseproxy (85 %)",
		"round by round it holds in 0 of 2",
	} {
		if !strings.Contains(md.String(), s) {
			t.Errorf("markdown lacks %q:\n%s", s, md.String())
		}
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Errorf("report does not marshal: %v", err)
	}
}

// TestGroupBy: keys in the order they first appear, as the reports list them; each group in
// its original order, as the rounds ran.
func TestGroupBy(t *testing.T) {
	keys, groups := groupBy([]string{"b1", "a1", "b2", "c1", "a2"}, func(s string) byte { return s[0] })
	if string(keys) != "bac" || !slices.Equal(groups['b'], []string{"b1", "b2"}) || !slices.Equal(groups['a'], []string{"a1", "a2"}) || !slices.Equal(groups['c'], []string{"c1"}) {
		t.Errorf("groupBy = %q, %q", keys, groups)
	}
	if keys, groups := groupBy(nil, func(s string) string { return s }); len(keys) != 0 || len(groups) != 0 {
		t.Errorf("nothing: %q, %q", keys, groups)
	}
}
