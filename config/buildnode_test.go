package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"testing"

	"go.yaml.in/yaml/v3"
)

// buildViaText is Build as it was before toNode: print the config as YAML and parse it back.
func buildViaText(name string, static Static, d Dynamic, env Env) (*Config, error) {
	root := maps.Clone(static)
	list := make([]any, len(d.ModelList))
	for i, m := range d.ModelList {
		list[i] = m
	}
	root[keyModelList] = list
	if d.RouterSettings != nil {
		root[keyRouterSettings] = d.RouterSettings
	}
	data, err := yaml.Marshal(root)
	if err != nil {
		return nil, err
	}
	cfg, err := Parse(name, data, env, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, withoutLines(err)
	}
	cfg.File = name
	return cfg, nil
}

// Build makes YAML nodes directly (toNode) instead of printing and parsing YAML; it must not
// change a single result or error. Each value below reaches the decoder both ways.
func TestBuildNodesMatchPrintedYAML(t *testing.T) {
	static, err := func() (Static, error) {
		s, _, err := Split([]byte("general_settings: {master_key: sk-m, max_request_size_mb: 2.5, allowed_ips: [10.0.0.0/8]}\nlitellm_settings: {num_retries: 3, request_timeout: 30}\nenvironment_variables: {}\n"))
		return s, err
	}()
	if err != nil {
		t.Fatal(err)
	}
	values := []any{nil, "", "123", "-7", "0.5", "1e3", "true", "null", "~", "yes", "os.environ/K", "a: b", " padded ", "#x", "[1]", "azure/d",
		true, false, 0.0, 600.0, -1.0, 0.5, 1e15, 1e20, 1.5e-7, 9.223372036854776e18, 3, int64(-4),
		[]any{1.0, "x", nil}, map[string]any{"model": "g", "hidden": true}, map[string]any{}, []any{}}
	keys := []string{"rpm", "tpm", "timeout", "stream_timeout", "model", "api_base", "api_key", "api_version", "weight", "order",
		"mock_response", "extra_headers", "max_parallel_requests", "organization"}
	env := MapEnv{"K": "42"}
	for _, k := range keys {
		for _, v := range values {
			entry := map[string]any{"model_name": "m", "litellm_params": map[string]any{"model": "openai/x", k: v},
				"model_info": map[string]any{"id": v, "extra": v, "max_input_tokens": v}, "rpm": v}
			rs := map[string]any{"num_retries": v, "routing_strategy": v, "model_group_alias": map[string]any{"a": v}, "fallbacks": []any{map[string]any{"m": v}}}
			d := Dynamic{ModelList: []map[string]any{entry}, RouterSettings: rs}
			d, err := d.normalize()
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("%s=%#v", k, v)
			want, wantErr := buildViaText("x", static, d, env)
			got, gotErr := Build("x", static, d, env, nil)
			if fmt.Sprint(wantErr) != fmt.Sprint(gotErr) {
				t.Errorf("%s: error\n got %v\nwant %v", name, gotErr, wantErr)
				continue
			}
			a, _ := json.Marshal(got)
			b, _ := json.Marshal(want)
			if string(a) != string(b) {
				t.Errorf("%s: config\n got %s\nwant %s", name, a, b)
			}
		}
	}
}
