package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
)

func TestParseModesFlags(t *testing.T) {
	o, err := parseClusterFlags([]string{"--modes", "fast, strict"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.modes, []string{modeFast, modeStrict}) || !slices.Equal(o.spreads, []string{spreadBalanced}) || o.cost ||
		o.limitWait != nil || !slices.Equal(o.nodes, []int{3, 5}) || !slices.Equal(o.demands, []int{1, 3, 10}) ||
		!slices.Equal(o.patterns, []string{patternSteady, patternBursty}) || o.limit != 600 || o.duration != 75*time.Second {
		t.Errorf("accuracy defaults = %+v", o)
	}

	o, err = parseClusterFlags([]string{"--modes", "strict", "--spread", "hot,balanced", "--limit-wait", "20ms", "--nodes", "3", "--demands", "3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.modes, []string{modeStrict}) || !slices.Equal(o.spreads, []string{spreadHot, spreadBalanced}) ||
		o.limitWait == nil || *o.limitWait != 20*time.Millisecond || !slices.Equal(o.nodes, []int{3}) || !slices.Equal(o.demands, []int{3}) {
		t.Errorf("given = %+v", o)
	}
	// --limit-wait 0 is a setting (never wait), not "unset".
	if o, err := parseClusterFlags([]string{"--modes", "strict", "--limit-wait", "0s"}, io.Discard); err != nil || o.limitWait == nil || *o.limitWait != 0 {
		t.Errorf("--limit-wait 0s: %+v, %v", o.limitWait, err)
	}

	// --rate makes it the cost measurement, with --keys' defaults.
	o, err = parseClusterFlags([]string{"--modes", "fast,strict", "--rate", "1000"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !o.cost || !slices.Equal(o.nodes, []int{3}) || o.rate != 1000 || o.rounds != 3 || o.duration != 20*time.Second ||
		o.limit != keysDefaultLimit || o.warmup != 3*time.Second || len(o.keys) != 0 {
		t.Errorf("cost defaults = %+v", o)
	}
	// The lowest limit a cost run accepts: 1.25 × the load.
	o, err = parseClusterFlags([]string{"--modes", "fast,strict", "--rate", "1000", "--spread", "hot", "--limit", "75000", "--nodes", "3,5,9", "--rounds", "4", "--warmup", "35s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !o.cost || o.limit != 75000 || !slices.Equal(o.nodes, []int{3, 5, 9}) || o.rounds != 4 || o.warmup != 35*time.Second || !slices.Equal(o.spreads, []string{spreadHot}) || o.tpm != keysTPM {
		t.Errorf("cost, given = %+v", o)
	}
	if o, err := parseClusterFlags([]string{"--modes", "strict", "--rate", "1000", "--tpm", "0"}, io.Discard); err != nil || o.tpm != 0 {
		t.Errorf("--tpm 0: tpm %d, %v", o.tpm, err)
	}

	for _, bad := range [][]string{
		{"--modes", "slow"},
		{"--modes", "fast,fast"},
		{"--modes", "fast,"},
		{"--modes", "fast", "--spread", "warm"},
		{"--modes", "fast", "--spread", "hot,hot"},
		{"--limit-wait", "5ms"}, // --modes flags are refused without --modes
		{"--limit-wait", "5ms"}, //
		{"--modes", "fast", "--limit-wait", "-1ms"},
		{"--modes", "fast", "--keys", "off,on"},
		{"--modes", "fast", "--rounds", "2"}, // cost flags without --rate
		{"--modes", "fast", "--warmup", "1s"},
		{"--modes", "fast", "--profile-dir", "/tmp/p"},
		{"--modes", "fast", "--patterns", "spiky"},
		{"--modes", "fast", "--rate", "1000", "--demands", "3"}, // accuracy flags with --rate
		{"--modes", "fast", "--rate", "1000", "--burst-every", "5s"},
		{"--modes", "fast", "--rate", "1000", "--limit", "74999"}, // under 1.25 × the load
		{"--modes", "fast", "--rate", "0"},
		{"--modes", "fast", "--rate", "1000", "--tpm", "-1"},
		{"--modes", "fast", "--tpm", "0"}, // --tpm is for the cost runs
		{"--tpm", "0"},
	} {
		var uerr usageError
		if _, err := parseClusterFlags(bad, io.Discard); !errors.As(err, &uerr) {
			t.Errorf("%v: err = %v, want a usage error", bad, err)
		}
	}
	// The message says which mode's rule a limit breaks.
	_, err = parseClusterFlags([]string{"--modes", "fast", "--rate", "1000", "--limit", "74999"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "with --modes and --rate") || !strings.Contains(err.Error(), "1.25 times") {
		t.Errorf("limit too low: %v", err)
	}
	_, err = parseClusterFlags([]string{"--keys", "off,on", "--limit", "599999"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "with --keys") || !strings.Contains(err.Error(), "10 times") {
		t.Errorf("--keys limit too low: %v", err)
	}
}

// TestModeSettings loads the generated config with herd's own loader: the mode and the wait land
// in router_settings, and without them herd's defaults stand.
func TestModeSettings(t *testing.T) {
	wait := 20 * time.Millisecond
	zero := time.Duration(0)
	for _, tt := range []struct {
		mode     string
		wait     *time.Duration
		wantMode string
		wantWait time.Duration
	}{
		{"", nil, config.DefaultClusterLimitMode, config.DefaultClusterLimitWait},
		{modeStrict, nil, modeStrict, config.DefaultClusterLimitWait},
		{modeFast, nil, modeFast, config.DefaultClusterLimitWait},
		{modeStrict, &wait, modeStrict, wait},
		{modeStrict, &zero, modeStrict, 0},
		{"", &wait, config.DefaultClusterLimitMode, wait},
	} {
		text := clusterConfig("127.0.0.1:43121", []string{"a", "b"}, 600, 0, "") + modeSettings(tt.mode, tt.wait)
		cfg, err := config.Parse("cluster.yaml", []byte(text), config.MapEnv(nil), nil)
		if err != nil {
			t.Fatalf("mode %q: %v\n%s", tt.mode, err, text)
		}
		rs := cfg.RouterSettings
		if rs.ClusterLimitMode != tt.wantMode || rs.ClusterLimitWait == nil || rs.ClusterLimitWait.Duration() != tt.wantWait {
			t.Errorf("mode %q wait %v: cluster_limit_mode %q, cluster_limit_wait %v; want %q, %v", tt.mode, tt.wait, rs.ClusterLimitMode, rs.ClusterLimitWait, tt.wantMode, tt.wantWait)
		}
		if len(cfg.ModelList) != 2 {
			t.Errorf("model_list = %+v", cfg.ModelList)
		}
	}
}

func TestLoadNodes(t *testing.T) {
	nodes := []*child{{name: "n0"}, {name: "n1"}, {name: "n2"}}
	if got := loadNodes(nodes, spreadBalanced); len(got) != 3 {
		t.Errorf("balanced: %d nodes", len(got))
	}
	if got := loadNodes(nodes, spreadHot); len(got) != 1 || got[0].name != "n0" {
		t.Errorf("hot: %v", got)
	}
}

// TestIdealAdmits checks the exact limiter against every subset of small random schedules: no
// subset within the limit is larger than what it admits, and what it admits is within it.
func TestIdealAdmits(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	secs := func(s ...float64) []time.Time {
		var ts []time.Time
		for _, x := range s {
			ts = append(ts, t0.Add(time.Duration(x*float64(time.Second))))
		}
		return ts
	}
	for _, tt := range []struct {
		ts    []time.Time
		limit int
		want  int
	}{
		{nil, 5, 0},
		{secs(0, 0, 0), 0, 0},
		{secs(0, 0, 0, 0), 3, 3},
		{secs(0, 0, 0, 60, 60, 60), 3, 6}, // half-open: 60 s later is a new window
		{secs(0, 0, 0, 59.9, 59.9, 59.9), 3, 3},
		{secs(59, 0, 30, 61, 90), 2, 4},             // unsorted: 0, 30 | 61 (0 out), 90 (30 out)
		{secs(0, 10, 20, 30, 40, 50, 60, 70), 3, 5}, // 0,10,20 | 60,70
	} {
		if got := idealAdmits(tt.ts, tt.limit, time.Minute); got != tt.want {
			t.Errorf("idealAdmits(%v, %d) = %d, want %d", tt.ts, tt.limit, got, tt.want)
		}
	}

	rng := rand.New(rand.NewPCG(13, 6))
	const w = 10 * time.Second
	for trial := range 300 {
		n := 1 + rng.IntN(12)
		limit := 1 + rng.IntN(4)
		ts := make([]time.Time, n)
		for i := range ts {
			ts[i] = t0.Add(time.Duration(rng.IntN(30)) * time.Second / 2) // ties and exact 10 s gaps happen
		}
		best := 0
		for mask := range 1 << n {
			var sub []time.Time
			for i := range n {
				if mask&(1<<i) != 0 {
					sub = append(sub, ts[i])
				}
			}
			if len(sub) > best && maxInWindow(sub, w) <= limit {
				best = len(sub)
			}
		}
		if got := idealAdmits(ts, limit, w); got != best {
			t.Fatalf("trial %d: idealAdmits(%v, %d) = %d, but a subset of %d fits", trial, ts, limit, got, best)
		}
	}
}

func TestUtilise(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	// 70 requests, one a second from t0+1s, listed out of order, every third refused; one
	// never left (the context ended).
	var out []outcome
	for i := 70; i >= 1; i-- {
		status := http.StatusOK
		if i%3 == 0 {
			status = http.StatusTooManyRequests
		}
		out = append(out, outcome{sent: at(float64(i)), status: status})
	}
	out = append(out, outcome{})
	// The upstream saw 8 within 60 s of the first request sent (t0+1s up to t0+61s, exclusive),
	// then 5 more.
	var arrived []time.Time
	for _, s := range []float64{1.01, 2, 3, 10, 20, 30, 50, 60.99, 61, 62, 70, 71.5, 72} {
		arrived = append(arrived, at(s))
	}
	r := modeRun{clusterRun: clusterRun{Limit: 10}}
	r.utilise(out, arrived)
	// An exact limiter of 10 per 60 s: t+1..t+10, then t+61..t+70 as the first ones leave.
	if r.FirstMinute != 8 || r.FirstMinutePct != 80 || r.Ideal != 20 || r.OverallPct != 65 {
		t.Errorf("first minute %d (%.1f%%), ideal %d, overall %.2f%%; want 8 (80%%), 20, 65%%", r.FirstMinute, r.FirstMinutePct, r.Ideal, r.OverallPct)
	}
	if len(r.SentUS) != 70 || r.SentUS[0] != 0 || r.SentUS[69] != 69e6 || len(r.ArrivedUS) != 13 || r.ArrivedUS[0] != 10e3 || r.ArrivedUS[12] != 71e6 {
		t.Errorf("raw times: sent %d from %v, arrived %v", len(r.SentUS), r.SentUS[:min(len(r.SentUS), 2)], r.ArrivedUS)
	}
	if r.Codes["200"] != 47 || r.Codes["429"] != 23 || r.Codes["error"] != 1 || len(r.Codes) != 3 {
		t.Errorf("codes %v", r.Codes)
	}

	// Nothing sent: nothing to say, and no division by zero.
	r = modeRun{clusterRun: clusterRun{Limit: 10}}
	r.utilise([]outcome{{}}, nil)
	if r.FirstMinute != 0 || r.Ideal != 0 || r.OverallPct != 0 || math.IsNaN(r.FirstMinutePct) {
		t.Errorf("nothing sent: %+v", r)
	}
}

func TestFmtErrors(t *testing.T) {
	if got := fmtErrors(0, map[string]int{"200": 5}); got != "0" {
		t.Errorf("no errors: %q", got)
	}
	if got := fmtErrors(25, map[string]int{"200": 5, "429": 9, "502": 3, "error": 22}); got != "25 (502×3, error×22)" {
		t.Errorf("errors: %q", got)
	}
}

func TestModeReady(t *testing.T) {
	for _, tt := range []struct {
		st    modeStatus
		mode  string
		n     int
		ready bool
	}{
		{modeStatus{Mode: "fast"}, modeFast, 3, true}, // fast mode does not need the homes
		{modeStatus{Mode: "strict", Homes: []string{"n0", "n1", "n2"}}, modeStrict, 3, true},
		{modeStatus{Mode: "strict", Homes: []string{"n0", "n1"}}, modeStrict, 3, false},
		{modeStatus{Mode: "strict"}, modeStrict, 3, false},
		{modeStatus{Mode: "fast", Homes: []string{"n0", "n1", "n2"}}, modeStrict, 3, false}, // a node that ignored the setting
		{modeStatus{Mode: "strict", Homes: []string{"n0", "n1", "n2"}}, modeFast, 3, false},
		{modeStatus{Mode: ""}, modeFast, 3, false}, // a herd that does not report it
	} {
		why := modeReady(tt.st, tt.mode, tt.n)
		if (why == "") != tt.ready {
			t.Errorf("%+v for %s on %d nodes: %q, want ready=%v", tt.st, tt.mode, tt.n, why, tt.ready)
		}
	}
}

// TestWaitMode serves /cluster/status and /health/readiness as herd does (bodies taken from a
// real 3-node cluster) and checks waitMode waits for the homes table on every node.
func TestWaitMode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers and polls them")
	}
	var polls atomic.Int64
	node := func(name, mode string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/health/readiness":
				fmt.Fprintf(w, `{"db":"Not connected","deployments":12,"herd_version":"dev","model_groups":12,"node":%q,"state_backend":"gossip","state_backend_mode":%q,"status":"healthy"}`, name, mode)
			case "/cluster/status":
				homes, version := `[]`, 0
				// n2 gets the table only after a few polls.
				if name != "n2" || polls.Add(1) > 3 {
					homes, version = `["n0","n1","n2"]`, 1
				}
				fmt.Fprintf(w, `{"backend":"gossip","config_error":"","config_version":1,"deployments":[],"homes":%s,"homes_version":%d,"leader":"n1","members":[{"name":"n0","addr":"127.0.0.1:36357","status":"alive","clock_offset_seconds":0}],"node":%q,"served_config_version":1,"term":2,"voters":["n0","n1","n2"]}`, homes, version, name)
			default:
				http.NotFound(w, r)
			}
		}))
	}
	env := &clusterEnv{client: newLoadClient()}
	for i, mode := range []string{modeStrict, modeStrict, modeStrict} {
		srv := node(fmt.Sprintf("n%d", i), mode)
		defer srv.Close()
		env.nodes = append(env.nodes, &child{name: fmt.Sprintf("herd-strict-n%d", i), addr: strings.TrimPrefix(srv.URL, "http://")})
	}
	version, err := env.waitMode(context.Background(), modeStrict, 3)
	if err != nil || version != 1 || polls.Load() <= 3 {
		t.Errorf("waitMode = %d, %v after %d polls of n2; want version 1 after more than 3", version, err, polls.Load())
	}
	if vs, err := env.homesVersions(context.Background()); err != nil || !slices.Equal(vs, []uint64{1, 1, 1}) {
		t.Errorf("homesVersions = %v, %v", vs, err)
	}

	// A node in the other mode never becomes ready: the error names it and what it reports.
	srv := node("n9", modeFast)
	defer srv.Close()
	env.nodes = append(env.nodes, &child{name: "herd-strict-n9", addr: strings.TrimPrefix(srv.URL, "http://")})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := env.waitMode(ctx, modeStrict, 3); err == nil || !strings.Contains(err.Error(), "herd-strict-n9") || !strings.Contains(err.Error(), `"fast"`) {
		t.Errorf("a fast node in a strict cluster: %v", err)
	}
}

func accuracyRun(mode, spread, pattern string, nodes, demand, maxIn60s int, firstPct, overallPct float64) modeRun {
	const limit = 600
	r := modeRun{Mode: mode, FirstMinutePct: firstPct, OverallPct: overallPct, FirstMinute: int(firstPct * limit / 100),
		clusterRun: clusterRun{Nodes: nodes, Spread: spread, Pattern: pattern, Demand: demand, Limit: limit, MaxIn60s: maxIn60s}}
	r.Overshoot = max(maxIn60s-limit, 0)
	r.OvershootPct = 100 * float64(r.Overshoot) / limit
	return r
}

func TestModeChecks(t *testing.T) {
	verdicts := func(runs ...modeRun) map[string]string {
		out := map[string]string{}
		for _, c := range modeChecks(runs) {
			out[c.What] = c.Verdict
		}
		return out
	}
	got := verdicts(
		accuracyRun(modeStrict, spreadHot, patternBursty, 3, 3, 600, 95, 99),       // exactly on both targets
		accuracyRun(modeStrict, spreadBalanced, patternBursty, 3, 10, 601, 99, 99), // one over
		accuracyRun(modeStrict, spreadHot, patternSteady, 5, 3, 570, 94.9, 99),     // short of 95 %
		accuracyRun(modeStrict, spreadHot, patternSteady, 5, 1, 300, 50, 50),       // 1x: no utilisation target
		accuracyRun(modeFast, spreadBalanced, patternBursty, 3, 3, 606, 101, 101),  // 6 over: 1 % of 600
		accuracyRun(modeFast, spreadBalanced, patternBursty, 5, 3, 607, 101, 101),  // 7 over
		accuracyRun(modeFast, spreadBalanced, patternSteady, 3, 3, 600, 97.9, 99),  // steady, short of 98 %
		accuracyRun(modeFast, spreadBalanced, patternBursty, 3, 10, 600, 50, 99),   // bursty: no utilisation target
	)
	want := map[string]string{
		"strict mode, 3 nodes, hot bursty 3×: never over the limit":                         "PASS",
		"strict mode, 3 nodes, hot bursty 3×: ≥ 95% of the limit in the first minute":       "PASS",
		"strict mode, 3 nodes, balanced bursty 10×: never over the limit":                   "FAIL",
		"strict mode, 3 nodes, balanced bursty 10×: ≥ 95% of the limit in the first minute": "PASS",
		"strict mode, 5 nodes, hot steady 3×: never over the limit":                         "PASS",
		"strict mode, 5 nodes, hot steady 3×: ≥ 95% of the limit in the first minute":       "FAIL",
		"strict mode, 5 nodes, hot steady 1×: never over the limit":                         "PASS",
		"fast mode, 3 nodes, balanced bursty 3×: overshoot ≤ 1% of the limit":               "PASS",
		"fast mode, 5 nodes, balanced bursty 3×: overshoot ≤ 1% of the limit":               "FAIL",
		"fast mode, 3 nodes, balanced steady 3×: overshoot ≤ 1% of the limit":               "PASS",
		"fast mode, 3 nodes, balanced steady 3×: ≥ 98% of the limit in the first minute":    "FAIL",
		"fast mode, 3 nodes, balanced bursty 10×: overshoot ≤ 1% of the limit":              "PASS",
	}
	if len(got) != len(want) {
		t.Errorf("%d checks, want %d: %v", len(got), len(want), got)
	}
	for what, v := range want {
		if got[what] != v {
			t.Errorf("%s: %q, want %s", what, got[what], v)
		}
	}
	if err := failedChecks(modeChecks([]modeRun{accuracyRun(modeStrict, spreadHot, patternBursty, 3, 3, 600, 99, 99)})); err != nil {
		t.Errorf("all passed: %v", err)
	}
	err := failedChecks(modeChecks([]modeRun{accuracyRun(modeStrict, spreadHot, patternBursty, 3, 3, 600, 80, 99)}))
	if err == nil || !strings.Contains(err.Error(), "strict mode, 3 nodes, hot bursty 3×: ≥ 95%") {
		t.Errorf("one missed: %v", err)
	}
}

// TestWriteModesMarkdown: one line per measurement with each mode's figures in --modes order,
// a dash where a mode has no run, and the detail lines.
func TestWriteModesMarkdown(t *testing.T) {
	strict3 := accuracyRun(modeStrict, spreadHot, patternBursty, 3, 3, 590, 98.3, 97.5)
	strict3.HomesBefore, strict3.HomesAfter = []uint64{1, 1, 1}, []uint64{1, 1, 1}
	fast3 := accuracyRun(modeFast, spreadHot, patternBursty, 3, 3, 677, 112.8, 110)
	fast3.HomesBefore, fast3.HomesAfter = []uint64{0, 0, 0}, []uint64{1, 1, 1}
	strict5 := accuracyRun(modeStrict, spreadBalanced, patternSteady, 5, 10, 600, 100, 98.4)
	// Measured in this order: 5 nodes strict before 3 nodes; the table still goes by node count.
	runs := []modeRun{strict5, strict3, fast3}
	o := clusterOptions{limit: 600, duration: 75 * time.Second, upLatency: 2 * time.Millisecond, burstGap: 15 * time.Second,
		modeOptions: modeOptions{modes: []string{modeFast, modeStrict}}}
	var b strings.Builder
	writeModesMarkdown(&b, "herdbench cluster --modes fast,strict", machineInfo{CPUModel: "AMD EPYC", NumCPU: 2}, o, runs, modeChecks(runs))
	md := b.String()
	for _, want := range []string{
		"| nodes | spread | pattern | demand | fast: max in any 60 s | fast: overshoot | fast: first minute | fast: overall | strict: max in any 60 s |",
		"| 3 | hot | bursty | 3× | 677 | 77 (12.83%) | 112.8% | 110.0% | 590 | 0 (0.00%) | 98.3% | 97.5% |",
		"| 5 | balanced | steady | 10× | — | — | — | — | 600 | 0 (0.00%) | 100.0% | 98.4% |",
		"| 3 | hot | bursty | 3× | fast | 0 | 0 | 0 | 0 | 0 | 0.00 ms | 0 µs | [0 0 0] → [1 1 1] |",
		"| 3 | hot | bursty | 3× | strict | 0 | 0 | 0 | 0 | 0 | 0.00 ms | 0 µs | 1 |",
		"cluster_limit_wait herd's default",
		"- **FAIL** fast mode, 3 nodes, hot bursty 3×: overshoot ≤ 1% of the limit",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if i, j := strings.Index(md, "| 3 | hot | bursty | 3× | 677"), strings.Index(md, "| 5 | balanced"); i < 0 || j < i {
		t.Errorf("3-node row not before the 5-node one:\n%s", md)
	}
	wait := 20 * time.Millisecond
	o.limitWait = &wait
	b.Reset()
	writeModesMarkdown(&b, "x", machineInfo{}, o, runs, nil)
	if !strings.Contains(b.String(), "cluster_limit_wait 20ms") {
		t.Errorf("report does not say the wait:\n%s", b.String())
	}
}

func TestFmtVersions(t *testing.T) {
	for _, tt := range []struct {
		before, after []uint64
		want          string
	}{
		{[]uint64{1, 1, 1}, []uint64{1, 1, 1}, "1"},
		{[]uint64{1, 1, 1}, []uint64{1, 2, 2}, "[1 1 1] → [1 2 2]"},
		{[]uint64{1, 2}, []uint64{1, 2}, "[1 2] → [1 2]"}, // nodes disagree
		{nil, nil, "[] → []"},
	} {
		if got := fmtVersions(tt.before, tt.after); got != tt.want {
			t.Errorf("fmtVersions(%v, %v) = %q, want %q", tt.before, tt.after, got, tt.want)
		}
	}
}

func TestSummariseModes(t *testing.T) {
	run := func(nodes int, spread, mode string, round int, cpu, p50, p99 float64, sent, ok uint64) modeCostRun {
		return modeCostRun{Mode: mode, Spread: spread, keysRun: keysRun{Nodes: nodes, Round: round, HerdCPU: cpu,
			Result: attackResult{Sent: sent, OK: ok, Latency: latencyUS{P50: p50, P99: p99},
				SelfOverhead: &latencyUS{P50: p50 / 100, P99: p99 / 100}}}}
	}
	// Rounds alternate their order; pairs go by round. Round 2 ran on a busier machine.
	runs := []modeCostRun{
		run(3, spreadBalanced, modeFast, 1, 800, 3000, 9000, 1000, 1000), run(3, spreadBalanced, modeStrict, 1, 840, 3100, 9500, 1000, 1000),
		run(3, spreadBalanced, modeStrict, 2, 1100, 3500, 20000, 1000, 1000), run(3, spreadBalanced, modeFast, 2, 1000, 3300, 12000, 1000, 1000),
		run(3, spreadBalanced, modeFast, 3, 820, 3050, 9100, 1000, 1000), run(3, spreadBalanced, modeStrict, 3, 820, 3050, 9000, 1000, 1000),
		run(3, spreadHot, modeFast, 1, 700, 3000, 8000, 1000, 1000), run(3, spreadHot, modeStrict, 1, 770, 4000, 10000, 1000, 999),
	}
	sums := summariseModes(runs, 2*time.Millisecond)
	if len(sums) != 2 || sums[0].Spread != spreadBalanced || sums[1].Spread != spreadHot {
		t.Fatalf("summary = %+v", sums)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	s := sums[0]
	wantRatios := []float64{1.05, 1.1, 1}
	if len(s.CPURatios) != 3 || !near(s.CPURatios[0], wantRatios[0]) || !near(s.CPURatios[1], wantRatios[1]) || !near(s.CPURatios[2], wantRatios[2]) || !near(s.CPURatio, 1.05) {
		t.Errorf("ratios %v (median %v), want %v (1.05)", s.CPURatios, s.CPURatio, wantRatios)
	}
	if !slices.Equal(s.P50Diffs, []float64{100, 200, 0}) || s.P50Diff != 100 || !slices.Equal(s.P99Diffs, []float64{500, 8000, -100}) || s.P99Diff != 500 {
		t.Errorf("p50 diffs %v (%v), p99 diffs %v (%v)", s.P50Diffs, s.P50Diff, s.P99Diffs, s.P99Diff)
	}
	fast, ok := s.mode(modeFast)
	if !ok || fast.Rounds != 3 || fast.CPU != 820 || fast.CPUMin != 800 || fast.CPUMax != 1000 || fast.P50 != 3050 || fast.P99 != 9100 ||
		fast.AddedP50 != 1050 || fast.AddedP99 != 7100 || fast.SelfP50 != 30.5 || fast.SelfP99 != 91 || fast.Sent != 3000 || fast.OK != 3000 {
		t.Errorf("fast = %+v", fast)
	}
	if strict, ok := s.mode(modeStrict); !ok || strict.CPU != 840 || strict.P99 != 9500 || strict.AddedP99 != 7500 {
		t.Errorf("strict = %+v", strict)
	}
	if h := sums[1]; len(h.CPURatios) != 1 || !near(h.CPURatio, 1.1) || h.P50Diff != 1000 {
		t.Errorf("hot = %+v", h)
	}
	var failed []string
	for _, c := range modeCostChecks(sums) {
		if c.Verdict != "PASS" {
			failed = append(failed, c.What)
		}
	}
	if !slices.Equal(failed, []string{"100% success, strict mode, 3 nodes, hot"}) {
		t.Errorf("failed checks %q", failed)
	}

	// One mode alone: its figures, no ratio; and a run without the overhead header shows n/a.
	one := run(5, spreadBalanced, modeStrict, 1, 900, 3000, 9000, 10, 10)
	one.Result.SelfOverhead = nil
	sums = summariseModes([]modeCostRun{one}, 2*time.Millisecond)
	if len(sums) != 1 || len(sums[0].CPURatios) != 0 || sums[0].CPURatio != 0 || !math.IsNaN(sums[0].Modes[0].SelfP50) {
		t.Errorf("one mode: %+v", sums)
	}
	var b strings.Builder
	writeModesCostMarkdown(&b, "x", machineInfo{}, clusterOptions{modeOptions: modeOptions{modes: []string{modeStrict}}}, []modeCostRun{one}, sums, modeCostChecks(sums))
	if md := b.String(); !strings.Contains(md, "| 5 | balanced | 1 | strict | 10 | 100 % | 3.000 ms | 9.000 ms | n/a / n/a |") || strings.Contains(md, "strict / fast") {
		t.Errorf("report:\n%s", md)
	}
}

func TestFmtSignedUS(t *testing.T) {
	for us, want := range map[float64]string{12: "+12 µs", -3.5: "-3.5 µs", 1210: "+1.21 ms", -194912: "-194.91 ms"} {
		if got := fmtSignedUS(us); got != want {
			t.Errorf("fmtSignedUS(%v) = %q, want %q", us, got, want)
		}
	}
}
