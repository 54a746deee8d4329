// Package config reads LiteLLM's proxy config.yaml (plus herd's own cluster_settings),
// resolves os.environ/ references, applies defaults and validates it into an immutable Config.
package config

import (
	"crypto/x509"
	"log/slog"
	"net/netip"
	"time"
)

// Config is one loaded and validated config file. Treat it as immutable once Load returns:
// a config change builds a new Config and swaps it in.
type Config struct {
	// File is the path the config was read from ("" for the built-in demo).
	File string `yaml:"-"`

	ModelList            []Deployment      `yaml:"model_list"`
	RouterSettings       RouterSettings    `yaml:"router_settings"`
	LiteLLMSettings      LiteLLMSettings   `yaml:"litellm_settings"`
	GeneralSettings      GeneralSettings   `yaml:"general_settings"`
	EnvironmentVariables map[string]string `yaml:"environment_variables"`
	ClusterSettings      ClusterSettings   `yaml:"cluster_settings"`

	// Warnings are the problems Load logged but did not stop on (unknown keys, fallbacks to
	// unknown groups, ...), each as "file:line: key: message", in file order. Kept so the admin
	// API and tests can show them; never holds a secret value.
	Warnings []string `yaml:"-" json:"-"`
}

// Deployment is one entry of model_list: a single upstream deployment serving a model group.
type Deployment struct {
	ModelName     string        `yaml:"model_name"`     // the group name clients send as "model"
	LiteLLMParams LiteLLMParams `yaml:"litellm_params"` // how to reach the upstream
	ModelInfo     ModelInfo     `yaml:"model_info"`     // metadata; model_info.id fixes the deployment ID
	RPM           *int64        `yaml:"rpm"`            // requests per minute; wins over litellm_params.rpm
	TPM           *int64        `yaml:"tpm"`            // tokens per minute; wins over litellm_params.tpm

	// Resolved by Load; never read from YAML.

	// ID is stable across nodes and restarts for the same config: model_info.id when set,
	// else a hash of the deployment's identity (group, model, api_base, api_version, and where
	// set Region, Project, Location, aws_role_name and aws_profile_name; never secrets).
	ID string `yaml:"-"`
	// Provider is the wire format: "openai" (also hosted_vllm, groq, mistral and the other
	// OpenAI-compatible prefixes of docs/providers.md), "azure", "anthropic", "gemini" (Google
	// AI Studio), "vertex_ai" (also vertex_ai_beta/), "bedrock", or "mock" (also any deployment
	// with mock_response set).
	Provider string `yaml:"-"`
	// UpstreamModel is litellm_params.model without its provider prefix: the model name sent
	// upstream, the Azure deployment name (azure), or the Bedrock model ID or ARN without
	// LiteLLM's converse/ or invoke/ route (bedrock). fireworks_ai names are completed to
	// accounts/fireworks/models/<name>, as LiteLLM sends them.
	UpstreamModel string `yaml:"-"`
	// APIBase is the effective base URL without a trailing slash: litellm_params.api_base, the
	// provider's base variable, else its default (docs/providers.md; https://api.openai.com/v1
	// for openai, https://{Location}-aiplatform.googleapis.com for vertex_ai,
	// https://bedrock-runtime.{Region}.amazonaws.com for bedrock); "" for mock. OpenAI-compatible
	// families get the path their chat API sits under (ollama's /v1, mistral's /v1) appended.
	APIBase string `yaml:"-"`
	// APIVersion is the effective Azure api-version (DefaultAzureAPIVersion when unset).
	APIVersion string `yaml:"-"`
	// Region is a bedrock deployment's AWS region, for SigV4 and the default endpoint:
	// aws_region_name, the region of an ARN model, AWS_REGION_NAME, AWS_REGION,
	// AWS_DEFAULT_REGION, else DefaultBedrockRegion (LiteLLM's). "" for other providers.
	Region string `yaml:"-"`
	// Project is a vertex_ai deployment's Google Cloud project, a URL path segment:
	// vertex_project, VERTEXAI_PROJECT, VERTEX_PROJECT, the credentials' project_id, else
	// GOOGLE_CLOUD_PROJECT (none is an error). "" for other providers.
	Project string `yaml:"-"`
	// Location is a vertex_ai deployment's region ("global" too), a URL path segment and part of
	// the default host: vertex_location, VERTEXAI_LOCATION, VERTEX_LOCATION, else
	// DefaultVertexLocation. "" for other providers.
	Location string `yaml:"-"`
	// Limits are the effective rpm/tpm (lookup order: deployment, litellm_params, model_info); 0 = unlimited.
	Limits Limits `yaml:"-"`
	// Timeout bounds a whole non-streaming call: litellm_params.timeout, else
	// router_settings.timeout, else litellm_settings.request_timeout, else DefaultTimeout.
	Timeout time.Duration `yaml:"-"`
	// StreamTimeout bounds the wait for a stream's headers and each gap between its events:
	// litellm_params.stream_timeout, else router_settings.stream_timeout, else Timeout.
	StreamTimeout time.Duration `yaml:"-"`
}

// Limits are a deployment's quotas per sliding 60-second window. Zero means unlimited.
type Limits struct {
	RPM int64
	TPM int64
}

// LiteLLMParams are the keys of a deployment's litellm_params that herd uses.
type LiteLLMParams struct {
	Model               string            `yaml:"model"`                 // "<provider>/<name>", e.g. azure/gpt-35 or openai/gpt-4o; a bare name means openai
	APIBase             string            `yaml:"api_base"`              // upstream base URL
	APIKey              Secret            `yaml:"api_key"`               // upstream credential; never logged or shown
	APIVersion          string            `yaml:"api_version"`           // Azure api-version query parameter
	RPM                 *int64            `yaml:"rpm"`                   // requests per minute
	TPM                 *int64            `yaml:"tpm"`                   // tokens per minute
	Timeout             *Seconds          `yaml:"timeout"`               // seconds for a non-streaming call
	StreamTimeout       *Seconds          `yaml:"stream_timeout"`        // seconds to first byte / between stream events
	MaxRetries          *int              `yaml:"max_retries"`           // accepted for compatibility; herd retries across deployments (router_settings.num_retries)
	Weight              *float64          `yaml:"weight"`                // simple-shuffle weight
	Order               *int              `yaml:"order"`                 // lower order is tried first
	MaxParallelRequests *int              `yaml:"max_parallel_requests"` // in-flight cap for this deployment
	MockResponse        *string           `yaml:"mock_response"`         // answer locally with this text; no upstream call
	Organization        string            `yaml:"organization"`          // OpenAI-Organization header
	ExtraHeaders        map[string]string `yaml:"extra_headers"`         // sent upstream with every request

	// Google Vertex AI (vertex_ai/); Deployment.Project and Location hold the resolved values.
	VertexProject     string `yaml:"vertex_project"`     // Google Cloud project; default VERTEXAI_PROJECT, VERTEX_PROJECT, the credentials' project_id, GOOGLE_CLOUD_PROJECT
	VertexLocation    string `yaml:"vertex_location"`    // region such as us-central1, or global; default VERTEXAI_LOCATION, VERTEX_LOCATION, else us-central1
	VertexCredentials Secret `yaml:"vertex_credentials"` // google-auth JSON (service account, ...) or the path of a file holding it; default VERTEXAI_CREDENTIALS, VERTEX_CREDENTIALS, GOOGLE_APPLICATION_CREDENTIALS, else application default credentials; never logged

	// AWS Bedrock (bedrock/); Deployment.Region holds the resolved region. With no credentials
	// set, the AWS default chain applies (environment, shared files, container or instance role).
	AWSRegionName             string `yaml:"aws_region_name"`              // region; default the model ARN's, AWS_REGION_NAME, AWS_REGION, AWS_DEFAULT_REGION, else us-west-2
	AWSAccessKeyID            Secret `yaml:"aws_access_key_id"`            // static credentials, with aws_secret_access_key; never logged
	AWSSecretAccessKey        Secret `yaml:"aws_secret_access_key"`        // the secret of aws_access_key_id; never logged
	AWSSessionToken           Secret `yaml:"aws_session_token"`            // session token of temporary aws_access_key_id credentials; never logged
	AWSRoleName               string `yaml:"aws_role_name"`                // ARN of a role to assume (with aws_web_identity_token: AssumeRoleWithWebIdentity)
	AWSSessionName            string `yaml:"aws_session_name"`             // role session name for aws_role_name; default chosen by the caller
	AWSProfileName            string `yaml:"aws_profile_name"`             // profile of the shared AWS config and credentials files
	AWSWebIdentityToken       Secret `yaml:"aws_web_identity_token"`       // OIDC token (the token itself) to assume aws_role_name with; never logged
	AWSBedrockRuntimeEndpoint string `yaml:"aws_bedrock_runtime_endpoint"` // endpoint URL in place of https://bedrock-runtime.{region}.amazonaws.com; api_base wins; default AWS_BEDROCK_RUNTIME_ENDPOINT
}

// ModelInfo is free-form metadata shown by /model/info; herd reads the typed keys.
type ModelInfo struct {
	ID             string         `yaml:"id"`               // fixes the deployment ID
	Mode           string         `yaml:"mode"`             // chat, completion, embedding
	BaseModel      string         `yaml:"base_model"`       // the underlying model, for cost and context lookups
	MaxInputTokens *int           `yaml:"max_input_tokens"` // context size used by pre-call checks
	RPM            *int64         `yaml:"rpm"`              // last in the rpm lookup order
	TPM            *int64         `yaml:"tpm"`              // last in the tpm lookup order
	Extra          map[string]any `yaml:",inline"`          // any other key, kept and shown as given
}

// RouterSettings configure how a model group is spread over its deployments.
type RouterSettings struct {
	RoutingStrategy        string                `yaml:"routing_strategy"`         // default simple-shuffle; see RoutingStrategies
	RoutingStrategyArgs    RoutingStrategyArgs   `yaml:"routing_strategy_args"`    // strategy tuning
	ModelGroupAlias        map[string]Alias      `yaml:"model_group_alias"`        // alias -> group, as a string or {model, hidden}
	NumRetries             *int                  `yaml:"num_retries"`              // retries on another deployment; default 0
	Timeout                *Seconds              `yaml:"timeout"`                  // default per-call timeout
	StreamTimeout          *Seconds              `yaml:"stream_timeout"`           // default stream timeout
	RetryAfter             *Seconds              `yaml:"retry_after"`              // minimum wait before a retry
	AllowedFails           *int                  `yaml:"allowed_fails"`            // failures before a cooldown
	CooldownTime           *Seconds              `yaml:"cooldown_time"`            // default 5 s
	DisableCooldowns       bool                  `yaml:"disable_cooldowns"`        // never cool a deployment down
	MaxCooldownTime        *Seconds              `yaml:"max_cooldown_time"`        // herd: longest cooldown an upstream's Retry-After can ask for; default 5 min
	Fallbacks              []map[string][]string `yaml:"fallbacks"`                // [{group: [fallback groups]}], "*" is the default
	ContextWindowFallbacks []map[string][]string `yaml:"context_window_fallbacks"` // fallbacks on context-window errors
	DefaultFallbacks       []string              `yaml:"default_fallbacks"`        // fallbacks for any group
	MaxFallbacks           *int                  `yaml:"max_fallbacks"`            // default 5
	EnablePreCallChecks    bool                  `yaml:"enable_pre_call_checks"`   // skip deployments whose context is too small
	RedisHost              string                `yaml:"redis_host"`               // shared usage in Redis when set
	RedisPort              string                `yaml:"redis_port"`               // Redis port (number or os.environ/)
	RedisPassword          Secret                `yaml:"redis_password"`           // Redis password; never logged
	RedisURL               Secret                `yaml:"redis_url"`                // redis:// or rediss:// URL (may hold a password)
	RedisDB                *int                  `yaml:"redis_db"`                 // Redis logical database
	RedisSentinelMaster    string                `yaml:"redis_sentinel_master"`    // herd: Sentinel master name; redis_host then lists the sentinels
	RedisCluster           bool                  `yaml:"redis_cluster"`            // herd: Redis Cluster even with one seed in redis_host (several imply it)
	RedisSentinelPassword  Secret                `yaml:"redis_sentinel_password"`  // herd: the Sentinels' own password (with redis_sentinel_master); default none
	RedisFairShareNodes    *int                  `yaml:"redis_fair_share_nodes"`   // herd: while Redis is down each node admits limit/N; N is at least this (default: gossip members)
	RedisSSL               bool                  `yaml:"redis_ssl"`                // TLS to Redis, server verified; default false (a rediss:// redis_url implies true)
	RedisSSLCertReqs       string                `yaml:"redis_ssl_cert_reqs"`      // required (default): verify chain and host; optional: chain only; none: no check (WARN)
	RedisSSLCACerts        string                `yaml:"redis_ssl_ca_certs"`       // PEM file of the CA(s) that sign Redis's certificate; default the system roots
	RedisSSLCertfile       string                `yaml:"redis_ssl_certfile"`       // PEM client certificate for a Redis that requires one; default none
	RedisSSLKeyfile        string                `yaml:"redis_ssl_keyfile"`        // PEM key of redis_ssl_certfile; default: read from redis_ssl_certfile
	DefaultMaxTokens       *int64                `yaml:"default_max_tokens"`       // herd: tpm reservation when a request names no max_tokens
	ClusterLimitMode       string                `yaml:"cluster_limit_mode"`       // herd: strict or fast: how the nodes of a cluster share a limit; see ClusterLimitModes
	ClusterLimitWait       *Seconds              `yaml:"cluster_limit_wait"`       // herd: strict mode: how long a request without rights may wait for a loan; default 5 ms, 0 never
}

// RoutingStrategyArgs tune latency-based routing.
type RoutingStrategyArgs struct {
	LowestLatencyBuffer float64  `yaml:"lowest_latency_buffer"` // pick randomly among deployments within this fraction of the fastest
	TTL                 *Seconds `yaml:"ttl"`                   // how long a latency sample counts
}

// Alias is one model_group_alias value.
type Alias struct {
	Model  string // the group the alias routes to
	Hidden bool   // route, but do not list in /v1/models
}

// LiteLLMSettings are the litellm_settings keys herd uses.
type LiteLLMSettings struct {
	RequestTimeout *Seconds     `yaml:"request_timeout"` // default per-call timeout, after router_settings.timeout
	NumRetries     *int         `yaml:"num_retries"`     // used when router_settings.num_retries is unset
	DropParams     bool         `yaml:"drop_params"`     // translated providers drop parameters they lack instead of refusing the request; OpenAI-format bodies pass unchanged
	SetVerbose     bool         `yaml:"set_verbose"`     // debug logging
	JSONLogs       bool         `yaml:"json_logs"`       // log as JSON
	Cache          bool         `yaml:"cache"`           // accepted; herd does not cache responses
	CacheParams    *CacheParams `yaml:"cache_params"`    // a Redis named here is used for shared usage when router_settings names none
	SSLVerify      string       `yaml:"ssl_verify"`      // upstream TLS: true (default: system roots), false (not verified; WARN) or a PEM CA bundle path

	// Resolved by Load from ssl_verify; never read from YAML.

	// SkipTLSVerify is ssl_verify: false: upstream certificates are not checked.
	SkipTLSVerify bool `yaml:"-"`
	// UpstreamRootCAs are the CA bundle's certificates when ssl_verify names a file; nil = system roots.
	UpstreamRootCAs *x509.CertPool `yaml:"-" json:"-"`
}

// UsesRedis reports whether the config shares usage in Redis: router_settings.redis_url or
// redis_host, else a Redis in litellm_settings.cache_params.
func (c *Config) UsesRedis() bool { return usesRedis(&c.RouterSettings, &c.LiteLLMSettings) }

func usesRedis(rs *RouterSettings, ls *LiteLLMSettings) bool {
	if rs.RedisURL != "" || rs.RedisHost != "" {
		return true
	}
	cp := ls.CacheParams
	return cp != nil && (cp.Type == "" || cp.Type == "redis") &&
		(cp.URL != "" || cp.Host != "" || len(cp.RedisStartupNodes) > 0 || len(cp.SentinelNodes) > 0)
}

// CacheParams is litellm_settings.cache_params.
type CacheParams struct {
	Type     string   `yaml:"type"`
	Host     string   `yaml:"host"`
	Port     string   `yaml:"port"`
	Password Secret   `yaml:"password"`
	URL      Secret   `yaml:"url"`
	DB       *int     `yaml:"db"`
	TTL      *Seconds `yaml:"ttl"`

	// Redis Cluster and Sentinel, as LiteLLM names them (redis-py's RedisCluster and Sentinel).
	RedisStartupNodes []RedisNode `yaml:"redis_startup_nodes"` // Redis Cluster seeds, [{host, port}]; password applies to every node
	SentinelNodes     [][]string  `yaml:"sentinel_nodes"`      // Sentinels, [[host, port]]; needs service_name
	ServiceName       string      `yaml:"service_name"`        // the master's name the Sentinels watch
	SentinelPassword  Secret      `yaml:"sentinel_password"`   // the Sentinels' own password; default none (password is the master's)

	// TLS, as redis-py's keyword arguments (LiteLLM passes cache_params through to it).
	SSL         bool   `yaml:"ssl"`           // TLS to Redis, server verified; default false (a rediss:// url implies true)
	SSLCertReqs string `yaml:"ssl_cert_reqs"` // required (default): verify chain and host; optional: chain only; none: no check (WARN)
	SSLCACerts  string `yaml:"ssl_ca_certs"`  // PEM file of the CA(s) that sign Redis's certificate; default the system roots
	SSLCertfile string `yaml:"ssl_certfile"`  // PEM client certificate for a Redis that requires one; default none
	SSLKeyfile  string `yaml:"ssl_keyfile"`   // PEM key of ssl_certfile; default: read from ssl_certfile
}

// RedisNode is one Redis Cluster seed in cache_params.redis_startup_nodes.
type RedisNode struct {
	Host string `yaml:"host"` // host name or address
	Port string `yaml:"port"` // port (number or os.environ/); default 6379
}

// GeneralSettings are the general_settings keys herd uses.
type GeneralSettings struct {
	MasterKey         Secret   `yaml:"master_key"`           // when set (or LITELLM_MASTER_KEY), every LLM and admin route needs it
	MaxRequestSizeMB  *float64 `yaml:"max_request_size_mb"`  // request bodies above this get 413; default DefaultMaxRequestSizeMB
	MaxResponseSizeMB *float64 `yaml:"max_response_size_mb"` // upstream bodies above this get 502; default DefaultMaxResponseSizeMB
	// Client addresses (IPs or CIDRs) that may reach any route, probes included; others get 403. Default: any.
	AllowedIPs []string `yaml:"allowed_ips"`
	// LiteLLM's per-key cap; herd has one key (the master key), so it caps LLM requests in flight
	// on this node, like global_max_parallel_requests (the smaller wins).
	MaxParallelRequests *int `yaml:"max_parallel_requests"`
	// LLM requests in flight on this node (body being read, waiting, streaming); beyond it 503 +
	// Retry-After. Default DefaultMaxParallelRequests.
	GlobalMaxParallelRequests *int `yaml:"global_max_parallel_requests"`
	// herd: how long a client may take to send a request body; then 408. Default DefaultRequestBodyTimeout.
	RequestBodyTimeout *Seconds `yaml:"request_body_timeout"`
	// herd: deployments from the admin API may not reach loopback or private addresses either
	// (link-local and cloud metadata ones are always refused to them; hosts this file names are
	// exempt; see UpstreamPolicy). Default false.
	AdminAPIBaseDenyPrivate bool `yaml:"admin_api_base_deny_private"`
	// herd: how long a client may take to send a request's headers; then the connection is closed.
	// Default DefaultRequestHeaderTimeout.
	RequestHeaderTimeout *Seconds `yaml:"request_header_timeout"`
	// herd: MB of request bodies the node buffers at once; a body that would go beyond gets 503 +
	// Retry-After. At least max_request_size_mb. Default DefaultMaxInflightRequestMB.
	MaxInflightRequestMB *float64 `yaml:"max_inflight_request_mb"`

	// Resolved by Load; never read from YAML.

	// AllowedNets is allowed_ips parsed (an IP is a /32 or /128); nil = any address.
	AllowedNets []netip.Prefix `yaml:"-"`
	// ParallelRequestLimit is the node-wide cap on LLM requests in flight: the smaller of
	// max_parallel_requests and global_max_parallel_requests, else DefaultMaxParallelRequests.
	ParallelRequestLimit int `yaml:"-"`
}

// ClusterSettings are herd's own: how a node finds and talks to its peers.
type ClusterSettings struct {
	NodeName        string   `yaml:"node_name"`        // default: hostname
	GossipAddr      string   `yaml:"gossip_addr"`      // bind HOST:PORT for gossip; default 0.0.0.0:7946
	AdvertiseAddr   string   `yaml:"advertise_addr"`   // address peers use to reach this node
	Join            []string `yaml:"join"`             // seed list, HOST:PORT
	ClusterKey      Secret   `yaml:"cluster_key"`      // base64 key of 16, 24 or 32 bytes: encrypts gossip and authenticates the raft port; required beyond loopback; default none
	GossipKey       Secret   `yaml:"gossip_key"`       // the same as cluster_key (its older name); set one of them
	AcceptKeys      []Secret `yaml:"accept_keys"`      // more keys accepted from peers while keys rotate (docs/SECURITY.md); default none
	Insecure        bool     `yaml:"insecure"`         // run cluster ports beyond loopback without a key (logged as a WARN at every start); default false
	TLSCAFile       string   `yaml:"tls_ca_file"`      // with tls_cert_file and tls_key_file: the raft port uses your PKI instead of certificates derived from cluster_key
	TLSCertFile     string   `yaml:"tls_cert_file"`    // PEM certificate this node presents on the raft port
	TLSKeyFile      string   `yaml:"tls_key_file"`     // PEM private key of tls_cert_file
	ClusterLabel    string   `yaml:"cluster_label"`    // keeps two clusters on one network apart
	RaftAddr        string   `yaml:"raft_addr"`        // bind HOST:PORT for raft; default gossip port + 1
	DataDir         string   `yaml:"data_dir"`         // raft log, stable store and snapshots
	BootstrapExpect int      `yaml:"bootstrap_expect"` // voters that bootstrap the raft cluster
	AdminEnvAllow   []string `yaml:"admin_env_allow"`  // globs of os.environ/ names the admin API may use besides the file's own (see AdminEnv); default none
}

// Defaults applied by Load.
const (
	DefaultRoutingStrategy   = "simple-shuffle"
	DefaultTimeout           = 600 * time.Second // LiteLLM's default request timeout
	DefaultCooldownTime      = 5 * time.Second
	DefaultMaxFallbacks      = 5
	DefaultAzureAPIVersion   = "2024-10-21"
	DefaultOpenAIAPIBase     = "https://api.openai.com/v1"
	DefaultVertexLocation    = "us-central1" // LiteLLM's default vertex_location
	DefaultBedrockRegion     = "us-west-2"   // LiteLLM's region when nothing names one
	DefaultMaxRequestSizeMB  = 32.0
	DefaultMaxResponseSizeMB = 64.0
	DefaultMaxTokensEstimate = 256 // tpm reserved for a request that names no max_tokens
	// DefaultClusterLimitMode is strict: it met the utilisation targets (>= 95 % of a limit in
	// the first minute at 3x demand, balanced or on one node, steady or bursty) and never
	// exceeded a limit; see docs/architecture.md, "Strict limits", for the measurements. A
	// config that names a Redis defaults to fast instead: Redis checks every admission, as
	// LiteLLM's users expect, and strict adds rights on top only when asked for.
	DefaultClusterLimitMode = ClusterLimitStrict
	// DefaultClusterLimitWait bounds a strict-mode request's wait for a loan of rights: a few
	// round trips on a LAN.
	DefaultClusterLimitWait = 5 * time.Millisecond
	// DefaultMaxCooldownTime caps how long an upstream's Retry-After cools a deployment down.
	DefaultMaxCooldownTime = 5 * time.Minute
	// DefaultMaxParallelRequests is the node-wide cap on LLM requests in flight when the config
	// sets none: generous (far above what a node needs for 1000 req/s of typical LLM latency),
	// there to bound memory and file descriptors, not to shape traffic.
	DefaultMaxParallelRequests = 4096
	// DefaultRequestBodyTimeout bounds the time a client takes to send its request body (a
	// 32 MB body at 1 MB/s fits); it stops slow-body (slowloris) clients from holding slots.
	DefaultRequestBodyTimeout = 60 * time.Second
	// DefaultRequestHeaderTimeout bounds the time a client takes to send a request's headers.
	DefaultRequestHeaderTimeout = 30 * time.Second
	// DefaultMaxInflightRequestMB bounds the request bodies a node buffers at once (8 bodies
	// of the default 32 MB maximum, hundreds of long-context prompts); herd's memory for them
	// is about twice this (each body, and the copy sent upstream).
	DefaultMaxInflightRequestMB = 256.0
)

// ClusterLimitModes are the valid router_settings.cluster_limit_mode values: strict (a node
// admits only against rights it holds: the cluster never exceeds a limit, under any fault) and
// fast (each node admits against its view of the cluster's usage: may exceed a limit by what
// the cluster admits during one propagation delay, and k x the limit under a k-way partition).
// With a Redis, fast is Redis mode (Redis checks every admission) and strict adds the rights.
var ClusterLimitModes = []string{ClusterLimitStrict, ClusterLimitFast}

// The cluster_limit_mode values.
const (
	ClusterLimitStrict = "strict"
	ClusterLimitFast   = "fast"
)

// RoutingStrategies are the valid router_settings.routing_strategy values.
var RoutingStrategies = []string{
	"simple-shuffle",
	"least-busy",
	"usage-based-routing",
	"usage-based-routing-v2",
	"latency-based-routing",
}

// Seconds is a duration written in YAML as seconds (LiteLLM's convention: 30, 0.5),
// or as a Go duration string ("30s", "1m").
type Seconds time.Duration

// Duration returns s as a time.Duration.
func (s Seconds) Duration() time.Duration { return time.Duration(s) }

// Secret is a credential. It formats as "[redacted]" in logs, errors and JSON so it cannot leak
// by accident; Reveal returns the value for the one place that sends it upstream.
type Secret string

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

// String redacts the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// LogValue redacts the secret in slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON redacts the secret in JSON output.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + s.String() + `"`), nil }

// GoString redacts the secret in %#v output.
func (s Secret) GoString() string { return s.String() }

// MarshalYAML redacts the secret in YAML output, as MarshalJSON does in JSON.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }
