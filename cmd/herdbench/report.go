package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// The targets herd is held to (issue: proxy core).
const (
	p50RatioLimit        = 1.15      // herd's added p50 ≤ 1.15 × the reverse proxy's
	p99RatioLimit        = 1.5       // herd's added p99 ≤ 1.5 × the reverse proxy's
	redisAddedP50LimitUS = 150.0     // Redis mode adds ≤ 150 µs p50 over the local backend
	rssLimitKB           = 64 * 1024 // herd's peak RSS < 64 MiB
)

// disturbedCorePct is the CPU use by processes outside the benchmark (in % of one CPU) from
// which a measured attack is called out as disturbed.
const disturbedCorePct = 20

// report is everything `herdbench proxy` measured and concluded; it is also the JSON file.
type report struct {
	Command  string      `json:"command"`
	Machine  machineInfo `json:"machine"`
	Settings settings    `json:"settings"`
	Cells    []cell      `json:"cells"`
	Ratios   []ratioRow  `json:"ratios"`
	Checks   []check     `json:"checks"`
	Samples  []sample    `json:"samples"`
	// ExpectedUpstreamRequests is every request sent to any target (warm-ups and probes
	// included); the fake upstream's counts should add up to it.
	ExpectedUpstreamRequests uint64          `json:"expected_upstream_requests"`
	UpstreamStats            json.RawMessage `json:"upstream_stats,omitempty"`
	HerdLogLines             int             `json:"herd_log_lines"`
}

type settings struct {
	Rates           []int    `json:"rates"`
	Targets         []string `json:"targets"`
	DurationS       float64  `json:"duration_s"`
	WarmupS         float64  `json:"warmup_s"`
	UpstreamLatency string   `json:"upstream_latency"`
	Rounds          int      `json:"rounds"`
	BodyBytes       int      `json:"request_body_bytes"`
}

// cell is one (rate, target) over all rounds: medians of the rounds, sums of the counts.
type cell struct {
	Rate         int          `json:"rate"`
	Target       string       `json:"target"`
	Rounds       int          `json:"rounds"`
	Latency      latencyUS    `json:"latency_us"`         // each field the median over rounds
	Spread       latencyUS    `json:"round_spread_us"`    // each field max − min over rounds
	Added        *latencyUS   `json:"added_us,omitempty"` // median over rounds of (target − direct, same round)
	AddedRounds  []roundAdded `json:"added_by_round_us,omitempty"`
	Sent         uint64       `json:"sent"`
	OK           uint64       `json:"ok_2xx"`
	AchievedRate float64      `json:"achieved_rate"`
	Busy         float64      `json:"machine_busy_pct"`
	Steal        float64      `json:"machine_steal_pct"`
	ProxyCPU     *procCPU     `json:"proxy_cpu,omitempty"` // the target's own process
	PeakHWMKB    int64        `json:"proxy_peak_hwm_kb"`   // the target's own process
	SelfOverhead *latencyUS   `json:"self_reported_overhead_us,omitempty"`
}

// roundAdded is a target's added latency (target − direct) in one round.
type roundAdded struct {
	Round int       `json:"round"`
	Added latencyUS `json:"added"`
}

// ratioRow is herd's added latency over the reverse proxy's at one rate; nil when undefined
// (a target missing, or the reverse proxy's added latency not positive).
type ratioRow struct {
	Rate int      `json:"rate"`
	P50  *float64 `json:"added_p50_ratio"`
	P99  *float64 `json:"added_p99_ratio"`
}

// check is one target of the issue, evaluated.
type check struct {
	Verdict string `json:"verdict"` // PASS, FAIL, or INCONCLUSIVE
	What    string `json:"what"`
	Detail  string `json:"detail"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// groupBy splits xs by key: the keys in the order they first appear, each group in xs's order.
func groupBy[T any, K comparable](xs []T, key func(T) K) ([]K, map[K][]T) {
	var keys []K
	groups := map[K][]T{}
	for _, x := range xs {
		k := key(x)
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], x)
	}
	return keys, groups
}

func spread(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Max(xs) - slices.Min(xs)
}

// fold applies f (median or spread) field by field to a list of latencies.
func fold(ls []latencyUS, f func([]float64) float64) latencyUS {
	field := func(get func(latencyUS) float64) float64 {
		xs := make([]float64, len(ls))
		for i, l := range ls {
			xs[i] = get(l)
		}
		return f(xs)
	}
	return latencyUS{
		P50:  field(func(l latencyUS) float64 { return l.P50 }),
		P90:  field(func(l latencyUS) float64 { return l.P90 }),
		P99:  field(func(l latencyUS) float64 { return l.P99 }),
		Max:  field(func(l latencyUS) float64 { return l.Max }),
		Mean: field(func(l latencyUS) float64 { return l.Mean }),
	}
}

func sub(a, b latencyUS) latencyUS {
	return latencyUS{P50: a.P50 - b.P50, P90: a.P90 - b.P90, P99: a.P99 - b.P99, Max: a.Max - b.Max, Mean: a.Mean - b.Mean}
}

func buildReport(o benchOptions, m machineInfo, samples []sample) *report {
	rep := &report{
		Machine: m,
		Settings: settings{
			Rates: o.rates, Targets: o.targets, DurationS: o.duration.Seconds(), WarmupS: o.warmup.Seconds(),
			UpstreamLatency: o.upstreamLatency.String(), Rounds: o.rounds, BodyBytes: len(chatBody(benchModel)),
		},
		Samples: samples,
	}
	for _, rate := range o.rates {
		byTarget := map[string]*cell{}
		for _, target := range o.targets {
			c := makeCell(rate, target, samples)
			rep.Cells = append(rep.Cells, c)
			byTarget[target] = &rep.Cells[len(rep.Cells)-1]
		}
		r := ratioRow{Rate: rate}
		if h, p := byTarget[targetHerd], byTarget[targetReverseProxy]; h != nil && p != nil && h.Added != nil && p.Added != nil {
			if p.Added.P50 > noiseFloor(p, getP50) {
				r.P50 = ratio(h.Added.P50, p.Added.P50)
			}
			if p.Added.P99 > noiseFloor(p, getP99) {
				r.P99 = ratio(h.Added.P99, p.Added.P99)
			}
		}
		rep.Ratios = append(rep.Ratios, r)
	}
	rep.Checks = evaluate(rep)
	return rep
}

func getP50(l latencyUS) float64 { return l.P50 }
func getP99(l latencyUS) float64 { return l.P99 }

// noiseFloor is the smallest added latency of the reverse proxy that a ratio can be taken on:
// its own round-to-round deviation (the median absolute deviation of its per-round added
// values). Below that, the denominator is noise. With one round the noise is unknown: 0.
func noiseFloor(rp *cell, get func(latencyUS) float64) float64 {
	if rp == nil || len(rp.AddedRounds) < 2 {
		return 0
	}
	xs := make([]float64, len(rp.AddedRounds))
	for i, a := range rp.AddedRounds {
		xs[i] = get(a.Added)
	}
	m := median(xs)
	for i := range xs {
		xs[i] = math.Abs(xs[i] - m)
	}
	return median(xs)
}

func ratio(herd, rp float64) *float64 {
	if rp <= 0 || math.IsNaN(herd) || math.IsNaN(rp) {
		return nil
	}
	v := herd / rp
	return &v
}

func makeCell(rate int, target string, samples []sample) cell {
	c := cell{Rate: rate, Target: target}
	direct := map[int]latencyUS{} // round -> direct's latency
	for _, s := range samples {
		if s.Rate == rate && s.Target == targetDirect {
			direct[s.Round] = s.Result.Latency
		}
	}
	var lats, added, selfs []latencyUS
	var rates, busy, steal, cpuPct, cpuUS []float64
	for _, s := range samples {
		if s.Rate != rate || s.Target != target {
			continue
		}
		c.Rounds++
		lats = append(lats, s.Result.Latency)
		if d, ok := direct[s.Round]; ok && target != targetDirect {
			a := sub(s.Result.Latency, d)
			added = append(added, a)
			c.AddedRounds = append(c.AddedRounds, roundAdded{s.Round, a})
		}
		c.Sent += s.Result.Sent
		c.OK += s.Result.OK
		rates = append(rates, s.Result.Rate)
		busy = append(busy, s.Busy)
		steal = append(steal, s.Steal)
		if pc, ok := s.CPU[target]; ok {
			cpuPct = append(cpuPct, pc.CorePct)
			cpuUS = append(cpuUS, pc.USPerReq)
		}
		if mem, ok := s.Mem[target]; ok {
			c.PeakHWMKB = max(c.PeakHWMKB, mem.HWM)
		}
		if s.Result.SelfOverhead != nil {
			selfs = append(selfs, *s.Result.SelfOverhead)
		}
	}
	if c.Rounds == 0 {
		return c
	}
	c.Latency, c.Spread = fold(lats, median), fold(lats, spread)
	if len(added) > 0 {
		a := fold(added, median)
		c.Added = &a
	}
	c.AchievedRate, c.Busy, c.Steal = median(rates), median(busy), median(steal)
	if len(cpuUS) > 0 {
		c.ProxyCPU = &procCPU{CorePct: median(cpuPct), USPerReq: median(cpuUS)}
	}
	if len(selfs) > 0 {
		s := fold(selfs, median)
		c.SelfOverhead = &s
	}
	return c
}

func (r *report) cell(rate int, target string) *cell {
	for i := range r.Cells {
		if r.Cells[i].Rate == rate && r.Cells[i].Target == target {
			return &r.Cells[i]
		}
	}
	return nil
}

// evaluate holds herd to the targets.
func evaluate(r *report) []check {
	var checks []check
	for _, rate := range r.Settings.Rates {
		h, p := r.cell(rate, targetHerd), r.cell(rate, targetReverseProxy)
		if h != nil && p != nil && h.Added != nil && p.Added != nil {
			checks = append(checks,
				ratioCheck(rate, "p50", h, p, p50RatioLimit, getP50),
				ratioCheck(rate, "p99", h, p, p99RatioLimit, getP99))
		}
		for _, target := range []string{targetHerd, targetHerdBaseline, targetHerdRedis, targetHerdAnthropic} {
			h := r.cell(rate, target)
			if h == nil || h.Sent == 0 {
				continue
			}
			c := check{What: fmt.Sprintf("%s 100%% success at %d req/s", target, rate),
				Detail: fmt.Sprintf("%d of %d requests answered 2xx (%s)", h.OK, h.Sent, fmtSuccess(h.OK, h.Sent))}
			c.Verdict = verdict(h.OK == h.Sent)
			if h.AchievedRate < 0.99*float64(rate) {
				c.Detail += fmt.Sprintf("; only %.1f req/s were sent, below the %d asked: the load generator fell behind", h.AchievedRate, rate)
			}
			checks = append(checks, c)
		}
		if h, hr := r.cell(rate, targetHerd), r.cell(rate, targetHerdRedis); h != nil && hr != nil && h.Added != nil && hr.Added != nil {
			d := hr.Added.P50 - h.Added.P50
			checks = append(checks, check{
				Verdict: verdict(d <= redisAddedP50LimitUS),
				What:    fmt.Sprintf("Redis mode adds <= %.0f µs p50 over the local backend at %d req/s", redisAddedP50LimitUS, rate),
				Detail:  fmt.Sprintf("herd-redis added p50 %s vs herd %s: %s", fmtAddedUS(hr.Added.P50), fmtAddedUS(h.Added.P50), fmtAddedUS(d)),
			})
		}
	}
	var peak int64
	for _, c := range r.Cells {
		if c.Target == targetHerd {
			peak = max(peak, c.PeakHWMKB)
		}
	}
	if peak > 0 {
		checks = append(checks, check{
			Verdict: verdict(peak < rssLimitKB),
			What:    "herd peak RSS < 64 MiB",
			Detail:  fmt.Sprintf("VmHWM %s over the whole run", fmtMiB(peak)),
		})
	}
	return checks
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// ratioCheck compares herd's added latency at one quantile (picked by get) with limit × the
// reverse proxy's: on the medians over rounds for the verdict, and round by round to show how
// steady the verdict is.
func ratioCheck(rate int, q string, h, p *cell, limit float64, get func(latencyUS) float64) check {
	herd, rp := get(*h.Added), get(*p.Added)
	c := check{What: fmt.Sprintf("herd added %s ≤ %g× reverseproxy's at %d req/s", q, limit, rate)}
	if floor := noiseFloor(p, get); rp <= 0 || rp <= floor {
		c.Verdict = "INCONCLUSIVE"
		if rp <= 0 {
			c.Detail = fmt.Sprintf("reverseproxy's added %s is %s, not above direct", q, fmtAddedUS(rp))
		} else {
			c.Detail = fmt.Sprintf("reverseproxy's added %s (%s) is within its own round-to-round deviation (%s, median absolute deviation)", q, fmtAddedUS(rp), fmtUS(floor))
		}
		c.Detail += fmt.Sprintf(": the baseline is noise here, so no ratio (it would be %.2f×). herd's added %s is %s; herd − reverseproxy is %s",
			herd/rp, q, fmtAddedUS(herd), fmtAddedUS(herd-rp))
		return c
	}
	allowed := limit * rp
	c.Verdict = verdict(herd <= allowed)
	c.Detail = fmt.Sprintf("herd %s vs allowed %s (%g × %s): ratio %.2f×", fmtAddedUS(herd), fmtUS(allowed), limit, fmtUS(rp), herd/rp)
	if herd > allowed {
		c.Detail += fmt.Sprintf(", over by %s", fmtUS(herd-allowed))
	} else {
		c.Detail += fmt.Sprintf(", %s to spare", fmtUS(allowed-herd))
	}
	var rounds, passed int
	for _, hr := range h.AddedRounds {
		for _, pr := range p.AddedRounds {
			if pr.Round == hr.Round {
				rounds++
				if rpr := get(pr.Added); rpr > 0 && get(hr.Added) <= limit*rpr {
					passed++
				}
			}
		}
	}
	if rounds > 1 {
		c.Detail += fmt.Sprintf("; round by round it holds in %d of %d", passed, rounds)
	}
	return c
}

// Formatting.

func fmtMs(us float64) string { return fmt.Sprintf("%.3f ms", us/1000) }

func fmtUS(us float64) string {
	if math.Abs(us) < 10 {
		return fmt.Sprintf("%.1f µs", us)
	}
	return fmt.Sprintf("%.0f µs", us)
}

func fmtAddedUS(us float64) string {
	if math.IsNaN(us) {
		return "n/a"
	}
	s := fmtUS(us)
	if !strings.HasPrefix(s, "-") {
		s = "+" + s
	}
	return s
}

func fmtRatio(r *float64) string {
	if r == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", *r)
}

// fmtSuccess shows 2xx/sent as a percentage that only reads 100 when nothing failed.
func fmtSuccess(ok, sent uint64) string {
	if sent == 0 {
		return "n/a"
	}
	if ok == sent {
		return "100 %"
	}
	pct := 100 * float64(ok) / float64(sent)
	return fmt.Sprintf("%.3f %%", min(pct, 99.999))
}

func fmtMiB(kb int64) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

// writeMarkdown prints the report: machine facts, a table per rate, the checks.
func writeMarkdown(out io.Writer, r *report) error {
	w := bufio.NewWriter(out)
	m, st := r.Machine, r.Settings
	fmt.Fprintf(w, "## Proxy overhead: herd vs a bare httputil.ReverseProxy vs direct\n\n")
	fmt.Fprintf(w, "- Date: %s\n", m.Date)
	fmt.Fprintf(w, "- Machine: %s, nproc %d (GOMAXPROCS %d)", m.CPUModel, m.NumCPU, m.GOMAXPROCS)
	if m.Kernel != "" {
		fmt.Fprintf(w, ", Linux %s", m.Kernel)
	}
	if m.MemTotal != "" {
		fmt.Fprintf(w, ", MemTotal %s", m.MemTotal)
	}
	if m.LoadAvg != "" {
		fmt.Fprintf(w, ", load average at start %s", m.LoadAvg)
	}
	fmt.Fprintf(w, "\n- Go: %s", m.GoVersion)
	if m.HerdGoVersion != "" {
		fmt.Fprintf(w, " (herd built with %s", m.HerdGoVersion)
		if m.HerdRevision != "" {
			fmt.Fprintf(w, " at %s", m.HerdRevision)
		}
		fmt.Fprint(w, ")")
	}
	fmt.Fprintf(w, "\n- Command: `%s`\n", r.Command)
	fmt.Fprintf(w, "- Load: vegeta at a fixed rate, keep-alive, POST /v1/chat/completions with a %d-byte chat body; "+
		"per target %s warm-up (discarded) then %s measured; %d round(s), targets interleaved with the order rotating each round. "+
		"Latencies are the median over rounds; added = target − direct in the same round, median over rounds; success is summed over rounds.\n",
		st.BodyBytes, fmtDur(st.WarmupS), fmtDur(st.DurationS), st.Rounds)
	fmt.Fprintf(w, "- Upstream: fakeupstream --latency %s. The load generator, the fake upstream and both proxies share the machine's %d CPUs.\n",
		st.UpstreamLatency, m.NumCPU)

	for i, rate := range st.Rates {
		fmt.Fprintf(w, "\n### %d req/s\n\n", rate)
		fmt.Fprintln(w, "| target | p50 | p90 | p99 | max | success | achieved | added p50 | added p99 | proxy CPU | proxy peak RSS | machine busy |")
		fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
		for _, t := range st.Targets {
			c := r.cell(rate, t)
			if c == nil || c.Rounds == 0 {
				continue
			}
			addedP50, addedP99 := "—", "—"
			if c.Added != nil {
				addedP50, addedP99 = fmtAddedUS(c.Added.P50), fmtAddedUS(c.Added.P99)
			}
			cpu, rss := "—", "—"
			if c.ProxyCPU != nil {
				cpu = fmt.Sprintf("%.0f µs/req (%.0f %% of a core)", c.ProxyCPU.USPerReq, c.ProxyCPU.CorePct)
			}
			if c.PeakHWMKB > 0 {
				rss = fmtMiB(c.PeakHWMKB)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %.1f/s | %s | %s | %s | %s | %.0f %% |\n",
				t, fmtMs(c.Latency.P50), fmtMs(c.Latency.P90), fmtMs(c.Latency.P99), fmtMs(c.Latency.Max),
				fmtSuccess(c.OK, c.Sent), c.AchievedRate, addedP50, addedP99, cpu, rss, c.Busy)
		}
		h, p := r.cell(rate, targetHerd), r.cell(rate, targetReverseProxy)
		if h != nil && p != nil && h.Added != nil && p.Added != nil {
			rr := r.Ratios[i]
			fmt.Fprintf(w, "\nherd / reverseproxy, added latency: p50 %s (%s vs %s), p99 %s (%s vs %s).\n",
				fmtRatio(rr.P50), fmtAddedUS(h.Added.P50), fmtAddedUS(p.Added.P50),
				fmtRatio(rr.P99), fmtAddedUS(h.Added.P99), fmtAddedUS(p.Added.P99))
			fmt.Fprintf(w, "herd − reverseproxy: p50 %s, p90 %s, p99 %s.\n",
				fmtAddedUS(h.Added.P50-p.Added.P50), fmtAddedUS(h.Added.P90-p.Added.P90), fmtAddedUS(h.Added.P99-p.Added.P99))
		}
		if hb := r.cell(rate, targetHerdBaseline); h != nil && hb != nil && h.Added != nil && hb.Added != nil {
			fmt.Fprintf(w, "herd − herd-baseline (the change's cost): added p50 %s, p90 %s, p99 %s; herd / herd-baseline, added p50 %s.\n",
				fmtAddedUS(h.Added.P50-hb.Added.P50), fmtAddedUS(h.Added.P90-hb.Added.P90), fmtAddedUS(h.Added.P99-hb.Added.P99),
				fmtRatio(ratio(h.Added.P50, hb.Added.P50)))
		}
		if hr := r.cell(rate, targetHerdRedis); h != nil && hr != nil && h.Added != nil && hr.Added != nil {
			fmt.Fprintf(w, "herd-redis − herd (Redis mode's cost): p50 %s, p90 %s, p99 %s.\n",
				fmtAddedUS(hr.Added.P50-h.Added.P50), fmtAddedUS(hr.Added.P90-h.Added.P90), fmtAddedUS(hr.Added.P99-h.Added.P99))
		}
		if h != nil && h.SelfOverhead != nil {
			fmt.Fprintf(w, "herd's own X-Litellm-Overhead-Duration-Ms (handler time minus upstream time): p50 %s, p99 %s.\n",
				fmtUS(h.SelfOverhead.P50), fmtUS(h.SelfOverhead.P99))
		}
		if ha := r.cell(rate, targetHerdAnthropic); ha != nil && ha.SelfOverhead != nil {
			fmt.Fprintf(w, "herd-anthropic's X-Litellm-Overhead-Duration-Ms (translation to and from the Messages API included): p50 %s, p99 %s.\n",
				fmtUS(ha.SelfOverhead.P50), fmtUS(ha.SelfOverhead.P99))
			if h != nil && h.Added != nil && ha.Added != nil {
				fmt.Fprintf(w, "herd-anthropic − herd, added latency: p50 %s, p99 %s.\n",
					fmtAddedUS(ha.Added.P50-h.Added.P50), fmtAddedUS(ha.Added.P99-h.Added.P99))
			}
		}
		if st.Rounds > 1 {
			var parts []string
			for _, t := range st.Targets {
				if c := r.cell(rate, t); c != nil && c.Rounds > 0 {
					parts = append(parts, fmt.Sprintf("%s %s / %s", t, fmtUS(c.Spread.P50), fmtUS(c.Spread.P99)))
				}
			}
			fmt.Fprintf(w, "Round-to-round spread (max − min) of p50 / p99: %s.\n", strings.Join(parts, ", "))
		}
		var steal float64
		for _, t := range st.Targets {
			if c := r.cell(rate, t); c != nil {
				steal = max(steal, c.Steal)
			}
		}
		if steal >= 0.5 {
			fmt.Fprintf(w, "CPU steal by the hypervisor reached %.1f %% during these runs.\n", steal)
		}
	}

	var disturbed []string
	for _, s := range r.Samples {
		if s.Other >= disturbedCorePct {
			disturbed = append(disturbed, fmt.Sprintf("%d req/s round %d %s (%.0f %%)", s.Rate, s.Round, s.Target, s.Other))
		}
	}
	if len(disturbed) > 0 {
		fmt.Fprintf(w, "\nOther processes on the machine used more than %d %% of a CPU during: %s. Medians over rounds damp this; a single round cannot.\n",
			disturbedCorePct, strings.Join(disturbed, ", "))
	}

	fmt.Fprintf(w, "\n### Checks\n\n")
	for _, c := range r.Checks {
		fmt.Fprintf(w, "- **%s** %s: %s\n", c.Verdict, c.What, c.Detail)
	}
	if len(r.UpstreamStats) > 0 {
		fmt.Fprintf(w, "\nThe fake upstream counted %s; the targets were sent %d requests in all (warm-ups and probes included).\n",
			upstreamCounts(r.UpstreamStats), r.ExpectedUpstreamRequests)
	}
	if r.HerdLogLines > 0 {
		fmt.Fprintf(w, "Log lines written by herd during the run: %d.\n", r.HerdLogLines)
	}
	return w.Flush()
}

func fmtDur(secs float64) string { return fmt.Sprintf("%gs", secs) }

// upstreamCounts summarises /fake/stats, e.g. "bench-upstream: 123456".
func upstreamCounts(raw json.RawMessage) string {
	var st struct {
		Counts map[string]int64 `json:"counts"`
	}
	if err := json.Unmarshal(raw, &st); err != nil || len(st.Counts) == 0 {
		return "no requests"
	}
	var parts []string
	for _, k := range sortedKeys(st.Counts) {
		parts = append(parts, fmt.Sprintf("%d requests for %s", st.Counts[k], k))
	}
	return strings.Join(parts, ", ")
}
