package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// `herdbench cluster --keys off,on` measures what the cluster key costs: the same N-node
// cluster with and without cluster_settings.cluster_key (gossip encrypted with memberlist's
// AES-GCM keyring, mutual TLS on the raft port), both running for the whole run and loaded in
// turn at one fixed rate, the order alternating by round so drift on a shared machine cancels.
// Usage deltas are gossiped for every request, so gossip encryption is paid per request.

// Defaults of the --keys mode, where they differ from the accuracy mode's.
const (
	keysDefaultNodes    = 3
	keysDefaultDuration = 20 * time.Second
	keysDefaultLimit    = 1_000_000_000     // rpm: far above any load, so every request is admitted
	keysTPM             = 1_000_000_000_000 // so every request also reserves and settles tokens
	keysModel           = "bench"
	// keysMaxRatio is the target: keyed CPU per request within 10 % of unkeyed.
	keysMaxRatio = 1.10
)

// parseKeysFlags finishes parseClusterFlags for --keys.
func parseKeysFlags(o clusterOptions, keys, nodes string, set map[string]bool) (clusterOptions, error) {
	for _, k := range strings.Split(keys, ",") {
		k = strings.TrimSpace(k)
		if k != keysOff && k != keysOn {
			return o, usageError{fmt.Sprintf("--keys: %q is neither off nor on", k)}
		}
		if slices.Contains(o.keys, k) {
			return o, usageError{fmt.Sprintf("--keys: %s given twice", k)}
		}
		o.keys = append(o.keys, k)
	}
	return costFlags(o, "--keys", nodes, set, 10)
}

// costFlags finishes the flags of a CPU-per-request measurement (--keys, or --modes with
// --rate; which is named by what). Accuracy-only flags are refused rather than ignored; --nodes,
// --duration and --limit get this mode's defaults unless given. Every request must be admitted,
// so the limit must be at least minFactor times the load.
func costFlags(o clusterOptions, what, nodes string, set map[string]bool, minFactor float64) (clusterOptions, error) {
	for _, name := range []string{"demands", "patterns", "burst-every"} {
		if set[name] {
			return o, usageError{fmt.Sprintf("--%s does not apply with %s", name, what)}
		}
	}
	o.nodes = []int{keysDefaultNodes}
	if set["nodes"] {
		var err error
		if o.nodes, err = parseRates(nodes); err != nil {
			return o, usageError{"--nodes: " + err.Error()}
		}
	}
	if !set["duration"] {
		o.duration = keysDefaultDuration
	}
	if !set["limit"] {
		o.limit = keysDefaultLimit
	}
	switch {
	case o.rate < 1:
		return o, usageError{"--rate must be positive"}
	case o.rounds < 1:
		return o, usageError{"--rounds must be at least 1"}
	case o.duration < time.Second:
		return o, usageError{"--duration must be at least 1s"}
	case o.warmup < 0 || o.upLatency < 0:
		return o, usageError{"--warmup and --upstream-latency must not be negative"}
	case float64(o.limit) < float64(o.rate)*60*minFactor:
		return o, usageError{fmt.Sprintf("--limit %d is not far above the load (%d requests a minute): with %s every request must be admitted, so give at least %g times that", o.limit, o.rate*60, what, minFactor)}
	}
	return o, nil
}

// keysRun is one measurement of one cluster.
type keysRun struct {
	Nodes    int          `json:"nodes"`
	Keys     string       `json:"keys,omitempty"` // off or on
	Round    int          `json:"round"`
	Position int          `json:"position"` // 0 = measured first in its round
	Start    time.Time    `json:"start"`
	Result   attackResult `json:"result"`
	// HerdCPU is the herd processes' user+system CPU time during the measured load, summed
	// over the nodes, per request sent; NodeCPU is each node's share, in node order.
	HerdCPU     float64   `json:"herd_cpu_us_per_request"`
	NodeCPU     []float64 `json:"node_cpu_us_per_request"`
	HerdCorePct float64   `json:"herd_core_pct"`                // summed, in % of one CPU
	LoadCPU     float64   `json:"herdbench_cpu_us_per_request"` // the load generator and fake upstream
	Busy        float64   `json:"machine_busy_pct"`
	Steal       float64   `json:"machine_steal_pct"`
	Deltas      uint64    `json:"deltas_merged"` // usage deltas merged by the nodes
	PropP50     float64   `json:"propagation_p50_ms"`
	PropP99     float64   `json:"propagation_p99_ms"`
}

// keysOrder is the order the clusters are measured in, in round r (from 1): rotated by one
// each round, so with two clusters it alternates (off,on / on,off / ...).
func keysOrder(keys []string, round int) []string {
	n := len(keys)
	out := make([]string, n)
	for i := range n {
		out[i] = keys[(i+round-1)%n]
	}
	return out
}

// newClusterKey asks herd for a key, as a user would make one.
func newClusterKey(ctx context.Context, herdPath string) (string, error) {
	out, err := exec.CommandContext(ctx, herdPath, "keygen").Output()
	if err != nil {
		return "", fmt.Errorf("%s keygen: %w", herdPath, err)
	}
	key := strings.TrimSpace(string(out))
	if key == "" {
		return "", fmt.Errorf("%s keygen printed nothing", herdPath)
	}
	return key, nil
}

func runKeysBench(ctx context.Context, o clusterOptions, args []string, stdout, stderr io.Writer) error {
	s := costSuite[keysRun, keysSummary](o, "herdbench-cluster-keys-", len(o.nodes)*o.rounds*len(o.keys), time.Minute)
	s.measure, s.report = measureKeys, reportKeys
	return runSuite(ctx, o, args, s, stdout, stderr)
}

// reportKeys summarises the rounds of each node count and judges them (clusterSuite.report).
func reportKeys(w io.Writer, o clusterOptions, rep *clusterReport[keysRun, keysSummary]) error {
	rep.Summary = summariseKeys(rep.Runs)
	rep.Checks = keysChecks(rep.Summary)
	writeKeysMarkdown(w, rep.Command, rep.Machine, o, rep.Runs, rep.Summary, rep.Checks)
	return failedChecks(rep.Checks)
}

// measureKeys starts one n-node cluster per --keys value, all running side by side, and
// measures each in turn, round after round.
func measureKeys(ctx context.Context, o clusterOptions, n int, herdPath, tmpDir string, progress io.Writer) ([]keysRun, error) {
	envs := map[string]*clusterEnv{}
	defer func() {
		for _, env := range envs {
			env.stop()
		}
	}()
	for _, k := range o.keys {
		spec := clusterSpec{name: k, tpm: keysTPM, raft: true, pprof: o.profileDir != ""}
		if k == keysOn {
			key, err := newClusterKey(ctx, herdPath)
			if err != nil {
				return nil, err
			}
			spec.key = key
		}
		env, err := startCluster(ctx, o, n, herdPath, tmpDir, []string{keysModel}, spec)
		if err != nil {
			return nil, fmt.Errorf("%d-node cluster with keys %s: %w", n, k, err)
		}
		envs[k] = env
		fmt.Fprintf(progress, "herdbench: %d-node cluster, keys %s: all %d members alive, %d raft voters; gossip encrypted=%v raft_port_tls=%v on every node\n",
			n, k, n, n, k == keysOn, k == keysOn)
	}

	rec := newRecorder()
	var runs []keysRun
	for round := 1; round <= o.rounds; round++ {
		for pos, k := range keysOrder(o.keys, round) {
			profile := ""
			if o.profileDir != "" {
				profile = filepath.Join(o.profileDir, fmt.Sprintf("%dnodes-keys-%s-round%d", n, k, round))
			}
			r, err := envs[k].measureLoad(ctx, o, rec, profile, loadSpec{model: keysModel, on: envs[k].nodes})
			if err != nil {
				return runs, fmt.Errorf("%d nodes, keys %s, round %d: %w", n, k, round, err)
			}
			r.Nodes, r.Keys, r.Round, r.Position = n, k, round, pos
			runs = append(runs, r)
			fmt.Fprintf(progress, "herdbench: %d nodes keys %-3s round %d/%d: sent %d, 2xx %s, p50 %s p99 %s, herd CPU %.0f µs/req (%s), %.0f%% of a core; machine busy %.0f%%; %d deltas merged, propagation p99 %.2f ms\n",
				n, k, round, o.rounds, r.Result.Sent, fmtSuccess(r.Result.OK, r.Result.Sent), fmtMs(r.Result.Latency.P50), fmtMs(r.Result.Latency.P99),
				r.HerdCPU, fmtNodeCPU(r.NodeCPU), r.HerdCorePct, r.Busy, r.Deltas, r.PropP99)
		}
	}
	return runs, nil
}

// loadSpec is what measureLoad sends, and where.
type loadSpec struct {
	model string
	on    []*child // the nodes the load goes to, round-robin
	// overheadHeader, if set, is read from every response: herd's own overhead.
	overheadHeader string
}

// measureLoad sends o.warmup of discarded load, then o.duration of measured load, at o.rate
// as ls says, and reads every node's CPU time right before and right after the measured load,
// so start-up and warm-up are not counted. With a profile path prefix, it also saves each
// node's CPU profile of the measured load as PREFIX-nI.pprof.
func (env *clusterEnv) measureLoad(ctx context.Context, o clusterOptions, rec *recorder, profile string, ls loadSpec) (keysRun, error) {
	var r keysRun
	body := chatBody(ls.model)
	var targets []vegeta.Target
	procs := map[string]int{"herdbench": os.Getpid()}
	for _, c := range ls.on {
		targets = append(targets, postTarget("http://"+c.addr+"/v1/chat/completions", body))
	}
	for _, c := range env.nodes {
		procs[c.name] = c.pid()
	}
	if o.warmup > 0 {
		rec.reset(ls.overheadHeader)
		attackWith(ctx, env.client, vegeta.NewStaticTargeter(targets...), o.rate, o.warmup, rec)
	}
	propBefore, _, err := env.propagation(ctx)
	if err != nil {
		return r, err
	}
	before, err := takeCPUSnapshot(procs)
	if err != nil {
		return r, err
	}
	var profiles sync.WaitGroup
	profErrs := make([]error, len(env.pprof))
	if profile != "" {
		for i, addr := range env.pprof {
			profiles.Add(1)
			go func() {
				defer profiles.Done()
				profErrs[i] = saveProfile(ctx, env.client, addr, o.duration, fmt.Sprintf("%s-n%d.pprof", profile, i))
			}()
		}
	}
	rec.reset(ls.overheadHeader)
	r.Result = attackWith(ctx, env.client, vegeta.NewStaticTargeter(targets...), o.rate, o.duration, rec)
	if err := ctx.Err(); err != nil {
		return r, fmt.Errorf("interrupted: %w", err)
	}
	after, err := takeCPUSnapshot(procs)
	if err != nil {
		return r, err
	}
	profiles.Wait()
	if err := errors.Join(profErrs...); err != nil {
		return r, err
	}
	propAfter, _, err := env.propagation(ctx)
	if err != nil {
		return r, err
	}
	for _, c := range env.nodes {
		if err := c.exited(); err != nil {
			return r, err
		}
	}
	r.Start = before.at.UTC()
	wall := after.at.Sub(before.at)
	var nodeCPU []time.Duration
	for _, c := range env.nodes {
		nodeCPU = append(nodeCPU, after.procs[c.name]-before.procs[c.name])
	}
	if r.HerdCPU, r.NodeCPU, r.HerdCorePct, err = herdCPU(nodeCPU, r.Result.Sent, wall); err != nil {
		return r, err
	}
	if r.Result.Sent > 0 {
		self := after.procs["herdbench"] - before.procs["herdbench"]
		r.LoadCPU = float64(self.Microseconds()) / float64(r.Result.Sent)
	}
	r.Busy, r.Steal = before.machine.busy(after.machine, wall)
	prop := propAfter.sub(propBefore)
	r.Deltas = prop.total()
	r.PropP50, r.PropP99 = 1000*prop.quantile(0.5), 1000*prop.quantile(0.99)
	if r.Deltas == 0 {
		return r, errors.New("no usage deltas were merged during the load: the nodes are not sharing counts, so this is not a cluster benchmark")
	}
	return r, nil
}

// saveProfile fetches a CPU profile of d from a node's pprof address into path.
func saveProfile(ctx context.Context, client *http.Client, addr string, d time.Duration, path string) error {
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Round(time.Second).Seconds()))
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	// The load client's timeout is shorter than a profile.
	resp, err := (&http.Client{Transport: client.Transport}).Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: status %d", addr, resp.StatusCode)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("profile %s: %w", addr, err)
	}
	return os.WriteFile(path, b, 0o644)
}

// herdCPU turns each node's CPU time over a measurement into µs per request: summed, and per
// node. Every node served a share of the requests, so one that used no CPU at all means its
// process was not the one measured; that is an error, not a low number.
func herdCPU(perNode []time.Duration, sent uint64, wall time.Duration) (sum float64, each []float64, corePct float64, err error) {
	if sent == 0 || wall <= 0 {
		return 0, nil, 0, errors.New("no requests sent")
	}
	var total time.Duration
	for i, d := range perNode {
		if d <= 0 {
			return 0, nil, 0, fmt.Errorf("node %d used no CPU time while serving requests: its process is not being measured", i)
		}
		total += d
		each = append(each, float64(d.Microseconds())/float64(sent))
	}
	return float64(total.Microseconds()) / float64(sent), each, 100 * total.Seconds() / wall.Seconds(), nil
}

// keysSummary is one node count's result: each cluster's figures over the rounds, and the
// keyed / unkeyed ratio of CPU per request.
type keysSummary struct {
	Nodes int              `json:"nodes"`
	Modes []keysModeResult `json:"modes"` // in --keys order
	// Ratios is keyed / unkeyed CPU per request in each round that measured both, in round
	// order; Ratio is their median, the figure checked: each round's pair ran minutes apart
	// at most, so machine drift between rounds cancels.
	Ratios []float64 `json:"cpu_ratios_by_round,omitempty"`
	Ratio  float64   `json:"cpu_ratio_median,omitempty"`
	// RatioOfMedians is the keyed cluster's median CPU per request over the unkeyed one's.
	RatioOfMedians float64 `json:"cpu_ratio_of_medians,omitempty"`
}

// keysModeResult is one cluster's measurements, folded over rounds.
type keysModeResult struct {
	Keys string `json:"keys"`
	costFigures
	Sent    uint64  `json:"sent"`
	OK      uint64  `json:"ok_2xx"`
	PropP99 float64 `json:"propagation_p99_ms_median"`
}

// costFigures are what every cost report (--keys, --modes with --rate) gives for one cluster
// over its rounds, under the same names: herd CPU per request and the client's latency.
type costFigures struct {
	Rounds int     `json:"rounds"`
	CPU    float64 `json:"herd_cpu_us_per_request_median"`
	CPUMin float64 `json:"herd_cpu_us_per_request_min"`
	CPUMax float64 `json:"herd_cpu_us_per_request_max"`
	P50    float64 `json:"latency_p50_us_median"`
	P99    float64 `json:"latency_p99_us_median"`
}

// costRun is a cost measurement's result: a keysRun, or one that embeds it (modeCostRun).
type costRun interface{ measurement() keysRun }

func (r keysRun) measurement() keysRun { return r }

// foldCost is the costFigures of one cluster's rounds.
func foldCost[R costRun](rounds []R) costFigures {
	var cpu, p50, p99 []float64
	for _, x := range rounds {
		r := x.measurement()
		cpu = append(cpu, r.HerdCPU)
		p50 = append(p50, r.Result.Latency.P50)
		p99 = append(p99, r.Result.Latency.P99)
	}
	return costFigures{Rounds: len(rounds), CPU: median(cpu), CPUMin: slices.Min(cpu), CPUMax: slices.Max(cpu), P50: median(p50), P99: median(p99)}
}

// summariseKeys folds the runs by node count (in the order they first appear) and key mode.
func summariseKeys(runs []keysRun) []keysSummary {
	var out []keysSummary
	counts, byCount := groupBy(runs, func(r keysRun) int { return r.Nodes })
	for _, n := range counts {
		s := keysSummary{Nodes: n}
		modes, byMode := groupBy(byCount[n], func(r keysRun) string { return r.Keys })
		for _, k := range modes {
			m := keysModeResult{Keys: k, costFigures: foldCost(byMode[k])}
			var prop []float64
			for _, r := range byMode[k] {
				prop = append(prop, r.PropP99)
				m.Sent += r.Result.Sent
				m.OK += r.Result.OK
			}
			m.PropP99 = median(prop)
			s.Modes = append(s.Modes, m)
		}
		for _, a := range byMode[keysOn] {
			for _, b := range byMode[keysOff] {
				if a.Round == b.Round && b.HerdCPU > 0 {
					s.Ratios = append(s.Ratios, a.HerdCPU/b.HerdCPU)
				}
			}
		}
		if len(s.Ratios) > 0 {
			s.Ratio = median(s.Ratios)
		}
		if mOff, mOn := s.mode(keysOff), s.mode(keysOn); mOff.CPU > 0 && mOn.Rounds > 0 {
			s.RatioOfMedians = mOn.CPU / mOff.CPU
		}
		out = append(out, s)
	}
	return out
}

func (s keysSummary) mode(k string) keysModeResult {
	for _, m := range s.Modes {
		if m.Keys == k {
			return m
		}
	}
	return keysModeResult{}
}

// keysChecks are the target (keyed CPU per request within 10 % of unkeyed, on the
// median of the per-round ratios) and 100 % success for every cluster.
func keysChecks(sums []keysSummary) []check {
	var out []check
	for _, s := range sums {
		if len(s.Ratios) > 0 {
			c := check{
				What: fmt.Sprintf("keyed herd CPU per request within %.0f%% of unkeyed, %d nodes", 100*(keysMaxRatio-1), s.Nodes),
				Detail: fmt.Sprintf("median of per-round ratios %.3f× (rounds %s; ratio of medians %.3f×): keyed %.0f µs vs unkeyed %.0f µs",
					s.Ratio, fmtRatios(s.Ratios), s.RatioOfMedians, s.mode(keysOn).CPU, s.mode(keysOff).CPU),
			}
			c.Verdict = verdict(s.Ratio <= keysMaxRatio)
			out = append(out, c)
		}
		for _, m := range s.Modes {
			out = append(out, check{
				Verdict: verdict(m.Sent > 0 && m.OK == m.Sent),
				What:    fmt.Sprintf("100%% success, keys %s, %d nodes", m.Keys, s.Nodes),
				Detail:  fmt.Sprintf("%d of %d requests answered 2xx", m.OK, m.Sent),
			})
		}
	}
	return out
}

func fmtRatios(rs []float64) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.3f×", r)
	}
	return strings.Join(parts, ", ")
}

func fmtNodeCPU(each []float64) string {
	parts := make([]string, len(each))
	for i, v := range each {
		parts[i] = fmt.Sprintf("%.0f", v)
	}
	return strings.Join(parts, " + ")
}

func writeKeysMarkdown(w io.Writer, cmd string, m machineInfo, o clusterOptions, runs []keysRun, sums []keysSummary, checks []check) {
	fmt.Fprintf(w, "Command: `%s`\n\nMachine: %s.\n\n", cmd, fmtMachine(m))
	fmt.Fprintf(w, "Per node count, two clusters run side by side on loopback: keys off (no cluster key) and keys on (cluster_settings.cluster_key: gossip encrypted, mutual TLS on the raft port; checked in every node's log, and every node saw all members alive and all of them raft voters). One deployment, rpm %d and tpm %d, so every request is admitted, reserved and settled, and its usage gossiped. Each measurement: %s of warm-up (discarded), then %d req/s for %s, round-robin over the nodes; fake upstream latency %s. The clusters take turns, the order alternating by round. Herd CPU is user+system time from /proc/PID/stat of every node, read right before and right after the measured load.\n\n",
		o.limit, keysTPM, o.warmup, o.rate, o.duration, o.upLatency)
	fmt.Fprintln(w, "| nodes | round | keys | sent | success | achieved | p50 | p99 | herd CPU per request | per node | herd CPU, % of a core | herdbench CPU per request | machine busy | deltas merged | propagation p99 |")
	fmt.Fprintln(w, "|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, r := range runs {
		fmt.Fprintf(w, "| %d | %d | %s | %d | %s | %.1f/s | %s | %s | %.0f µs | %s | %.0f %% | %.0f µs | %.0f %% | %d | %.2f ms |\n",
			r.Nodes, r.Round, r.Keys, r.Result.Sent, fmtSuccess(r.Result.OK, r.Result.Sent), r.Result.Rate,
			fmtMs(r.Result.Latency.P50), fmtMs(r.Result.Latency.P99), r.HerdCPU, fmtNodeCPU(r.NodeCPU), r.HerdCorePct,
			r.LoadCPU, r.Busy, r.Deltas, r.PropP99)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| nodes | keys | rounds | herd CPU per request, median (min–max) | p50 (median) | p99 (median) | success | propagation p99 (median) |")
	fmt.Fprintln(w, "|--:|---|--:|--:|--:|--:|--:|--:|")
	for _, s := range sums {
		for _, md := range s.Modes {
			fmt.Fprintf(w, "| %d | %s | %d | %.0f µs (%.0f–%.0f) | %s | %s | %s | %.2f ms |\n",
				s.Nodes, md.Keys, md.Rounds, md.CPU, md.CPUMin, md.CPUMax, fmtMs(md.P50), fmtMs(md.P99),
				fmtSuccess(md.OK, md.Sent), md.PropP99)
		}
	}
	for _, s := range sums {
		if len(s.Ratios) > 0 {
			fmt.Fprintf(w, "\n%d nodes, keyed / unkeyed herd CPU per request: **%.3f×** (median of rounds: %s; min–max %.3f–%.3f×); ratio of the medians %.3f×.\n",
				s.Nodes, s.Ratio, fmtRatios(s.Ratios), slices.Min(s.Ratios), slices.Max(s.Ratios), s.RatioOfMedians)
		}
	}
	writeChecks(w, checks)
}
