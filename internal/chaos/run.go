package chaos

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// Options are a run's settings (herd-chaos run's flags).
type Options struct {
	Herd      string        // the herd binary; "" builds ./cmd/herd into Out
	Race      bool          // build herd with the race detector (when building it)
	Nodes     int           // herd processes
	Time      time.Duration // how long the workload runs
	Nemeses   []string      // fault kinds to schedule (none: a run without faults)
	Mode      string        // fast, strict or redis
	Redis     string        // redis mode's setup: single, cluster or sentinel (RedisSetups); default single
	RPM       int64         // the main deployment's rpm; the others get half
	TPM       int64         // tpm of the token-limited deployments (0: rpm x 30)
	Demand    float64       // offered load as a multiple of the limits
	Seed      int64         // fixes the fault schedule and the workload's choices
	Out       string        // run directory (created)
	ClockSkew time.Duration // the clock nemesis skews a node by up to this much either way
	Provider  string        // every deployment's provider (Providers): openai (default) or anthropic, translated by herd
	Log       *slog.Logger  // progress
}

// Modes.
const (
	ModeFast   = "fast"
	ModeStrict = "strict"
	ModeRedis  = "redis"
)

// Providers the chaos suite's deployments can be: the fake upstream speaks both.
var Providers = []string{"openai", "anthropic"}

// deploymentParams are litellm_params for deployment id of o.Provider on the fake upstream
// at base (http://host:port).
func (o *Options) deploymentParams(id, base string, rpm int64) map[string]any {
	if o.Provider == "anthropic" {
		return map[string]any{"model": "anthropic/" + id, "api_base": base, "api_key": "sk-chaos-upstream", "rpm": rpm}
	}
	return map[string]any{"model": "openai/" + id, "api_base": base + "/v1", "api_key": "sk-chaos-upstream", "rpm": rpm}
}

// ErrNotRoot: the suite creates network namespaces and packet filters, which needs root.
var ErrNotRoot = errors.New("herd-chaos run needs root: it creates network namespaces, veth pairs and iptables rules (try sudo)")

// Bound parameters written into run.json (see RunInfo).
const (
	propagationAllowance = 50 * time.Millisecond
	repairTime           = 35 * time.Second // memberlist's LAN push-pull every 30 s, plus a rejoin
	convergeWithin       = 30 * time.Second
	managedPrefix        = "cfg-"
	upstreamPort         = 8080
	procsPerNode         = 32
	configProcs          = 3
)

// Validate checks o and fills defaults.
func (o *Options) Validate() error {
	if o.Nodes < 1 || o.Nodes > 9 {
		return fmt.Errorf("--nodes %d: between 1 and 9", o.Nodes)
	}
	if o.Time < 10*time.Second {
		return fmt.Errorf("--time %s: at least 10s", o.Time)
	}
	switch o.Mode {
	case ModeFast, ModeStrict, ModeRedis:
	default:
		return fmt.Errorf("--mode %q: fast, strict or redis", o.Mode)
	}
	// Redis keeps usage in redis mode, and under strict rights with --redis.
	switch {
	case o.Mode == ModeFast && o.Redis != "":
		return fmt.Errorf("--redis %s needs --mode redis or strict", o.Redis)
	case o.Mode == ModeRedis && o.Redis == "":
		o.Redis = RedisSingle
	case o.Redis != "" && !slices.Contains(RedisSetups, o.Redis):
		return fmt.Errorf("--redis %q: %s", o.Redis, strings.Join(RedisSetups, ", "))
	}
	if o.Provider == "" {
		o.Provider = "openai"
	}
	if !slices.Contains(Providers, o.Provider) {
		return fmt.Errorf("--provider %q: %s", o.Provider, strings.Join(Providers, ", "))
	}
	if o.RPM < 2 || o.Demand <= 0 {
		return fmt.Errorf("--rpm must be at least 2 and --demand above 0")
	}
	if o.TPM == 0 {
		o.TPM = o.RPM * 30
	}
	for _, k := range o.Nemeses {
		if !slices.Contains(AllNemeses, k) {
			return fmt.Errorf("--nemesis %q: one of %s, all or none", k, strings.Join(AllNemeses, ", "))
		}
		if redisNemesis(k) && o.Redis == "" {
			return fmt.Errorf("--nemesis %s needs a Redis: --mode redis, or --mode strict --redis", k)
		}
	}
	if slices.Contains(o.Nemeses, KindClock) && o.ClockSkew < time.Second {
		return fmt.Errorf("--clock-skew %s: at least 1s for the clock nemesis", o.ClockSkew)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// ParseNemeses reads --nemesis: a comma list, "all" (every kind the run has: Redis's only
// withRedis) or "none".
func ParseNemeses(s string, withRedis bool) []string {
	switch s {
	case "", "none":
		return nil
	case "all":
		var out []string
		for _, k := range AllNemeses {
			if !redisNemesis(k) || withRedis {
				out = append(out, k)
			}
		}
		return out
	}
	return strings.Split(s, ",")
}

// deployments are the chat workload's: group alpha has two (one tpm-limited), beta one.
func (o *Options) deployments() []DeploymentInfo {
	half := max(1, o.RPM/2)
	return []DeploymentInfo{
		{ID: "alpha-1", Group: "alpha", RPM: o.RPM},
		{ID: "alpha-2", Group: "alpha", RPM: half, TPM: o.TPM},
		{ID: "beta-1", Group: "beta", RPM: half, TPM: o.TPM / 2},
	}
}

// Execute runs the chaos run o describes and analyses it. An error means the run could not be
// carried out (exit 2); otherwise the results carry the verdict.
func Execute(ctx context.Context, o Options) (*Results, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found: install iproute2 and iptables", tool)
		}
	}
	if o.Redis != "" {
		if _, err := exec.LookPath("redis-server"); err != nil {
			return nil, errors.New("a run with Redis needs redis-server (apt-get install redis-server)")
		}
		if _, err := exec.LookPath("redis-cli"); err != nil && o.Redis != RedisSingle {
			return nil, fmt.Errorf("--redis %s needs redis-cli (apt-get install redis-tools)", o.Redis)
		}
	}
	if err := CleanStale(); err != nil {
		o.Log.Warn("removing an earlier run's leftovers", "err", err)
	}
	// A run directory holds one run: old logs, raft data or clock offsets would be read as this one's.
	if entries, err := os.ReadDir(o.Out); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("--out %s is not empty: give each run a directory of its own", o.Out)
	}
	for _, d := range []string{NodesDir, "data", "clock"} {
		if err := os.MkdirAll(filepath.Join(o.Out, d), 0o755); err != nil {
			return nil, err
		}
	}
	herd, err := o.herdBinary(ctx)
	if err != nil {
		return nil, err
	}
	r := &runner{o: o, herd: herd}
	defer func() { _ = r.close() }()
	if err := r.setUp(ctx); err != nil {
		return nil, err
	}
	if err := r.execute(ctx); err != nil {
		return nil, err
	}
	if err := r.close(); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		// Cut short: the config never had its time to converge, and the run is not what was
		// asked for. What was recorded stays for herd-chaos analyze.
		return nil, fmt.Errorf("interrupted; what was recorded is in %s (herd-chaos analyze checks it)", o.Out)
	}
	return Analyze(o.Out)
}

// herdBinary returns o.Herd, or builds ./cmd/herd into the run directory.
func (o *Options) herdBinary(ctx context.Context) (string, error) {
	if o.Herd != "" {
		return filepath.Abs(o.Herd)
	}
	out, err := filepath.Abs(filepath.Join(o.Out, "herd"))
	if err != nil {
		return "", err
	}
	args := []string{"build", "-o", out}
	if o.Race {
		args = append(args, "-race")
	}
	o.Log.Info("building herd", "race", o.Race, "out", out)
	cmd := exec.CommandContext(ctx, "go", append(args, "github.com/herd-proxy/herd/cmd/herd")...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/herd (run herd-chaos inside herd's repository, or pass --herd): %v: %s", err, msg)
	}
	return out, nil
}

// runner is one run in progress.
type runner struct {
	o     Options
	herd  string
	key   string // the nodes' master key
	ckey  string // the cluster key: gossip and the raft port are encrypted and authenticated, as a user must run them
	net   *Net
	nodes []*node
	redis *redisSetup
	up    *http.Server
	arr   *arrivals
	rec   *recorder
	cli   *client
	info  RunInfo

	closeOnce sync.Once
	closeErr  error
}

// setUp creates the network, starts the upstream (and redis-server), writes the config and
// starts the nodes, and waits until they form one cluster.
func (r *runner) setUp(ctx context.Context) error {
	o := r.o
	names := make([]string, o.Nodes)
	for i := range names {
		names[i] = fmt.Sprintf("n%d", i+1)
	}
	var err error
	if r.net, err = NewNet(ctx, names); err != nil {
		return err
	}
	r.key = "sk-chaos-" + randomHex(12)
	ck := make([]byte, 32)
	_, _ = rand.Read(ck)
	r.ckey = base64.StdEncoding.EncodeToString(ck)
	r.arr, err = newArrivals(filepath.Join(o.Out, UpstreamFile))
	if err != nil {
		return err
	}
	ln, err := ListenIn(r.net.Ctl, fmt.Sprintf("%s:%d", ctlHost, upstreamPort))
	if err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	up := fakeupstream.New(fakeupstream.Options{Latency: 10 * time.Millisecond, Jitter: 40 * time.Millisecond,
		ChunkDelay: 5 * time.Millisecond, OnArrival: r.arr.add})
	r.up = &http.Server{Handler: up, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.up.Serve(ln) }()

	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	if o.Redis != "" {
		r.redis = newRedisSetup(o.Redis, r.net.Ctl, filepath.Join(o.Out, NodesDir), redisKeys(o.deployments()), o.Log)
		o.Log.Info("starting Redis", "setup", o.Redis)
		if err := r.redis.start(ctx); err != nil {
			return err
		}
		env = append(env, r.redis.env()...)
	}
	cfgPath := filepath.Join(o.Out, "config.yaml")
	if err := os.WriteFile(cfgPath, r.config(), 0o600); err != nil {
		return err
	}
	for i := range names {
		nd := newNode(o.Out, r.herd, cfgPath, i+1, names, r.net, env)
		r.nodes = append(r.nodes, nd)
	}
	r.info = RunInfo{Seed: o.Seed, Mode: o.Mode, Redis: o.Redis, Provider: o.Provider, Nemeses: o.Nemeses, Duration: o.Time, Demand: o.Demand, ClockSkew: o.ClockSkew,
		Deployments: o.deployments(), ManagedPrefix: managedPrefix, Propagation: propagationAllowance,
		Repair: repairTime, ConvergeWithin: convergeWithin, HerdVersion: herdVersion(r.herd)}
	addrs := map[string]string{}
	for _, nd := range r.nodes {
		r.info.Nodes = append(r.info.Nodes, NodeInfo{Name: nd.name, Addr: nd.addr})
		addrs[nd.name] = nd.addr
	}
	upBase := fmt.Sprintf("http://%s:%d", ctlHost, upstreamPort)
	start := time.Now()
	if r.rec, err = newRecorder(filepath.Join(o.Out, HistoryFile), start); err != nil {
		return err
	}
	r.cli = newClient(&r.o, r.net.Ctl, r.key, names, addrs, upBase, managedPrefix, r.rec)
	for _, nd := range r.nodes {
		nd.onCrash = func(n *node, how string) {
			r.rec.add(Op{Type: Info, F: FExit, Process: NemesisProcess, Node: n.name, Value: Value{Exit: how}})
		}
		if err := nd.start(); err != nil {
			return err
		}
	}
	o.Log.Info("nodes started; waiting for one cluster with a raft leader", "nodes", o.Nodes)
	if err := r.waitFormed(ctx, 90*time.Second); err != nil {
		return err
	}
	if o.Mode == ModeStrict {
		if log, err := os.ReadFile(r.nodes[0].logPath); err == nil && strings.Contains(string(log), "key=router_settings.cluster_limit_mode") {
			o.Log.Warn("this herd does not know router_settings.cluster_limit_mode: it runs in fast mode, and is judged against strict mode's bound (exactly the limit)")
		}
	}
	return nil
}

// waitFormed waits until every node sees every node alive, a raft leader and config version 1.
func (r *runner) waitFormed(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for {
		ready := 0
		for _, nd := range r.nodes {
			cs, _, err := r.cli.status(ctx, nd.name)
			if err != nil {
				last = nd.name + ": " + err.Error()
				continue
			}
			alive := 0
			for _, m := range cs.Members {
				if m.Status == "alive" {
					alive++
				}
			}
			if alive == len(r.nodes) && cs.Leader != "" && cs.Served >= 1 {
				ready++
			} else {
				last = fmt.Sprintf("%s: %d of %d members alive, leader %q, served config version %d", nd.name, alive, len(r.nodes), cs.Leader, cs.Served)
			}
		}
		if ready == len(r.nodes) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the nodes did not form one cluster within %s (%s); see %s", within, last, filepath.Join(r.o.Out, NodesDir))
		}
		if !wait(ctx, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// execute runs the workload and the nemesis for o.Time, heals, and waits for the config to
// converge. History time 0 is when the workload starts.
func (r *runner) execute(ctx context.Context) error {
	o := r.o
	start := time.Now()
	r.rec.restart(start)
	r.info.Start = start.UnixNano()
	if err := writeJSON(filepath.Join(o.Out, RunFile), r.info); err != nil {
		return err
	}
	o.Log.Info("run started", "seed", o.Seed, "mode", o.Mode, "nodes", o.Nodes, "time", o.Time, "nemesis", strings.Join(o.Nemeses, ","))
	wctx, cancel := context.WithTimeout(ctx, o.Time)
	defer cancel()
	rng := mrand.New(mrand.NewPCG(uint64(o.Seed), 1))
	nem := &nemesis{kinds: o.Nemeses, nodes: r.nodes, rng: mrand.New(mrand.NewPCG(uint64(o.Seed), 2)), rec: r.rec,
		cli: r.cli, clockSkew: o.ClockSkew, redis: r.redis}
	var groups []string
	var weights []float64
	var total float64
	for _, d := range r.info.Deployments {
		if i := slices.Index(groups, d.Group); i >= 0 {
			weights[i] += float64(d.RPM)
		} else {
			groups, weights = append(groups, d.Group), append(weights, float64(d.RPM))
		}
		total += float64(d.RPM)
	}
	rate := o.Demand * total / 60
	var wg sync.WaitGroup
	var nemErr error
	wg.Add(3)
	go func() { defer wg.Done(); r.cli.chatLoad(wctx, rng, rate, groups, weights, procsPerNode) }()
	go func() { defer wg.Done(); r.cli.configLoad(wctx, uint64(o.Seed), configProcs) }()
	go func() {
		defer wg.Done()
		if nemErr = nem.run(wctx); nemErr != nil {
			cancel() // a run whose faults cannot be injected as scheduled is not worth finishing
		}
	}()
	flushDone := make(chan struct{})
	go r.flushEvery(flushDone)
	wg.Wait()
	if nemErr != nil {
		close(flushDone)
		return nemErr
	}
	// The final heal: everything back, then every node must serve one config version.
	if err := nem.heal(context.WithoutCancel(ctx)); err != nil {
		close(flushDone)
		return err
	}
	for _, nd := range r.nodes {
		if !nd.running() {
			o.Log.Warn("a node is down at the final heal; restarting it", "node", nd.name)
			if err := nd.start(); err != nil {
				close(flushDone)
				return err
			}
		}
	}
	o.Log.Info("workload done; waiting for every node to serve one config version", "within", convergeWithin,
		"chat_requests", r.cli.chatCount.Load(), "skipped_busy", r.cli.skipped.Load())
	if !r.cli.converge(ctx, convergeWithin+10*time.Second) {
		o.Log.Warn("the nodes did not converge on one config version")
	}
	close(flushDone)
	return nil
}

func (r *runner) flushEvery(done <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			_ = r.rec.flush()
			_ = r.arr.flush()
		}
	}
}

// close stops everything the run started and removes its network; safe to call twice. It
// returns what went wrong writing the history or the upstream log: a run with torn records
// cannot be judged.
func (r *runner) close() error {
	r.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for _, nd := range r.nodes {
			wg.Add(1)
			go func() { defer wg.Done(); _ = nd.stop(ctx) }()
		}
		wg.Wait()
		if r.redis != nil {
			r.redis.stop(ctx)
		}
		if r.up != nil {
			_ = r.up.Close()
		}
		if r.rec != nil {
			r.closeErr = errors.Join(r.closeErr, r.rec.close())
		}
		if r.arr != nil {
			r.closeErr = errors.Join(r.closeErr, r.arr.close())
		}
		if r.net != nil {
			if err := r.net.Close(); err != nil {
				r.o.Log.Warn("removing the run's namespaces", "err", err)
			}
		}
	})
	return r.closeErr
}

// config is the nodes' config.yaml: the chat deployments against the fake upstream, a master
// key, a cluster key, and the mode's router settings.
func (r *runner) config() []byte {
	up := fmt.Sprintf("http://%s:%d", ctlHost, upstreamPort)
	var models []map[string]any
	for _, d := range r.o.deployments() {
		params := r.o.deploymentParams(d.ID, up, d.RPM)
		if d.TPM > 0 {
			params["tpm"] = d.TPM
		}
		models = append(models, map[string]any{"model_name": d.Group, "litellm_params": params, "model_info": map[string]any{"id": d.ID}})
	}
	rs := map[string]any{"num_retries": 2}
	switch r.o.Mode {
	case ModeStrict:
		rs["cluster_limit_mode"] = "strict"
	case ModeFast:
		rs["cluster_limit_mode"] = "fast"
	}
	// Redis mode is a config that names a Redis and no cluster_limit_mode, as LiteLLM's do.
	if r.o.Redis != "" {
		setup := r.redis
		if setup == nil { // the config alone (tests)
			setup = newRedisSetup(r.o.Redis, "", "", nil, nil)
		}
		maps.Copy(rs, setup.routerSettings())
	}
	cfg := map[string]any{
		"model_list":       models,
		"router_settings":  rs,
		"general_settings": map[string]any{"master_key": r.key},
		"cluster_settings": map[string]any{"cluster_key": r.ckey},
	}
	out, _ := yaml.Marshal(cfg)
	return append([]byte("# written by herd-chaos for one run\n"), out...)
}

// redisKeys are the Redis keys of deps' windows, as herd names them (state/redis: the default
// prefix, the deployment id as the hash tag).
func redisKeys(deps []DeploymentInfo) []string {
	var keys []string
	for _, d := range deps {
		keys = append(keys, "herd:{"+d.ID+"}:w")
	}
	return keys
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// herdVersion asks the binary for its version.
func herdVersion(herd string) string {
	out, err := exec.Command(herd, "--version").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
