// Command herd is an LLM load-balancing proxy: it reads LiteLLM's proxy config.yaml and serves
// the OpenAI API, spreading each model group over its deployments.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/herd-proxy/herd/cluster"
	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/rawconn"
	"github.com/herd-proxy/herd/proxy"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	// Before anything starts, as it may execute herd again (the same process, the same
	// arguments); bad flags are left for run to report.
	if o, err := parseFlags(os.Args[1:], os.Getenv, io.Discard); err == nil && !o.showVersion {
		if err := applyTimerSlack(o.timerSlack); err != nil {
			slog.New(slog.NewTextHandler(os.Stderr, nil)).Warn("timer slack not set: the Go runtime's idle polling costs more CPU",
				"key", "--timer-slack", "want", o.timerSlack, "err", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "herd:", err)
			os.Exit(1)
		}
	}
}

// options are herd's command-line settings.
type options struct {
	configPath   string
	host         string
	port         int
	drainTimeout time.Duration
	pprofAddr    string
	timerSlack   time.Duration // every thread's timer slack (timerslack_linux.go); 0 keeps the inherited
	rawSockets   bool          // client and upstream connections make raw system calls (internal/rawconn)
	showVersion  bool
	cluster      clusterFlags
	raft         raftFlags
}

const usage = `herd: an LLM load-balancing proxy that reads LiteLLM's config.yaml and speaks the OpenAI API.

Usage:
  herd [--config FILE] [--host 0.0.0.0] [--port 4000]
  herd keygen          print a new cluster key (cluster_settings.cluster_key)

With no --config (and no HERD_CONFIG), herd serves a built-in demo config: the model group
demo-model on two mock deployments, so you can try it with no upstream.

Flags:
`

// defaultTimerSlack is --timer-slack's default: keep the inherited slack. 1 ms cuts a lightly
// loaded herd's CPU by 6-14 %, but cost a saturated one 10-20 % more CPU per stream and 7-10 %
// fewer streams a second in one run (docs/architecture.md, "Timer slack"), so it is opt-in.
const defaultTimerSlack = 0

// parseFlags reads args, with env (HERD_CONFIG, PORT, HOST, HERD_DRAIN_TIMEOUT, HERD_TIMER_SLACK,
// HERD_RAW_SOCKETS) as defaults.
func parseFlags(args []string, getenv func(string) string, out io.Writer) (options, error) {
	o := options{host: "0.0.0.0", port: 4000, drainTimeout: 30 * time.Second, timerSlack: defaultTimerSlack, rawSockets: true, configPath: getenv("HERD_CONFIG")}
	o.raft.bootstrapExpect = -1
	if h := getenv("HOST"); h != "" {
		o.host = h
	}
	if p := getenv("PORT"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 {
			return o, fmt.Errorf("PORT=%q: not a port number", p)
		}
		o.port = n
	}
	if d := getenv("HERD_DRAIN_TIMEOUT"); d != "" {
		v, err := time.ParseDuration(d)
		if err != nil {
			return o, fmt.Errorf("HERD_DRAIN_TIMEOUT=%q: %v", d, err)
		}
		o.drainTimeout = v
	}
	if d := getenv("HERD_TIMER_SLACK"); d != "" {
		v, err := time.ParseDuration(d)
		if err != nil || v < 0 {
			return o, fmt.Errorf("HERD_TIMER_SLACK=%q: want a duration of 0 or more, such as 1ms", d)
		}
		o.timerSlack = v
	}
	if v := getenv("HERD_RAW_SOCKETS"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("HERD_RAW_SOCKETS=%q: want true or false", v)
		}
		o.rawSockets = b
	}
	fs := flag.NewFlagSet("herd", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.configPath, "config", o.configPath, "LiteLLM proxy config.yaml (env HERD_CONFIG); none = built-in demo")
	fs.StringVar(&o.host, "host", o.host, "address to listen on (env HOST)")
	fs.IntVar(&o.port, "port", o.port, "port to listen on (env PORT)")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", o.drainTimeout, "on SIGTERM, how long in-flight requests and streams may finish (env HERD_DRAIN_TIMEOUT)")
	fs.StringVar(&o.cluster.nodeName, "node-name", "", "this node's name in the cluster, sent as x-herd-node (default: cluster_settings.node_name, else the hostname)")
	fs.StringVar(&o.cluster.gossipAddr, "gossip-addr", "", "HOST:PORT to bind gossip (UDP+TCP) to (default: cluster_settings.gossip_addr, else 0.0.0.0:7946 with seeds or an advertise address, 127.0.0.1:7946 without)")
	fs.StringVar(&o.cluster.advertiseAddr, "advertise-addr", "", "HOST:PORT peers use to reach this node (default: cluster_settings.advertise_addr, else derived)")
	fs.StringVar(&o.cluster.join, "join", "", "seeds HOST:PORT[,HOST:PORT...]; a DNS name joins every address it resolves to (env HERD_JOIN; default cluster_settings.join)")
	fs.BoolVar(&o.cluster.insecure, "cluster-insecure", false, "allow cluster addresses beyond loopback without a cluster key (default: cluster_settings.insecure); logged as a WARN")
	fs.StringVar(&o.raft.raftAddr, "raft-addr", "", "HOST:PORT to bind raft (TCP; config changes) to (default: cluster_settings.raft_addr, else the gossip host and port + 1)")
	fs.StringVar(&o.raft.dataDir, "data-dir", "", "directory for the raft log and snapshots (default: cluster_settings.data_dir; none = config changes are kept in memory only)")
	fs.IntVar(&o.raft.bootstrapExpect, "bootstrap-expect", -1, "how many nodes bootstrap raft together once gossip shows them all (default: cluster_settings.bootstrap_expect; 0 = a node without seeds starts alone)")
	fs.StringVar(&o.pprofAddr, "pprof-addr", getenv("HERD_PPROF_ADDR"), "serve Go's net/http/pprof on this loopback HOST:PORT (env HERD_PPROF_ADDR); off when empty")
	fs.DurationVar(&o.timerSlack, "timer-slack", o.timerSlack, "how late the kernel may wake herd's threads from a timed sleep, to batch wake-ups: 1ms cuts the Go runtime's idle polling, and herd's CPU while it has CPU to spare (Linux; herd executes itself once at start to apply it); 0 keeps the inherited slack (env HERD_TIMER_SLACK)")
	fs.BoolVar(&o.rawSockets, "raw-sockets", o.rawSockets, "client and upstream connections read and write with raw system calls, which the Go scheduler does not track: less CPU per stream; false gives the scheduler back its hand-offs, which may bring a saturated node's first event slightly earlier, for more CPU (env HERD_RAW_SOCKETS)")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	if o.timerSlack < 0 {
		return o, fmt.Errorf("--timer-slack %s: must not be negative", o.timerSlack)
	}
	if o.pprofAddr != "" {
		// Profiles expose internals and cost CPU: never on a routable address.
		host, _, err := net.SplitHostPort(o.pprofAddr)
		if ip := net.ParseIP(host); err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
			return o, fmt.Errorf("--pprof-addr %q: must be a loopback HOST:PORT such as 127.0.0.1:6060", o.pprofAddr)
		}
	}
	return o, nil
}

// run is herd's whole life: parse flags, load config, serve until ctx ends, then drain.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 1 && args[0] == "keygen" {
		return keygen(stdout)
	}
	o, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	if o.showVersion {
		fmt.Fprintln(stdout, "herd", version)
		return nil
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	var (
		cfg *config.Config
		src []byte // the file as written: its model_list and router_settings seed the cluster's config
	)
	if o.configPath == "" {
		cfg, src = config.Demo(), config.DemoSource()
	} else {
		if src, err = config.ReadFile(o.configPath); err != nil {
			return err
		}
		if cfg, err = config.Parse(o.configPath, src, config.OSEnv{}, log); err != nil {
			return err
		}
	}
	static, fileDyn, err := config.Split(src)
	if err != nil {
		return fmt.Errorf("%s: %w", o.configPath, err)
	}
	log = newLogger(cfg, stderr)

	// Every node is a cluster member: gossip membership (and raft, below) from a seed list. A
	// node with no seeds is a cluster of one that others may join.
	ccfg, err := clusterConfig(o.cluster, cfg, getenv, log)
	if err != nil {
		return err
	}
	rc := raftConfig(o.raft, cfg.ClusterSettings, log)
	if err := checkExposure(ccfg, rc.BindAddr, o.cluster.insecure || cfg.ClusterSettings.Insecure, log); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	now, err := newClock(ctx, getenv, log)
	if err != nil {
		return err
	}
	rejected := newRejectCounter(reg, log, time.Now)
	ccfg.OnReject = rejected
	ccfg.Now = now // heartbeats carry the counters' clock, so peers see the offset that matters
	ccfg.Epoch = uint64(time.Now().UnixNano())
	shared, err := newSharedUsage(cfg, ccfg.NodeName, ccfg.Epoch, now, reg, log, rejected)
	if err != nil {
		return fmt.Errorf("%s: %w", o.configPath, err)
	}
	defer shared.close()
	peers, err := cluster.New(ccfg, shared.sync) // joins reachable seeds (and learns their counts) before serving
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	defer peers.Shutdown()
	shared.joined(peers)
	log.Info("cluster started", "node", ccfg.NodeName, "gossip_addr", peers.Addr(), "seeds", strings.Join(ccfg.Join, ","), "members", peers.NumAlive())

	registerClusterMetrics(reg, peers)
	// Config changes are ordered by raft; the file seeds the cluster's first config.
	// Runtime changes resolve only the os.environ/ names the file uses or admin_env_allow allows,
	// both where the admin API takes them and wherever raft applies them.
	adminEnv := config.NewAdminEnv(config.OSEnv{}, static, fileDyn, cfg.ClusterSettings.AdminEnvAllow)
	store := cluster.NewConfigStore(static, fileDyn, adminEnv, log)
	registerConfigMetrics(reg, store)
	var consensus atomic.Pointer[cluster.Raft]
	srv, err := proxy.New(proxy.Options{
		Config:          cfg,
		State:           shared.backend,
		Backend:         shared.name,
		BackendMode:     shared.mode,
		BackendHealth:   shared.health,
		Node:            ccfg.NodeName,
		Version:         version,
		Logger:          log,
		Registry:        reg,
		Members:         membership{peers},
		Admin:           configAdmin{store},
		AdminEnv:        adminEnv,
		Consensus:       consensusStatus(&consensus, store),
		Rights:          shared.rights,
		BackendNotReady: shared.notReady,
		// Hosts this file (or OPENAI_BASE_URL, AZURE_API_BASE, ...) names may be anything;
		// hosts from the admin API may not be link-local or cloud metadata addresses.
		Upstream:   config.NewUpstreamPolicy(cfg, config.OSEnv{}),
		RawSockets: o.rawSockets,
	})
	if err != nil {
		return fmt.Errorf("%s: %w", o.configPath, err)
	}
	defer srv.Close()
	store.OnChange(func(c *config.Config, version uint64) error {
		if err := srv.Apply(c, version); err != nil {
			log.Error("cluster config not applied", "config_version", version, "err", err)
			return err
		}
		shared.applied(c) // after Apply took the new deployments' counters
		log.Info("cluster config applied", "config_version", version, "deployments", len(c.ModelList))
		return nil
	})
	warnNoBootstrap(rc, ccfg.Join, log)
	if rc.DataDir == "" {
		log.Warn("no --data-dir: config changes are kept in memory and lost if every node restarts", "key", "cluster_settings.data_dir")
	}
	raftNode, err := peers.StartRaft(rc, store.FSM())
	if err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	consensus.Store(raftNode)
	store.Attach(raftNode)
	if shared.raft != nil {
		shared.raft(raftNode, store)
	}
	defer raftNode.Shutdown()

	if o.pprofAddr != "" {
		stopPprof, err := servePprof(o.pprofAddr, log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(o.host, strconv.Itoa(o.port)))
	if err != nil {
		return err
	}
	warnOpenHTTP(ln.Addr(), cfg.GeneralSettings.MasterKey != "", log)
	hs := &http.Server{
		Handler: srv,
		// A client must send its headers within request_header_timeout (then the connection is
		// closed); its body has request_body_timeout, which the handler enforces.
		ReadHeaderTimeout: cfg.GeneralSettings.RequestHeaderTimeout.Duration(),
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if o.configPath == "" {
		// Plain text, not a log record, so the curl can be copied and pasted as it is.
		fmt.Fprintln(stderr, "herd: no --config given, serving the built-in demo (model group demo-model on two mock deployments). Try: "+
			demoCurl(ln.Addr(), cfg.GeneralSettings.MasterKey != ""))
	}

	slack := "unknown"
	if d, err := currentTimerSlack(); err == nil {
		slack = d.String()
	}
	log.Info("herd listening", "addr", ln.Addr().String(), "node", ccfg.NodeName, "version", version,
		"config", o.configPath, "deployments", len(cfg.ModelList), "state_backend", shared.name, "timer_slack", slack,
		"raw_sockets", o.rawSockets)
	served := make(chan error, 1)
	if o.rawSockets {
		ln = rawconn.Listen(ln)
	}
	go func() { served <- hs.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}

	// Stop accepting, let in-flight requests and streams finish, then cut what is left.
	srv.Drain()
	log.Info("shutting down: draining in-flight requests", "drain_timeout", o.drainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), o.drainTimeout)
	defer cancel()
	if err := hs.Shutdown(dctx); err != nil {
		log.Warn("drain timeout passed: closing remaining connections", "err", err)
		_ = hs.Close()
	}
	// Hand raft leadership over, send the last requests' counts, then leave: peers keep the
	// counts until they age out.
	if err := raftNode.Shutdown(); err != nil {
		log.Warn("stopping raft", "err", err)
	}
	shared.flush()
	if err := peers.Leave(5 * time.Second); err != nil {
		log.Warn("leaving the cluster", "err", err)
	}
	log.Info("herd stopped")
	return nil
}

// latencyTTL is how long latency samples count for latency-based routing
// (routing_strategy_args.ttl; 0 lets the backend use LiteLLM's default of an hour).
func latencyTTL(cfg *config.Config) time.Duration {
	if ttl := cfg.RouterSettings.RoutingStrategyArgs.TTL; ttl != nil {
		return ttl.Duration()
	}
	return 0
}

// servePprof serves net/http/pprof on its own listener, apart from the API.
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("pprof listening", "addr", ln.Addr().String())
	return func() { _ = srv.Close() }, nil
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{}
	if cfg.LiteLLMSettings.SetVerbose {
		opts.Level = slog.LevelDebug
	}
	if cfg.LiteLLMSettings.JSONLogs {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// warnOpenHTTP says so when the API is reachable beyond loopback with no master key: anyone
// who can reach the port can then spend every upstream's quota.
func warnOpenHTTP(addr net.Addr, hasKey bool, log *slog.Logger) {
	ta, ok := addr.(*net.TCPAddr)
	if hasKey || !ok || ta.IP.IsLoopback() {
		return
	}
	log.Warn("the API listens beyond loopback with no master key: anyone who reaches it can call every deployment; set general_settings.master_key (or LITELLM_MASTER_KEY), or --host 127.0.0.1",
		"addr", addr.String(), "key", "general_settings.master_key")
}

func demoCurl(addr net.Addr, needKey bool) string {
	port := "4000"
	if ta, ok := addr.(*net.TCPAddr); ok {
		port = strconv.Itoa(ta.Port)
	}
	auth := ""
	if needKey {
		auth = ` -H "Authorization: Bearer $LITELLM_MASTER_KEY"`
	}
	return `curl -s http://localhost:` + port + `/v1/chat/completions -H 'Content-Type: application/json'` + auth +
		` -d '{"model":"demo-model","messages":[{"role":"user","content":"Hello"}]}'`
}
