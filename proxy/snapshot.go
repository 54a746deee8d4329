package proxy

import (
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/proxy/provider"
	"github.com/herd-proxy/herd/routing"
)

// snapshot is everything the request path needs from one config, built once and never
// mutated: a config change builds a new snapshot and swaps it in atomically.
type snapshot struct {
	cfg       *config.Config
	table     *routing.Table
	deps      []deployment // aligned with the table's deployment indexes
	models    []byte       // GET /v1/models body
	modelInfo []byte       // GET /model/info body
}

// deployment is one deployment's request-path view.
type deployment struct {
	cfg       *config.Deployment
	up        provider.Upstream
	modelJSON string // the upstream model name as a JSON string, spliced into bodies
	metrics   *depMetrics
	health    *health
	// Response header values, shared read-only by every response.
	idHdr, groupHdr, baseHdr []string
}

func (s *Server) newSnapshot(cfg *config.Config) (*snapshot, error) {
	table, err := routing.NewTable(cfg)
	if err != nil {
		return nil, err
	}
	snap := &snapshot{cfg: cfg, table: table, deps: make([]deployment, table.Len())}
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
			modelJSON: string(model),
			metrics:   s.metrics.deployment(d.ModelName, d.ID),
			health:    s.healthOf(d.ID),
			idHdr:     []string{d.ID},
			groupHdr:  []string{d.ModelName},
		}
		if b := publicBase(d.APIBase); b != "" {
			dep.baseHdr = []string{b}
		}
		snap.deps[i] = dep
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

// modelsBody renders /v1/models in OpenAI's list shape.
func modelsBody(t *routing.Table) ([]byte, error) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	for _, name := range t.Listed() {
		list.Data = append(list.Data, model{ID: name, Object: "model", Created: 1677610602, OwnedBy: "openai"})
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
