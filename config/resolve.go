package config

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"golang.org/x/net/http/httpguts"
)

// providerSpec says how a litellm_params.model prefix is served and where LiteLLM looks for
// what the deployment leaves out. The providers table is the one place a prefix is defined:
// the unknown-provider error, docs/providers.md and the dial guard's trusted variables follow it.
type providerSpec struct {
	provider    string   // Deployment.Provider
	baseEnv     []string // api_base fallbacks, in LiteLLM's order
	keyEnv      []string // api_key fallbacks, in LiteLLM's order
	versionEnv  string   // api_version fallback
	needsBase   bool     // no usable default endpoint
	defaultBase string   // "" with needsBase, or when computed (vertex_ai, bedrock)
	// baseSuffix is the path the OpenAI-compatible API sits under, appended to an api_base that
	// does not end in it; baseStrip are LiteLLM endpoint paths removed first (ollama's /api/chat).
	baseSuffix  string
	baseStrip   []string
	modelPrefix string // prepended to a model name that does not start with it (fireworks_ai)
	keyWarn     string // the provider's name in a WARN when no api_key resolves; "" for none
}

var openAISpec = providerSpec{
	provider:    "openai",
	baseEnv:     []string{"OPENAI_BASE_URL", "OPENAI_API_BASE"},
	keyEnv:      []string{"OPENAI_API_KEY"},
	defaultBase: DefaultOpenAIAPIBase,
}

// compatible is an OpenAI-compatible family at a fixed base, served on the OpenAI wire path.
func compatible(base string, baseEnv, keyEnv []string) providerSpec {
	return providerSpec{provider: "openai", defaultBase: base, baseEnv: baseEnv, keyEnv: keyEnv}
}

func vars(names ...string) []string { return names }

// ollamaSpec serves Ollama's OpenAI-compatible API (/v1/chat/completions) where LiteLLM calls
// its native /api/chat (ollama_chat/) or /api/generate (ollama/): users write the bare host.
var ollamaSpec = providerSpec{
	provider: "openai", defaultBase: "http://localhost:11434/v1", baseSuffix: "/v1",
	baseStrip: []string{"/api/chat", "/api/generate", "/api"},
	baseEnv:   vars("OLLAMA_API_BASE"), keyEnv: vars("OLLAMA_API_KEY"),
}

var vertexSpec = providerSpec{provider: "vertex_ai", baseEnv: vars("VERTEXAI_API_BASE", "VERTEX_API_BASE")}

// providers maps a model prefix ("" for a bare model name) to its spec. Bases, variables and
// their order are LiteLLM's (get_llm_provider and each provider's config); docs/providers.md
// lists them and says where herd differs.
var providers = map[string]providerSpec{
	"":                       openAISpec,
	"openai":                 openAISpec,
	"text-completion-openai": openAISpec,
	"hosted_vllm": {provider: "openai", baseEnv: vars("HOSTED_VLLM_API_BASE"),
		keyEnv: vars("HOSTED_VLLM_API_KEY"), needsBase: true},
	"openai_like": {provider: "openai", needsBase: true},
	"litellm_proxy": {provider: "openai", baseEnv: vars("LITELLM_PROXY_API_BASE"),
		keyEnv: vars("LITELLM_PROXY_API_KEY"), needsBase: true},
	"azure": {provider: "azure", baseEnv: vars("AZURE_API_BASE"),
		keyEnv: vars("AZURE_API_KEY"), versionEnv: "AZURE_API_VERSION", needsBase: true, keyWarn: "Azure"},
	"mock": {provider: "mock"},

	// OpenAI-compatible families.
	"cerebras":  compatible("https://api.cerebras.ai/v1", vars("CEREBRAS_API_BASE"), vars("CEREBRAS_API_KEY")),
	"codestral": compatible("https://codestral.mistral.ai/v1", vars("CODESTRAL_API_BASE"), vars("CODESTRAL_API_KEY")),
	"deepinfra": compatible("https://api.deepinfra.com/v1/openai", vars("DEEPINFRA_API_BASE"), vars("DEEPINFRA_API_KEY")),
	"deepseek":  compatible("https://api.deepseek.com/beta", vars("DEEPSEEK_API_BASE"), vars("DEEPSEEK_API_KEY")),
	"featherless_ai": compatible("https://api.featherless.ai/v1", vars("FEATHERLESS_AI_API_BASE", "FEATHERLESS_API_BASE"),
		vars("FEATHERLESS_AI_API_KEY", "FEATHERLESS_API_KEY")),
	"fireworks_ai": {provider: "openai", defaultBase: "https://api.fireworks.ai/inference/v1", baseEnv: vars("FIREWORKS_API_BASE"),
		keyEnv:      vars("FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN"),
		modelPrefix: "accounts/fireworks/models/"},
	"friendliai": compatible("https://api.friendli.ai/serverless/v1", vars("FRIENDLI_API_BASE"), vars("FRIENDLIAI_API_KEY", "FRIENDLI_TOKEN")),
	"github":     compatible("https://models.inference.ai.azure.com", vars("GITHUB_API_BASE"), vars("GITHUB_API_KEY")),
	"groq":       compatible("https://api.groq.com/openai/v1", vars("GROQ_API_BASE"), vars("GROQ_API_KEY")),
	"hyperbolic": compatible("https://api.hyperbolic.xyz/v1", vars("HYPERBOLIC_API_BASE"), vars("HYPERBOLIC_API_KEY")),
	// LiteLLM has no default for LM Studio; herd uses LM Studio's own local server address.
	"lm_studio":  compatible("http://localhost:1234/v1", vars("LM_STUDIO_API_BASE"), vars("LM_STUDIO_API_KEY")),
	"meta_llama": compatible("https://api.llama.com/compat/v1", vars("LLAMA_API_BASE"), vars("LLAMA_API_KEY")),
	"mistral": {provider: "openai", defaultBase: "https://api.mistral.ai/v1", baseSuffix: "/v1",
		baseEnv: vars("MISTRAL_AZURE_API_BASE", "MISTRAL_API_BASE"), keyEnv: vars("MISTRAL_AZURE_API_KEY", "MISTRAL_API_KEY")},
	"nebius":      compatible("https://api.studio.nebius.ai/v1", vars("NEBIUS_API_BASE"), vars("NEBIUS_API_KEY")),
	"novita":      compatible("https://api.novita.ai/v3/openai", vars("NOVITA_API_BASE"), vars("NOVITA_API_KEY")),
	"nscale":      compatible("https://inference.api.nscale.com/v1", vars("NSCALE_API_BASE"), vars("NSCALE_API_KEY")),
	"nvidia_nim":  compatible("https://integrate.api.nvidia.com/v1", vars("NVIDIA_NIM_API_BASE"), vars("NVIDIA_NIM_API_KEY")),
	"ollama":      ollamaSpec,
	"ollama_chat": ollamaSpec,
	"openrouter":  compatible("https://openrouter.ai/api/v1", vars("OPENROUTER_API_BASE"), vars("OPENROUTER_API_KEY", "OR_API_KEY")),
	"perplexity":  compatible("https://api.perplexity.ai", vars("PERPLEXITY_API_BASE"), vars("PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY")),
	"sambanova":   compatible("https://api.sambanova.ai/v1", vars("SAMBANOVA_API_BASE"), vars("SAMBANOVA_API_KEY")),
	"together_ai": compatible("https://api.together.xyz/v1", vars("TOGETHER_AI_API_BASE"),
		vars("TOGETHER_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_TOKEN")),
	"xai": compatible("https://api.x.ai/v1", vars("XAI_API_BASE"), vars("XAI_API_KEY")),

	// Native wire formats.
	"anthropic": {provider: "anthropic", defaultBase: "https://api.anthropic.com",
		baseEnv: vars("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"), keyEnv: vars("ANTHROPIC_API_KEY"), keyWarn: "Anthropic"},
	"gemini": {provider: "gemini", defaultBase: "https://generativelanguage.googleapis.com",
		baseEnv: vars("GEMINI_API_BASE"), keyEnv: vars("GOOGLE_API_KEY", "GEMINI_API_KEY", "PALM_API_KEY"), keyWarn: "Gemini"},
	"vertex_ai":      vertexSpec,
	"vertex_ai_beta": vertexSpec,
	// Bedrock API keys go as a bearer token; without one, AWS credentials sign the calls.
	"bedrock": {provider: "bedrock", baseEnv: vars("AWS_BEDROCK_RUNTIME_ENDPOINT"), keyEnv: vars("AWS_BEARER_TOKEN_BEDROCK")},
}

// prefixList is the known prefixes as the unknown-provider error lists them: sorted, each
// with its slash.
var prefixList = func() []string {
	var out []string
	for p := range providers {
		if p != "" {
			out = append(out, p+"/")
		}
	}
	slices.Sort(out)
	return out
}()

// supportedPrefixes is listed in the unknown-provider error.
var supportedPrefixes = strings.Join(prefixList, ", ") + ", or a bare OpenAI model name"

// resolve validates the decoded config, applies defaults and computes every deployment's
// resolved fields. It runs even after decode errors so one pass reports everything; paths
// already reported are skipped.
func (d *decoder) resolve(cfg *Config) {
	d.routerSettings(&cfg.RouterSettings, &cfg.LiteLLMSettings)
	d.litellmSettings(&cfg.LiteLLMSettings)
	d.generalSettings(&cfg.GeneralSettings)
	d.clusterSettings(&cfg.ClusterSettings)
	for i := range cfg.ModelList {
		d.deployment(i, &cfg.ModelList[i], &cfg.RouterSettings)
	}
	d.assignIDs(cfg.ModelList)
	d.checkGroups(cfg)
	if len(cfg.ModelList) == 0 {
		d.warn("model_list", "model_list is empty", "is empty; add models at runtime with /model/new")
	}
}

func nonNegative[T int | int64 | float64](d *decoder, path string, v *T) {
	if v != nil && *v < 0 {
		d.fail(path, "%s (got %s)", reasonNegative, d.shown(path, *v))
	}
}

func positive[T int | int64 | float64](d *decoder, path string, v *T) {
	if v != nil && *v <= 0 {
		d.fail(path, "must be greater than 0 (got %s)", d.shown(path, *v))
	}
}

// positiveSeconds rejects zero; negatives were rejected while decoding.
func positiveSeconds(d *decoder, path string, v *Seconds) {
	if v != nil && *v <= 0 {
		d.fail(path, "must be greater than 0 (got %s)", d.shown(path, v.seconds()))
	}
}

func firstSet[T any](vs ...*T) *T {
	for _, v := range vs {
		if v != nil {
			return v
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// isPlaceholder spots values copied verbatim from documentation, such as <your-azure-api-key>.
func isPlaceholder(s string) bool {
	i := strings.IndexByte(s, '<')
	return i >= 0 && strings.IndexByte(s[i:], '>') > 1
}

// placeholder rejects a documentation placeholder; secret values are never shown.
func (d *decoder) placeholder(path, value string, secret bool) bool {
	if !isPlaceholder(value) {
		return false
	}
	if secret {
		d.fail(path, "is a placeholder from the docs, not a real value")
	} else {
		d.fail(path, "is a placeholder from the docs, not a real value (got %s)", d.shown(path, value))
	}
	return true
}

func (d *decoder) port(path, value string) {
	if value == "" || d.placeholder(path, value, false) {
		return
	}
	if p, err := strconv.Atoi(strings.TrimSpace(value)); err != nil || p < 1 || p > 65535 {
		d.fail(path, "must be a port number from 1 to 65535 (got %s)", d.shown(path, value))
	}
}

func (d *decoder) redisURL(path string, s Secret) {
	if s == "" || d.placeholder(path, s.Reveal(), true) {
		return
	}
	// The URL may carry a password, so the value is never shown.
	u, err := url.Parse(s.Reveal())
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") {
		d.fail(path, "must be a redis://, rediss:// or unix:// URL")
	}
}

func (d *decoder) routerSettings(rs *RouterSettings, ls *LiteLLMSettings) {
	const p = "router_settings"
	switch {
	case rs.RoutingStrategy == "":
		rs.RoutingStrategy = DefaultRoutingStrategy
	case !slices.Contains(RoutingStrategies, rs.RoutingStrategy):
		hint := ""
		if s := suggest(rs.RoutingStrategy, RoutingStrategies); s != "" {
			hint = fmt.Sprintf("; did you mean %q?", s)
		}
		d.fail(p+".routing_strategy", "must be one of %s (got %s)%s",
			strings.Join(RoutingStrategies, ", "), d.shown(p+".routing_strategy", rs.RoutingStrategy), hint)
	}
	redis := usesRedis(rs, ls)
	switch {
	case rs.ClusterLimitMode == "" && redis:
		// With a Redis, LiteLLM's users' setting, Redis checks every admission; strict rights
		// on top are asked for by name.
		rs.ClusterLimitMode = ClusterLimitFast
	case rs.ClusterLimitMode == "":
		rs.ClusterLimitMode = DefaultClusterLimitMode
	case !slices.Contains(ClusterLimitModes, rs.ClusterLimitMode):
		d.fail(p+".cluster_limit_mode", "must be one of %s (got %s)", strings.Join(ClusterLimitModes, ", "), d.shown(p+".cluster_limit_mode", rs.ClusterLimitMode))
	}
	if redis && rs.ClusterLimitWait != nil && rs.ClusterLimitMode != ClusterLimitStrict {
		d.warn(p+".cluster_limit_wait", "cluster limit setting without effect in Redis mode",
			"has no effect: usage is shared in Redis, which checks every admission itself; the wait for rights applies with cluster_limit_mode: strict")
	}
	if w := rs.ClusterLimitWait; w != nil && *w < 0 {
		d.fail(p+".cluster_limit_wait", "must not be negative")
	}
	if rs.ClusterLimitWait == nil {
		rs.ClusterLimitWait = ptr(Seconds(DefaultClusterLimitWait))
	}
	nonNegative(d, p+".routing_strategy_args.lowest_latency_buffer", &rs.RoutingStrategyArgs.LowestLatencyBuffer)
	positiveSeconds(d, p+".routing_strategy_args.ttl", rs.RoutingStrategyArgs.TTL)
	nonNegative(d, p+".num_retries", rs.NumRetries)
	nonNegative(d, p+".allowed_fails", rs.AllowedFails)
	nonNegative(d, p+".max_fallbacks", rs.MaxFallbacks)
	nonNegative(d, p+".redis_db", rs.RedisDB)
	if n := rs.RedisFairShareNodes; n != nil && *n < 1 {
		d.fail(p+".redis_fair_share_nodes", "must be at least 1 (got %d)", *n)
	}
	nonNegative(d, p+".default_max_tokens", rs.DefaultMaxTokens)
	positiveSeconds(d, p+".timeout", rs.Timeout)
	positiveSeconds(d, p+".stream_timeout", rs.StreamTimeout)
	positiveSeconds(d, p+".max_cooldown_time", rs.MaxCooldownTime)
	d.placeholder(p+".redis_host", rs.RedisHost, false)
	d.port(p+".redis_port", rs.RedisPort)
	d.placeholder(p+".redis_password", rs.RedisPassword.Reveal(), true)
	d.redisURL(p+".redis_url", rs.RedisURL)
	d.placeholder(p+".redis_sentinel_password", rs.RedisSentinelPassword.Reveal(), true)
	if rs.RedisSentinelPassword != "" && rs.RedisSentinelMaster == "" {
		d.warn(p+".redis_sentinel_password", "Redis Sentinel setting without Sentinels", "has no effect without "+p+".redis_sentinel_master")
	}
	d.redisTLS(p+".redis_ssl", p+".redis_", rs.RedisSSL, rs.RedisURL, &rs.RedisSSLCertReqs, rs.RedisSSLCACerts, rs.RedisSSLCertfile, rs.RedisSSLKeyfile)

	// Defaults. The pointer fields are non-nil after Load, so callers need no fallbacks of their
	// own; router_settings wins over litellm_settings, as in LiteLLM.
	if rs.NumRetries == nil {
		rs.NumRetries = ptr(0)
		if ls.NumRetries != nil && *ls.NumRetries >= 0 {
			rs.NumRetries = ptr(*ls.NumRetries)
		}
	}
	if rs.Timeout == nil {
		rs.Timeout = ptr(Seconds(DefaultTimeout))
		if ls.RequestTimeout != nil && *ls.RequestTimeout > 0 {
			rs.Timeout = ptr(*ls.RequestTimeout)
		}
	}
	if rs.CooldownTime == nil {
		rs.CooldownTime = ptr(Seconds(DefaultCooldownTime))
	}
	if rs.MaxCooldownTime == nil {
		rs.MaxCooldownTime = ptr(Seconds(DefaultMaxCooldownTime))
	}
	if rs.MaxFallbacks == nil {
		rs.MaxFallbacks = ptr(DefaultMaxFallbacks)
	}
	if rs.DefaultMaxTokens == nil {
		rs.DefaultMaxTokens = ptr(int64(DefaultMaxTokensEstimate))
	}
}

func (d *decoder) litellmSettings(ls *LiteLLMSettings) {
	const p = "litellm_settings"
	positiveSeconds(d, p+".request_timeout", ls.RequestTimeout)
	nonNegative(d, p+".num_retries", ls.NumRetries)
	if c := ls.CacheParams; c != nil {
		const cp = p + ".cache_params"
		d.placeholder(cp+".host", c.Host, false)
		d.port(cp+".port", c.Port)
		d.placeholder(cp+".password", c.Password.Reveal(), true)
		d.placeholder(cp+".url", c.URL.Reveal(), true)
		nonNegative(d, cp+".db", c.DB)
		positiveSeconds(d, cp+".ttl", c.TTL)
		d.redisTLS(cp+".ssl", cp+".", c.SSL, c.URL, &c.SSLCertReqs, c.SSLCACerts, c.SSLCertfile, c.SSLKeyfile)
		d.redisTopology(cp, c)
	}
	d.sslVerify(p+".ssl_verify", ls)
	if ls.DropParams {
		d.warn(p+".drop_params", "LiteLLM setting honoured by translated providers only",
			"drops unsupported parameters only for deployments whose requests herd translates (anthropic/, gemini/, vertex_ai/, bedrock/); OpenAI-format deployments get request bodies unchanged")
	}
	if ls.Cache {
		d.warn(p+".cache", "LiteLLM setting not supported by herd", "has no effect: herd does not cache responses")
	}
}

// redisTopology validates cache_params' Redis Cluster and Sentinel keys: one way to name the
// Redis, host and port for every node, and a master name for the Sentinels.
func (d *decoder) redisTopology(cp string, c *CacheParams) {
	named := 0
	for _, set := range []bool{c.URL != "" || c.Host != "", len(c.RedisStartupNodes) > 0, len(c.SentinelNodes) > 0} {
		if set {
			named++
		}
	}
	if named > 1 {
		d.fail(cp, "names Redis more than one way: set one of url (or host), redis_startup_nodes and sentinel_nodes")
	}
	for i, n := range c.RedisStartupNodes {
		path := cp + ".redis_startup_nodes[" + strconv.Itoa(i) + "]"
		if strings.TrimSpace(n.Host) == "" {
			d.fail(path+".host", "is required: the address of a Redis Cluster node")
		}
		d.placeholder(path+".host", n.Host, false)
		d.port(path+".port", n.Port)
	}
	for i, n := range c.SentinelNodes {
		path := cp + ".sentinel_nodes[" + strconv.Itoa(i) + "]"
		if len(n) != 2 || strings.TrimSpace(n[0]) == "" || strings.TrimSpace(n[1]) == "" {
			d.fail(path, "must be a [host, port] pair, e.g. [\"sentinel-1\", 26379]")
			continue
		}
		d.placeholder(path+"[0]", n[0], false)
		d.port(path+"[1]", n[1])
	}
	if len(c.SentinelNodes) > 0 && c.ServiceName == "" {
		d.fail(cp+".service_name", "is required with sentinel_nodes: the name the Sentinels watch the master under")
	}
	if len(c.SentinelNodes) == 0 {
		for _, k := range []struct{ name, value string }{{"service_name", c.ServiceName}, {"sentinel_password", c.SentinelPassword.Reveal()}} {
			if k.value != "" {
				d.warn(cp+"."+k.name, "Redis Sentinel setting without Sentinels", "has no effect without "+cp+".sentinel_nodes")
			}
		}
	}
}

// SSLCertReqs are the values of redis_ssl_cert_reqs and cache_params.ssl_cert_reqs, as redis-py
// takes them (ssl.CERT_REQUIRED's spelling works too): the server's certificate chain and host
// name are checked (required), only its chain (optional), or nothing (none).
var SSLCertReqs = []string{"required", "optional", "none"}

// redisTLS validates one block's Redis TLS keys and normalises ssl_cert_reqs to one of
// SSLCertReqs. sslKey is the switch's path; p prefixes the other keys ("router_settings.redis_"
// or "litellm_settings.cache_params.").
func (d *decoder) redisTLS(sslKey, p string, on bool, url Secret, reqs *string, ca, cert, key string) {
	if *reqs != "" {
		v := strings.ToLower(strings.TrimSpace(*reqs))
		v = strings.TrimPrefix(strings.TrimPrefix(v, "ssl."), "cert_")
		if slices.Contains(SSLCertReqs, v) {
			*reqs = v
		} else {
			d.fail(p+"ssl_cert_reqs", "must be required, optional or none (got %s)", d.shown(p+"ssl_cert_reqs", *reqs))
		}
	}
	if key != "" && cert == "" {
		d.fail(p+"ssl_keyfile", "is the key of %sssl_certfile, which is not set", p)
	}
	if on || strings.HasPrefix(strings.ToLower(url.Reveal()), "rediss://") {
		return
	}
	for _, k := range []struct{ name, value string }{{"ssl_cert_reqs", *reqs}, {"ssl_ca_certs", ca}, {"ssl_certfile", cert}, {"ssl_keyfile", key}} {
		if k.value != "" {
			d.warn(p+k.name, "Redis TLS setting without TLS", "has no effect without "+sslKey+": true or a rediss:// URL")
		}
	}
}

// sslVerify reads litellm_settings.ssl_verify as LiteLLM does: a boolean, or the path of a CA
// bundle (PEM) that upstream certificates must chain to. The bundle is read now, so a bad path
// stops startup rather than failing every upstream call.
func (d *decoder) sslVerify(path string, ls *LiteLLMSettings) {
	v := strings.TrimSpace(ls.SSLVerify)
	if v == "" {
		return
	}
	if b, err := strconv.ParseBool(v); err == nil {
		if !b {
			ls.SkipTLSVerify = true
			d.warn(path, "upstream TLS certificates are not verified: anyone on the path to an upstream can read its API key and answers",
				"is false: upstream TLS certificates are not verified; set it to a CA bundle path instead")
		}
		return
	}
	if d.placeholder(path, v, false) {
		return
	}
	pem, err := readCABundle(v)
	if err != nil {
		reason := err.Error()
		var pe *fs.PathError
		if errors.As(err, &pe) {
			reason = pe.Err.Error()
		}
		d.fail(path, "must be true, false or the path of a PEM CA bundle: cannot read %s: %s", d.shown(path, v), reason)
		return
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		d.fail(path, "%s holds no PEM certificates (want a CA bundle such as /etc/ssl/certs/ca-certificates.crt)", d.shown(path, v))
		return
	}
	ls.UpstreamRootCAs = pool
}

func (d *decoder) generalSettings(gs *GeneralSettings) {
	const p = "general_settings"
	if gs.MasterKey == "" {
		if v, ok := d.env.Lookup("LITELLM_MASTER_KEY"); ok {
			gs.MasterKey = Secret(v)
		}
	}
	d.placeholder(p+".master_key", gs.MasterKey.Reveal(), true)
	positive(d, p+".max_request_size_mb", gs.MaxRequestSizeMB)
	positive(d, p+".max_response_size_mb", gs.MaxResponseSizeMB)
	if gs.MaxRequestSizeMB == nil {
		gs.MaxRequestSizeMB = ptr(DefaultMaxRequestSizeMB)
	}
	if gs.MaxResponseSizeMB == nil {
		gs.MaxResponseSizeMB = ptr(DefaultMaxResponseSizeMB)
	}
	positive(d, p+".max_parallel_requests", gs.MaxParallelRequests)
	positive(d, p+".global_max_parallel_requests", gs.GlobalMaxParallelRequests)
	gs.ParallelRequestLimit = DefaultMaxParallelRequests
	if v := gs.GlobalMaxParallelRequests; v != nil && *v > 0 {
		gs.ParallelRequestLimit = *v
	}
	if v := gs.MaxParallelRequests; v != nil && *v > 0 && (gs.GlobalMaxParallelRequests == nil || *v < gs.ParallelRequestLimit) {
		gs.ParallelRequestLimit = *v
	}
	positiveSeconds(d, p+".request_body_timeout", gs.RequestBodyTimeout)
	if gs.RequestBodyTimeout == nil {
		gs.RequestBodyTimeout = ptr(Seconds(DefaultRequestBodyTimeout))
	}
	positiveSeconds(d, p+".request_header_timeout", gs.RequestHeaderTimeout)
	if gs.RequestHeaderTimeout == nil {
		gs.RequestHeaderTimeout = ptr(Seconds(DefaultRequestHeaderTimeout))
	}
	positive(d, p+".max_inflight_request_mb", gs.MaxInflightRequestMB)
	if v := gs.MaxInflightRequestMB; v != nil && *v > 0 && *v < *gs.MaxRequestSizeMB {
		// A body of the largest allowed size could never be buffered: 503 forever.
		d.fail(p+".max_inflight_request_mb", "must be at least max_request_size_mb (%g), or a body of that size could never be served (got %s)",
			*gs.MaxRequestSizeMB, d.shown(p+".max_inflight_request_mb", *v))
	}
	if gs.MaxInflightRequestMB == nil {
		gs.MaxInflightRequestMB = ptr(max(DefaultMaxInflightRequestMB, *gs.MaxRequestSizeMB))
	}
	d.allowedIPs(p+".allowed_ips", gs)
}

// maxCABundle bounds a CA bundle read (a full system bundle is about 200 KB).
const maxCABundle = 16 << 20

// readCABundle reads a CA bundle with readSmallFile.
func readCABundle(name string) ([]byte, error) { return readSmallFile(name, maxCABundle) }

// readSmallFile reads a regular file of at most limit bytes, so a path such as /dev/zero or a
// FIFO fails instead of hanging startup.
func readSmallFile(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("larger than %d MB", limit>>20)
	}
	return io.ReadAll(io.LimitReader(f, limit))
}

// allowedIPs parses general_settings.allowed_ips: IP addresses (LiteLLM's form) or CIDRs.
func (d *decoder) allowedIPs(path string, gs *GeneralSettings) {
	if gs.AllowedIPs == nil {
		return
	}
	if len(gs.AllowedIPs) == 0 {
		d.fail(path, "is empty, which would refuse every client; remove it to allow any address")
		return
	}
	nets := make([]netip.Prefix, 0, len(gs.AllowedIPs))
	for i, s := range gs.AllowedIPs {
		ip := path + "[" + strconv.Itoa(i) + "]"
		if d.bad[ip] {
			continue
		}
		pfx, ok := parseAllowedIP(strings.TrimSpace(s))
		if !ok {
			d.fail(ip, "must be an IP address or a CIDR such as 10.0.0.0/8 or fd00::/8 (got %s)", d.shown(ip, s))
			continue
		}
		nets = append(nets, pfx)
	}
	gs.AllowedNets = nets
}

// parseAllowedIP reads "10.1.2.3" as 10.1.2.3/32 and "10.0.0.0/8" as is; IPv4-mapped IPv6 is
// stored as IPv4 and zones are dropped, as client addresses are compared the same way.
func parseAllowedIP(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		a := p.Addr()
		bits := p.Bits()
		if a.Is4In6() {
			if bits < 96 {
				return netip.Prefix{}, false
			}
			a, bits = a.Unmap(), bits-96
		}
		return netip.PrefixFrom(a, bits).Masked(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	a = a.WithZone("").Unmap()
	return netip.PrefixFrom(a, a.BitLen()), true
}

func (d *decoder) clusterSettings(cs *ClusterSettings) {
	const p = "cluster_settings"
	for _, a := range []struct {
		key, value string
	}{{"gossip_addr", cs.GossipAddr}, {"raft_addr", cs.RaftAddr}, {"advertise_addr", cs.AdvertiseAddr}} {
		if a.value == "" {
			continue
		}
		path := p + "." + a.key
		_, port, err := net.SplitHostPort(a.value)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
			d.fail(path, "must be HOST:PORT (got %s)", d.shown(path, a.value))
		}
	}
	for i, j := range cs.Join {
		if strings.TrimSpace(j) == "" {
			d.fail(fmt.Sprintf("%s.join[%d]", p, i), "must not be empty")
		}
	}
	// Keys are secret: say what is wrong, never what they are.
	checkKey := func(path, k string) {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(k))
		if err != nil || (len(b) != 16 && len(b) != 24 && len(b) != 32) {
			d.fail(path, "must be a base64-encoded 16, 24 or 32-byte key (make one with: herd keygen)")
		}
	}
	ck, gk := cs.ClusterKey.Reveal(), cs.GossipKey.Reveal()
	if ck != "" {
		checkKey(p+".cluster_key", ck)
	}
	if gk != "" {
		checkKey(p+".gossip_key", gk)
	}
	switch {
	case ck != "" && gk != "" && ck != gk:
		d.fail(p+".gossip_key", "is another name for cluster_key and holds a different key: set one of them")
	case ck == "":
		cs.ClusterKey = cs.GossipKey
	}
	for i, k := range cs.AcceptKeys {
		checkKey(fmt.Sprintf("%s.accept_keys[%d]", p, i), k.Reveal())
	}
	if len(cs.AcceptKeys) > 0 && cs.ClusterKey == "" {
		d.fail(p+".accept_keys", "needs cluster_key, the key this node sends with")
	}
	files := []struct{ key, value string }{{"tls_ca_file", cs.TLSCAFile}, {"tls_cert_file", cs.TLSCertFile}, {"tls_key_file", cs.TLSKeyFile}}
	set := 0
	for _, f := range files {
		if f.value != "" {
			set++
		}
	}
	if set > 0 && set < len(files) {
		for _, f := range files {
			if f.value == "" {
				d.fail(p+"."+f.key, "required with the other tls_* files: set tls_ca_file, tls_cert_file and tls_key_file together")
			}
		}
	}
	if set > 0 && cs.ClusterKey == "" {
		d.fail(p+".cluster_key", "required with tls_* files: the key encrypts gossip, the files secure the raft port")
	}
	nonNegative(d, p+".bootstrap_expect", &cs.BootstrapExpect)
	for i, g := range cs.AdminEnvAllow {
		if reason := validGlob(g); reason != "" {
			d.fail(fmt.Sprintf("%s.admin_env_allow[%d]", p, i), "%s", reason)
		}
	}
}

// deployment validates one model_list entry and fills its resolved fields.
func (d *decoder) deployment(i int, dep *Deployment, rs *RouterSettings) {
	p := "model_list[" + strconv.Itoa(i) + "]"
	lp := p + ".litellm_params"
	params := &dep.LiteLLMParams
	if dep.ModelName == "" {
		d.fail(p+".model_name", "required: the model group name clients send as \"model\"")
	} else if !d.placeholder(p+".model_name", dep.ModelName, false) {
		d.printable(p+".model_name", dep.ModelName)
	}
	d.headers(lp, params)

	nonNegative(d, p+".rpm", dep.RPM)
	nonNegative(d, p+".tpm", dep.TPM)
	nonNegative(d, lp+".rpm", params.RPM)
	nonNegative(d, lp+".tpm", params.TPM)
	nonNegative(d, lp+".weight", params.Weight)
	nonNegative(d, lp+".max_parallel_requests", params.MaxParallelRequests)
	nonNegative(d, lp+".max_retries", params.MaxRetries)
	if params.MaxRetries != nil && *params.MaxRetries > 0 {
		d.warn(lp+".max_retries", "LiteLLM setting not supported by herd",
			"has no effect: herd does not retry one deployment, it retries across deployments (router_settings.num_retries)")
	}
	nonNegative(d, p+".model_info.rpm", dep.ModelInfo.RPM)
	nonNegative(d, p+".model_info.tpm", dep.ModelInfo.TPM)
	nonNegative(d, p+".model_info.max_input_tokens", dep.ModelInfo.MaxInputTokens)
	positiveSeconds(d, lp+".timeout", params.Timeout)
	positiveSeconds(d, lp+".stream_timeout", params.StreamTimeout)

	// LiteLLM's lookup order: the deployment itself, then litellm_params, then model_info.
	if v := firstSet(dep.RPM, params.RPM, dep.ModelInfo.RPM); v != nil && *v > 0 {
		dep.Limits.RPM = *v
	}
	if v := firstSet(dep.TPM, params.TPM, dep.ModelInfo.TPM); v != nil && *v > 0 {
		dep.Limits.TPM = *v
	}
	dep.Timeout = DefaultTimeout
	if t := firstSet(params.Timeout, rs.Timeout); t != nil && *t > 0 {
		dep.Timeout = t.Duration()
	}
	dep.StreamTimeout = dep.Timeout
	if t := firstSet(params.StreamTimeout, rs.StreamTimeout); t != nil && *t > 0 {
		dep.StreamTimeout = t.Duration()
	}

	spec, ok := d.provider(lp, dep)
	if !ok {
		return
	}
	d.otherProviderKeys(lp, dep)
	if dep.Provider == "mock" {
		// A mock answers locally: no endpoint, no key, no environment fallbacks.
		if params.APIBase != "" {
			d.apiBase(lp+".api_base", params.APIBase, "")
		}
		dep.APIVersion = params.APIVersion
		return
	}
	ambient := d.ambientCredential(dep, spec)
	def := spec.defaultBase
	switch dep.Provider {
	case "vertex_ai":
		def = d.vertex(lp, dep)
	case "bedrock":
		def = d.bedrock(lp, dep)
	}
	if baseEnv := d.endpoint(lp, dep, spec, def); baseEnv == "" {
		d.guardAmbient(lp, dep, def, ambient) // an endpoint from the node's environment is the node's choice
	}
}

// ambientCredential names the credential of the node's own that dep would be sent with, since
// it names none itself: an API key from the provider's environment variables, or Google's or
// AWS's credential chain; "" when it carries its own (or none would be sent).
func (d *decoder) ambientCredential(dep *Deployment, spec providerSpec) string {
	p := &dep.LiteLLMParams
	switch {
	case dep.Provider == "vertex_ai" && p.VertexCredentials == "":
		return "the node's Google credentials (VERTEXAI_CREDENTIALS, GOOGLE_APPLICATION_CREDENTIALS or application default credentials)"
	case dep.Provider == "bedrock" && p.AWSAccessKeyID == "" && p.APIKey == "":
		return "the node's AWS credentials (AWS_BEARER_TOKEN_BEDROCK or the default credential chain)"
	case p.APIKey == "":
		if _, name := d.lookupFirst(spec.keyEnv...); name != "" {
			return "the node's " + name
		}
	}
	return ""
}

// An endpointGuard decides which endpoints may receive a node's own credentials: those the
// node's config file (or its environment) names. It is the env of runtime config changes
// (AdminEnv); a config file itself is trusted, and not guarded.
type endpointGuard interface {
	fileEndpoint(apiBase string) bool
}

// guardAmbient refuses a deployment from a runtime change that would send the node's own
// credentials (ambient) to an endpoint of its choosing: a master-key holder may route to any
// api_base, but only with credentials given in the change itself, or the node's own only to the
// provider's default endpoint or one the node's file names. Otherwise adding
// {model: anthropic/x, api_base: https://attacker} would hand them ANTHROPIC_API_KEY, and a
// vertex_ai/ one the node's Google access token.
func (d *decoder) guardAmbient(lp string, dep *Deployment, def, ambient string) {
	g, ok := d.env.(endpointGuard)
	if !ok || ambient == "" || dep.APIBase == "" || dep.APIBase == def || g.fileEndpoint(dep.APIBase) {
		return
	}
	d.fail(lp+".api_base", "a deployment added or changed at runtime may send %s only to the provider's default endpoint or to one this node's config file names; give the deployment its own credentials (api_key, aws_access_key_id or vertex_credentials) to use another endpoint", ambient)
}

// provider sets Provider and UpstreamModel from litellm_params.model.
func (d *decoder) provider(lp string, dep *Deployment) (providerSpec, bool) {
	params := &dep.LiteLLMParams
	path := lp + ".model"
	if params.Model == "" {
		d.fail(path, `required: "<provider>/<model>", e.g. azure/my-deployment or openai/gpt-4o`)
		return providerSpec{}, false
	}
	prefix, rest, found := strings.Cut(params.Model, "/")
	if !found {
		prefix, rest = "", params.Model
	}
	spec, known := providers[prefix]
	switch {
	case params.MockResponse != nil:
		// LiteLLM answers mock_response without calling the provider, whatever it is.
		dep.Provider = "mock"
	case !known:
		shown, hint := strconv.Quote(truncate(prefix)), ""
		if n := d.valAt[path]; n != nil && d.fromEnv[n] != "" {
			shown = d.shown(path, "")
		} else if s := suggest(prefix+"/", prefixList); s != "" {
			hint = fmt.Sprintf("; did you mean %s?", s)
		}
		d.fail(path, "unsupported provider %s%s (supported: %s)", shown, hint, supportedPrefixes)
		return providerSpec{}, false
	default:
		dep.Provider = spec.provider
	}
	dep.UpstreamModel = rest
	if rest == "" {
		d.fail(path, "names no model after the provider prefix %q", prefix+"/")
		return providerSpec{}, false
	}
	// LiteLLM completes a Fireworks name unless it is already under accounts/.
	if spec.modelPrefix != "" && dep.Provider != "mock" && !strings.HasPrefix(rest, strings.SplitAfter(spec.modelPrefix, "/")[0]) {
		dep.UpstreamModel = spec.modelPrefix + rest
	}
	// A bad model is reported, but the endpoint is still checked: a file copied from the docs
	// should show all its placeholders at once.
	switch {
	case d.placeholder(path, params.Model, false), !d.printable(path, params.Model):
	case dep.Provider == "azure" && !isURLToken(rest):
		// The Azure deployment name is a segment of the upstream URL's path.
		d.fail(path, "the Azure deployment name after azure/ may hold only letters, digits, '-', '_' and '.' (got %s)", d.shown(path, params.Model))
	case (dep.Provider == "gemini" || dep.Provider == "vertex_ai") && !isModelPath(rest):
		// The model is part of the upstream URL's path: .../models/{model}:generateContent.
		d.fail(path, "the model after %s/ may hold only letters, digits and -_.:@/ (no empty, . or .. segments), as it is part of the upstream URL's path (got %s)", prefix, d.shown(path, params.Model))
	}
	return spec, true
}

// lookupFirst returns the first of names set to a non-empty value, and its name. LiteLLM
// chains its fallbacks with "or", so an empty variable counts as unset.
func (d *decoder) lookupFirst(names ...string) (value, name string) {
	for _, n := range names {
		if v, ok := d.env.Lookup(n); ok && v != "" {
			return v, n
		}
	}
	return "", ""
}

// endpoint resolves api_base (def when neither the deployment nor spec's variables name one),
// api_key and api_version, falling back to the environment variables LiteLLM reads for the
// provider. It returns the variable api_base came from, if one did.
func (d *decoder) endpoint(lp string, dep *Deployment, spec providerSpec, def string) (baseEnv string) {
	params := &dep.LiteLLMParams
	base, basePath := params.APIBase, lp+".api_base"
	if dep.Provider == "bedrock" && params.AWSBedrockRuntimeEndpoint != "" {
		// LiteLLM's order: api_base, aws_bedrock_runtime_endpoint, AWS_BEDROCK_RUNTIME_ENDPOINT.
		if base == "" {
			base, basePath = params.AWSBedrockRuntimeEndpoint, lp+".aws_bedrock_runtime_endpoint"
		} else {
			d.warn(lp+".aws_bedrock_runtime_endpoint", "setting without effect", "has no effect: api_base is set and wins, as in LiteLLM")
		}
	}
	if base == "" {
		base, baseEnv = d.lookupFirst(spec.baseEnv...)
	}
	switch {
	case base != "":
		dep.APIBase = spec.normalizeBase(d.apiBase(basePath, base, baseEnv))
		if dep.Provider == "vertex_ai" && strings.Contains(dep.APIBase, "/projects/") {
			// LiteLLM takes a custom Vertex api_base as the whole URL up to ":generateContent";
			// herd builds /v1/projects/... itself.
			d.fail(basePath, "herd builds the /v1/projects/{project}/locations/... path itself: give the endpoint's scheme and host (and any gateway prefix), e.g. https://us-central1-aiplatform.googleapis.com (got %s)", d.shownBase(basePath, base, baseEnv))
		}
	case spec.needsBase:
		hint := ""
		if len(spec.baseEnv) > 0 {
			hint = " (or set " + strings.Join(spec.baseEnv, " or ") + ")"
		}
		prefix, _, _ := strings.Cut(params.Model, "/")
		d.fail(basePath, "required for %s/ deployments%s", prefix, hint)
	default:
		dep.APIBase = def
	}

	keyEnv := ""
	if params.APIKey == "" {
		var v string
		v, keyEnv = d.lookupFirst(spec.keyEnv...)
		params.APIKey = Secret(v)
	}
	if !d.placeholder(lp+".api_key", params.APIKey.Reveal(), true) {
		d.apiKeyHeader(lp+".api_key", params.APIKey, keyEnv)
	}
	if spec.keyWarn != "" && params.APIKey == "" {
		set := "is not set"
		if len(spec.keyEnv) > 1 {
			set = "are not set"
		}
		d.warn(lp+".api_key", dep.Provider+" deployment has no api_key",
			fmt.Sprintf("no api_key and %s %s; %s will refuse the calls", strings.Join(spec.keyEnv, ", "), set, spec.keyWarn))
	}

	dep.APIVersion = params.APIVersion
	if dep.APIVersion == "" && spec.versionEnv != "" {
		dep.APIVersion, _ = d.env.Lookup(spec.versionEnv)
	}
	if dep.APIVersion == "" && dep.Provider == "azure" {
		dep.APIVersion = DefaultAzureAPIVersion
	}
	if !d.placeholder(lp+".api_version", dep.APIVersion, false) && dep.Provider == "azure" && !isURLToken(dep.APIVersion) {
		// It is the api-version query parameter of every Azure call.
		d.fail(lp+".api_version", "may hold only letters, digits, '-', '_' and '.', e.g. 2024-10-21 (got %s)", d.shown(lp+".api_version", dep.APIVersion))
	}
	return baseEnv
}

// normalizeBase gives an api_base (already validated; "" if it was not) the path suffix the
// provider's OpenAI-compatible API sits under, after removing LiteLLM-only endpoint paths.
func (s providerSpec) normalizeBase(base string) string {
	if base == "" || s.baseSuffix == "" {
		return base
	}
	for _, p := range s.baseStrip {
		base = strings.TrimSuffix(base, p)
	}
	if !strings.HasSuffix(base, s.baseSuffix) {
		base += s.baseSuffix
	}
	return base
}

// isURLToken reports whether s can sit in a URL path segment or query value as it is: letters,
// digits, '-', '_' and '.', and not "." or "..", which would walk the path.
func isURLToken(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// printable refuses control characters (CR, LF, NUL, ...): names end up in logs, metrics
// labels and upstream requests.
func (d *decoder) printable(path, value string) bool {
	if strings.IndexFunc(value, unicode.IsControl) < 0 {
		return true
	}
	d.fail(path, "must not contain control characters such as CR, LF or NUL (got %s)", d.shown(path, value))
	return false
}

// headers checks what herd sends upstream as HTTP headers: extra_headers (names must be
// tokens, values must not hold CR, LF, NUL or other control characters) and the values of
// organization and api_key. A bad value would split or corrupt the upstream request, or fail
// every call at send time; values are never shown, as headers often carry credentials.
func (d *decoder) headers(lp string, params *LiteLLMParams) {
	for _, name := range sortedKeys(params.ExtraHeaders) {
		path := keyPath(lp+".extra_headers", name)
		switch {
		case !httpguts.ValidHeaderFieldName(name):
			d.fail(path, "%s is not a valid HTTP header name (letters, digits and !#$%%&'*+-.^_`|~ only)", strconv.Quote(truncate(name)))
		case !httpguts.ValidHeaderFieldValue(params.ExtraHeaders[name]):
			d.fail(path, "is not a valid HTTP header value: it holds CR, LF, NUL or another control character (value not shown)")
		}
	}
	if !httpguts.ValidHeaderFieldValue(params.Organization) {
		d.fail(lp+".organization", "is not a valid HTTP header value: it holds CR, LF, NUL or another control character (value not shown)")
	}
}

// apiKeyHeader checks that the api_key (keyEnv: the variable it fell back to, if any) can be
// sent as a header value. The key is never shown.
func (d *decoder) apiKeyHeader(path string, key Secret, keyEnv string) {
	if httpguts.ValidHeaderFieldValue(key.Reveal()) {
		return
	}
	from := ""
	if keyEnv != "" {
		from = " (from " + keyEnv + ")"
	}
	d.fail(path, "cannot be sent as an HTTP header%s: it holds CR, LF (a trailing newline?), NUL or another control character", from)
}

// apiBase validates an endpoint URL and returns it without trailing slashes. envName is the
// fallback variable it came from, if any; such values are not shown in errors.
func (d *decoder) apiBase(path, raw, envName string) string {
	shown := d.shownBase(path, raw, envName)
	if isPlaceholder(raw) {
		d.fail(path, "is a placeholder from the docs, not a real value (got %s)", shown)
		return ""
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		d.fail(path, "must be an http(s) URL with a host, e.g. https://example.openai.azure.com (got %s)", shown)
		return ""
	case u.RawQuery != "" || u.Fragment != "":
		d.fail(path, "must not have a query or fragment; set api_version separately (got %s)", shown)
		return ""
	}
	return strings.TrimRight(raw, "/")
}

// shownBase is an endpoint URL as errors show it: not at all when it came from envName or
// holds credentials.
func (d *decoder) shownBase(path, raw, envName string) string {
	switch {
	case envName != "":
		return "the value of " + envName
	case strings.Contains(raw, "@"):
		return "a URL with credentials, not shown"
	}
	return d.shown(path, raw)
}

// deploymentID hashes what identifies a deployment: its group, model, endpoint and API
// version, and the extra parts (identityExtras) that tell cloud deployments apart. Secrets are
// left out so rotating a key keeps the ID (and its counters) and the ID reveals nothing about
// the key. The "v1" leaves room to change the recipe deliberately; extras are appended only
// when present, so deployments without them keep the IDs they always had.
func deploymentID(modelName, model, apiBase, apiVersion string, extras ...string) string {
	parts := append([]string{"herd-deployment-v1", modelName, model, apiBase, apiVersion}, extras...)
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:8])
}

// identityExtras are what, besides the endpoint, names the upstream a cloud deployment reaches:
// the region it signs for, the project and location in its URL, the role or profile whose
// account it calls with. Each is labelled, so an empty one leaves no trace.
func identityExtras(dep *Deployment) []string {
	var out []string
	for _, e := range []struct{ label, value string }{
		{"region", dep.Region}, {"project", dep.Project}, {"location", dep.Location},
		{"aws_role_name", dep.LiteLLMParams.AWSRoleName}, {"aws_profile_name", dep.LiteLLMParams.AWSProfileName},
	} {
		if e.value != "" && (dep.Provider == "bedrock" || dep.Provider == "vertex_ai") {
			out = append(out, e.label+"="+e.value)
		}
	}
	return out
}

// assignIDs gives every deployment its ID: model_info.id when set (duplicates are errors), else
// the identity hash; exact duplicate identities get "-2", "-3", ... by occurrence.
func (d *decoder) assignIDs(list []Deployment) {
	owner := map[string]int{}
	for i := range list {
		id := list[i].ModelInfo.ID
		if id == "" {
			continue
		}
		path := "model_list[" + strconv.Itoa(i) + "].model_info.id"
		if j, dup := owner[id]; dup {
			d.fail(path, "duplicate id %s (also model_list[%d], line %d)", d.shown(path, id), j,
				d.lineOf("model_list["+strconv.Itoa(j)+"].model_info.id"))
			continue
		}
		owner[id] = i
		list[i].ID = id
	}
	for i := range list {
		dep := &list[i]
		if dep.ModelInfo.ID != "" {
			continue
		}
		base := deploymentID(dep.ModelName, dep.LiteLLMParams.Model, dep.APIBase, dep.APIVersion, identityExtras(dep)...)
		id := base
		for n := 2; ; n++ {
			if _, taken := owner[id]; !taken {
				break
			}
			id = base + "-" + strconv.Itoa(n)
		}
		owner[id] = i
		dep.ID = id
	}
}

// checkGroups validates aliases and fallbacks against the model groups model_list serves.
func (d *decoder) checkGroups(cfg *Config) {
	groups := map[string]bool{}
	for _, dep := range cfg.ModelList {
		if dep.ModelName != "" {
			groups[dep.ModelName] = true
		}
	}
	const ap = "router_settings.model_group_alias"
	aliases := cfg.RouterSettings.ModelGroupAlias
	for _, name := range sortedKeys(aliases) {
		a, path := aliases[name], keyPath(ap, name)
		switch {
		case a.Model == "":
			d.fail(path, "names no model group")
		case groups[name]:
			d.fail(path, "shadows the model group %q that model_list serves; rename the alias", name)
		case !groups[a.Model]:
			d.fail(path, "points at model group %s, which no model_list entry serves", d.shown(path, a.Model))
		}
	}
	known := func(g string) bool { _, alias := aliases[g]; return groups[g] || alias }
	check := func(block string, rules []map[string][]string) {
		for i, rule := range rules {
			rp := "router_settings." + block + "[" + strconv.Itoa(i) + "]"
			for _, from := range sortedKeys(rule) {
				fp := keyPath(rp, from)
				if from != "*" && !known(from) {
					d.warn(fp, "fallback for unknown model group",
						fmt.Sprintf("fallback rule for unknown model group %q", from), "group", from)
				}
				for j, to := range rule[from] {
					if !known(to) {
						d.warn(fp+"["+strconv.Itoa(j)+"]", "fallback to unknown model group",
							fmt.Sprintf("fallback to unknown model group %q", to), "group", to)
					}
				}
			}
		}
	}
	check("fallbacks", cfg.RouterSettings.Fallbacks)
	check("context_window_fallbacks", cfg.RouterSettings.ContextWindowFallbacks)
	for i, to := range cfg.RouterSettings.DefaultFallbacks {
		if !known(to) {
			d.warn("router_settings.default_fallbacks["+strconv.Itoa(i)+"]", "fallback to unknown model group",
				fmt.Sprintf("fallback to unknown model group %q", to), "group", to)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
