package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// `herdbench cluster --modes fast,strict --rate R` measures what strict mode costs per request:
// one N-node cluster per mode, all running for the whole run, loaded in turn at one rate with
// the order alternating by round (as --keys does), so the ratio of the two is taken minutes
// apart at most on a machine whose other load drifts. The limit is above the load, so every
// request should be admitted; with --spread hot, and a limit close enough to the load, the hot
// node's own share runs out and it serves by borrowing: what strict mode's loans cost.

// overheadHeader is herd's own measure of the time it added to a response: handler time minus
// the upstream's (proxy/llm.go), strict mode's wait for a loan included.
const overheadHeader = "X-Litellm-Overhead-Duration-Ms"

// modeCostRun is one measurement of one cluster.
type modeCostRun struct {
	Mode   string `json:"mode"`
	Spread string `json:"spread"`
	keysRun
}

func runModesCost(ctx context.Context, o clusterOptions, args []string, stdout, stderr io.Writer) error {
	s := costSuite[modeCostRun, modeCostSummary](o, "herdbench-cluster-modes-cost-", len(o.nodes)*o.rounds*len(o.modes)*len(o.spreads), 2*time.Minute)
	s.measure, s.report = measureModesCost, reportModesCost
	return runSuite(ctx, o, args, s, stdout, stderr)
}

// reportModesCost summarises the rounds of each node count and spread, and judges them
// (clusterSuite.report).
func reportModesCost(w io.Writer, o clusterOptions, rep *clusterReport[modeCostRun, modeCostSummary]) error {
	rep.Summary = summariseModes(rep.Runs, o.upLatency)
	rep.Checks = modeCostChecks(rep.Summary)
	writeModesCostMarkdown(w, rep.Command, rep.Machine, o, rep.Runs, rep.Summary, rep.Checks)
	return failedChecks(rep.Checks)
}

// costModel is the deployment a spread's load goes to: one each, so a hot run's borrowing
// never starts from the window a balanced run filled.
func costModel(spread string) string { return keysModel + "-" + spread }

// measureModesCost starts one n-node cluster per mode, side by side, and measures each in turn,
// round after round, for every spread.
func measureModesCost(ctx context.Context, o clusterOptions, n int, herdPath, tmpDir string, progress io.Writer) ([]modeCostRun, error) {
	envs := map[string]*clusterEnv{}
	defer func() {
		for _, env := range envs {
			env.stop()
		}
	}()
	var models []string
	for _, s := range o.spreads {
		models = append(models, costModel(s))
	}
	for _, mode := range o.modes {
		spec := clusterSpec{name: mode, tpm: o.tpm, raft: true, pprof: o.profileDir != "", mode: mode, limitWait: o.limitWait}
		env, err := startCluster(ctx, o, n, herdPath, tmpDir, models, spec)
		if err != nil {
			return nil, fmt.Errorf("%d-node cluster in %s mode: %w", n, mode, err)
		}
		envs[mode] = env
		version, err := env.waitMode(ctx, mode, n)
		if err != nil {
			return nil, fmt.Errorf("%d-node cluster in %s mode: %w", n, mode, err)
		}
		fmt.Fprintf(progress, "herdbench: %d-node cluster, %s mode: all %d members alive, %d raft voters, every node reports %s; homes table version %d\n",
			n, mode, n, n, mode, version)
	}

	rec := newRecorder()
	var runs []modeCostRun
	for round := 1; round <= o.rounds; round++ {
		for _, s := range o.spreads {
			for pos, mode := range keysOrder(o.modes, round) {
				env := envs[mode]
				profile := ""
				if o.profileDir != "" {
					profile = filepath.Join(o.profileDir, fmt.Sprintf("%dnodes-%s-%s-round%d", n, mode, s, round))
				}
				r := modeCostRun{Mode: mode, Spread: s}
				var err error
				r.keysRun, err = env.measureLoad(ctx, o, rec, profile, loadSpec{model: costModel(s), on: loadNodes(env.nodes, s), overheadHeader: overheadHeader})
				if err != nil {
					return runs, fmt.Errorf("%d nodes, %s mode, %s, round %d: %w", n, mode, s, round, err)
				}
				r.Nodes, r.Round, r.Position = n, round, pos
				runs = append(runs, r)
				fmt.Fprintf(progress, "herdbench: %d nodes %-6s %-8s round %d/%d: sent %d, 2xx %s, p50 %s p99 %s, herd overhead p50 %s p99 %s, herd CPU %.0f µs/req (%s), %.0f%% of a core; machine busy %.0f%%\n",
					n, mode, s, round, o.rounds, r.Result.Sent, fmtSuccess(r.Result.OK, r.Result.Sent), fmtMs(r.Result.Latency.P50), fmtMs(r.Result.Latency.P99),
					fmtMsNA(selfOverhead(r.Result).P50), fmtMsNA(selfOverhead(r.Result).P99), r.HerdCPU, fmtNodeCPU(r.NodeCPU), r.HerdCorePct, r.Busy)
			}
		}
	}
	return runs, nil
}

// selfOverhead is the result's herd-reported overhead, NaN when no response carried one.
func selfOverhead(a attackResult) latencyUS {
	if a.SelfOverhead == nil {
		return latencyUS{P50: math.NaN(), P90: math.NaN(), P99: math.NaN(), Max: math.NaN(), Mean: math.NaN()}
	}
	return *a.SelfOverhead
}

// modeCostSummary is one node count and spread's result: each mode's figures over the rounds,
// and strict against fast round by round.
type modeCostSummary struct {
	Nodes  int              `json:"nodes"`
	Spread string           `json:"spread"`
	Modes  []modeCostResult `json:"modes"` // in --modes order
	// CPURatios is strict / fast herd CPU per request in each round that measured both, and
	// CPURatio their median; P50Diffs and P99Diffs are strict - fast client latency in µs per
	// round, and P50Diff and P99Diff their medians.
	CPURatios []float64 `json:"cpu_ratios_by_round,omitempty"`
	CPURatio  float64   `json:"cpu_ratio_median,omitempty"`
	P50Diffs  []float64 `json:"p50_diff_us_by_round,omitempty"`
	P99Diffs  []float64 `json:"p99_diff_us_by_round,omitempty"`
	P50Diff   float64   `json:"p50_diff_us_median,omitempty"`
	P99Diff   float64   `json:"p99_diff_us_median,omitempty"`
}

// modeCostResult is one cluster's measurements, folded over rounds (medians).
type modeCostResult struct {
	Mode string `json:"mode"`
	costFigures
	// AddedP50 and AddedP99 are the client's latency minus the fake upstream's (a fixed sleep,
	// so it comes off every request alike); SelfP50 and SelfP99 herd's own overhead header.
	AddedP50 float64 `json:"added_p50_us_median"`
	AddedP99 float64 `json:"added_p99_us_median"`
	SelfP50  float64 `json:"herd_overhead_p50_us_median"`
	SelfP99  float64 `json:"herd_overhead_p99_us_median"`
	Sent     uint64  `json:"sent"`
	OK       uint64  `json:"ok_2xx"`
	Busy     float64 `json:"machine_busy_pct_median"`
}

// summariseModes folds runs by node count and spread (in the order they first appear) and mode.
// upstream is the fake upstream's latency, taken off the client's for the added latency.
func summariseModes(runs []modeCostRun, upstream time.Duration) []modeCostSummary {
	type where struct {
		nodes  int
		spread string
	}
	var out []modeCostSummary
	up := float64(upstream) / float64(time.Microsecond)
	places, byPlace := groupBy(runs, func(r modeCostRun) where { return where{r.Nodes, r.Spread} })
	for _, at := range places {
		s := modeCostSummary{Nodes: at.nodes, Spread: at.spread}
		modes, byMode := groupBy(byPlace[at], func(r modeCostRun) string { return r.Mode })
		for _, md := range modes {
			m := modeCostResult{Mode: md, costFigures: foldCost(byMode[md])}
			var s50, s99, busy []float64
			for _, r := range byMode[md] {
				s50 = append(s50, selfOverhead(r.Result).P50)
				s99 = append(s99, selfOverhead(r.Result).P99)
				busy = append(busy, r.Busy)
				m.Sent += r.Result.Sent
				m.OK += r.Result.OK
			}
			m.AddedP50, m.AddedP99 = m.P50-up, m.P99-up
			m.SelfP50, m.SelfP99 = median(s50), median(s99)
			m.Busy = median(busy)
			s.Modes = append(s.Modes, m)
		}
		for _, st := range byMode[modeStrict] {
			for _, f := range byMode[modeFast] {
				if st.Round != f.Round {
					continue
				}
				if f.HerdCPU > 0 {
					s.CPURatios = append(s.CPURatios, st.HerdCPU/f.HerdCPU)
				}
				s.P50Diffs = append(s.P50Diffs, st.Result.Latency.P50-f.Result.Latency.P50)
				s.P99Diffs = append(s.P99Diffs, st.Result.Latency.P99-f.Result.Latency.P99)
			}
		}
		if len(s.CPURatios) > 0 {
			s.CPURatio = median(s.CPURatios)
		}
		if len(s.P50Diffs) > 0 {
			s.P50Diff, s.P99Diff = median(s.P50Diffs), median(s.P99Diffs)
		}
		out = append(out, s)
	}
	return out
}

func (s modeCostSummary) mode(md string) (modeCostResult, bool) {
	for _, m := range s.Modes {
		if m.Mode == md {
			return m, true
		}
	}
	return modeCostResult{}, false
}

// modeCostChecks: every request answered 2xx, in every cluster. The limit is above the load, so
// a refusal means strict mode could not get rights to a node in time. CPU and latency have no
// target in the issue beyond "users do not pay for it"; they are reported, not judged.
func modeCostChecks(sums []modeCostSummary) []check {
	var out []check
	for _, s := range sums {
		for _, m := range s.Modes {
			out = append(out, check{
				Verdict: verdict(m.Sent > 0 && m.OK == m.Sent),
				What:    fmt.Sprintf("100%% success, %s mode, %d nodes, %s", m.Mode, s.Nodes, s.Spread),
				Detail:  fmt.Sprintf("%d of %d requests answered 2xx", m.OK, m.Sent),
			})
		}
	}
	return out
}

// fmtMsNA is fmtMs, or n/a for a figure nothing reported.
func fmtMsNA(us float64) string {
	if math.IsNaN(us) {
		return "n/a"
	}
	return fmtMs(us)
}

// fmtSignedUS shows a difference with its sign: in µs below a millisecond, else in ms.
func fmtSignedUS(us float64) string {
	if math.Abs(us) < 1000 || math.IsNaN(us) {
		return fmtAddedUS(us)
	}
	return fmt.Sprintf("%+.2f ms", us/1000)
}

func fmtUSs(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmtSignedUS(x)
	}
	return strings.Join(parts, ", ")
}

func writeModesCostMarkdown(w io.Writer, cmd string, m machineInfo, o clusterOptions, runs []modeCostRun, sums []modeCostSummary, checks []check) {
	fmt.Fprintf(w, "Command: `%s`\n\nMachine: %s.\n\n", cmd, fmtMachine(m))
	tpm := "no tpm"
	if o.tpm > 0 {
		tpm = fmt.Sprintf("tpm %d", o.tpm)
	}
	fmt.Fprintf(w, "Per node count, one cluster per mode (%s) runs side by side on loopback, every node a raft voter; strict clusters are measured once every node applied a homes table of all nodes, and every node of each cluster reported its mode in /health/readiness. One deployment per spread, rpm %d and %s. Each measurement: %s of warm-up (discarded), then %d req/s for %s (balanced: round-robin over the nodes; hot: all to node n0); fake upstream latency %s. The clusters take turns, the order alternating by round. Herd CPU is user+system time from /proc/PID/stat of every node, read right before and right after the measured load. Added latency is the client's latency minus the fake upstream's %s; herd overhead is herd's own %s header (handler time minus upstream time). %s.\n\n",
		strings.Join(o.modes, ", "), o.limit, tpm, o.warmup, o.rate, o.duration, o.upLatency, o.upLatency, overheadHeader, fmtLimitWait(o.limitWait))
	fmt.Fprintln(w, "| nodes | spread | round | mode | sent | success | p50 | p99 | herd overhead p50 / p99 | herd CPU per request | per node | herd CPU, % of a core | machine busy | propagation p99 |")
	fmt.Fprintln(w, "|--:|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, r := range runs {
		so := selfOverhead(r.Result)
		fmt.Fprintf(w, "| %d | %s | %d | %s | %d | %s | %s | %s | %s / %s | %.0f µs | %s | %.0f %% | %.0f %% | %.2f ms |\n",
			r.Nodes, r.Spread, r.Round, r.Mode, r.Result.Sent, fmtSuccess(r.Result.OK, r.Result.Sent),
			fmtMs(r.Result.Latency.P50), fmtMs(r.Result.Latency.P99), fmtMsNA(so.P50), fmtMsNA(so.P99),
			r.HerdCPU, fmtNodeCPU(r.NodeCPU), r.HerdCorePct, r.Busy, r.PropP99)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| nodes | spread | mode | rounds | herd CPU per request, median (min–max) | added p50 | added p99 | herd overhead p50 | herd overhead p99 | success | machine busy |")
	fmt.Fprintln(w, "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, s := range sums {
		for _, md := range s.Modes {
			fmt.Fprintf(w, "| %d | %s | %s | %d | %.0f µs (%.0f–%.0f) | %s | %s | %s | %s | %s | %.0f %% |\n",
				s.Nodes, s.Spread, md.Mode, md.Rounds, md.CPU, md.CPUMin, md.CPUMax, fmtMs(md.AddedP50), fmtMs(md.AddedP99),
				fmtMsNA(md.SelfP50), fmtMsNA(md.SelfP99), fmtSuccess(md.OK, md.Sent), md.Busy)
		}
	}
	for _, s := range sums {
		if len(s.CPURatios) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%d nodes, %s: strict / fast herd CPU per request **%.3f×** (median of rounds: %s; min–max %.3f–%.3f×); strict − fast latency p50 **%s**, p99 **%s** (medians of rounds; p50 by round %s, p99 by round %s).\n",
			s.Nodes, s.Spread, s.CPURatio, fmtRatios(s.CPURatios), slices.Min(s.CPURatios), slices.Max(s.CPURatios),
			fmtSignedUS(s.P50Diff), fmtSignedUS(s.P99Diff), fmtUSs(s.P50Diffs), fmtUSs(s.P99Diffs))
	}
	writeChecks(w, checks)
}
