package config

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// Issue 12, attack 7: header values with CRLF and models such as azure/../../x?y= were accepted
// and reached the upstream request. Each case failed to fail before the checks in resolve.go.
func TestHeadersAndNamesThatWouldCorruptTheUpstreamRequest(t *testing.T) {
	dep := func(params string) string {
		return "model_list:\n  - model_name: m\n    litellm_params: " + params + "\n"
	}
	azure := func(model string) string {
		return dep(`{model: "` + model + `", api_base: "https://x.openai.azure.com", api_key: k}`)
	}
	for _, tc := range []struct {
		name, yaml, key, reason string
	}{
		{"CRLF in an extra header value", dep(`{model: openai/x, extra_headers: {X-Team: "a\r\nX-Injected: 1"}}`),
			"model_list[0].litellm_params.extra_headers.X-Team", "not a valid HTTP header value"},
		{"NUL in an extra header value", dep(`{model: openai/x, extra_headers: {X-Team: "a\u0000b"}}`),
			"model_list[0].litellm_params.extra_headers.X-Team", "not a valid HTTP header value"},
		{"extra header name with a space", dep(`{model: openai/x, extra_headers: {"X Team": a}}`),
			`model_list[0].litellm_params.extra_headers["X Team"]`, "is not a valid HTTP header name"},
		{"extra header name with a colon", dep(`{model: openai/x, extra_headers: {"X-A: b\r\nX-B": a}}`),
			`model_list[0].litellm_params.extra_headers["X-A: b\r\nX-B"]`, "is not a valid HTTP header name"},
		{"LF in organization", dep(`{model: openai/x, organization: "org\nX: y"}`),
			"model_list[0].litellm_params.organization", "not a valid HTTP header value"},
		{"trailing newline in api_key", dep(`{model: openai/x, api_key: "sk-secret\n"}`),
			"model_list[0].litellm_params.api_key", "cannot be sent as an HTTP header"},
		{"azure deployment walking the path", azure("azure/../../x?y="),
			"model_list[0].litellm_params.model", "may hold only letters, digits"},
		{"azure deployment that is ..", azure("azure/.."), "model_list[0].litellm_params.model", "may hold only letters, digits"},
		{"azure deployment with a slash", azure("azure/a/b"), "model_list[0].litellm_params.model", "may hold only letters, digits"},
		{"azure deployment with a query", azure("azure/gpt?api-version=1"), "model_list[0].litellm_params.model", "may hold only letters, digits"},
		{"CR in a model", dep(`{model: "openai/x\ry"}`), "model_list[0].litellm_params.model", "control characters"},
		{"LF in a model_name", "model_list:\n  - model_name: \"m\\nINFO forged\"\n    litellm_params: {model: openai/x}\n",
			"model_list[0].model_name", "control characters"},
		{"azure api_version with a query", dep(`{model: azure/d, api_base: "https://x.openai.azure.com", api_key: k, api_version: "2024-10-21&x=1"}`),
			"model_list[0].litellm_params.api_version", "may hold only letters, digits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, parseErr(t, tc.yaml), tc.key, tc.reason)
		})
	}

	// Secrets in headers are never shown.
	errs := parseErr(t, dep(`{model: openai/x, api_key: "sk-secret\n", extra_headers: {Authorization: "Bearer sk-other\r\n"}}`))
	for _, e := range errs {
		if strings.Contains(e.Error(), "sk-") {
			t.Errorf("an error shows a credential: %v", e)
		}
	}

	// The forms people use keep working.
	mustParse(t, dep(`{model: azure/gpt-4o_mini.2024, api_base: "https://x.openai.azure.com", api_key: k, api_version: 2024-09-01-preview, extra_headers: {X-Team: "a b; c=d", "X_Odd.Name!": v}}`), MapEnv{})
	mustParse(t, dep(`{model: "hosted_vllm/meta-llama/Llama-3-8B?x", api_base: "http://vllm:8000/v1"}`), MapEnv{})
}

// An api_key from the environment with a trailing newline (a secret mounted from a file) is
// reported under api_key, naming the variable, not the value.
func TestAPIKeyFromTheEnvironmentMustBeAHeaderValue(t *testing.T) {
	_, err := Parse("test.yaml", []byte("model_list:\n  - model_name: m\n    litellm_params: {model: azure/d, api_base: \"https://x.openai.azure.com\"}\n"),
		MapEnv{"AZURE_API_KEY": "k-from-file\n"}, slog.New(slog.DiscardHandler))
	var ce *Error
	if !errors.As(err, &ce) || ce.Key != "model_list[0].litellm_params.api_key" || !strings.Contains(ce.Reason, "(from AZURE_API_KEY)") || strings.Contains(err.Error(), "k-from-file") {
		t.Fatalf("got %v", err)
	}
}

// The admin API's path (Build) refuses the same, with the key and without a line.
func TestBuildRefusesHeaderInjection(t *testing.T) {
	static, dyn, err := Split([]byte("model_list: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	next := dyn.AddModel(map[string]any{"model_name": "m", "litellm_params": map[string]any{
		"model": "openai/x", "extra_headers": map[string]any{"X-A": "v\r\nHost: evil"}}})
	_, err = Build("change", static, next, MapEnv{}, nil)
	var ce *Error
	if !errors.As(err, &ce) || ce.Key != "model_list[0].litellm_params.extra_headers.X-A" || ce.Line != 0 || ce.File != "" {
		t.Fatalf("Build: %#v", err)
	}
}
