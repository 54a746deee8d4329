package config

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/config golden (*.golden) and error (*.err) files")

const testdata = "../testdata/config"

// Secret values the test environment holds. No error, warning or log line may ever contain one.
var testSecrets = []string{
	"sk-azure-secret-0001", "redis-secret-0002", "sk-eu-secret-0003", "sk-us-secret-0004",
	"sk-openai-secret-0005", "sk-master-secret-0006", "c2VjcmV0LWdvc3NpcC1rZXk=",
}

// testEnv is the environment every testdata file is parsed with; extra entries win.
func testEnv(extra map[string]string) MapEnv {
	env := MapEnv{
		"AZURE_API_KEY":     "sk-azure-secret-0001",
		"REDIS_HOST":        "redis.internal",
		"REDIS_PASSWORD":    "redis-secret-0002",
		"REDIS_PORT":        "6380",
		"AZURE_EU_API_BASE": "https://herd-eu.openai.azure.com/",
		"AZURE_EU_API_KEY":  "sk-eu-secret-0003",
		"AZURE_US_API_KEY":  "sk-us-secret-0004",
		"US_TPM":            "150000",
		"OPENAI_API_KEY":    "sk-openai-secret-0005",
		"POD_ADDR":          "10.0.0.7:7946",
		"HERD_GOSSIP_KEY":   "c2VjcmV0LWdvc3NpcC1rZXk=", // "secret-gossip-key" is 17 bytes: only valid where a test wants it bad
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// fileEnv holds per-file additions to testEnv.
var fileEnv = map[string]map[string]string{
	"realistic.yaml": {
		"HERD_GOSSIP_KEY":    "MDEyMzQ1Njc4OWFiY2RlZg==", // 16 bytes
		"LITELLM_MASTER_KEY": "sk-master-secret-0006",
	},
	"env_fallbacks.yaml": {
		"AZURE_API_BASE":    "https://herd-fallback.openai.azure.com/",
		"AZURE_API_VERSION": "2024-02-01",
		"OPENAI_BASE_URL":   "https://openai-gateway.internal/v1",
		"OPENAI_API_BASE":   "https://ignored.internal/v1", // OPENAI_BASE_URL is read first
	},
}

// recorder is a slog handler that keeps records for assertions.
type recorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec.Clone())
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// lines renders each record as "LEVEL msg k=v ..." for assertions.
func (r *recorder) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.records {
		s := rec.Level.String() + " " + rec.Message
		rec.Attrs(func(a slog.Attr) bool {
			s += " " + a.Key + "=" + a.Value.String()
			return true
		})
		out = append(out, s)
	}
	return out
}

func parseTestFile(t *testing.T, path string) (*Config, error, *recorder) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	rel := filepath.ToSlash(strings.TrimPrefix(path, "../"))
	cfg, err := Parse(rel, data, testEnv(fileEnv[filepath.Base(path)]), slog.New(rec))
	return cfg, err, rec
}

// goldenView is what a golden file holds: the resolved config and the warnings.
type goldenView struct {
	Warnings []string `json:",omitempty"`
	Config   *Config
}

func TestGolden(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(testdata, "good", "*.yaml"))
	if len(files) < 5 {
		t.Fatalf("found only %d good configs", len(files))
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			cfg, err, rec := parseTestFile(t, file)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			view := goldenView{Warnings: cfg.Warnings, Config: cfg}
			if len(cfg.EnvironmentVariables) > 0 {
				// environment_variables often carry secrets; the golden files show only names.
				c := *cfg
				c.EnvironmentVariables = map[string]string{}
				for k := range cfg.EnvironmentVariables {
					c.EnvironmentVariables[k] = "[redacted]"
				}
				view.Config = &c
			}
			got, err := json.MarshalIndent(view, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			assertNoSecrets(t, string(got))
			assertNoSecrets(t, strings.Join(rec.lines(), "\n"))
			compareFile(t, strings.TrimSuffix(file, ".yaml")+".golden", got)
		})
	}
}

func TestBad(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(testdata, "bad", "*.yaml"))
	if len(files) < 12 {
		t.Fatalf("found only %d bad configs", len(files))
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			cfg, err, _ := parseTestFile(t, file)
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", cfg)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config along with an error")
			}
			assertErrorShape(t, err)
			assertNoSecrets(t, err.Error())
			compareFile(t, strings.TrimSuffix(file, ".yaml")+".err", []byte(err.Error()+"\n"))
		})
	}
}

func compareFile(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./config -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run go test ./config -update and review the diff)\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// errorsOf returns the *Errors in err, failing if err is anything else.
func errorsOf(t testing.TB, err error) []*Error {
	t.Helper()
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []*Error
		for _, e := range joined.Unwrap() {
			ce, ok := e.(*Error)
			if !ok {
				t.Fatalf("joined error %T %q is not a *Error", e, e)
			}
			out = append(out, ce)
		}
		return out
	}
	ce, ok := err.(*Error)
	if !ok {
		t.Fatalf("error %T %q is neither a *Error nor joined *Errors", err, err)
	}
	return []*Error{ce}
}

func assertErrorShape(t testing.TB, err error) {
	t.Helper()
	errs := errorsOf(t, err)
	for i, e := range errs {
		if e.Reason == "" {
			t.Errorf("error %d has no reason: %q", i, e)
		}
		if i > 0 && e.Line < errs[i-1].Line {
			t.Errorf("errors out of file order: line %d after line %d", e.Line, errs[i-1].Line)
		}
	}
}

func assertNoSecrets(t testing.TB, text string) {
	t.Helper()
	for _, s := range testSecrets {
		if strings.Contains(text, s) {
			t.Errorf("secret %q leaked into:\n%s", s, text)
		}
	}
}

func mustParse(t *testing.T, yaml string, env MapEnv) (*Config, *recorder) {
	t.Helper()
	rec := &recorder{}
	cfg, err := Parse("test.yaml", []byte(yaml), env, slog.New(rec))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg, rec
}

func TestUnknownKeyWarnings(t *testing.T) {
	cfg, rec := mustParse(t, `
model_list:
  - model_name: a
    litellm_params:
      model: openai/gpt-4o
      rmp: 5
      temperature: 0.1
      headers: {X: y}
  - model_name: b
    litellm_params:
      model: openai/gpt-4o
      api_bsae: https://x.example
      TPM: 5
router_settings:
  routng_strategy: least-busy
  model_group_alias:
    c: {model: a, hiden: true}
  redis-host: localhost
litellm_settings:
  success_callback: [langfuse]
general_settings:
  database_url: os.environ/DATABASE_URL
  store_model_in_db: true
zzz_totally_unknown: 1
`, MapEnv{})
	wantWarnings := []string{
		`test.yaml:6: model_list[0].litellm_params.rmp: unknown config key ignored; did you mean "rpm"?`,
		`test.yaml:7: model_list[0].litellm_params.temperature: LiteLLM setting not used by herd`,
		`test.yaml:8: model_list[0].litellm_params.headers: LiteLLM setting not supported by herd; herd sends litellm_params.extra_headers`,
		`test.yaml:12: model_list[1].litellm_params.api_bsae: unknown config key ignored; did you mean "api_base"?`,
		`test.yaml:13: model_list[1].litellm_params.TPM: unknown config key ignored; did you mean "tpm"?`,
		`test.yaml:15: router_settings.routng_strategy: unknown config key ignored; did you mean "routing_strategy"?`,
		`test.yaml:17: router_settings.model_group_alias.c.hiden: unknown config key ignored; did you mean "hidden"?`,
		`test.yaml:18: router_settings.redis-host: unknown config key ignored; did you mean "redis_host"?`,
		`test.yaml:20: litellm_settings.success_callback: LiteLLM setting not used by herd`,
		`test.yaml:22: general_settings.database_url: LiteLLM setting not used by herd`,
		`test.yaml:23: general_settings.store_model_in_db: LiteLLM setting not used by herd`,
		`test.yaml:24: zzz_totally_unknown: unknown config key ignored`,
	}
	if !slices.Equal(cfg.Warnings, wantWarnings) {
		t.Errorf("Warnings:\n%s\nwant:\n%s", strings.Join(cfg.Warnings, "\n"), strings.Join(wantWarnings, "\n"))
	}
	lines := rec.lines()
	for _, want := range []string{
		`WARN unknown config key ignored file=test.yaml line=6 key=model_list[0].litellm_params.rmp did_you_mean=rpm`,
		`WARN unknown config key ignored file=test.yaml line=24 key=zzz_totally_unknown`,
		// Accepted but ignored is a warning, one per key, never Info (issue 11).
		`WARN LiteLLM setting not used by herd file=test.yaml line=7 key=model_list[0].litellm_params.temperature`,
		`WARN LiteLLM setting not used by herd file=test.yaml line=20 key=litellm_settings.success_callback`,
		`WARN LiteLLM setting not used by herd file=test.yaml line=22 key=general_settings.database_url`,
		`WARN LiteLLM setting not used by herd file=test.yaml line=23 key=general_settings.store_model_in_db`,
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("missing log line %q in:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "WARN ") {
			t.Errorf("a key herd does not use was logged below WARN: %q", l)
		}
	}
	// The typo'd keys had no effect.
	if cfg.RouterSettings.RoutingStrategy != DefaultRoutingStrategy {
		t.Errorf("routing strategy = %q", cfg.RouterSettings.RoutingStrategy)
	}
	if cfg.ModelList[0].Limits.RPM != 0 || cfg.RouterSettings.ModelGroupAlias["c"].Hidden {
		t.Errorf("a misspelt key took effect: %+v", cfg.ModelList[0].Limits)
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"rpm", "tpm", "routing_strategy", "api_base", "model_name"}
	for key, want := range map[string]string{
		"rmp": "rpm", "RPM": "rpm", "routng_strategy": "routing_strategy", "routing-strategy": "routing_strategy",
		"apibase": "api_base", "modelname": "model_name", "colour": "", "xyz": "", "": "",
	} {
		if got := suggest(key, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestSecretsNeverInErrors(t *testing.T) {
	env := testEnv(map[string]string{
		"LITELLM_MASTER_KEY": "sk-master-secret-0006",
		"RPM_FROM_ENV":       "sk-openai-secret-0005", // a secret where a number belongs
		"BASE_SECRET":        "sk-us-secret-0004",     // a secret where a URL belongs
		"STRATEGY":           "sk-eu-secret-0003",     // a secret where a strategy belongs
		"BAD_GOSSIP":         "redis-secret-0002",     // not base64
		"ALIAS_TARGET":       "sk-master-secret-0006", // alias to a missing "group"
		"BAD_TIMEOUT":        "sk-azure-secret-0001",  // not seconds
	})
	_, err := Parse("secrets.yaml", []byte(`
model_list:
  - model_name: a
    litellm_params:
      model: azure/x
      api_key: sk-literal-secret-0007
      api_base: os.environ/BASE_SECRET
      rpm: os.environ/RPM_FROM_ENV
      timeout: os.environ/BAD_TIMEOUT
  - model_name: b
    litellm_params:
      model: openai/x
      api_key: <your-api-key>
      api_base: https://user:sk-literal-secret-0008@example.com/v1
      rpm: -1
router_settings:
  routing_strategy: os.environ/STRATEGY
  redis_password: <your redis password>
  redis_url: sk-literal-secret-0009
  model_group_alias:
    z: os.environ/ALIAS_TARGET
cluster_settings:
  gossip_key: os.environ/BAD_GOSSIP
general_settings:
  master_key: <sk-literal-secret-0010>
`), env, nil)
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	text := err.Error()
	assertNoSecrets(t, text)
	for _, s := range []string{"sk-literal-secret-0007", "sk-literal-secret-0008", "sk-literal-secret-0009", "sk-literal-secret-0010"} {
		if strings.Contains(text, s) {
			t.Errorf("literal secret %q leaked into:\n%s", s, text)
		}
	}
	// Every bad value was reported, by variable name where it came from the environment.
	for _, want := range []string{
		"secrets.yaml:7: model_list[0].litellm_params.api_base: must be an http(s) URL with a host, e.g. https://example.openai.azure.com (got the value of os.environ/BASE_SECRET)",
		"secrets.yaml:8: model_list[0].litellm_params.rpm: must be an integer (got the value of os.environ/RPM_FROM_ENV)",
		`secrets.yaml:9: model_list[0].litellm_params.timeout: must be a number of seconds (30, 0.5) or a duration like "1m30s" (got the value of os.environ/BAD_TIMEOUT)`,
		"secrets.yaml:13: model_list[1].litellm_params.api_key: is a placeholder from the docs, not a real value",
		"secrets.yaml:15: model_list[1].litellm_params.rpm: must not be negative (got -1)",
		"secrets.yaml:17: router_settings.routing_strategy: must be one of simple-shuffle, least-busy, usage-based-routing, usage-based-routing-v2, latency-based-routing (got the value of os.environ/STRATEGY)",
		"secrets.yaml:18: router_settings.redis_password: is a placeholder from the docs, not a real value",
		"secrets.yaml:19: router_settings.redis_url: must be a redis://, rediss:// or unix:// URL",
		"secrets.yaml:21: router_settings.model_group_alias.z: points at model group the value of os.environ/ALIAS_TARGET, which no model_list entry serves",
		"secrets.yaml:23: cluster_settings.gossip_key: must be a base64-encoded 16, 24 or 32-byte key (make one with: herd keygen)",
		"secrets.yaml:25: general_settings.master_key: is a placeholder from the docs, not a real value",
	} {
		if !strings.Contains(text, want+"\n") && !strings.HasSuffix(text, want) {
			t.Errorf("missing error %q in:\n%s", want, text)
		}
	}
}

func TestSecretFormatting(t *testing.T) {
	cfg, _ := mustParse(t, "model_list: [{model_name: a, litellm_params: {model: gpt-4o, api_key: sk-literal-secret-0011}}]", MapEnv{})
	p := cfg.ModelList[0].LiteLLMParams
	b, _ := json.Marshal(p)
	for _, s := range []string{string(b), slogText(p.APIKey)} {
		if strings.Contains(s, "sk-literal-secret-0011") {
			t.Errorf("secret leaked: %s", s)
		}
	}
	if p.APIKey.Reveal() != "sk-literal-secret-0011" {
		t.Errorf("Reveal = %q", p.APIKey.Reveal())
	}
}

func slogText(v any) string {
	var b bytes.Buffer
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "v", v)
	return b.String()
}

const identityYAML = `
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o
      api_base: https://a.openai.azure.com/
      api_key: os.environ/KEY
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o
      api_base: https://a.openai.azure.com
      api_key: os.environ/OTHER_KEY
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o
      api_base: https://b.openai.azure.com
      api_key: os.environ/KEY
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o
      api_base: https://b.openai.azure.com
      api_key: os.environ/KEY
      api_version: "2024-06-01"
  - model_name: pinned
    litellm_params:
      model: openai/gpt-4o
    model_info:
      id: my-own-id
`

func ids(cfg *Config) []string {
	var out []string
	for _, d := range cfg.ModelList {
		out = append(out, d.ID)
	}
	return out
}

func TestDeploymentIDsAreStable(t *testing.T) {
	first, _ := mustParse(t, identityYAML, MapEnv{"KEY": "sk-one", "OTHER_KEY": "sk-two"})
	// Pinned values (cross-checked with Python's hashlib): the same config gives the same IDs in
	// every process, on every node and after restarts. Changing them resets every deployment's
	// shared counters, so a change here must be deliberate.
	want := []string{"774e98e3744eeac6", "774e98e3744eeac6-2", "bb7d6e159442749a", "96145705f5c46cec", "my-own-id"}
	got := ids(first)
	if !slices.Equal(got, want) {
		t.Errorf("IDs = %q, want %q", got, want)
	}

	// Rotating keys keeps every ID.
	rotated, _ := mustParse(t, identityYAML, MapEnv{"KEY": "sk-rotated", "OTHER_KEY": "sk-rotated-2"})
	if !slices.Equal(ids(rotated), got) {
		t.Errorf("key rotation changed IDs: %q -> %q", got, ids(rotated))
	}
	for _, id := range got {
		if strings.Contains(id, "sk-") {
			t.Errorf("ID %q contains key material", id)
		}
	}
	seen := map[string]bool{}
	for _, id := range got {
		if seen[id] {
			t.Errorf("duplicate ID %q", id)
		}
		seen[id] = true
	}
	// The effective api_base and api_version are part of the identity; a trailing slash is not.
	if got[2] == got[3] {
		t.Error("api_version did not change the ID")
	}
	if got[0] != deploymentID("gpt-4o", "azure/gpt-4o", "https://a.openai.azure.com", DefaultAzureAPIVersion) {
		t.Error("ID is not the hash of group, model, effective api_base and api_version")
	}
}

func TestLimitsLookupOrder(t *testing.T) {
	cfg, _ := mustParse(t, `
model_list:
  - {model_name: a, rpm: 1, tpm: 10, litellm_params: {model: mock/x, rpm: 2, tpm: 20}, model_info: {rpm: 3, tpm: 30}}
  - {model_name: a, litellm_params: {model: mock/x, rpm: 2, tpm: 20}, model_info: {rpm: 3, tpm: 30}}
  - {model_name: a, litellm_params: {model: mock/x}, model_info: {rpm: 3, tpm: 30}}
  - {model_name: a, rpm: 1, litellm_params: {model: mock/x, tpm: 20}}
  - {model_name: a, litellm_params: {model: mock/x}}
  - {model_name: a, rpm: 0, litellm_params: {model: mock/x, rpm: 2}}
`, MapEnv{})
	want := []Limits{{1, 10}, {2, 20}, {3, 30}, {1, 20}, {0, 0}, {0, 0}}
	for i, w := range want {
		if got := cfg.ModelList[i].Limits; got != w {
			t.Errorf("deployment %d: Limits = %+v, want %+v", i, got, w)
		}
	}
}

func TestTimeoutResolution(t *testing.T) {
	deployments := `
model_list:
  - {model_name: a, litellm_params: {model: mock/x, timeout: 5, stream_timeout: 2}}
  - {model_name: a, litellm_params: {model: mock/x, timeout: 1.5}}
  - {model_name: a, litellm_params: {model: mock/x}}
`
	for _, tc := range []struct {
		name, settings string
		want           [][2]time.Duration // Timeout, StreamTimeout per deployment
	}{
		{"defaults", "", [][2]time.Duration{{5 * time.Second, 2 * time.Second}, {1500 * time.Millisecond, 1500 * time.Millisecond}, {DefaultTimeout, DefaultTimeout}}},
		{"request_timeout", "litellm_settings: {request_timeout: 60}", [][2]time.Duration{{5 * time.Second, 2 * time.Second}, {1500 * time.Millisecond, 1500 * time.Millisecond}, {time.Minute, time.Minute}}},
		{"router wins", "litellm_settings: {request_timeout: 60}\nrouter_settings: {timeout: 30s, stream_timeout: 3}",
			[][2]time.Duration{{5 * time.Second, 2 * time.Second}, {1500 * time.Millisecond, 3 * time.Second}, {30 * time.Second, 3 * time.Second}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := mustParse(t, deployments+tc.settings, MapEnv{})
			for i, w := range tc.want {
				d := cfg.ModelList[i]
				if d.Timeout != w[0] || d.StreamTimeout != w[1] {
					t.Errorf("deployment %d: Timeout %v StreamTimeout %v, want %v %v", i, d.Timeout, d.StreamTimeout, w[0], w[1])
				}
			}
		})
	}
}

func TestEnvPrecedence(t *testing.T) {
	env := MapEnv{
		"AZURE_API_BASE":     "https://from-process-env.openai.azure.com",
		"AZURE_API_KEY":      "sk-process",
		"LITELLM_MASTER_KEY": "sk-master-from-env",
		"OPENAI_API_BASE":    "https://openai-api-base.internal/v1",
		"MODEL_GROUP":        "from-env",
	}
	cfg, _ := mustParse(t, `
environment_variables:
  AZURE_API_BASE: https://from-config.openai.azure.com/   # overrides the process environment
  NEW_VAR: os.environ/NOT_RESOLVED                        # taken literally
model_list:
  - model_name: os.environ/MODEL_GROUP
    litellm_params:
      model: azure/a
  - model_name: b
    litellm_params:
      model: azure/b
      api_base: https://explicit.openai.azure.com      # litellm_params wins over the environment
      api_key: sk-explicit
  - model_name: c
    litellm_params:
      model: openai/c                                   # OPENAI_API_BASE (no OPENAI_BASE_URL set)
`, env)
	d := cfg.ModelList
	checks := []struct{ name, got, want string }{
		{"environment_variables over process env", d[0].APIBase, "https://from-config.openai.azure.com"},
		{"env key fallback", d[0].LiteLLMParams.APIKey.Reveal(), "sk-process"},
		{"os.environ in model_name", d[0].ModelName, "from-env"},
		{"explicit api_base", d[1].APIBase, "https://explicit.openai.azure.com"},
		{"explicit api_key", d[1].LiteLLMParams.APIKey.Reveal(), "sk-explicit"},
		{"OPENAI_API_BASE", d[2].APIBase, "https://openai-api-base.internal/v1"},
		{"master key from LITELLM_MASTER_KEY", cfg.GeneralSettings.MasterKey.Reveal(), "sk-master-from-env"},
		{"env written", env["AZURE_API_BASE"], "https://from-config.openai.azure.com/"},
		{"literal environment value", env["NEW_VAR"], "os.environ/NOT_RESOLVED"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}

	cfg, _ = mustParse(t, "general_settings: {master_key: sk-in-file}", MapEnv{"LITELLM_MASTER_KEY": "sk-env"})
	if got := cfg.GeneralSettings.MasterKey.Reveal(); got != "sk-in-file" {
		t.Errorf("config master_key should win over LITELLM_MASTER_KEY, got %q", got)
	}
	cfg, _ = mustParse(t, "model_list: [{model_name: a, litellm_params: {model: gpt-4o}}]",
		MapEnv{"OPENAI_BASE_URL": "https://base-url/v1", "OPENAI_API_BASE": "https://api-base/v1"})
	if got := cfg.ModelList[0].APIBase; got != "https://base-url/v1" {
		t.Errorf("OPENAI_BASE_URL should be read before OPENAI_API_BASE, got %q", got)
	}
}

func TestProviders(t *testing.T) {
	cfg, _ := mustParse(t, `
model_list:
  - {model_name: a, litellm_params: {model: azure/dep, api_base: "https://x.openai.azure.com//"}}
  - {model_name: a, litellm_params: {model: openai/gpt-4o}}
  - {model_name: a, litellm_params: {model: hosted_vllm/meta/llama, api_base: "http://vllm:8000/v1"}}
  - {model_name: a, litellm_params: {model: openai_like/m, api_base: "http://local/v1"}}
  - {model_name: a, litellm_params: {model: text-completion-openai/gpt-3.5-turbo-instruct}}
  - {model_name: a, litellm_params: {model: mock/m}}
  - {model_name: a, litellm_params: {model: anthropic/claude, mock_response: hi}}
  - {model_name: a, litellm_params: {model: gpt-4o}}
`, MapEnv{})
	want := [][3]string{ // Provider, UpstreamModel, APIBase
		{"azure", "dep", "https://x.openai.azure.com"},
		{"openai", "gpt-4o", DefaultOpenAIAPIBase},
		{"openai", "meta/llama", "http://vllm:8000/v1"},
		{"openai", "m", "http://local/v1"},
		{"openai", "gpt-3.5-turbo-instruct", DefaultOpenAIAPIBase},
		{"mock", "m", ""},
		{"mock", "claude", ""},
		{"openai", "gpt-4o", DefaultOpenAIAPIBase},
	}
	for i, w := range want {
		d := cfg.ModelList[i]
		if got := [3]string{d.Provider, d.UpstreamModel, d.APIBase}; got != w {
			t.Errorf("%s: got %q, want %q", d.LiteLLMParams.Model, got, w)
		}
	}
	if v := cfg.ModelList[0].APIVersion; v != DefaultAzureAPIVersion {
		t.Errorf("azure APIVersion = %q", v)
	}
}

func TestDefaults(t *testing.T) {
	cfg, rec := mustParse(t, "", MapEnv{})
	rs, gs := cfg.RouterSettings, cfg.GeneralSettings
	if rs.RoutingStrategy != DefaultRoutingStrategy || *rs.NumRetries != 0 || rs.Timeout.Duration() != DefaultTimeout ||
		rs.CooldownTime.Duration() != DefaultCooldownTime || *rs.MaxFallbacks != DefaultMaxFallbacks ||
		*rs.DefaultMaxTokens != DefaultMaxTokensEstimate || *gs.MaxRequestSizeMB != DefaultMaxRequestSizeMB ||
		*gs.MaxResponseSizeMB != DefaultMaxResponseSizeMB {
		t.Errorf("defaults not applied: %+v %+v", rs, gs)
	}
	if len(cfg.ModelList) != 0 || len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "model_list: is empty") {
		t.Errorf("want one empty-model_list warning, got %q (log %q)", cfg.Warnings, rec.lines())
	}
	cfg, _ = mustParse(t, "litellm_settings: {num_retries: 4, request_timeout: 9}", MapEnv{})
	if *cfg.RouterSettings.NumRetries != 4 || cfg.RouterSettings.Timeout.Duration() != 9*time.Second {
		t.Errorf("litellm_settings fallbacks not applied: %+v", cfg.RouterSettings)
	}
}

func TestDemo(t *testing.T) {
	cfg := Demo()
	if cfg.File != "" || len(cfg.Warnings) != 0 {
		t.Errorf("File %q, Warnings %q", cfg.File, cfg.Warnings)
	}
	if len(cfg.ModelList) != 2 {
		t.Fatalf("want 2 deployments, got %d", len(cfg.ModelList))
	}
	a, b := cfg.ModelList[0], cfg.ModelList[1]
	for _, d := range []Deployment{a, b} {
		if d.ModelName != "demo-model" || d.Provider != "mock" || d.LiteLLMParams.MockResponse == nil || d.Limits.RPM <= 0 || d.ID == "" {
			t.Errorf("bad demo deployment %+v", d)
		}
	}
	if a.ID == b.ID {
		t.Errorf("demo IDs collide: %q", a.ID)
	}
	// Each call returns a fresh config that callers may not share by accident.
	cfg.ModelList[0].ID = "changed"
	if Demo().ModelList[0].ID == "changed" {
		t.Error("Demo returned shared state")
	}
}

func TestSeconds(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"30", 30 * time.Second, ""},
		{"0.5", 500 * time.Millisecond, ""},
		{`"30"`, 30 * time.Second, ""},
		{"1m30s", 90 * time.Second, ""},
		{"0", 0, ""},
		{"-1", 0, "must not be negative (got -1)"},
		{"-1s", 0, `must not be negative (got "-1s")`},
		{"soon", 0, `must be a number of seconds (30, 0.5) or a duration like "1m30s" (got "soon")`},
		{".nan", 0, `must be a number of seconds (30, 0.5) or a duration like "1m30s" (got .nan)`},
		{"true", 0, `must be a number of seconds (30, 0.5) or a duration like "1m30s" (got true)`},
		{"[1]", 0, `must be a number of seconds (30, 0.5) or a duration like "1m30s" (got a list)`},
		{"1e300", 0, "is too large (got 1e300)"},
	} {
		var s struct {
			T Seconds `yaml:"t"`
		}
		err := yamlUnmarshal("t: "+tc.in, &s)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: err = %v, want %q", tc.in, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case tc.err == "" && s.T.Duration() != tc.want:
			t.Errorf("%s: got %v, want %v", tc.in, s.T.Duration(), tc.want)
		}
	}
	// JSON and YAML write seconds, and read them back.
	s := Seconds(1500 * time.Millisecond)
	b, _ := json.Marshal(s)
	var back Seconds
	if string(b) != "1.5" || json.Unmarshal(b, &back) != nil || back != s {
		t.Errorf("JSON round trip: %s -> %v", b, back)
	}
	if json.Unmarshal([]byte(`"2m"`), &back) != nil || back.Duration() != 2*time.Minute {
		t.Errorf("JSON duration string: %v", back)
	}
	if y, _ := yamlMarshal(s); y != "1.5\n" {
		t.Errorf("YAML = %q", y)
	}
}

func TestAliasForms(t *testing.T) {
	var m map[string]Alias
	if err := yamlUnmarshal("a: g\nb: {model: g, hidden: true}", &m); err != nil {
		t.Fatal(err)
	}
	if m["a"] != (Alias{Model: "g"}) || m["b"] != (Alias{Model: "g", Hidden: true}) {
		t.Errorf("got %+v", m)
	}
	if err := yamlUnmarshal("a: [g]", &m); err == nil || !strings.Contains(err.Error(), reasonAlias) {
		t.Errorf("list alias: err = %v", err)
	}
	for _, a := range []Alias{{Model: "g"}, {Model: "g", Hidden: true}} {
		y, _ := yamlMarshal(a)
		var back Alias
		if err := yamlUnmarshal(y, &back); err != nil || back != a {
			t.Errorf("YAML round trip of %+v: %q -> %+v (%v)", a, y, back, err)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	t.Setenv("HERD_TEST_LOAD_KEY", "sk-load")
	t.Setenv("HERD_TEST_SET_BY_CONFIG", "before")
	if err := os.WriteFile(path, []byte(`
environment_variables:
  HERD_TEST_SET_BY_CONFIG: after
model_list:
  - model_name: a
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/HERD_TEST_LOAD_KEY}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.File != path || cfg.ModelList[0].LiteLLMParams.APIKey.Reveal() != "sk-load" || os.Getenv("HERD_TEST_SET_BY_CONFIG") != "after" {
		t.Errorf("Load: File %q key %q env %q", cfg.File, cfg.ModelList[0].LiteLLMParams.APIKey.Reveal(), os.Getenv("HERD_TEST_SET_BY_CONFIG"))
	}

	_, err = Load(filepath.Join(dir, "missing.yaml"), nil)
	var ce *Error
	if !errors.As(err, &ce) || !errors.Is(err, fs.ErrNotExist) || ce.File != filepath.Join(dir, "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "c.yaml", Line: 7, Key: "a.b", Reason: "bad"}, "c.yaml:7: a.b: bad"},
		{Error{File: "c.yaml", Reason: "bad"}, "c.yaml: bad"},
		{Error{Line: 3, Key: "k", Reason: "bad"}, "line 3: k: bad"},
		{Error{Key: "k", Reason: "bad"}, "k: bad"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

func TestKeyPaths(t *testing.T) {
	for _, tc := range []struct{ parent, key, path string }{
		{"", "model_list", "model_list"},
		{"router_settings.model_group_alias", "gpt-4", "router_settings.model_group_alias.gpt-4"},
		{"router_settings.model_group_alias", "gpt-3.5-turbo", `router_settings.model_group_alias["gpt-3.5-turbo"]`},
	} {
		p := keyPath(tc.parent, tc.key)
		if p != tc.path || parentPath(p) != tc.parent {
			t.Errorf("keyPath(%q, %q) = %q, parent %q", tc.parent, tc.key, p, parentPath(p))
		}
	}
	if got := parentPath(`a["x.y[1]"][2]`); got != `a["x.y[1]"]` {
		t.Errorf("parentPath = %q", got)
	}
}

func TestSyntaxErrorLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"a: 1\nb: c: d\n", "s.yaml:2: invalid YAML: mapping values are not allowed in this context"},
		{"model_list:\n  - model_name: x\n    litellm_params:\n      model: \"openai/gpt\n      rpm: 5\n", "s.yaml:4: invalid YAML: found unexpected end of stream"},
		{"a:\n  b: 1\n  c: 2\n d: 3\n", "s.yaml:4: invalid YAML: did not find expected key"},
		{"a: [1, 2\nb: 3\n", "s.yaml:1: invalid YAML: did not find expected ',' or ']'"},
		{"a: *nowhere\n", "s.yaml:1: invalid YAML: unknown anchor 'nowhere' referenced"},
	} {
		_, err := Parse("s.yaml", []byte(tc.in), MapEnv{}, nil)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: got %v, want %s", tc.in, err, tc.want)
		}
	}
}

func TestRedisTLSKeys(t *testing.T) {
	const model = "model_list: [{model_name: m, litellm_params: {model: openai/m}}]\n"
	cfg, _ := mustParse(t, model+`
router_settings:
  redis_host: r1
  redis_ssl: true
  redis_ssl_cert_reqs: CERT_NONE
litellm_settings:
  cache_params:
    type: redis
    url: rediss://c1:6380
    ssl_cert_reqs: " Optional"
    ssl_ca_certs: /etc/ca.pem
`, MapEnv{})
	if got := cfg.RouterSettings.RedisSSLCertReqs; got != "none" {
		t.Errorf("redis_ssl_cert_reqs CERT_NONE = %q, want none", got)
	}
	if got := cfg.LiteLLMSettings.CacheParams.SSLCertReqs; got != "optional" {
		t.Errorf("cache_params.ssl_cert_reqs = %q, want optional", got)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings: %q", cfg.Warnings)
	}

	// TLS keys without TLS do nothing, and say so.
	cfg, _ = mustParse(t, model+`
router_settings:
  redis_host: r1
  redis_ssl_ca_certs: /etc/ca.pem
litellm_settings:
  cache_params: {type: redis, host: c1, ssl: false, ssl_certfile: /c.pem}
`, MapEnv{})
	want := []string{
		"test.yaml:5: router_settings.redis_ssl_ca_certs: has no effect without router_settings.redis_ssl: true or a rediss:// URL",
		"test.yaml:7: litellm_settings.cache_params.ssl_certfile: has no effect without litellm_settings.cache_params.ssl: true or a rediss:// URL",
	}
	if !slices.Equal(cfg.Warnings, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(cfg.Warnings, "\n"), strings.Join(want, "\n"))
	}

	_, err := Parse("test.yaml", []byte(`
router_settings:
  redis_host: r1
  redis_ssl: true
  redis_ssl_cert_reqs: maybe
  redis_ssl_keyfile: /k.pem
`), MapEnv{}, nil)
	if err == nil {
		t.Fatal("bad TLS keys accepted")
	}
	for _, w := range []string{
		`test.yaml:5: router_settings.redis_ssl_cert_reqs: must be required, optional or none (got "maybe")`,
		"test.yaml:6: router_settings.redis_ssl_keyfile: is the key of router_settings.redis_ssl_certfile, which is not set",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

// LiteLLM's Redis Cluster and Sentinel keys in cache_params are read (not warned about as
// unused), and checked: one way to name Redis, [host, port] pairs, a master name.
func TestRedisTopologyKeys(t *testing.T) {
	const model = "model_list: [{model_name: m, litellm_params: {model: openai/m}}]\n"
	cfg, _ := mustParse(t, model+`
litellm_settings:
  cache_params:
    type: redis
    redis_startup_nodes: [{host: 10.0.0.1, port: "7001"}, {host: 10.0.0.2, port: 7002}]
    password: pw
`, MapEnv{})
	if got := cfg.LiteLLMSettings.CacheParams.RedisStartupNodes; len(got) != 2 || got[1] != (RedisNode{Host: "10.0.0.2", Port: "7002"}) {
		t.Errorf("redis_startup_nodes = %+v", got)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings: %q", cfg.Warnings)
	}
	cfg, _ = mustParse(t, model+`
router_settings:
  redis_host: s1:26379,s2:26379
  redis_sentinel_master: mymaster
  redis_sentinel_password: os.environ/SENTINEL_PW
litellm_settings:
  cache_params:
    type: redis
    sentinel_nodes: [["s1", 26379], [s2, "26380"]]
    service_name: mymaster
    sentinel_password: os.environ/SENTINEL_PW
`, MapEnv{"SENTINEL_PW": "spw"})
	cp := cfg.LiteLLMSettings.CacheParams
	if len(cp.SentinelNodes) != 2 || !slices.Equal(cp.SentinelNodes[1], []string{"s2", "26380"}) || cp.ServiceName != "mymaster" ||
		cp.SentinelPassword.Reveal() != "spw" || cfg.RouterSettings.RedisSentinelPassword.Reveal() != "spw" {
		t.Errorf("sentinel keys: %+v, router %q", cp, cfg.RouterSettings.RedisSentinelPassword.Reveal())
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings: %q", cfg.Warnings)
	}

	// Sentinel settings without Sentinels do nothing, and say so.
	cfg, _ = mustParse(t, model+`
router_settings:
  redis_host: r1
  redis_sentinel_password: spw
litellm_settings:
  cache_params: {type: redis, host: c1, service_name: m}
`, MapEnv{})
	want := []string{
		"test.yaml:5: router_settings.redis_sentinel_password: has no effect without router_settings.redis_sentinel_master",
		"test.yaml:7: litellm_settings.cache_params.service_name: has no effect without litellm_settings.cache_params.sentinel_nodes",
	}
	if !slices.Equal(cfg.Warnings, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(cfg.Warnings, "\n"), strings.Join(want, "\n"))
	}

	_, err := Parse("test.yaml", []byte(model+`
litellm_settings:
  cache_params:
    type: redis
    host: c1
    redis_startup_nodes: [{port: 7001}, {host: n2, port: 70000}]
    sentinel_nodes: [[s1], ["", 1], [s2, 26379]]
`), MapEnv{}, nil)
	if err == nil {
		t.Fatal("bad topology keys accepted")
	}
	for _, w := range []string{
		"test.yaml:4: litellm_settings.cache_params: names Redis more than one way: set one of url (or host), redis_startup_nodes and sentinel_nodes",
		"litellm_settings.cache_params.redis_startup_nodes[0].host: is required",
		`litellm_settings.cache_params.redis_startup_nodes[1].port: must be a port number from 1 to 65535 (got "70000")`,
		"test.yaml:8: litellm_settings.cache_params.sentinel_nodes[0]: must be a [host, port] pair",
		"litellm_settings.cache_params.sentinel_nodes[1]: must be a [host, port] pair",
		"litellm_settings.cache_params.service_name: is required with sentinel_nodes",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

// Redis mode checks every admission in Redis: the gossip cluster's limit settings are accepted
// there but do nothing, and the config says so. Without Redis they are silent.
func TestClusterLimitSettingsInRedisMode(t *testing.T) {
	const model = "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_key: k}\n"
	fast := "router_settings:\n  cluster_limit_mode: fast\n  cluster_limit_wait: 0.01\n"
	cfg, _ := mustParse(t, model+fast+"  redis_host: r1\n", MapEnv{})
	want := []string{
		"test.yaml:6: router_settings.cluster_limit_wait: has no effect: usage is shared in Redis, which checks every admission itself; the wait for rights applies with cluster_limit_mode: strict",
	}
	if !slices.Equal(cfg.Warnings, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(cfg.Warnings, "\n"), strings.Join(want, "\n"))
	}
	cfg, _ = mustParse(t, model+"litellm_settings:\n  cache_params: {type: redis, host: c1}\nrouter_settings:\n  cluster_limit_wait: 0.01\n", MapEnv{})
	if len(cfg.Warnings) != 1 || cfg.RouterSettings.ClusterLimitMode != ClusterLimitFast {
		t.Errorf("Redis in cache_params, no mode: warnings %q, mode %q; want the wait's warning and fast (Redis checks)", cfg.Warnings, cfg.RouterSettings.ClusterLimitMode)
	}
	// Strict with a Redis: rights on top of Redis's check, and the wait is theirs.
	cfg, _ = mustParse(t, model+"router_settings:\n  cluster_limit_mode: strict\n  cluster_limit_wait: 0.01\n  redis_host: r1\n", MapEnv{})
	if len(cfg.Warnings) != 0 || cfg.RouterSettings.ClusterLimitMode != ClusterLimitStrict {
		t.Errorf("strict with Redis: warnings %q, mode %q", cfg.Warnings, cfg.RouterSettings.ClusterLimitMode)
	}
	cfg, _ = mustParse(t, model+fast, MapEnv{})
	if len(cfg.Warnings) != 0 || cfg.RouterSettings.ClusterLimitMode != ClusterLimitFast {
		t.Errorf("without Redis: warnings %q, mode %q", cfg.Warnings, cfg.RouterSettings.ClusterLimitMode)
	}
	cfg, _ = mustParse(t, model, MapEnv{})
	if cfg.RouterSettings.ClusterLimitMode != DefaultClusterLimitMode {
		t.Errorf("without Redis or a mode: mode %q, want %q", cfg.RouterSettings.ClusterLimitMode, DefaultClusterLimitMode)
	}
}
