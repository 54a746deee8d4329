// Package proxy is herd's HTTP face: OpenAI-compatible handlers on echo, auth, streaming,
// OpenAI-shaped errors, LiteLLM's headers, health and model listing.
package proxy

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/proxy/provider"
	"github.com/herd-proxy/herd/routing"
	"github.com/herd-proxy/herd/state"
)

// Options configure a Server.
type Options struct {
	Config  *config.Config // the config to serve; required
	State   state.Backend  // shared-state backend; required
	Backend string         // the backend's name for readiness ("local", "gossip", "redis")
	// BackendMode reports the backend's current mode for readiness (state/redis: "redis" or
	// "degraded"); nil = always Backend.
	BackendMode func() string
	// BackendHealth reports the limit mode and whether the backend is degraded, for
	// /cluster/status; nil = fast mode, never degraded.
	BackendHealth func() BackendHealth
	Node          string               // this node's name, sent as x-herd-node
	Version       string               // herd's version, shown by readiness
	Logger        *slog.Logger         // nil = slog.Default()
	Registry      *prometheus.Registry // where metrics are registered and served from; nil = a new one
	Members       Membership           // the cluster this node belongs to, for /cluster/status; nil = alone
	Admin         ConfigAdmin          // runtime config changes (/model/new, ...); nil = not available
	// AdminEnv decides which os.environ/ names admin bodies may use, checked before Admin is
	// called; nil = Admin alone decides.
	AdminEnv *config.AdminEnv
	// BackendNotReady says why the state backend cannot admit yet (readiness answers 503 with
	// it); "" when it can. nil = always ready.
	BackendNotReady func() string
	// Rights reports a deployment's strict-mode rights on this node for /cluster/status;
	// nil, or false, when there are none to show.
	Rights func(id string) (RightsStatus, bool)
	// Consensus reports the config consensus for /cluster/status; nil = none.
	Consensus func() ConsensusStatus
	// Upstream decides which addresses deployments may reach (the admin API's api_base check
	// and every upstream connection); nil = built from Config with no fallback variables.
	Upstream *config.UpstreamPolicy
	// RawSockets makes upstream connections read and write with raw system calls
	// (internal/rawconn); the listener's are the caller's to wrap.
	RawSockets bool
}

// Server serves the OpenAI-compatible API for the current config.
type Server struct {
	echo          *echo.Echo
	snap          atomic.Pointer[snapshot]
	state         state.Backend
	cooldowns     *routing.Cooldowns // keyed by deployment ID; survives config changes
	pool          *provider.Pool
	metrics       *metrics
	key           keyChecker
	maxBody       int64
	maxResp       int64
	node          []string // x-herd-node value
	backend       string
	backendMode   func() string
	backendHealth func() BackendHealth
	history       *history // per-second counts for the dashboard (history.go)
	version       string
	log           *slog.Logger
	members       Membership
	configAdmin   ConfigAdmin
	adminEnv      *config.AdminEnv
	upstream      *config.UpstreamPolicy
	consensus     func() ConsensusStatus
	rights        func(id string) (RightsStatus, bool)
	notReady      func() string
	draining      atomic.Bool
	healths       sync.Map // deployment ID -> *health; survives config changes

	// Node-wide bounds, from general_settings at startup (see guard.go).
	allowedNets []netip.Prefix // allowed_ips; nil = any client
	bodyTimeout time.Duration  // request_body_timeout; 0 = none
	maxInFlight int64          // the parallel cap on LLM requests
	errShed     *apiError      // the 503 beyond it, built once
	inFlight    inFlight
	// max_inflight_request_mb in bytes, the 503 beyond it, and the bytes held now.
	maxBodyBytes  int64
	errBodyBudget *apiError
	bodyBytes     inFlight
}

// New builds a server for opts.Config.
func New(opts Options) (*Server, error) {
	if opts.Config == nil || opts.State == nil {
		return nil, fmt.Errorf("proxy: Config and State are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
		opts.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	gs := opts.Config.GeneralSettings
	if opts.Upstream == nil {
		opts.Upstream = config.NewUpstreamPolicy(opts.Config, config.MapEnv{})
	}
	s := &Server{
		cooldowns: routing.NewCooldowns(),
		state:     opts.State,
		pool: provider.NewPool(upstreamTLS(&opts.Config.LiteLLMSettings)).WithDialGuard(opts.Upstream).
			WithSettings(provider.Settings{MaxResponse: megabytes(gs.MaxResponseSizeMB, config.DefaultMaxResponseSizeMB),
				DropParams: opts.Config.LiteLLMSettings.DropParams}).WithRawSockets(opts.RawSockets),
		metrics:       newMetrics(opts.Registry),
		key:           newKeyChecker(gs.MasterKey.Reveal()),
		maxBody:       megabytes(gs.MaxRequestSizeMB, config.DefaultMaxRequestSizeMB),
		maxResp:       megabytes(gs.MaxResponseSizeMB, config.DefaultMaxResponseSizeMB),
		node:          []string{opts.Node},
		backend:       opts.Backend,
		backendMode:   opts.BackendMode,
		backendHealth: opts.BackendHealth,
		history:       newHistory(),
		members:       opts.Members,
		configAdmin:   opts.Admin,
		adminEnv:      opts.AdminEnv,
		upstream:      opts.Upstream,
		consensus:     opts.Consensus,
		rights:        opts.Rights,
		notReady:      opts.BackendNotReady,
		version:       opts.Version,
		log:           opts.Logger,
		allowedNets:   gs.AllowedNets,
		maxInFlight:   int64(gs.ParallelRequestLimit),
	}
	if s.maxInFlight <= 0 {
		s.maxInFlight = config.DefaultMaxParallelRequests
	}
	s.errShed = shedError(s.maxInFlight)
	s.maxBodyBytes = megabytes(gs.MaxInflightRequestMB, max(config.DefaultMaxInflightRequestMB, float64(s.maxBody>>20)))
	s.errBodyBudget = bodyBudgetError(s.maxBodyBytes)
	if gs.RequestBodyTimeout != nil {
		s.bodyTimeout = gs.RequestBodyTimeout.Duration()
	}
	if err := s.Apply(opts.Config, 0); err != nil {
		return nil, err
	}
	s.echo = s.routes(promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
	go s.history.run(s.metrics)
	return s, nil
}

func megabytes(v *float64, def float64) int64 {
	if v != nil {
		def = *v
	}
	return int64(def * (1 << 20))
}

// Apply swaps in cfg's deployments, routing and router settings; version is the cluster config
// version cfg was built from (0: the node's own file). In-flight requests finish on the snapshot
// they started with; counters and health are keyed by deployment ID and carry over.
func (s *Server) Apply(cfg *config.Config, version uint64) error {
	snap, err := s.newSnapshot(cfg)
	if err != nil {
		return err
	}
	snap.version = version
	s.snap.Store(snap)
	return nil
}

// ServeHTTP serves the API. allowed_ips applies to every route, the health probes included, as
// in LiteLLM: a probe comes from an address too (the kubelet's node), which must be allowed.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.allowedNets != nil {
		if addr, ok := s.clientAllowed(r); !ok {
			s.forbid(w, r, addr)
			return
		}
	}
	if s.bodyTimeout > 0 && r.Body != nil && r.Body != http.NoBody {
		s.limitBodyTime(w)
	}
	s.echo.ServeHTTP(w, r)
}

// Drain marks the server as shutting down: readiness turns 503 so load balancers stop sending.
func (s *Server) Drain() { s.draining.Store(true) }

// Close releases idle upstream connections and stops the dashboard's sampler.
func (s *Server) Close() {
	s.history.close()
	s.pool.CloseIdle()
}

func (s *Server) routes(metricsHandler http.Handler) *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler

	// Handlers are wrapped once here rather than with e.Use or route middleware, which echo
	// re-applies (allocating) on every request.
	guard := middleware.RecoverWithConfig(middleware.RecoverConfig{
		DisablePrintStack: true,
		LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
			s.log.Error("panic serving request", "path", c.Request().URL.Path, "err", err, "stack", string(stack))
			return err
		},
	})
	open := func(h echo.HandlerFunc) echo.HandlerFunc { return guard(h) }
	authed := func(h echo.HandlerFunc) echo.HandlerFunc { return guard(s.requireKey(h)) }

	for _, ep := range []provider.Endpoint{provider.ChatCompletions, provider.Completions, provider.Embeddings} {
		h := guard(withCallID(s.requireKey(s.limit(s.llm(ep)))))
		p := ep.Path()
		e.POST(p, h)
		e.POST("/v1"+p, h)
		e.POST("/engines/:model"+p, h)
		e.POST("/openai/deployments/:model"+p, h)
	}
	for _, p := range []string{"/v1/messages", "/anthropic/v1/messages"} {
		e.POST(p, authed(s.limit(s.llmAs(provider.ChatCompletions, formatMessages))))
	}
	for _, p := range []string{"/v1/responses", "/responses"} {
		e.POST(p, authed(s.limit(s.llmAs(provider.ChatCompletions, formatResponses))))
	}
	e.GET("/models", authed(s.models))
	e.GET("/v1/models", authed(s.models))
	e.GET("/models/*", authed(s.model)) // a wildcard: group names may contain '/'
	e.GET("/v1/models/*", authed(s.model))
	e.GET("/model/info", authed(s.modelInfo))
	e.GET("/v1/model/info", authed(s.modelInfo))
	e.GET("/health", authed(s.health))
	e.GET("/cluster/status", authed(s.clusterStatus))
	e.POST("/model/new", authed(s.admin(s.modelNew)))
	e.POST("/model/update", authed(s.admin(s.modelUpdate)))
	e.POST("/model/delete", authed(s.admin(s.modelDelete)))
	e.POST("/config/update", authed(s.admin(s.configUpdate)))
	e.GET("/health/liveliness", open(liveliness))
	e.GET("/health/liveness", open(liveliness))
	e.GET("/health/readiness", open(s.readiness))
	e.GET("/metrics", open(echo.WrapHandler(metricsHandler)))
	e.GET("/ui", open(uiPage)) // the dashboard: static, no data; it fetches /cluster/status with the key
	e.GET("/ui/", open(uiPage))
	e.GET("/ui/assets/:name", open(uiStatic))
	return e
}
