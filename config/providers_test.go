package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The all-providers golden file (testdata/config/good/providers.yaml) is parsed with a key for
// every provider, each a secret no output may show.
var providerFileEnv = map[string]string{
	"LITELLM_PROXY_API_BASE": "http://litellm.internal:4000",
	"CEREBRAS_API_KEY":       "sk-cerebras-secret-0101",
	"CODESTRAL_API_KEY":      "sk-codestral-secret-0102",
	"DEEPINFRA_API_KEY":      "sk-deepinfra-secret-0103",
	"DEEPSEEK_API_KEY":       "sk-deepseek-secret-0104",
	"FEATHERLESS_API_KEY":    "sk-featherless-secret-0105",
	"FIREWORKS_AI_API_KEY":   "sk-fireworks-secret-0106",
	"FRIENDLI_TOKEN":         "sk-friendli-secret-0107",
	"GITHUB_API_KEY":         "sk-github-secret-0108",
	"GROQ_API_KEY":           "sk-groq-secret-0109",
	"HYPERBOLIC_API_KEY":     "sk-hyperbolic-secret-0110",
	"LLAMA_API_KEY":          "sk-llama-secret-0111",
	"MISTRAL_API_KEY":        "sk-mistral-secret-0112",
	"NEBIUS_API_KEY":         "sk-nebius-secret-0113",
	"NOVITA_API_KEY":         "sk-novita-secret-0114",
	"NSCALE_API_KEY":         "sk-nscale-secret-0115",
	"NVIDIA_NIM_API_KEY":     "sk-nvidia-secret-0116",
	"OR_API_KEY":             "sk-openrouter-secret-0117",
	"PERPLEXITY_API_KEY":     "sk-perplexity-secret-0118",
	"SAMBANOVA_API_KEY":      "sk-sambanova-secret-0119",
	"TOGETHERAI_API_KEY":     "sk-together-secret-0120",
	"XAI_API_KEY":            "sk-xai-secret-0121",
	"ANTHROPIC_API_KEY":      "sk-ant-secret-0122",
	"GEMINI_API_KEY":         "gemini-secret-0123",
	"VERTEX_SA_JSON":         `{"type": "service_account", "project_id": "from-json", "private_key": "vertex-private-secret-0124"}`,
	"VERTEXAI_CREDENTIALS":   `{"type": "service_account", "project_id": "herd-beta", "private_key": "vertex-private-secret-0125"}`,
	"AWS_ACCESS_KEY_ID":      "AKIA-secret-0126",
	"AWS_SECRET_ACCESS_KEY":  "aws-secret-0127",
}

func init() {
	fileEnv["providers.yaml"] = providerFileEnv
	for name, v := range providerFileEnv {
		if strings.Contains(name, "KEY") || strings.Contains(name, "TOKEN") || strings.Contains(name, "JSON") || strings.Contains(name, "CREDENTIALS") {
			testSecrets = append(testSecrets, v)
		}
	}
	testSecrets = append(testSecrets, "vertex-private-secret-0124", "vertex-private-secret-0125")
}

// providerRow is what a prefix resolves to with nothing but its key variable set. Written out
// rather than derived from the providers table, so an accidental edit of the table fails here;
// the values are LiteLLM's (docs/providers.md says where herd differs).
type providerRow struct {
	prefix, provider, base string
	keyEnv, baseEnv        []string
}

var providerRows = []providerRow{
	{"", "openai", "https://api.openai.com/v1", vars("OPENAI_API_KEY"), vars("OPENAI_BASE_URL", "OPENAI_API_BASE")},
	{"openai", "openai", "https://api.openai.com/v1", vars("OPENAI_API_KEY"), vars("OPENAI_BASE_URL", "OPENAI_API_BASE")},
	{"text-completion-openai", "openai", "https://api.openai.com/v1", vars("OPENAI_API_KEY"), vars("OPENAI_BASE_URL", "OPENAI_API_BASE")},
	{"hosted_vllm", "openai", "", vars("HOSTED_VLLM_API_KEY"), vars("HOSTED_VLLM_API_BASE")},
	{"openai_like", "openai", "", nil, nil},
	{"litellm_proxy", "openai", "", vars("LITELLM_PROXY_API_KEY"), vars("LITELLM_PROXY_API_BASE")},
	{"azure", "azure", "", vars("AZURE_API_KEY"), vars("AZURE_API_BASE")},
	{"cerebras", "openai", "https://api.cerebras.ai/v1", vars("CEREBRAS_API_KEY"), vars("CEREBRAS_API_BASE")},
	{"codestral", "openai", "https://codestral.mistral.ai/v1", vars("CODESTRAL_API_KEY"), vars("CODESTRAL_API_BASE")},
	{"deepinfra", "openai", "https://api.deepinfra.com/v1/openai", vars("DEEPINFRA_API_KEY"), vars("DEEPINFRA_API_BASE")},
	{"deepseek", "openai", "https://api.deepseek.com/beta", vars("DEEPSEEK_API_KEY"), vars("DEEPSEEK_API_BASE")},
	{"featherless_ai", "openai", "https://api.featherless.ai/v1", vars("FEATHERLESS_AI_API_KEY", "FEATHERLESS_API_KEY"), vars("FEATHERLESS_AI_API_BASE", "FEATHERLESS_API_BASE")},
	{"fireworks_ai", "openai", "https://api.fireworks.ai/inference/v1", vars("FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN"), vars("FIREWORKS_API_BASE")},
	{"friendliai", "openai", "https://api.friendli.ai/serverless/v1", vars("FRIENDLIAI_API_KEY", "FRIENDLI_TOKEN"), vars("FRIENDLI_API_BASE")},
	{"github", "openai", "https://models.inference.ai.azure.com", vars("GITHUB_API_KEY"), vars("GITHUB_API_BASE")},
	{"groq", "openai", "https://api.groq.com/openai/v1", vars("GROQ_API_KEY"), vars("GROQ_API_BASE")},
	{"hyperbolic", "openai", "https://api.hyperbolic.xyz/v1", vars("HYPERBOLIC_API_KEY"), vars("HYPERBOLIC_API_BASE")},
	{"lm_studio", "openai", "http://localhost:1234/v1", vars("LM_STUDIO_API_KEY"), vars("LM_STUDIO_API_BASE")},
	{"meta_llama", "openai", "https://api.llama.com/compat/v1", vars("LLAMA_API_KEY"), vars("LLAMA_API_BASE")},
	{"mistral", "openai", "https://api.mistral.ai/v1", vars("MISTRAL_AZURE_API_KEY", "MISTRAL_API_KEY"), vars("MISTRAL_AZURE_API_BASE", "MISTRAL_API_BASE")},
	{"nebius", "openai", "https://api.studio.nebius.ai/v1", vars("NEBIUS_API_KEY"), vars("NEBIUS_API_BASE")},
	{"novita", "openai", "https://api.novita.ai/v3/openai", vars("NOVITA_API_KEY"), vars("NOVITA_API_BASE")},
	{"nscale", "openai", "https://inference.api.nscale.com/v1", vars("NSCALE_API_KEY"), vars("NSCALE_API_BASE")},
	{"nvidia_nim", "openai", "https://integrate.api.nvidia.com/v1", vars("NVIDIA_NIM_API_KEY"), vars("NVIDIA_NIM_API_BASE")},
	{"ollama", "openai", "http://localhost:11434/v1", vars("OLLAMA_API_KEY"), vars("OLLAMA_API_BASE")},
	{"ollama_chat", "openai", "http://localhost:11434/v1", vars("OLLAMA_API_KEY"), vars("OLLAMA_API_BASE")},
	{"openrouter", "openai", "https://openrouter.ai/api/v1", vars("OPENROUTER_API_KEY", "OR_API_KEY"), vars("OPENROUTER_API_BASE")},
	{"perplexity", "openai", "https://api.perplexity.ai", vars("PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"), vars("PERPLEXITY_API_BASE")},
	{"sambanova", "openai", "https://api.sambanova.ai/v1", vars("SAMBANOVA_API_KEY"), vars("SAMBANOVA_API_BASE")},
	{"together_ai", "openai", "https://api.together.xyz/v1", vars("TOGETHER_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_TOKEN"), vars("TOGETHER_AI_API_BASE")},
	{"xai", "openai", "https://api.x.ai/v1", vars("XAI_API_KEY"), vars("XAI_API_BASE")},
	{"anthropic", "anthropic", "https://api.anthropic.com", vars("ANTHROPIC_API_KEY"), vars("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL")},
	{"gemini", "gemini", "https://generativelanguage.googleapis.com", vars("GOOGLE_API_KEY", "GEMINI_API_KEY", "PALM_API_KEY"), vars("GEMINI_API_BASE")},
	{"vertex_ai", "vertex_ai", "https://us-central1-aiplatform.googleapis.com", nil, vars("VERTEXAI_API_BASE", "VERTEX_API_BASE")},
	{"vertex_ai_beta", "vertex_ai", "https://us-central1-aiplatform.googleapis.com", nil, vars("VERTEXAI_API_BASE", "VERTEX_API_BASE")},
	{"bedrock", "bedrock", "https://bedrock-runtime.us-east-1.amazonaws.com", vars("AWS_BEARER_TOKEN_BEDROCK"), vars("AWS_BEDROCK_RUNTIME_ENDPOINT")},
	{"mock", "mock", "", nil, nil},
}

// providerEnv is the environment a row needs besides its key and base: a base where there is
// no default, a project for vertex_ai, a region for bedrock.
func providerEnv(r providerRow) MapEnv {
	env := MapEnv{"VERTEXAI_PROJECT": "herd-test", "AWS_REGION": "us-east-1"}
	if r.base == "" && len(r.baseEnv) > 0 {
		env[r.baseEnv[0]] = "https://" + r.prefix + ".internal/v1"
	}
	return env
}

func rowModel(r providerRow) string {
	if r.prefix == "" {
		return "gpt-4o"
	}
	return r.prefix + "/some-model"
}

func parseOne(t *testing.T, params string, env MapEnv) (*Deployment, *recorder) {
	t.Helper()
	cfg, rec := mustParse(t, "model_list:\n  - model_name: m\n    litellm_params: "+params+"\n", env)
	return &cfg.ModelList[0], rec
}

func TestProviderRowsCoverTheTable(t *testing.T) {
	var rows []string
	for _, r := range providerRows {
		rows = append(rows, r.prefix)
	}
	for p := range providers {
		if !slices.Contains(rows, p) {
			t.Errorf("prefix %q has no row in providerRows", p)
		}
	}
	if len(rows) != len(providers) {
		t.Errorf("%d rows for %d prefixes", len(rows), len(providers))
	}
}

// Every prefix resolves to its wire format and default base, and reads each of its key
// variables (LiteLLM stops at the first one set).
func TestProviderDefaults(t *testing.T) {
	for _, r := range providerRows {
		t.Run(r.prefix, func(t *testing.T) {
			params := "{model: " + rowModel(r) + "}"
			if r.prefix == "mock" {
				params = "{model: mock/x, mock_response: hi}"
			}
			wantBase := r.base
			if wantBase == "" && len(r.baseEnv) > 0 {
				wantBase = "https://" + r.prefix + ".internal/v1"
			}
			if r.prefix == "openai_like" {
				params = "{model: openai_like/m, api_base: 'https://like.internal/v1'}"
				wantBase = "https://like.internal/v1"
			}
			dep, _ := parseOne(t, params, providerEnv(r))
			if dep.Provider != r.provider || dep.APIBase != wantBase {
				t.Errorf("Provider %q APIBase %q, want %q %q", dep.Provider, dep.APIBase, r.provider, wantBase)
			}
			for _, name := range r.keyEnv {
				env := providerEnv(r)
				env[name] = "key-from-" + name
				dep, _ := parseOne(t, params, env)
				if got := dep.LiteLLMParams.APIKey.Reveal(); got != "key-from-"+name {
					t.Errorf("with only %s set, api_key = %q", name, got)
				}
			}
			if len(r.keyEnv) > 1 {
				env := providerEnv(r)
				for _, name := range r.keyEnv {
					env[name] = "key-from-" + name
				}
				env[r.keyEnv[0]] = "" // an empty variable counts as unset, as in LiteLLM
				dep, _ := parseOne(t, params, env)
				if got, want := dep.LiteLLMParams.APIKey.Reveal(), "key-from-"+r.keyEnv[1]; got != want {
					t.Errorf("with every key variable set and the first empty, api_key = %q, want %q", got, want)
				}
			}
		})
	}
}

// A base variable overrides the default, the first of several wins, and an explicit api_base
// wins over every variable. An explicit api_key wins over the key variables.
func TestProviderOverrides(t *testing.T) {
	for _, r := range providerRows {
		if len(r.baseEnv) == 0 {
			continue
		}
		t.Run(r.prefix, func(t *testing.T) {
			env := providerEnv(r)
			for i, name := range r.baseEnv {
				env[name] = fmt.Sprintf("https://env-%d.example/v1", i)
			}
			for _, name := range r.keyEnv {
				env[name] = "key-from-env"
			}
			model := rowModel(r)
			dep, _ := parseOne(t, "{model: "+model+"}", env)
			if want := "https://env-0.example/v1"; dep.APIBase != want {
				t.Errorf("APIBase %q, want %q (from %s)", dep.APIBase, want, r.baseEnv[0])
			}
			dep, _ = parseOne(t, "{model: "+model+", api_base: 'https://explicit.example/v1/', api_key: sk-explicit}", env)
			if want := "https://explicit.example/v1"; dep.APIBase != want {
				t.Errorf("explicit api_base: APIBase %q, want %q", dep.APIBase, want)
			}
			if got := dep.LiteLLMParams.APIKey.Reveal(); got != "sk-explicit" {
				t.Errorf("explicit api_key: %q", got)
			}
		})
	}
}

func TestProviderBaseSuffixes(t *testing.T) {
	for _, tc := range []struct{ model, base, want string }{
		{"ollama/llama3.1:8b", "http://ollama:11434", "http://ollama:11434/v1"},
		{"ollama_chat/llama3.1:8b", "http://ollama:11434/", "http://ollama:11434/v1"},
		{"ollama_chat/llama3.1:8b", "http://ollama:11434/api/chat", "http://ollama:11434/v1"},
		{"ollama/llama3.1:8b", "http://ollama:11434/api/generate", "http://ollama:11434/v1"},
		{"ollama/llama3.1:8b", "http://ollama:11434/v1", "http://ollama:11434/v1"},
		{"ollama/llama3.1:8b", "https://gw.example/ollama", "https://gw.example/ollama/v1"},
		{"mistral/mistral-large-latest", "https://mistral.example", "https://mistral.example/v1"},
		{"mistral/mistral-large-latest", "https://mistral.example/v1", "https://mistral.example/v1"},
		{"groq/llama", "https://groq.example/openai", "https://groq.example/openai"}, // others are taken as written
	} {
		dep, _ := parseOne(t, "{model: '"+tc.model+"', api_base: '"+tc.base+"'}", MapEnv{})
		if dep.APIBase != tc.want {
			t.Errorf("%s at %s: APIBase %q, want %q", tc.model, tc.base, dep.APIBase, tc.want)
		}
	}
	dep, _ := parseOne(t, "{model: ollama/llama3.1}", MapEnv{"OLLAMA_API_BASE": "http://gpu-box:11434"})
	if dep.APIBase != "http://gpu-box:11434/v1" {
		t.Errorf("OLLAMA_API_BASE: APIBase %q", dep.APIBase)
	}
}

func TestProviderModels(t *testing.T) {
	for _, tc := range []struct{ model, want string }{
		{"fireworks_ai/llama-v3p1-8b-instruct", "accounts/fireworks/models/llama-v3p1-8b-instruct"},
		{"fireworks_ai/accounts/my-team/models/tuned", "accounts/my-team/models/tuned"},
		{"openrouter/meta-llama/llama-3.1-8b-instruct", "meta-llama/llama-3.1-8b-instruct"},
		{"ollama/llama3.1:8b", "llama3.1:8b"},
		{"vertex_ai/claude-3-5-sonnet@20240620", "claude-3-5-sonnet@20240620"},
		{"bedrock/anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"},
		{"bedrock/converse/us.anthropic.claude-3-5-sonnet-20241022-v2:0", "us.anthropic.claude-3-5-sonnet-20241022-v2:0"},
		{"bedrock/arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123", "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123"},
	} {
		dep, _ := parseOne(t, "{model: '"+tc.model+"'}", MapEnv{"VERTEXAI_PROJECT": "p", "AWS_REGION": "us-east-1"})
		if dep.UpstreamModel != tc.want {
			t.Errorf("%s: UpstreamModel %q, want %q", tc.model, dep.UpstreamModel, tc.want)
		}
	}
}

func TestUnknownProviderListsTheSupported(t *testing.T) {
	errs := parseErr(t, "model_list:\n  - model_name: m\n    litellm_params:\n      model: bedrok/anthropic.claude-v2\n")
	wantError(t, errs, "model_list[0].litellm_params.model", `unsupported provider "bedrok"; did you mean bedrock/?`)
	for _, p := range []string{"anthropic/", "bedrock/", "gemini/", "groq/", "ollama_chat/", "vertex_ai/", "xai/", "or a bare OpenAI model name"} {
		if !strings.Contains(errs[0].Reason, p) {
			t.Errorf("the error does not list %s: %q", p, errs[0].Reason)
		}
	}
	if !strings.Contains(errs[0].Reason, "(supported: anthropic/, azure/, bedrock/, cerebras/") {
		t.Errorf("the supported prefixes are not sorted: %q", errs[0].Reason)
	}
}

func TestNativeKeyWarnings(t *testing.T) {
	for _, tc := range []struct{ model, want string }{
		{"anthropic/claude-3-5-haiku-latest", "no api_key and ANTHROPIC_API_KEY is not set; Anthropic will refuse the calls"},
		{"gemini/gemini-2.0-flash", "no api_key and GOOGLE_API_KEY, GEMINI_API_KEY, PALM_API_KEY are not set; Gemini will refuse the calls"},
	} {
		cfg, _ := mustParse(t, "model_list: [{model_name: m, litellm_params: {model: "+tc.model+"}}]", MapEnv{})
		if len(cfg.Warnings) != 1 || !strings.HasSuffix(cfg.Warnings[0], "model_list[0].litellm_params.api_key: "+tc.want) {
			t.Errorf("%s: warnings %q, want one saying %q", tc.model, cfg.Warnings, tc.want)
		}
		cfg, _ = mustParse(t, "model_list: [{model_name: m, litellm_params: {model: "+tc.model+", api_key: k}}]", MapEnv{})
		if len(cfg.Warnings) != 0 {
			t.Errorf("%s with a key: warnings %q", tc.model, cfg.Warnings)
		}
	}
	wantError(t, parseErr(t, "model_list:\n  - model_name: m\n    litellm_params:\n      model: anthropic/claude\n      api_key: \"sk-ant\\n\"\n"),
		"model_list[0].litellm_params.api_key", "cannot be sent as an HTTP header")
}

func TestVertexResolution(t *testing.T) {
	dir := t.TempDir()
	saFile := filepath.Join(dir, "sa.json")
	if err := os.WriteFile(saFile, []byte(`{"type": "service_account", "project_id": "from-file", "private_key": "vertex-file-secret-0201"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	userFile := filepath.Join(dir, "adc.json")
	if err := os.WriteFile(userFile, []byte(`{"type": "authorized_user", "quota_project_id": "from-quota", "refresh_token": "vertex-refresh-secret-0202"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, params            string
		env                     MapEnv
		project, location, base string
	}{
		{"params", "vertex_project: p1, vertex_location: europe-west4", nil, "p1", "europe-west4", "https://europe-west4-aiplatform.googleapis.com"},
		{"defaults", "vertex_project: p1", nil, "p1", "us-central1", "https://us-central1-aiplatform.googleapis.com"},
		{"global", "vertex_project: p1, vertex_location: global", nil, "p1", "global", "https://aiplatform.googleapis.com"},
		{"VERTEXAI_*", "{}", MapEnv{"VERTEXAI_PROJECT": "p2", "VERTEX_PROJECT": "no", "VERTEXAI_LOCATION": "asia-east1", "VERTEX_LOCATION": "no"}, "p2", "asia-east1", "https://asia-east1-aiplatform.googleapis.com"},
		{"VERTEX_*", "{}", MapEnv{"VERTEX_PROJECT": "p3", "VERTEX_LOCATION": "us-east5"}, "p3", "us-east5", "https://us-east5-aiplatform.googleapis.com"},
		{"params win", "vertex_project: p1, vertex_location: us-east4", MapEnv{"VERTEXAI_PROJECT": "p2", "VERTEXAI_LOCATION": "asia-east1"}, "p1", "us-east4", "https://us-east4-aiplatform.googleapis.com"},
		{"credentials file", "vertex_credentials: " + saFile, nil, "from-file", "us-central1", "https://us-central1-aiplatform.googleapis.com"},
		{"credentials JSON", `vertex_credentials: '{"type": "service_account", "project_id": "from-json"}'`, nil, "from-json", "us-central1", "https://us-central1-aiplatform.googleapis.com"},
		{"VERTEXAI_PROJECT before credentials", "vertex_credentials: " + saFile, MapEnv{"VERTEXAI_PROJECT": "p2"}, "p2", "us-central1", "https://us-central1-aiplatform.googleapis.com"},
		{"GOOGLE_APPLICATION_CREDENTIALS", "{}", MapEnv{"GOOGLE_APPLICATION_CREDENTIALS": userFile}, "from-quota", "us-central1", "https://us-central1-aiplatform.googleapis.com"},
		{"GOOGLE_CLOUD_PROJECT last", "{}", MapEnv{"GOOGLE_CLOUD_PROJECT": "p4"}, "p4", "us-central1", "https://us-central1-aiplatform.googleapis.com"},
		{"api_base wins", "{vertex_project: p1, api_base: 'https://vertex-gw.internal/'}", MapEnv{"VERTEXAI_API_BASE": "https://no.example"}, "p1", "us-central1", "https://vertex-gw.internal"},
		{"VERTEXAI_API_BASE", "vertex_project: p1", MapEnv{"VERTEXAI_API_BASE": "https://vertex-gw.internal"}, "p1", "us-central1", "https://vertex-gw.internal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			params := tc.params
			if !strings.HasPrefix(params, "{") {
				params = "{" + params + "}"
			}
			params = "{model: vertex_ai/gemini-2.0-flash, " + strings.TrimPrefix(params, "{")
			env := tc.env
			if env == nil {
				env = MapEnv{}
			}
			dep, _ := parseOne(t, params, env)
			if dep.Project != tc.project || dep.Location != tc.location || dep.APIBase != tc.base {
				t.Errorf("Project %q Location %q APIBase %q, want %q %q %q", dep.Project, dep.Location, dep.APIBase, tc.project, tc.location, tc.base)
			}
		})
	}
	dep, _ := parseOne(t, "{model: vertex_ai/gemini, vertex_project: p}", MapEnv{"GOOGLE_APPLICATION_CREDENTIALS": saFile})
	if dep.LiteLLMParams.VertexCredentials.Reveal() != saFile {
		t.Errorf("GOOGLE_APPLICATION_CREDENTIALS was not taken as the credentials")
	}
	dep, _ = parseOne(t, "{model: vertex_ai/gemini, vertex_project: p}", MapEnv{})
	if dep.LiteLLMParams.VertexCredentials != "" {
		t.Errorf("no credentials anywhere should leave application default credentials (empty)")
	}
}

func TestVertexErrors(t *testing.T) {
	const lp = "model_list[0].litellm_params"
	doc := func(params string) string {
		return "model_list:\n  - model_name: m\n    litellm_params:\n      model: vertex_ai/gemini-2.0-flash\n" + params
	}
	dir := t.TempDir()
	notJSON := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(notJSON, []byte("-----BEGIN PRIVATE KEY----- vertex-pem-secret-0203"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, params, key, reason string }{
		{"no project", "", lp + ".vertex_project", "required for vertex_ai/ deployments: the Google Cloud project (or set VERTEXAI_PROJECT, VERTEX_PROJECT or GOOGLE_CLOUD_PROJECT, or give vertex_credentials with a project_id)"},
		{"project with a slash", "      vertex_project: a/b\n", lp + ".vertex_project", `must be a Google Cloud project ID or number: letters, digits, '-', '_', '.' and ':' (got "a/b")`},
		{"location not a host label", "      vertex_project: p\n      vertex_location: evil.com/x\n", lp + ".vertex_location", "must be a Google Cloud location such as us-central1 or global"},
		{"credentials file missing", "      vertex_project: p\n      vertex_credentials: /nonexistent/vertex-path-secret-0204.json\n", lp + ".vertex_credentials", "is neither credentials JSON nor the path of a readable file: no such file or directory (value not shown)"},
		{"credentials file not JSON", "      vertex_project: p\n      vertex_credentials: " + notJSON + "\n", lp + ".vertex_credentials", "holds no JSON object"},
		{"credentials JSON broken", "      vertex_project: p\n      vertex_credentials: '{\"private_key\": \"vertex-broken-secret-0205\"'\n", lp + ".vertex_credentials", "holds no JSON object"},
		{"LiteLLM-style full URL", "      vertex_project: p\n      api_base: https://gw.example/v1/projects/p/locations/l/publishers/google/models/gemini\n", lp + ".api_base", "herd builds the /v1/projects/{project}/locations/... path itself"},
		{"model with a query", "      vertex_project: p\n", lp + ".model", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := doc(tc.params)
			if tc.name == "model with a query" {
				y = strings.Replace(y, "gemini-2.0-flash", "gemini?alt=x", 1)
				tc.reason = "the model after vertex_ai/ may hold only letters, digits and -_.:@/"
			}
			errs := parseErr(t, y)
			wantError(t, errs, tc.key, tc.reason)
			for _, s := range []string{"vertex-pem-secret-0203", "vertex-path-secret-0204", "vertex-broken-secret-0205", "PRIVATE KEY"} {
				if strings.Contains(errs[0].Error(), s) {
					t.Errorf("error shows secret %q: %s", s, errs[0])
				}
			}
		})
	}
	// A bad value from the environment is named, not shown.
	_, err := Parse("test.yaml", []byte(doc("")), MapEnv{"VERTEXAI_PROJECT": "p", "VERTEXAI_LOCATION": "Not A Region"}, nil)
	if err == nil || !strings.Contains(err.Error(), "(got the value of VERTEXAI_LOCATION)") || strings.Contains(err.Error(), "Not A Region") {
		t.Errorf("env location error: %v", err)
	}
	_, err = Parse("test.yaml", []byte(doc("      vertex_project: p\n")), MapEnv{"VERTEXAI_CREDENTIALS": `{"private_key": "vertex-env-secret-0206"`}, nil)
	if err == nil || !strings.Contains(err.Error(), "holds no JSON object (from VERTEXAI_CREDENTIALS)") || strings.Contains(err.Error(), "vertex-env-secret-0206") {
		t.Errorf("env credentials error: %v", err)
	}
}

func TestBedrockResolution(t *testing.T) {
	const arn = "arn:aws:bedrock:eu-west-3:123456789012:inference-profile/eu.anthropic.claude-3-5-sonnet-20240620-v1:0"
	for _, tc := range []struct {
		name, params string
		env          MapEnv
		region, base string
	}{
		{"aws_region_name", "aws_region_name: us-east-1", MapEnv{"AWS_REGION": "eu-west-1"}, "us-east-1", "https://bedrock-runtime.us-east-1.amazonaws.com"},
		{"AWS_REGION_NAME", "{}", MapEnv{"AWS_REGION_NAME": "ap-south-1", "AWS_REGION": "eu-west-1"}, "ap-south-1", "https://bedrock-runtime.ap-south-1.amazonaws.com"},
		{"AWS_REGION", "{}", MapEnv{"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-east-2"}, "eu-west-1", "https://bedrock-runtime.eu-west-1.amazonaws.com"},
		{"AWS_DEFAULT_REGION", "{}", MapEnv{"AWS_DEFAULT_REGION": "us-east-2"}, "us-east-2", "https://bedrock-runtime.us-east-2.amazonaws.com"},
		{"aws_bedrock_runtime_endpoint", "{aws_region_name: us-east-1, aws_bedrock_runtime_endpoint: 'https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com'}", MapEnv{"AWS_BEDROCK_RUNTIME_ENDPOINT": "https://no.example"}, "us-east-1", "https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com"},
		{"AWS_BEDROCK_RUNTIME_ENDPOINT", "aws_region_name: us-east-1", MapEnv{"AWS_BEDROCK_RUNTIME_ENDPOINT": "https://bedrock-proxy.internal"}, "us-east-1", "https://bedrock-proxy.internal"},
		{"api_base wins", "{aws_region_name: us-east-1, api_base: 'https://gw.internal', aws_bedrock_runtime_endpoint: 'https://no.example'}", nil, "us-east-1", "https://gw.internal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			params := tc.params
			if !strings.HasPrefix(params, "{") {
				params = "{" + params + "}"
			}
			env := tc.env
			if env == nil {
				env = MapEnv{}
			}
			dep, _ := parseOne(t, "{model: bedrock/anthropic.claude-3-haiku-20240307-v1:0, "+strings.TrimPrefix(params, "{"), env)
			if dep.Region != tc.region || dep.APIBase != tc.base {
				t.Errorf("Region %q APIBase %q, want %q %q", dep.Region, dep.APIBase, tc.region, tc.base)
			}
		})
	}

	// The ARN's region comes before the environment's, as in LiteLLM.
	dep, _ := parseOne(t, "{model: 'bedrock/"+arn+"'}", MapEnv{"AWS_REGION": "us-east-1"})
	if dep.Region != "eu-west-3" || dep.UpstreamModel != arn {
		t.Errorf("ARN: Region %q UpstreamModel %q", dep.Region, dep.UpstreamModel)
	}
	// No region anywhere: LiteLLM's us-west-2, with a warning.
	cfg, _ := mustParse(t, "model_list: [{model_name: m, litellm_params: {model: bedrock/amazon.nova-lite-v1:0}}]", MapEnv{})
	if d := cfg.ModelList[0]; d.Region != DefaultBedrockRegion || d.APIBase != "https://bedrock-runtime.us-west-2.amazonaws.com" {
		t.Errorf("default: Region %q APIBase %q", d.Region, d.APIBase)
	}
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "aws_region_name: no aws_region_name, and AWS_REGION_NAME, AWS_REGION and AWS_DEFAULT_REGION are not set: calling us-west-2 as LiteLLM does") {
		t.Errorf("default region warnings: %q", cfg.Warnings)
	}
	// invoke/ is served through Converse, with a warning.
	cfg, _ = mustParse(t, "model_list: [{model_name: m, litellm_params: {model: bedrock/invoke/anthropic.claude-v2, aws_region_name: us-east-1}}]", MapEnv{})
	if d := cfg.ModelList[0]; d.UpstreamModel != "anthropic.claude-v2" || len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "bedrock/invoke/<model> is served as bedrock/converse/<model>") {
		t.Errorf("invoke: UpstreamModel %q, warnings %q", d.UpstreamModel, cfg.Warnings)
	}
	// An api_key falls back to the Bedrock API key variable.
	dep, _ = parseOne(t, "{model: bedrock/amazon.nova-lite-v1:0, aws_region_name: us-east-1}", MapEnv{"AWS_BEARER_TOKEN_BEDROCK": "bedrock-key"})
	if dep.LiteLLMParams.APIKey.Reveal() != "bedrock-key" {
		t.Errorf("AWS_BEARER_TOKEN_BEDROCK not read")
	}
}

func TestBedrockErrors(t *testing.T) {
	const lp = "model_list[0].litellm_params"
	doc := func(model, params string) string {
		return "model_list:\n  - model_name: m\n    litellm_params:\n      model: '" + model + "'\n      aws_region_name: us-east-1\n" + params
	}
	for _, tc := range []struct{ name, model, params, key, reason string }{
		{"no model after the route", "bedrock/converse/", "", lp + ".model", `names no model after "bedrock/converse/"`},
		{"LiteLLM invoke route for imported models", "bedrock/llama/arn:aws:bedrock:us-east-1:1:imported-model/x", "", lp + ".model", "LiteLLM's bedrock/llama/ route is not supported: herd calls the Converse API"},
		{"model with a space", "bedrock/anthropic claude", "", lp + ".model", "the Bedrock model ID or ARN may hold only letters, digits and -_.:@/"},
		{"region not a host label", "bedrock/amazon.nova-lite-v1:0", "", lp + ".aws_region_name", "must be an AWS region such as us-east-1"},
		{"access key without secret", "bedrock/amazon.nova-lite-v1:0", "      aws_access_key_id: AKIA-only-secret-0301\n", lp + ".aws_secret_access_key", "required with aws_access_key_id"},
		{"secret without access key", "bedrock/amazon.nova-lite-v1:0", "      aws_secret_access_key: aws-only-secret-0302\n", lp + ".aws_access_key_id", "required with aws_secret_access_key"},
		{"session token with a newline", "bedrock/amazon.nova-lite-v1:0", "      aws_access_key_id: a\n      aws_secret_access_key: b\n      aws_session_token: \"aws-token-secret-0303\\n\"\n", lp + ".aws_session_token", "must not hold CR, LF (a trailing newline?)"},
		{"web identity without role", "bedrock/amazon.nova-lite-v1:0", "      aws_web_identity_token: aws-oidc-secret-0304\n", lp + ".aws_role_name", "required with aws_web_identity_token"},
		{"oidc/ reference", "bedrock/amazon.nova-lite-v1:0", "      aws_role_name: arn:aws:iam::1:role/r\n      aws_web_identity_token: oidc/circleci_v2/\n", lp + ".aws_web_identity_token", "is a LiteLLM oidc/ reference, which herd does not resolve"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := doc(tc.model, tc.params)
			if tc.name == "region not a host label" {
				y = strings.Replace(y, "aws_region_name: us-east-1", "aws_region_name: evil.example.com#", 1)
			}
			errs := parseErr(t, y)
			wantError(t, errs, tc.key, tc.reason)
			if strings.Contains(errs[0].Error(), "-secret-03") {
				t.Errorf("error shows a secret: %s", errs[0])
			}
		})
	}
	_, err := Parse("test.yaml", []byte(doc("bedrock/amazon.nova-lite-v1:0", "")), MapEnv{}, nil)
	if err != nil {
		t.Fatalf("the base document should parse: %v", err)
	}
	y := "model_list:\n  - model_name: m\n    litellm_params:\n      model: bedrock/amazon.nova-lite-v1:0\n"
	_, err = Parse("test.yaml", []byte(y), MapEnv{"AWS_REGION": "US East"}, nil)
	if err == nil || !strings.Contains(err.Error(), "test.yaml:3: model_list[0].litellm_params.aws_region_name: must be an AWS region such as us-east-1: lower-case letters, digits and '-' (got the value of AWS_REGION)") {
		t.Errorf("env region error: %v", err)
	}
}

func TestSettingsForAnotherProviderWarn(t *testing.T) {
	cfg, _ := mustParse(t, `
model_list:
  - model_name: m
    litellm_params:
      model: openai/gpt-4o
      api_key: k
      vertex_project: p
      aws_region_name: us-east-1
      aws_secret_access_key: aws-misplaced-secret-0401
  - model_name: m
    litellm_params:
      model: vertex_ai/gemini-2.0-flash
      vertex_project: p
      aws_profile_name: prod
  - model_name: m
    litellm_params:
      model: bedrock/amazon.nova-lite-v1:0
      aws_region_name: us-east-1
      vertex_location: us-central1
      aws_bedrock_runtime_endpoint: https://a.example
      api_base: https://b.example
`, MapEnv{})
	want := []string{
		"test.yaml:7: model_list[0].litellm_params.vertex_project: has no effect: it is read for vertex_ai/ deployments only, and this one is openai",
		"test.yaml:8: model_list[0].litellm_params.aws_region_name: has no effect: it is read for bedrock/ deployments only, and this one is openai",
		"test.yaml:9: model_list[0].litellm_params.aws_secret_access_key: has no effect: it is read for bedrock/ deployments only, and this one is openai",
		"test.yaml:14: model_list[1].litellm_params.aws_profile_name: has no effect: it is read for bedrock/ deployments only, and this one is vertex_ai",
		"test.yaml:19: model_list[2].litellm_params.vertex_location: has no effect: it is read for vertex_ai/ deployments only, and this one is bedrock",
		"test.yaml:20: model_list[2].litellm_params.aws_bedrock_runtime_endpoint: has no effect: api_base is set and wins, as in LiteLLM",
	}
	if !slices.Equal(cfg.Warnings, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(cfg.Warnings, "\n"), strings.Join(want, "\n"))
	}
	cfg, _ = mustParse(t, "model_list: [{model_name: m, litellm_params: {model: openai/gpt-4o, api_key: k, vertex_ai_project: p}}]", MapEnv{})
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "vertex_ai_project: LiteLLM setting not supported by herd; herd reads LiteLLM's other name for it, vertex_project") {
		t.Errorf("vertex_ai_project: %q", cfg.Warnings)
	}
}

// The new secrets are redacted wherever a config is rendered: JSON, YAML, fmt verbs, slog, and
// the golden files (TestGolden, via testSecrets).
func TestCloudSecretsRedacted(t *testing.T) {
	secrets := []string{"vertex-json-secret-0501", "AKIA-redact-secret-0502", "aws-redact-secret-0503", "aws-token-secret-0504", "aws-oidc-secret-0505"}
	cfg, _ := mustParse(t, `
model_list:
  - model_name: m
    litellm_params:
      model: vertex_ai/gemini-2.0-flash
      vertex_project: p
      vertex_credentials: '{"type": "service_account", "private_key": "vertex-json-secret-0501"}'
  - model_name: m
    litellm_params:
      model: bedrock/amazon.nova-lite-v1:0
      aws_region_name: us-east-1
      aws_access_key_id: AKIA-redact-secret-0502
      aws_secret_access_key: aws-redact-secret-0503
      aws_session_token: aws-token-secret-0504
      aws_role_name: arn:aws:iam::1:role/r
      aws_web_identity_token: aws-oidc-secret-0505
`, MapEnv{})
	j, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	y, err := yamlMarshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.ModelList[1].LiteLLMParams
	rendered := []string{string(j), y,
		fmt.Sprintf("%v %+v %#v %s %q", cfg.ModelList, cfg.ModelList, cfg.ModelList, p.AWSSecretAccessKey, p.AWSSessionToken),
		slogText(cfg.ModelList[0].LiteLLMParams), slogText(p.AWSWebIdentityToken)}
	for _, out := range rendered {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("secret %q leaked into:\n%.400s", s, out)
			}
		}
	}
	if !strings.Contains(y, "vertex_credentials: '[redacted]'") || !strings.Contains(string(j), `"AWSSecretAccessKey":"[redacted]"`) {
		t.Errorf("secrets are not shown as [redacted]:\n%s", y)
	}
	if p.AWSSecretAccessKey.Reveal() != "aws-redact-secret-0503" || cfg.ModelList[0].LiteLLMParams.VertexCredentials.Reveal() == "" {
		t.Errorf("Reveal lost the values")
	}
}

// Secrets never change a deployment's ID; what names the upstream (region, project,
// location, role) does, and deployments without those keep the IDs they always had.
func TestCloudDeploymentIDs(t *testing.T) {
	y := func(extra string) string {
		return "model_list:\n  - model_name: m\n    litellm_params:\n      model: bedrock/amazon.nova-lite-v1:0\n" + extra
	}
	id := func(doc string, env MapEnv) string {
		cfg, _ := mustParse(t, doc, env)
		return cfg.ModelList[0].ID
	}
	base := id(y("      aws_region_name: us-east-1\n      aws_access_key_id: a1\n      aws_secret_access_key: s1\n"), MapEnv{})
	if got := id(y("      aws_region_name: us-east-1\n      aws_access_key_id: a2\n      aws_secret_access_key: s2\n      aws_session_token: t\n"), MapEnv{}); got != base {
		t.Errorf("rotating AWS keys changed the ID: %s -> %s", base, got)
	}
	if got := id(y(""), MapEnv{"AWS_REGION": "us-east-1"}); got != base {
		t.Errorf("the same region from the environment changed the ID: %s -> %s", base, got)
	}
	for _, other := range []string{
		"      aws_region_name: eu-west-1\n",
		"      aws_region_name: us-east-1\n      aws_bedrock_runtime_endpoint: https://vpce.example\n",
		"      aws_region_name: us-east-1\n      aws_role_name: arn:aws:iam::2:role/other-account\n",
		"      aws_region_name: us-east-1\n      aws_profile_name: other\n",
	} {
		if got := id(y(other), MapEnv{}); got == base {
			t.Errorf("%q did not change the ID", other)
		}
	}
	// A region behind an explicit endpoint still identifies the deployment (it signs for it).
	a := id(y("      aws_region_name: us-east-1\n      api_base: https://gw.example\n"), MapEnv{})
	b := id(y("      aws_region_name: eu-west-1\n      api_base: https://gw.example\n"), MapEnv{})
	if a == b {
		t.Error("the region behind an explicit endpoint is not part of the ID")
	}

	v := "model_list:\n  - model_name: m\n    litellm_params:\n      model: vertex_ai/gemini-2.0-flash\n      api_base: https://gw.example\n"
	p1 := id(v+"      vertex_project: p1\n", MapEnv{})
	if p1 == id(v+"      vertex_project: p2\n", MapEnv{}) {
		t.Error("the Vertex project is not part of the ID")
	}
	if p1 == id(v+"      vertex_project: p1\n      vertex_location: europe-west4\n", MapEnv{}) {
		t.Error("the Vertex location is not part of the ID")
	}
	if p1 != id(v+"      vertex_project: p1\n      vertex_credentials: '{\"type\": \"service_account\", \"private_key\": \"x\"}'\n", MapEnv{}) {
		t.Error("the Vertex credentials changed the ID")
	}
	want := deploymentID("m", "vertex_ai/gemini-2.0-flash", "https://gw.example", "", "project=p1", "location=us-central1")
	if p1 != want {
		t.Errorf("vertex ID %s, want the hash of the identity with project and location (%s)", p1, want)
	}
}

// In the admin API (an AdminEnv build) a credentials file path is taken only if this node's
// file uses it, and inline credentials only of types that name no files, URLs or commands.
func TestVertexCredentialsThroughTheAdminAPI(t *testing.T) {
	dir := t.TempDir()
	known := filepath.Join(dir, "known.json")
	other := filepath.Join(dir, "other.json")
	for _, f := range []string{known, other} {
		if err := os.WriteFile(f, []byte(`{"type": "service_account", "project_id": "p"}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fileYAML := "model_list:\n  - model_name: m\n    litellm_params:\n      model: vertex_ai/gemini\n      vertex_credentials: " + known + "\n"
	static, file, err := Split([]byte(fileYAML))
	if err != nil {
		t.Fatal(err)
	}
	env := NewAdminEnv(MapEnv{}, static, file, nil)
	add := func(params map[string]any) error {
		params["model"] = "vertex_ai/gemini"
		_, err := Build("admin", static, file.AddModel(map[string]any{"model_name": "m", "litellm_params": params}), env, slog.New(slog.DiscardHandler))
		return err
	}
	if err := add(map[string]any{"vertex_credentials": known}); err != nil {
		t.Errorf("a path the file uses: %v", err)
	}
	if err := add(map[string]any{"vertex_credentials": other}); err == nil || !strings.Contains(err.Error(), "names a credentials file this node's config file does not use") {
		t.Errorf("another path: %v", err)
	}
	if err := add(map[string]any{"vertex_credentials": `{"type": "service_account", "project_id": "p", "private_key": "k"}`}); err != nil {
		t.Errorf("inline service account: %v", err)
	}
	err = add(map[string]any{"vertex_project": "p", "vertex_credentials": `{"type": "external_account", "credential_source": {"file": "/etc/shadow"}, "token_url": "https://evil.example"}`})
	if err == nil || !strings.Contains(err.Error(), "through the admin API only service_account and authorized_user credentials are taken") {
		t.Errorf("inline external_account: %v", err)
	}
	// The file's own credentials are trusted, also when every node rebuilds them from raft.
	ext := `{"type": "external_account", "credential_source": {"file": "/var/run/token"}, "token_url": "https://sts.googleapis.com/v1/token"}`
	fileYAML2 := "model_list:\n  - model_name: m\n    litellm_params:\n      model: vertex_ai/gemini\n      vertex_project: p\n      vertex_credentials: '" + ext + "'\n"
	static2, file2, err := Split([]byte(fileYAML2))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build("raft config v1", static2, file2, NewAdminEnv(MapEnv{}, static2, file2, nil), nil); err != nil {
		t.Errorf("the file's own external_account credentials: %v", err)
	}
	// The file itself is trusted: Parse takes any path and any type.
	if _, err := Parse("f.yaml", []byte(strings.Replace(fileYAML, known, other, 1)), MapEnv{}, nil); err != nil {
		t.Errorf("a file may name any credentials file: %v", err)
	}
}

// docs/providers.md lists every prefix with its default base and variables.
func TestProvidersDoc(t *testing.T) {
	b, err := os.ReadFile("../docs/providers.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "| `") {
			prefix, _, _ := strings.Cut(strings.TrimPrefix(line, "| `"), "`")
			rows[prefix] = line
		}
	}
	for _, r := range providerRows {
		if r.prefix == "" {
			continue
		}
		line, ok := rows[r.prefix+"/"]
		if !ok {
			t.Errorf("docs/providers.md has no row for %s/", r.prefix)
			continue
		}
		base := r.base
		switch r.provider {
		case "vertex_ai":
			base = "https://{location}-aiplatform.googleapis.com"
		case "bedrock":
			base = "https://bedrock-runtime.{region}.amazonaws.com"
		}
		for _, want := range append(append([]string{base}, r.keyEnv...), r.baseEnv...) {
			if want != "" && !strings.Contains(line, want) {
				t.Errorf("the docs row of %s/ does not say %s:\n%s", r.prefix, want, line)
			}
		}
	}
}

// The dial guard treats the new defaults like OpenAI's: a host a file deployment reaches (its
// default included) is trusted, as is one a provider's base variable names; any other is
// checked, so an admin-API ollama/ deployment reaches localhost only as an explicit
// api_base: http://localhost:11434 would.
func TestUpstreamPolicyProviderDefaults(t *testing.T) {
	file, _ := mustParse(t, `model_list:
  - {model_name: m, litellm_params: {model: groq/llama, api_key: k}}
  - {model_name: m, litellm_params: {model: ollama/llama3.1}}
  - {model_name: m, litellm_params: {model: vertex_ai/gemini-2.0-flash, vertex_project: p, vertex_location: europe-west4}}
  - {model_name: m, litellm_params: {model: bedrock/amazon.nova-lite-v1:0, aws_region_name: eu-west-1}}
`, MapEnv{})
	env := MapEnv{"AWS_BEDROCK_RUNTIME_ENDPOINT": "https://10.9.8.7", "LM_STUDIO_API_BASE": "http://192.168.1.20:1234/v1"}
	file.GeneralSettings.AdminAPIBaseDenyPrivate = true
	pol := NewUpstreamPolicy(file, env)
	for _, h := range []struct{ scheme, host string }{
		{"https", "api.groq.com"}, {"http", "localhost:11434"}, {"https", "europe-west4-aiplatform.googleapis.com"},
		{"https", "bedrock-runtime.eu-west-1.amazonaws.com"}, {"https", "10.9.8.7"}, {"http", "192.168.1.20:1234"},
	} {
		if !pol.Trusted(h.scheme, h.host) {
			t.Errorf("%s://%s is not trusted", h.scheme, h.host)
		}
	}
	if pol.Trusted("http", "localhost:1234") {
		t.Error("lm_studio's default is trusted though no file deployment uses it")
	}
	if err := pol.CheckIP(netip.MustParseAddr("127.0.0.1")); err == nil {
		t.Error("with admin_api_base_deny_private an untrusted loopback address is reachable")
	}
}
