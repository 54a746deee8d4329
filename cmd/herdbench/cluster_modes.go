package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state"
)

// `herdbench cluster --modes fast,strict` puts the two ways a cluster shares a limit
// (router_settings.cluster_limit_mode) through the same accuracy measurement, one cluster per
// mode in turn, and reports them side by side; --spread hot sends all demand to one node, the
// case strict mode serves only by borrowing the other homes' shares. With --rate it measures
// what strict mode costs instead: latency and CPU per request (cluster_modes_cost.go).
//
// A strict node admits only on a share of the homes table, so a strict cluster is measured only
// once every node applied a table naming all of its nodes; every node must also report the
// mode asked for, or the run would quietly measure the other one.

const (
	modeFast   = config.ClusterLimitFast
	modeStrict = config.ClusterLimitStrict

	// The targets. Strict mode: never over the limit in any 60 s, and at least 95 % of
	// it admitted in the first minute whenever demand is 3x or more. Fast mode: overshoot at
	// most 1 % of the limit (at least one request), steady demand above the limit using 98 %.
	strictMinFirstMinute = 95.0
	strictTargetDemand   = 3
	fastMaxOvershootPct  = 1.0
	fastMinSteadyUse     = 98.0

	// modesCostMinFactor: with --modes and --rate every request must be admitted, so the limit
	// must exceed the load by the cooldown's 61/60 and some slack; 1.25 lets a hot node's own
	// share run out, so that it serves by borrowing.
	modesCostMinFactor = 1.25
)

// modeOptions are the flags of --modes.
type modeOptions struct {
	modes []string // router_settings.cluster_limit_mode of each cluster, in the order given
	cost  bool     // --rate given: latency and CPU per request instead of accuracy
	// limitWait is router_settings.cluster_limit_wait of every cluster; nil leaves herd's.
	limitWait *time.Duration
	tpm       int64 // cost: each deployment's tpm, 0 for none
}

// parseList splits a comma-separated flag value into distinct values from valid.
func parseList(name, s string, valid ...string) ([]string, error) {
	var out []string
	for _, v := range strings.Split(s, ",") {
		v = strings.TrimSpace(v)
		if !slices.Contains(valid, v) {
			return nil, usageError{fmt.Sprintf("%s: %q is none of %s", name, v, strings.Join(valid, ", "))}
		}
		if slices.Contains(out, v) {
			return nil, usageError{fmt.Sprintf("%s: %s given twice", name, v)}
		}
		out = append(out, v)
	}
	return out, nil
}

// parseModes reads --modes, --limit-wait and --tpm for parseClusterFlags; set holds the flags
// given.
func parseModes(modes string, wait time.Duration, tpm int64, set map[string]bool) (modeOptions, error) {
	m := modeOptions{tpm: tpm}
	switch {
	case modes == "":
		return m, usageError{"--limit-wait and --tpm only apply with --modes"}
	case set["keys"]:
		return m, usageError{"--modes and --keys measure different things: give one of them"}
	}
	var err error
	if m.modes, err = parseList("--modes", modes, modeFast, modeStrict); err != nil {
		return m, err
	}
	if set["limit-wait"] {
		if wait < 0 {
			return m, usageError{"--limit-wait must not be negative"}
		}
		m.limitWait = &wait
	}
	if tpm < 0 {
		return m, usageError{"--tpm must not be negative"}
	}
	m.cost = set["rate"]
	if !m.cost {
		for _, name := range []string{"rounds", "warmup", "profile-dir", "tpm"} {
			if set[name] {
				return m, usageError{fmt.Sprintf("--%s only applies with --keys, or with --modes and --rate", name)}
			}
		}
	}
	return m, nil
}

// parseModesCostFlags finishes parseClusterFlags for --modes with --rate.
func parseModesCostFlags(o clusterOptions, nodes string, set map[string]bool) (clusterOptions, error) {
	return costFlags(o, "--modes and --rate", nodes, set, modesCostMinFactor)
}

// modeSettings is the config's router_settings for mode and wait ("" and nil: herd's defaults).
func modeSettings(mode string, wait *time.Duration) string {
	var b strings.Builder
	if mode != "" {
		b.WriteString("  cluster_limit_mode: " + mode + "\n")
	}
	if wait != nil {
		b.WriteString("  cluster_limit_wait: " + strconv.FormatFloat(wait.Seconds(), 'f', -1, 64) + " # seconds\n")
	}
	if b.Len() == 0 {
		return ""
	}
	return "router_settings:\n" + b.String()
}

// loadNodes is whom the load goes to under spread.
func loadNodes(nodes []*child, spread string) []*child {
	if spread == spreadHot {
		return nodes[:1]
	}
	return nodes
}

// modeStatus is what /cluster/status and /health/readiness say about the limit mode.
type modeStatus struct {
	Homes        []string `json:"homes"`
	HomesVersion uint64   `json:"homes_version"`
	Mode         string   `json:"state_backend_mode"`
}

func (env *clusterEnv) getJSON(ctx context.Context, c *child, path string, v any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.addr+path, nil)
	resp, err := env.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%s %s: %w", c.name, path, err)
	}
	return nil
}

// modeOf reads a node's limit mode and homes table.
func (env *clusterEnv) modeOf(ctx context.Context, c *child) (modeStatus, error) {
	var st, ready modeStatus
	if err := env.getJSON(ctx, c, "/cluster/status", &st); err != nil {
		return st, err
	}
	if err := env.getJSON(ctx, c, "/health/readiness", &ready); err != nil {
		return st, err
	}
	st.Mode = ready.Mode
	return st, nil
}

// modeReady says why a node's status is not yet what a measurement of mode on n nodes needs,
// or "" when it is: the mode itself, and in strict mode a homes table of all n nodes.
func modeReady(st modeStatus, mode string, n int) string {
	switch {
	case st.Mode != mode:
		return fmt.Sprintf("state_backend_mode %q, want %q", st.Mode, mode)
	case mode == modeStrict && len(st.Homes) != n:
		return fmt.Sprintf("homes %v (version %d), want all %d nodes", st.Homes, st.HomesVersion, n)
	}
	return ""
}

// waitMode polls every node until modeReady holds on all of them, and returns the homes
// table's version (the same on every node by then, since the table is raft's).
func (env *clusterEnv) waitMode(ctx context.Context, mode string, n int) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		var last string
		var version uint64
		for _, c := range env.nodes {
			st, err := env.modeOf(ctx, c)
			if err != nil {
				last = err.Error()
			} else if why := modeReady(st, mode, n); why != "" {
				last = c.name + ": " + why
			}
			if last != "" {
				break
			}
			version = st.HomesVersion
		}
		if last == "" {
			return version, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("the %s cluster is not ready: %s", mode, last)
		case <-time.After(100 * time.Millisecond): // poll interval
		}
	}
}

// homesVersions is every node's homes table version, in node order.
func (env *clusterEnv) homesVersions(ctx context.Context) ([]uint64, error) {
	var out []uint64
	for _, c := range env.nodes {
		var st modeStatus
		if err := env.getJSON(ctx, c, "/cluster/status", &st); err != nil {
			return nil, err
		}
		out = append(out, st.HomesVersion)
	}
	return out, nil
}

// modeRun is one accuracy measurement of one mode.
type modeRun struct {
	Mode       string `json:"mode"`
	clusterRun        // its Spread: balanced or hot
	// FirstMinute is what reached the upstream in the 60 s from the first request sent, and
	// FirstMinutePct that over the limit.
	FirstMinute    int     `json:"admitted_first_60s"`
	FirstMinutePct float64 `json:"first_minute_utilisation_pct"`
	// Ideal is how many of the requests offered an exact limiter would have admitted over the
	// whole run, and OverallPct what the cluster admitted over that.
	Ideal      int     `json:"ideal_admitted"`
	OverallPct float64 `json:"overall_utilisation_pct"`
	// Codes counts the answers by HTTP status; "error" is a request that got none.
	Codes map[string]int `json:"status_codes"`
	// SentUS and ArrivedUS are when each request was sent and each arrival reached the
	// upstream, in µs from the first request sent, in order: every figure above can be
	// recomputed from them.
	SentUS    []int64 `json:"sent_us"`
	ArrivedUS []int64 `json:"arrived_us"`
	// HomesBefore and HomesAfter are every node's homes table version around the measurement:
	// a table changed during it would have shrunk the homes' shares.
	HomesBefore []uint64 `json:"homes_version_before"`
	HomesAfter  []uint64 `json:"homes_version_after"`
}

// The overall utilisation is against an exact limiter of the limit per any 60 s: nothing that
// keeps the limit can admit more. Herd counts a reservation for 61-62 s in every mode (its
// 1-second buckets and a second's arrival margin, see docs/architecture.md), so it gives up to
// 2/62 of a long steady run by design; and a burst sent exactly 60 s after another fits the exact limiter, or not, by the
// milliseconds it took to send it (so bursts are best spaced by a period that does not divide
// a minute, e.g. --burst-every 16s).

// utilise fills r's first-minute and overall utilisation and status counts from the requests
// sent (out) and their arrivals at the upstream.
func (r *modeRun) utilise(out []outcome, arrived []time.Time) {
	var sent []time.Time
	r.Codes = map[string]int{}
	for _, x := range out {
		if !x.sent.IsZero() {
			sent = append(sent, x.sent)
		}
		code := "error"
		if x.status != 0 {
			code = strconv.Itoa(x.status)
		}
		r.Codes[code]++
	}
	if len(sent) == 0 {
		return
	}
	start := slices.MinFunc(sent, func(a, b time.Time) int { return a.Compare(b) })
	r.FirstMinute = countIn(arrived, start, time.Minute)
	r.FirstMinutePct = 100 * float64(r.FirstMinute) / float64(r.Limit)
	r.Ideal = idealAdmits(sent, int(r.Limit), state.Window)
	if r.Ideal > 0 {
		r.OverallPct = 100 * float64(len(arrived)) / float64(r.Ideal)
	}
	r.SentUS, r.ArrivedUS = offsetsUS(sent, start), offsetsUS(arrived, start)
}

// offsetsUS is ts in µs from start, sorted.
func offsetsUS(ts []time.Time, start time.Time) []int64 {
	out := make([]int64, len(ts))
	for i, t := range ts {
		out[i] = t.Sub(start).Microseconds()
	}
	slices.Sort(out)
	return out
}

// countIn is how many of ts fall in [start, start+d).
func countIn(ts []time.Time, start time.Time, d time.Duration) int {
	n := 0
	for _, t := range ts {
		if !t.Before(start) && t.Sub(start) < d {
			n++
		}
	}
	return n
}

// idealAdmits is how many requests, offered at times ts, an exact limiter of limit per any
// half-open interval of length w admits: it takes each request in time order when the w
// before it hold fewer than limit admitted ones. Taking the earliest request that fits never
// costs a later one more than it gains, so no schedule within the limit admits more.
func idealAdmits(ts []time.Time, limit int, w time.Duration) int {
	if limit <= 0 {
		return 0
	}
	ts = slices.Clone(ts)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	var admitted []time.Time
	j := 0 // admitted[j:] are within w of the current request
	for _, t := range ts {
		for j < len(admitted) && t.Sub(admitted[j]) >= w {
			j++
		}
		if len(admitted)-j < limit {
			admitted = append(admitted, t)
		}
	}
	return len(admitted)
}

func runModesBench(ctx context.Context, o clusterOptions, args []string, stdout, stderr io.Writer) error {
	if o.cost {
		return runModesCost(ctx, o, args, stdout, stderr)
	}
	s := accuracySuite[modeRun](o, "herdbench-cluster-modes-", len(o.modes), 2*time.Minute)
	s.plan = fmt.Sprintf("%d clusters (modes %s) of %d measurements of %s each",
		len(o.nodes)*len(o.modes), strings.Join(o.modes, ","), len(accuracyCases(o)), o.duration)
	s.measure, s.report = measureModes, reportModes
	return runSuite(ctx, o, args, s, stdout, stderr)
}

// measureModes measures n nodes in each mode, one cluster after the other.
func measureModes(ctx context.Context, o clusterOptions, n int, herdPath, tmpDir string, progress io.Writer) ([]modeRun, error) {
	var runs []modeRun
	for _, mode := range o.modes {
		rs, err := measureModeAccuracy(ctx, o, n, mode, herdPath, tmpDir, progress)
		if err != nil {
			return nil, fmt.Errorf("%d nodes, %s mode: %w", n, mode, err)
		}
		runs = append(runs, rs...)
	}
	return runs, nil
}

// reportModes judges every run (clusterSuite.report).
func reportModes(w io.Writer, o clusterOptions, rep *clusterReport[modeRun, struct{}]) error {
	rep.Checks = modeChecks(rep.Runs)
	writeModesMarkdown(w, rep.Command, rep.Machine, o, rep.Runs, rep.Checks)
	return failedChecks(rep.Checks)
}

// measureModeAccuracy starts one n-node cluster in mode and runs every accuracy measurement on
// it, each on its own deployment.
func measureModeAccuracy(ctx context.Context, o clusterOptions, n int, mode, herdPath, tmpDir string, progress io.Writer) ([]modeRun, error) {
	model := func(spread, pattern string, demand int) string {
		return fmt.Sprintf("%s-%s-%dx", spread, pattern, demand)
	}
	var groups []string
	for _, c := range accuracyCases(o) {
		groups = append(groups, model(c.spread, c.pattern, c.demand))
	}
	// Both modes run raft with every node a voter, so that the only difference is the mode.
	env, err := startCluster(ctx, o, n, herdPath, tmpDir, groups, clusterSpec{name: mode, raft: true, mode: mode, limitWait: o.limitWait})
	if err != nil {
		return nil, err
	}
	defer env.stop()
	version, err := env.waitMode(ctx, mode, n)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "herdbench: %d-node cluster, %s mode: all %d members alive, %d raft voters, every node reports %s; homes table version %d\n",
		n, mode, n, n, mode, version)
	var runs []modeRun
	for _, c := range accuracyCases(o) {
		s, p, d := c.spread, c.pattern, c.demand
		r := modeRun{Mode: mode}
		if r.HomesBefore, err = env.homesVersions(ctx); err != nil {
			return runs, err
		}
		m := model(s, p, d)
		var out []outcome
		if r.clusterRun, out, err = env.measureOn(ctx, o, n, s, p, d, m); err != nil {
			return runs, err
		}
		r.utilise(out, env.upstream.times(m))
		if r.HomesAfter, err = env.homesVersions(ctx); err != nil {
			return runs, err
		}
		for _, node := range env.nodes {
			if err := node.exited(); err != nil {
				return runs, err
			}
		}
		runs = append(runs, r)
		fmt.Fprintf(progress, "herdbench: %d nodes %s %s %s %dx: offered %d, upstream saw %d (max %d in any 60s, limit %d; ideal %d), first minute %.1f%%, overall %.1f%%, %d refused, errors %s; propagation p99 %.2f ms; homes versions %v -> %v\n",
			n, mode, s, p, d, r.Offered, r.Admitted, r.MaxIn60s, o.limit, r.Ideal, r.FirstMinutePct, r.OverallPct, r.Refused, fmtErrors(r.Errors, r.Codes), r.PropP99, r.HomesBefore, r.HomesAfter)
	}
	return runs, nil
}

// modeChecks are the targets for each run: strict mode never over the limit, and at
// least 95 % of it in the first minute at 3x demand or more; fast mode at most 1 % over (one
// request at least), and 98 % of the limit in the first minute for steady demand above it.
func modeChecks(runs []modeRun) []check {
	var out []check
	for _, r := range runs {
		name := fmt.Sprintf("%s mode, %d nodes, %s %s %d×", r.Mode, r.Nodes, r.Spread, r.Pattern, r.Demand)
		switch r.Mode {
		case modeStrict:
			out = append(out, check{
				Verdict: verdict(r.MaxIn60s <= int(r.Limit)),
				What:    name + ": never over the limit",
				Detail:  fmt.Sprintf("max %d in any 60 s, limit %d", r.MaxIn60s, r.Limit),
			})
			if r.Demand >= strictTargetDemand {
				out = append(out, check{
					Verdict: verdict(r.FirstMinutePct >= strictMinFirstMinute),
					What:    fmt.Sprintf("%s: ≥ %.0f%% of the limit in the first minute", name, strictMinFirstMinute),
					Detail:  fmt.Sprintf("%d of %d (%.1f%%)", r.FirstMinute, r.Limit, r.FirstMinutePct),
				})
			}
		case modeFast:
			slack := max(float64(r.Limit)*fastMaxOvershootPct/100, 1)
			out = append(out, check{
				Verdict: verdict(float64(r.Overshoot) <= slack),
				What:    fmt.Sprintf("%s: overshoot ≤ %g%% of the limit", name, fastMaxOvershootPct),
				Detail:  fmt.Sprintf("max %d in any 60 s, limit %d: %d over (%.2f%%), %.0f allowed", r.MaxIn60s, r.Limit, r.Overshoot, r.OvershootPct, slack),
			})
			if r.Pattern == patternSteady && r.Demand > 1 {
				out = append(out, check{
					Verdict: verdict(r.FirstMinutePct >= fastMinSteadyUse),
					What:    fmt.Sprintf("%s: ≥ %.0f%% of the limit in the first minute", name, fastMinSteadyUse),
					Detail:  fmt.Sprintf("%d of %d (%.1f%%)", r.FirstMinute, r.Limit, r.FirstMinutePct),
				})
			}
		}
	}
	return out
}

// modeRow is one line of the side-by-side table: one measurement, every mode.
type modeRow struct {
	nodes, demand   int
	spread, pattern string
	byMode          map[string]modeRun
}

// modeRows groups runs by measurement, in the order they first appear.
func modeRows(runs []modeRun) []modeRow {
	var rows []modeRow
	for _, r := range runs {
		i := slices.IndexFunc(rows, func(x modeRow) bool {
			return x.nodes == r.Nodes && x.demand == r.Demand && x.spread == r.Spread && x.pattern == r.Pattern
		})
		if i < 0 {
			rows = append(rows, modeRow{nodes: r.Nodes, demand: r.Demand, spread: r.Spread, pattern: r.Pattern, byMode: map[string]modeRun{}})
			i = len(rows) - 1
		}
		rows[i].byMode[r.Mode] = r
	}
	// Same nodes, spread, pattern, demand order as measured, but grouped by node count first
	// (the modes ran one after another for each node count).
	slices.SortStableFunc(rows, func(a, b modeRow) int { return a.nodes - b.nodes })
	return rows
}

func writeModesMarkdown(w io.Writer, cmd string, m machineInfo, o clusterOptions, runs []modeRun, checks []check) {
	fmt.Fprintf(w, "Command: `%s`\n\nMachine: %s. One cluster per mode and node count, run one after the other (every node a raft voter, strict clusters measured once every node applied a homes table of all nodes). One deployment per row, rpm %d; %s of load per row; balanced: round-robin over the nodes, hot: all on node n0; fake upstream latency %s; bursts every %s; %s.\n\n",
		cmd, fmtMachine(m), o.limit, o.duration, o.upLatency, o.burstGap, fmtLimitWait(o.limitWait))
	fmt.Fprint(w, "| nodes | spread | pattern | demand |")
	for _, md := range o.modes {
		fmt.Fprintf(w, " %s: max in any 60 s | %s: overshoot | %s: first minute | %s: overall |", md, md, md, md)
	}
	fmt.Fprint(w, "\n|--:|---|---|--:|")
	fmt.Fprintln(w, strings.Repeat("--:|", 4*len(o.modes)))
	for _, row := range modeRows(runs) {
		fmt.Fprintf(w, "| %d | %s | %s | %d× |", row.nodes, row.spread, row.pattern, row.demand)
		for _, md := range o.modes {
			r, ok := row.byMode[md]
			if !ok {
				fmt.Fprint(w, " — | — | — | — |")
				continue
			}
			fmt.Fprintf(w, " %d | %d (%.2f%%) | %.1f%% | %.1f%% |", r.MaxIn60s, r.Overshoot, r.OvershootPct, r.FirstMinutePct, r.OverallPct)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "\nMax in any 60 s: upstream arrivals in the worst 60-second interval (limit %d). First minute: arrivals in the 60 s from the first request sent, over the limit. Overall: arrivals over the whole run, over what an exact limiter of %d per any 60 s would have admitted of the same requests (herd counts a request for 61-62 s, so it gives up to 2/62 of a steady run by design).\n\n", o.limit, o.limit)
	fmt.Fprintln(w, "| nodes | spread | pattern | demand | mode | offered | upstream saw | ideal | refused (429) | errors (by status) | propagation p99 | herd CPU per request | homes table versions |")
	fmt.Fprintln(w, "|--:|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|---|")
	for _, row := range modeRows(runs) {
		for _, md := range o.modes {
			r, ok := row.byMode[md]
			if !ok {
				continue
			}
			fmt.Fprintf(w, "| %d | %s | %s | %d× | %s | %d | %d | %d | %d | %s | %.2f ms | %.0f µs | %s |\n",
				r.Nodes, r.Spread, r.Pattern, r.Demand, r.Mode, r.Offered, r.Admitted, r.Ideal, r.Refused, fmtErrors(r.Errors, r.Codes), r.PropP99, r.CPUPerRequest, fmtVersions(r.HomesBefore, r.HomesAfter))
		}
	}
	writeChecks(w, checks)
}

// fmtErrors shows the error count and, when there are any, the statuses behind them (neither
// 2xx nor 429).
func fmtErrors(n int, codes map[string]int) string {
	if n == 0 {
		return "0"
	}
	var parts []string
	for _, c := range sortedKeys(codes) {
		if c == "429" || strings.HasPrefix(c, "2") {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s×%d", c, codes[c]))
	}
	return fmt.Sprintf("%d (%s)", n, strings.Join(parts, ", "))
}

// fmtLimitWait says what cluster_limit_wait the clusters ran with.
func fmtLimitWait(wait *time.Duration) string {
	if wait == nil {
		return "cluster_limit_wait herd's default"
	}
	return "cluster_limit_wait " + wait.String()
}

// fmtVersions shows the homes table versions around a measurement: one number when every node
// had the same one before and after, else both lists.
func fmtVersions(before, after []uint64) string {
	if len(before) > 0 && slices.Equal(before, after) && !slices.ContainsFunc(before, func(v uint64) bool { return v != before[0] }) {
		return fmt.Sprint(before[0])
	}
	return fmt.Sprintf("%v → %v", before, after)
}
