package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/proxy/provider"
	"github.com/herd-proxy/herd/routing"
	"github.com/herd-proxy/herd/state"
)

// snapshot is everything the request path needs from one config, built once and never
// mutated: a config change builds a new snapshot and swaps it in atomically.
type snapshot struct {
	cfg       *config.Config
	version   uint64 // the cluster config version cfg came from; 0 = this node's file
	table     *routing.Table
	deps      []deployment // aligned with the table's deployment indexes
	models    []byte       // GET /v1/models body
	modelInfo []byte       // GET /model/info body

	numRetries   int           // router_settings.num_retries
	retryAfter   time.Duration // router_settings.retry_after: pause before a retry
	maxFallbacks int           // router_settings.max_fallbacks
	// defaultMaxTokens is the tpm reserved for a request that names no max_tokens
	// (router_settings.default_max_tokens).
	defaultMaxTokens int64
	cooldown         routing.CooldownPolicy // allowed_fails, cooldown_time, disable_cooldowns, max_cooldown_time
	groups           map[*routing.Group]groupInfo
	counters         routing.Counters // deps[i].counter, contiguous for routing
}

// groupInfo is a group's response header values, shared read-only: its name, and its summed
// limits for x-ratelimit-limit-* (0 when some member is unlimited).
type groupInfo struct {
	nameHdr        []string
	rpm, tpm       int64
	rpmHdr, tpmHdr []string
}

// groupHeaders sets x-litellm-model-group and x-ratelimit-{limit,remaining}-{requests,tokens} for g: limits summed
// over its deployments, remaining = what is left of them in the current window.
// unsettled is what a settle still to come will give back (reserved minus real tokens), so the
// headers already show the request's real usage.
func (s *snapshot) groupHeaders(h http.Header, g *routing.Group, unsettled int64) {
	gl := s.groups[g]
	h[hdrModelGroup] = gl.nameHdr
	if gl.rpm == 0 && gl.tpm == 0 {
		return
	}
	var usedReq, usedTok int64
	now := time.Now()
	for _, m := range g.Members {
		l := s.deps[m].counter.LoadAt(now)
		usedReq = satAdd(usedReq, l.Requests)
		usedTok = satAdd(usedTok, l.Tokens) // an upstream's usage can fill a window to ~2^63
	}
	usedTok = satAdd(usedTok, -unsettled) // unsettled >= -MaxInt64: a reservation less a usage
	if gl.rpm > 0 {
		h[hdrLimitRequests] = gl.rpmHdr
		h[hdrRemainingRequests] = []string{strconv.FormatInt(max(gl.rpm-usedReq, 0), 10)}
	}
	if gl.tpm > 0 {
		h[hdrLimitTokens] = gl.tpmHdr
		h[hdrRemainingTokens] = []string{strconv.FormatInt(max(gl.tpm-usedTok, 0), 10)}
	}
}

const (
	hdrLimitRequests     = "X-Ratelimit-Limit-Requests"
	hdrRemainingRequests = "X-Ratelimit-Remaining-Requests"
	hdrLimitTokens       = "X-Ratelimit-Limit-Tokens"
	hdrRemainingTokens   = "X-Ratelimit-Remaining-Tokens"
)

// deployment is one deployment's request-path view.
type deployment struct {
	cfg       *config.Deployment
	up        provider.Upstream
	counter   state.Counter     // usage, from the state backend, keyed by deployment ID
	cooldown  *routing.Cooldown // failures and cooldown, keyed by deployment ID
	modelJSON string            // the upstream model name as a JSON string, spliced into bodies
	metrics   *depMetrics
	health    *health
	// Response header values, shared read-only by every response.
	idHdr, baseHdr []string
}

func (s *Server) newSnapshot(cfg *config.Config) (*snapshot, error) {
	table, err := routing.NewTable(cfg, s.cooldowns)
	if err != nil {
		return nil, err
	}
	rs := cfg.RouterSettings
	snap := &snapshot{
		cfg: cfg, table: table, deps: make([]deployment, table.Len()),
		maxFallbacks: config.DefaultMaxFallbacks, defaultMaxTokens: config.DefaultMaxTokensEstimate,
		cooldown: routing.CooldownPolicy{AllowedFails: routing.DefaultAllowedFails, Time: config.DefaultCooldownTime, Disabled: rs.DisableCooldowns},
		groups:   make(map[*routing.Group]groupInfo),
	}
	if rs.NumRetries != nil {
		snap.numRetries = *rs.NumRetries
	}
	if rs.RetryAfter != nil {
		snap.retryAfter = rs.RetryAfter.Duration()
	}
	if rs.MaxFallbacks != nil {
		snap.maxFallbacks = *rs.MaxFallbacks
	}
	if rs.DefaultMaxTokens != nil {
		snap.defaultMaxTokens = *rs.DefaultMaxTokens
	}
	if rs.AllowedFails != nil {
		snap.cooldown.AllowedFails = *rs.AllowedFails
	}
	if rs.CooldownTime != nil {
		snap.cooldown.Time = rs.CooldownTime.Duration()
	}
	snap.cooldown.MaxRetryAfter = config.DefaultMaxCooldownTime
	if rs.MaxCooldownTime != nil {
		snap.cooldown.MaxRetryAfter = rs.MaxCooldownTime.Duration()
	}
	for _, name := range table.GroupNames() {
		g := table.Group(name)
		rpm, tpm := table.GroupLimits(g)
		snap.groups[g] = groupInfo{nameHdr: []string{name}, rpm: rpm, tpm: tpm,
			rpmHdr: []string{strconv.FormatInt(rpm, 10)}, tpmHdr: []string{strconv.FormatInt(tpm, 10)}}
	}
	for i := range snap.deps {
		d := table.Deployment(i)
		up, err := provider.New(d, s.pool)
		if err != nil {
			return nil, err
		}
		model, _ := json.Marshal(d.UpstreamModel)
		dep := deployment{
			cfg:       d,
			up:        up,
			counter:   s.state.Counter(d.ID),
			cooldown:  table.Cooldown(i),
			modelJSON: string(model),
			metrics:   s.metrics.deployment(d.ModelName, d.ID),
			health:    s.healthOf(d.ID),
			idHdr:     []string{d.ID},
		}
		if b := publicBase(d.APIBase); b != "" {
			dep.baseHdr = []string{b}
		}
		snap.deps[i] = dep
		snap.counters = append(snap.counters, dep.counter)
	}
	if snap.models, err = modelsBody(table); err != nil {
		return nil, err
	}
	if snap.modelInfo, err = modelInfoBody(cfg); err != nil {
		return nil, err
	}
	return snap, nil
}

// publicBase strips anything secret-looking (user info, query) from an api_base.
func publicBase(base string) string {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return ""
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

// modelObject is OpenAI's model object, as /v1/models lists it and /v1/models/{id} returns it.
type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// newModelObject describes a model group or alias. created and owned_by are LiteLLM's
// constants: a group has no creation date, and the SDKs require both fields.
func newModelObject(name string) modelObject {
	return modelObject{ID: name, Object: "model", Created: 1677610602, OwnedBy: "openai"}
}

// modelsBody renders /v1/models in OpenAI's list shape.
func modelsBody(t *routing.Table) ([]byte, error) {
	list := struct {
		Object string        `json:"object"`
		Data   []modelObject `json:"data"`
	}{Object: "list", Data: []modelObject{}}
	for _, name := range t.Listed() {
		list.Data = append(list.Data, newModelObject(name))
	}
	return json.Marshal(list)
}

// publicParams is litellm_params as /model/info shows them: no api_key, no extra_headers
// (which often carry credentials), nothing else that could be a secret.
type publicParams struct {
	Model               string   `json:"model"`
	APIBase             string   `json:"api_base,omitempty"`
	APIVersion          string   `json:"api_version,omitempty"`
	RPM                 *int64   `json:"rpm,omitempty"`
	TPM                 *int64   `json:"tpm,omitempty"`
	Timeout             *float64 `json:"timeout,omitempty"`
	StreamTimeout       *float64 `json:"stream_timeout,omitempty"`
	Weight              *float64 `json:"weight,omitempty"`
	Order               *int     `json:"order,omitempty"`
	MaxParallelRequests *int     `json:"max_parallel_requests,omitempty"`
	Organization        string   `json:"organization,omitempty"`
}

// modelInfoBody renders /model/info: every deployment, secrets left out.
func modelInfoBody(cfg *config.Config) ([]byte, error) {
	seconds := func(s *config.Seconds) *float64 {
		if s == nil {
			return nil
		}
		v := time.Duration(*s).Seconds()
		return &v
	}
	type entry struct {
		ModelName     string         `json:"model_name"`
		LiteLLMParams publicParams   `json:"litellm_params"`
		ModelInfo     map[string]any `json:"model_info"`
	}
	out := struct {
		Data []entry `json:"data"`
	}{Data: []entry{}}
	for i := range cfg.ModelList {
		d := &cfg.ModelList[i]
		p := d.LiteLLMParams
		info := make(map[string]any, len(d.ModelInfo.Extra)+4)
		for k, v := range d.ModelInfo.Extra {
			info[k] = v
		}
		info["id"] = d.ID
		if d.ModelInfo.Mode != "" {
			info["mode"] = d.ModelInfo.Mode
		}
		if d.ModelInfo.BaseModel != "" {
			info["base_model"] = d.ModelInfo.BaseModel
		}
		if d.ModelInfo.MaxInputTokens != nil {
			info["max_input_tokens"] = *d.ModelInfo.MaxInputTokens
		}
		var rpm, tpm *int64
		if d.Limits.RPM > 0 {
			rpm = &d.Limits.RPM
		}
		if d.Limits.TPM > 0 {
			tpm = &d.Limits.TPM
		}
		out.Data = append(out.Data, entry{
			ModelName: d.ModelName,
			LiteLLMParams: publicParams{
				Model: p.Model, APIBase: publicBase(p.APIBase), APIVersion: p.APIVersion,
				RPM: rpm, TPM: tpm, Timeout: seconds(p.Timeout), StreamTimeout: seconds(p.StreamTimeout),
				Weight: p.Weight, Order: p.Order, MaxParallelRequests: p.MaxParallelRequests,
				Organization: p.Organization,
			},
			ModelInfo: info,
		})
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("render /model/info: %w", err)
	}
	return b, nil
}
