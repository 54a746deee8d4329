package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Target names, in their order within a round (rotated from round to round).
const (
	targetDirect       = "direct"
	targetReverseProxy = "reverseproxy"
	targetHerd         = "herd"
	// targetHerdRedis is herd with its state in a local redis-server (router_settings.redis_host).
	targetHerdRedis = "herd-redis"
	// targetHerdAnthropic is herd with an anthropic/ deployment: OpenAI chat in, translated to
	// the fake upstream's Messages API and back.
	targetHerdAnthropic = "herd-anthropic"
	// targetHerdBaseline is another herd build (--baseline), e.g. the commit before a change,
	// measured side by side with herd in the same run.
	targetHerdBaseline = "herd-baseline"
)

var (
	allTargets     = []string{targetDirect, targetReverseProxy, targetHerd, targetHerdBaseline, targetHerdRedis, targetHerdAnthropic}
	defaultTargets = []string{targetDirect, targetReverseProxy, targetHerd}
)

const (
	benchModel    = "bench"          // the model group clients ask herd for
	upstreamModel = "bench-upstream" // what herd sends upstream; what the other targets get
	readyTimeout  = 30 * time.Second // for a child to print its listening line
	probeTimeout  = 10 * time.Second // for a target to answer its first request
)

// benchOptions are the flags of `herdbench proxy`.
type benchOptions struct {
	herd            string
	baseline        string // a second herd binary, for targetHerdBaseline
	fakeupstream    string
	rates           []int
	duration        time.Duration
	warmup          time.Duration
	upstreamLatency time.Duration
	rounds          int
	jsonPath        string
	targets         []string
	limits          bool
	redisServer     string
}

func parseBenchFlags(args []string, stderr io.Writer) (benchOptions, error) {
	var o benchOptions
	fs := flag.NewFlagSet("herdbench proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.herd, "herd", "", "herd binary (default: next to herdbench, else $PATH)")
	fs.StringVar(&o.baseline, "baseline", "", "another herd binary, measured as target herd-baseline in the same run (e.g. the commit before a change)")
	fs.StringVar(&o.fakeupstream, "fakeupstream", "", "fakeupstream binary (default: next to herdbench, else $PATH)")
	rates := fs.String("rates", "1000,3000", "comma-separated request rates (req/s), each measured in turn")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured attack length per target, rate and round")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "discarded attack before each measured one (0 = none)")
	fs.DurationVar(&o.upstreamLatency, "upstream-latency", 5*time.Millisecond, "fake upstream latency before response headers")
	fs.IntVar(&o.rounds, "rounds", 1, "measure every (rate, target) this many times; cells report the median")
	fs.StringVar(&o.jsonPath, "json", "", "also write all raw numbers to this JSON file")
	fs.BoolVar(&o.limits, "limits", false, "give herd's deployment rpm and tpm limits far above the load, so every request pays admission (check-and-reserve, settle) without being refused")
	targets := fs.String("targets", strings.Join(defaultTargets, ","), "which targets to measure (added latency needs direct): "+strings.Join(allTargets, ","))
	fs.StringVar(&o.redisServer, "redis-server", "redis-server", "redis-server binary for the herd-redis target")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return o, usageError{fmt.Sprintf("proxy: unexpected argument %q", fs.Arg(0))}
	}
	var err error
	if o.rates, err = parseRates(*rates); err != nil {
		return o, usageError{"proxy: --rates: " + err.Error()}
	}
	if o.targets, err = parseTargets(*targets); err != nil {
		return o, usageError{"proxy: --targets: " + err.Error()}
	}
	if (o.baseline != "") != slices.Contains(o.targets, targetHerdBaseline) {
		return o, usageError{"proxy: --baseline and the target herd-baseline go together"}
	}
	switch {
	case o.duration < time.Second:
		return o, usageError{"proxy: --duration must be at least 1s"}
	case o.warmup < 0 || o.upstreamLatency < 0:
		return o, usageError{"proxy: durations must not be negative"}
	case o.rounds < 1:
		return o, usageError{"proxy: --rounds must be at least 1"}
	}
	return o, nil
}

func parseRates(s string) ([]int, error) {
	var rates []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		rates = append(rates, n)
	}
	return rates, nil
}

func parseTargets(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(allTargets, f) {
			return nil, fmt.Errorf("unknown target %q (want some of %s)", f, strings.Join(allTargets, ","))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	// Keep the canonical order, whatever order they were given in.
	slices.SortFunc(out, func(a, b string) int { return slices.Index(allTargets, a) - slices.Index(allTargets, b) })
	return out, nil
}

// attacks is how many attacks (warm-ups included) the run makes.
func (o benchOptions) attacks() int { return len(o.rates) * o.rounds * len(o.targets) }

// budget bounds the whole run, and the life of every child: every attack may run over by a
// request timeout, plus a minute for starting and stopping.
func (o benchOptions) budget() time.Duration {
	per := o.duration + requestTimeout
	if o.warmup > 0 {
		per += o.warmup + requestTimeout
	}
	return time.Duration(o.attacks())*per + time.Minute
}

// benchRun is what `herdbench proxy` and `herdbench streams` start from: the binaries, a
// context bounded by the run's budget, the machine's facts and a temporary directory. close
// ends the context and removes the directory.
type benchRun struct {
	ctx                      context.Context
	fuPath, herdPath, tmpDir string
	machine                  machineInfo
	close                    func()
}

func startBenchRun(ctx context.Context, fakeupstreamFlag, herdFlag string, targets []string, budget time.Duration, tmpPrefix string) (*benchRun, error) {
	fuPath, herdPath, err := benchBinaries(fakeupstreamFlag, herdFlag, targets)
	if err != nil {
		return nil, err
	}
	tmpDir, err := os.MkdirTemp("", tmpPrefix)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	return &benchRun{ctx: ctx, fuPath: fuPath, herdPath: herdPath, tmpDir: tmpDir, machine: readMachineInfo(herdPath, time.Now()),
		close: func() { cancel(); os.RemoveAll(tmpDir) }}, nil
}

// benchBinaries resolves the fakeupstream binary, and herd's when a target's name starts with
// "herd" ("" otherwise).
func benchBinaries(fakeupstreamFlag, herdFlag string, targets []string) (fuPath, herdPath string, err error) {
	if fuPath, err = findBinary(fakeupstreamFlag, "fakeupstream"); err != nil {
		return "", "", err
	}
	if slices.ContainsFunc(targets, func(t string) bool { return strings.HasPrefix(t, "herd") }) {
		if herdPath, err = findBinary(herdFlag, "herd"); err != nil {
			return "", "", err
		}
	}
	return fuPath, herdPath, nil
}

// findBinary resolves a --herd / --fakeupstream flag: as given, else next to this executable,
// else on $PATH.
func findBinary(flagVal, name string) (string, error) {
	if flagVal != "" {
		if st, err := os.Stat(flagVal); err != nil || st.IsDir() {
			return "", fmt.Errorf("%s binary %q: not a file", name, flagVal)
		}
		return filepath.Abs(flagVal)
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("no %s binary: pass --%s (scripts/bench-proxy.sh builds it)", name, name)
	}
	return p, nil
}

// herdConfig is the LiteLLM config herd is started with: one model group on the fake upstream,
// with limits that every request is checked against but that the load never reaches.
func herdConfig(upstreamAddr string, limits bool, redisAddr string) string {
	return herdConfigFor("openai/", "/v1", upstreamAddr, limits, redisAddr)
}

// herdConfigFor is herdConfig with a deployment of another provider (prefix, e.g.
// "anthropic/") whose api_base is the fake upstream plus path.
func herdConfigFor(prefix, path, upstreamAddr string, limits bool, redisAddr string) string {
	cfg := `# Generated by herdbench proxy.
model_list:
  - model_name: ` + benchModel + `
    litellm_params:
      model: ` + prefix + upstreamModel + `
      api_base: ` + strconv.Quote("http://"+upstreamAddr+path) + `
      api_key: sk-bench
`
	if limits {
		cfg += "      rpm: 1000000000\n      tpm: 1000000000000\n"
	}
	if redisAddr != "" {
		host, port, _ := strings.Cut(redisAddr, ":")
		cfg += "router_settings:\n  redis_host: " + host + "\n  redis_port: " + port + "\n"
	}
	return cfg
}

// benchEnv is the servers under test.
type benchEnv struct {
	upstream, rp, herd *child
	herdRedis, redis   *child
	herdAnthropic      *child
	herdBaseline       *child
	targets            []*loadTarget // in o.targets order
	probes             int           // requests sent by probe
}

// startEnv starts the fake upstream, then the reverse proxy and herd in front of it.
func startEnv(ctx context.Context, o benchOptions, fuPath, herdPath, tmpDir string, budget time.Duration) (_ *benchEnv, err error) {
	env := &benchEnv{}
	defer func() {
		if err != nil {
			env.stop()
		}
	}()
	lifetime := budget.String()
	env.upstream, err = startChild(ctx, "fakeupstream", fuPath,
		[]string{"--addr", "127.0.0.1:0", "--latency", o.upstreamLatency.String(), "--max-lifetime", lifetime},
		readyPrefix("fakeupstream listening on "), readyTimeout)
	if err != nil {
		return nil, err
	}
	upstreamURL := "http://" + env.upstream.addr

	for _, name := range o.targets {
		t := &loadTarget{name: name, client: newLoadClient()}
		switch name {
		case targetDirect:
			t.url, t.body = upstreamURL+"/v1/chat/completions", chatBody(upstreamModel)
		case targetReverseProxy:
			self, err := os.Executable()
			if err != nil {
				return nil, err
			}
			env.rp, err = startChild(ctx, "reverseproxy", self,
				[]string{"reverseproxy", "--listen", "127.0.0.1:0", "--target", upstreamURL, "--max-lifetime", lifetime},
				readyPrefix("listening on "), readyTimeout)
			if err != nil {
				return nil, err
			}
			t.url, t.body, t.proc = "http://"+env.rp.addr+"/v1/chat/completions", chatBody(upstreamModel), env.rp
		case targetHerd, targetHerdBaseline, targetHerdRedis, targetHerdAnthropic:
			redisAddr := ""
			if name == targetHerdRedis {
				if env.redis, err = startRedis(ctx, o.redisServer); err != nil {
					return nil, err
				}
				redisAddr = env.redis.addr
			}
			text := herdConfig(env.upstream.addr, o.limits, redisAddr)
			if name == targetHerdAnthropic {
				text = herdConfigFor("anthropic/", "", env.upstream.addr, o.limits, "")
			}
			cfg := filepath.Join(tmpDir, name+"-bench.yaml")
			if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
				return nil, err
			}
			// herd has no lifetime flag: it is stopped at the end, when ctx (bounded by the
			// budget) ends, or by the kernel if herdbench dies (see childProcAttr).
			bin := herdPath
			if name == targetHerdBaseline {
				if bin, err = findBinary(o.baseline, "herd"); err != nil {
					return nil, err
				}
			}
			c, err := startChild(ctx, name, bin,
				[]string{"--config", cfg, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0", "--node-name", "bench-" + name},
				herdReady, readyTimeout)
			if err != nil {
				return nil, err
			}
			switch name {
			case targetHerd:
				env.herd = c
			case targetHerdBaseline:
				env.herdBaseline = c
			case targetHerdRedis:
				env.herdRedis = c
			default:
				env.herdAnthropic = c
			}
			t.url, t.body, t.proc = "http://"+c.addr+"/v1/chat/completions", chatBody(benchModel), c
			t.overheadHeader = "X-Litellm-Overhead-Duration-Ms"
		}
		env.targets = append(env.targets, t)
	}
	for _, t := range env.targets {
		if err := env.probe(ctx, t); err != nil {
			return nil, err
		}
	}
	return env, nil
}

// probe sends one request to t until it answers 200, so a misconfiguration fails fast.
func (env *benchEnv) probe(ctx context.Context, t *loadTarget) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		env.probes++
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(t.body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := t.client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		last = err
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("%s (%s) does not answer: %v", t.name, t.url, last)
			if t.proc != nil {
				msg += "\nits output:\n" + t.proc.log.Tail()
			}
			return errors.New(msg)
		case <-tick.C:
		}
	}
}

// procs are the processes whose CPU time is measured around each attack, by name.
func (env *benchEnv) procs() map[string]int {
	m := map[string]int{"herdbench": os.Getpid(), "fakeupstream": env.upstream.pid()}
	if env.rp != nil {
		m[targetReverseProxy] = env.rp.pid()
	}
	if env.herd != nil {
		m[targetHerd] = env.herd.pid()
	}
	if env.herdRedis != nil {
		m[targetHerdRedis] = env.herdRedis.pid()
	}
	if env.herdAnthropic != nil {
		m[targetHerdAnthropic] = env.herdAnthropic.pid()
	}
	if env.herdBaseline != nil {
		m[targetHerdBaseline] = env.herdBaseline.pid()
	}
	if env.redis != nil {
		m["redis-server"] = env.redis.pid()
	}
	return m
}

func (env *benchEnv) children() []*child {
	var cs []*child
	for _, c := range []*child{env.herd, env.herdBaseline, env.herdRedis, env.herdAnthropic, env.rp, env.upstream, env.redis} {
		if c != nil {
			cs = append(cs, c)
		}
	}
	return cs
}

// alive fails if any child has exited.
func (env *benchEnv) alive() error {
	for _, c := range env.children() {
		if err := c.exited(); err != nil {
			return err
		}
	}
	return nil
}

// stop stops every child (proxies first) and returns the first unclean exit.
func (env *benchEnv) stop() error {
	var first error
	for _, c := range env.children() {
		if err := c.stop(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// upstreamStats fetches the fake upstream's request counts.
func (env *benchEnv) upstreamStats(ctx context.Context) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+env.upstream.addr+"/fake/stats", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK || !json.Valid(b) {
		return nil, fmt.Errorf("/fake/stats: status %d: %s", resp.StatusCode, b)
	}
	return b, nil
}

// sample is one measured attack, with what the processes used meanwhile.
type sample struct {
	Rate     int                `json:"rate"`
	Round    int                `json:"round"`
	Target   string             `json:"target"`
	Position int                `json:"position"` // 0-based place in its round
	Start    time.Time          `json:"start"`
	Result   attackResult       `json:"result"`
	Warmup   *attackResult      `json:"warmup,omitempty"`
	CPU      map[string]procCPU `json:"cpu"`
	Busy     float64            `json:"machine_busy_pct"`
	Steal    float64            `json:"machine_steal_pct"`
	// Other is the CPU used meanwhile by processes outside the benchmark, in % of one CPU:
	// the machine's busy time minus the benchmark's processes'.
	Other float64          `json:"other_processes_core_pct"`
	Mem   map[string]memKB `json:"mem"` // read right after the attack
}

// procCPU is a process's CPU use during one attack.
type procCPU struct {
	CorePct  float64 `json:"core_pct"`       // % of one CPU
	USPerReq float64 `json:"us_per_request"` // CPU µs per request sent
}

type cpuSnapshot struct {
	at      time.Time
	machine cpuTimes
	procs   map[string]time.Duration
}

func takeCPUSnapshot(procs map[string]int) (cpuSnapshot, error) {
	s := cpuSnapshot{at: time.Now(), procs: make(map[string]time.Duration, len(procs))}
	var err error
	if s.machine, err = readMachineCPU(); err != nil {
		return s, err
	}
	for name, pid := range procs {
		if s.procs[name], err = readProcCPU(pid); err != nil {
			return s, fmt.Errorf("%s: %w", name, err)
		}
	}
	return s, nil
}

// measure runs every attack: for each rate, for each round, each target in turn (the order
// rotating from round to round), a discarded warm-up then the measured attack.
func (env *benchEnv) measure(ctx context.Context, o benchOptions, progress io.Writer) ([]sample, error) {
	rec := newRecorder()
	procs := env.procs()
	var samples []sample
	for _, rate := range o.rates {
		for round := 1; round <= o.rounds; round++ {
			n := len(env.targets)
			for pos := range n {
				t := env.targets[(pos+round-1)%n]
				if err := env.alive(); err != nil {
					return samples, err
				}
				s := sample{Rate: rate, Round: round, Target: t.name, Position: pos}
				if o.warmup > 0 {
					w := attack(ctx, t, rate, o.warmup, rec)
					s.Warmup = &w
				}
				before, err := takeCPUSnapshot(procs)
				if err != nil {
					return samples, err
				}
				s.Start = before.at.UTC()
				s.Result = attack(ctx, t, rate, o.duration, rec)
				if err := ctx.Err(); err != nil {
					return samples, fmt.Errorf("interrupted: %w", err)
				}
				after, err := takeCPUSnapshot(procs)
				if err != nil {
					return samples, err
				}
				wall := after.at.Sub(before.at)
				s.CPU = make(map[string]procCPU, len(procs))
				for name := range procs {
					used := after.procs[name] - before.procs[name]
					pc := procCPU{CorePct: 100 * used.Seconds() / wall.Seconds()}
					if s.Result.Sent > 0 {
						pc.USPerReq = float64(used.Microseconds()) / float64(s.Result.Sent)
					}
					s.CPU[name] = pc
				}
				s.Busy, s.Steal = before.machine.busy(after.machine, wall)
				s.Other = s.Busy * float64(after.machine.cpus)
				for _, pc := range s.CPU {
					s.Other -= pc.CorePct
				}
				s.Other = max(s.Other, 0)
				s.Mem = map[string]memKB{}
				for name, pid := range procs {
					if name == "herdbench" {
						continue
					}
					if m, err := readMem(pid); err == nil {
						s.Mem[name] = m
					}
				}
				samples = append(samples, s)
				fmt.Fprintln(progress, progressLine(o, s))
			}
		}
	}
	return samples, nil
}

func progressLine(o benchOptions, s sample) string {
	r := s.Result
	line := fmt.Sprintf("%5d req/s round %d/%d %-12s sent %6d  2xx %s  p50 %s  p99 %s  max %s  achieved %.1f/s  machine busy %.0f%% (others %.0f%% of a CPU)",
		s.Rate, s.Round, o.rounds, s.Target, r.Sent, fmtSuccess(r.OK, r.Sent), fmtMs(r.Latency.P50), fmtMs(r.Latency.P99),
		fmtMs(r.Latency.Max), r.Rate, s.Busy, s.Other)
	if c, ok := s.CPU[s.Target]; ok {
		line += fmt.Sprintf("  %s CPU %.0f µs/req", s.Target, c.USPerReq)
	}
	if m, ok := s.Mem[s.Target]; ok {
		line += fmt.Sprintf(" RSS %s", fmtMiB(m.RSS))
	}
	if len(r.Errors) > 0 {
		line += fmt.Sprintf("  errors %v", r.Errors)
	}
	return line
}

// runProxyBench is `herdbench proxy`.
func runProxyBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseBenchFlags(args, stderr)
	if err != nil {
		return err
	}
	budget := o.budget()
	run, err := startBenchRun(ctx, o.fakeupstream, o.herd, o.targets, budget, "herdbench-")
	if err != nil {
		return err
	}
	defer run.close()
	ctx, fuPath, herdPath, tmpDir, machine := run.ctx, run.fuPath, run.herdPath, run.tmpDir, run.machine

	fmt.Fprintf(stderr, "herdbench: %d attacks of %s (+%s warm-up) each, about %s; every child is stopped within %s\n",
		o.attacks(), o.duration, o.warmup, time.Duration(o.attacks())*(o.duration+o.warmup), budget)
	env, err := startEnv(ctx, o, fuPath, herdPath, tmpDir, budget)
	if err != nil {
		return err
	}
	defer env.stop()
	fmt.Fprintf(stderr, "herdbench: upstream %s, reverseproxy %s, herd %s\n", env.upstream.addr, addrOf(env.rp), addrOf(env.herd))

	samples, err := env.measure(ctx, o, stderr)
	if err != nil {
		return err
	}
	rep := buildReport(o, machine, samples)
	rep.Command = commandLine("herdbench proxy", args)
	rep.ExpectedUpstreamRequests = uint64(env.probes)
	for _, s := range samples {
		rep.ExpectedUpstreamRequests += s.Result.Sent
		if s.Warmup != nil {
			rep.ExpectedUpstreamRequests += s.Warmup.Sent
		}
	}
	if stats, err := env.upstreamStats(ctx); err != nil {
		fmt.Fprintln(stderr, "herdbench: upstream stats:", err)
	} else {
		rep.UpstreamStats = stats
	}
	if env.herd != nil {
		rep.HerdLogLines = env.herd.log.Lines()
	}
	if err := env.stop(); err != nil {
		fmt.Fprintln(stderr, "herdbench: warning: a server did not stop cleanly:", err)
	}

	if err := writeMarkdown(stdout, rep); err != nil {
		return err
	}
	if o.jsonPath != "" {
		if err := writeJSON(o.jsonPath, rep); err != nil {
			return err
		}
		fmt.Fprintln(stderr, "herdbench: raw numbers written to", o.jsonPath)
	}
	return nil
}

func addrOf(c *child) string {
	if c == nil {
		return "(not started)"
	}
	return c.addr
}

// commandLine is the command a report says it came from: sub (e.g. "herdbench proxy") and
// args, unless $HERDBENCH_COMMAND names the one a script ran (scripts/bench-proxy.sh), which is
// what a reader should paste to measure again.
func commandLine(sub string, args []string) string {
	if c := os.Getenv("HERDBENCH_COMMAND"); c != "" {
		return c
	}
	return sub + " " + shellJoin(args)
}

// writeJSON writes v, indented, to path: the raw numbers behind a report.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// shellJoin quotes args for a shell, for showing the command line.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@%+", r))
		}) < 0 {
			out[i] = a
		} else {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}
