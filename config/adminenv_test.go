package config

import (
	"errors"
	"strings"
	"testing"
)

const adminEnvFile = `
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o
      api_base: https://eu.example.com
      api_key: os.environ/AZURE_EU_KEY
router_settings:
  redis_password: os.environ/REDIS_PASSWORD
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
cluster_settings:
  gossip_key: os.environ/MY_GOSSIP_KEY
  admin_env_allow: ["AZURE_*_KEY", "TEAM_?"]
`

// adminEnvFixture is a node started with adminEnvFile: its split config and AdminEnv.
func adminEnvFixture(t *testing.T, file string, env MapEnv) (Static, Dynamic, *AdminEnv) {
	t.Helper()
	cfg, err := Parse("node.yaml", []byte(file), env, nil)
	if err != nil {
		t.Fatal(err)
	}
	static, dyn, err := Split([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	return static, dyn, NewAdminEnv(env, static, dyn, cfg.ClusterSettings.AdminEnvAllow)
}

func adminTestEnv() MapEnv {
	return MapEnv{
		"AZURE_EU_KEY": "sk-eu-secret-0003", "AZURE_US_KEY": "sk-us-secret-0004", "REDIS_PASSWORD": "redis-secret-0002",
		"LITELLM_MASTER_KEY": "sk-master-secret-0006", "MY_GOSSIP_KEY": "MDEyMzQ1Njc4OWFiY2RlZg==",
		"DB_PASSWORD": "db-secret", "HERD_CLUSTER_KEY": "cluster-secret", "TEAM_A": "team-a-secret", "TEAM_AB": "team-ab-secret",
	}
}

// TestAdminEnv: runtime changes resolve the names the file's model_list and router_settings
// use and those admin_env_allow matches, never herd's own keys, and refuse anything else with
// an error naming the variable and the setting.
func TestAdminEnv(t *testing.T) {
	env := adminTestEnv()
	static, dyn, admin := adminEnvFixture(t, adminEnvFile, env)
	if _, err := Build("file", static, dyn, admin, nil); err != nil {
		t.Fatalf("the file's own config does not build with its AdminEnv: %v", err)
	}
	add := func(field, value string) error {
		entry := map[string]any{"model_name": "x", "litellm_params": map[string]any{
			"model": "openai/x", "api_base": "https://attacker.example", "api_key": "sk-literal"}}
		if field == "model_info.note" {
			entry["model_info"] = map[string]any{"note": value}
		} else {
			entry["litellm_params"].(map[string]any)[field] = value
		}
		_, err := Build("change", static, dyn.AddModel(entry), admin, nil)
		return err
	}
	for _, name := range []string{"AZURE_EU_KEY", "AZURE_US_KEY", "REDIS_PASSWORD", "TEAM_A"} {
		if err := add("api_key", "os.environ/"+name); err != nil {
			t.Errorf("os.environ/%s refused: %v", name, err)
		}
	}
	tests := []struct{ field, name, want string }{
		{"api_key", "DB_PASSWORD", "model_list[1].litellm_params.api_key: os.environ/DB_PASSWORD is not allowed in the admin API: this node's config file does not use it in model_list or router_settings; add it to cluster_settings.admin_env_allow"},
		{"api_key", "TEAM_AB", "os.environ/TEAM_AB is not allowed"}, // ? matches one character
		{"api_key", "LITELLM_MASTER_KEY", "os.environ/LITELLM_MASTER_KEY is not allowed in the admin API: it holds one of herd's own keys"},
		{"api_key", "MY_GOSSIP_KEY", "os.environ/MY_GOSSIP_KEY is not allowed in the admin API: it holds one of herd's own keys"},
		{"api_key", "HERD_CLUSTER_KEY", "os.environ/HERD_CLUSTER_KEY is not allowed"},
		{"api_base", "DB_PASSWORD", "model_list[1].litellm_params.api_base: os.environ/DB_PASSWORD is not allowed"},
		// model_info is shown by /model/info: a resolved value there would be read back directly.
		{"model_info.note", "DB_PASSWORD", "model_list[1].model_info.note: os.environ/DB_PASSWORD is not allowed"},
	}
	for _, tt := range tests {
		err := add(tt.field, "os.environ/"+tt.name)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s = os.environ/%s: got %v, want %q", tt.field, tt.name, err, tt.want)
			continue
		}
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("%T is not a *config.Error", err)
		}
		assertNoSecrets(t, err.Error())
		if strings.Contains(err.Error(), env[tt.name]) {
			t.Errorf("error shows the value of %s", tt.name)
		}
	}

	// Even a glob that matches everything leaves herd's own keys alone.
	static, dyn, admin = adminEnvFixture(t, strings.Replace(adminEnvFile, `["AZURE_*_KEY", "TEAM_?"]`, `["*"]`, 1), env)
	_, err := Build("change", static, dyn.UpdateRouterSettings(map[string]any{"routing_strategy": "os.environ/LITELLM_MASTER_KEY"}), admin, nil)
	if err == nil || !strings.Contains(err.Error(), "router_settings.routing_strategy: os.environ/LITELLM_MASTER_KEY is not allowed") {
		t.Errorf("router_settings naming the master key with admin_env_allow [*]: %v", err)
	}
	if _, err := Build("change", static, dyn.AddModel(map[string]any{"model_name": "x", "litellm_params": map[string]any{"model": "openai/x", "api_key": "os.environ/DB_PASSWORD"}}), admin, nil); err != nil {
		t.Errorf("admin_env_allow [*] refused DB_PASSWORD: %v", err)
	}
}

// The file's own use of a name wins over the protection of herd's keys: a model_list that sends
// LITELLM_MASTER_KEY upstream (herd in front of another LiteLLM) keeps building.
func TestAdminEnvFileUseWins(t *testing.T) {
	file := `
model_list:
  - model_name: inner
    litellm_params: {model: openai/inner, api_base: https://litellm.internal, api_key: os.environ/LITELLM_MASTER_KEY}
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
`
	static, dyn, admin := adminEnvFixture(t, file, adminTestEnv())
	if _, err := Build("file", static, dyn, admin, nil); err != nil {
		t.Fatal(err)
	}
}

func TestAdminEnvCheckRefs(t *testing.T) {
	_, _, admin := adminEnvFixture(t, adminEnvFile, adminTestEnv())
	body := map[string]any{
		"model_name":     "x",
		"litellm_params": map[string]any{"api_key": "os.environ/AZURE_US_KEY", "extra_headers": map[string]any{"X-A": "os.environ/TEAM_A", "X-B": "os.environ/DB_PASSWORD"}},
		"model_info":     map[string]any{"tags": []any{"a", "os.environ/LITELLM_MASTER_KEY"}},
	}
	err := admin.CheckRefs("", body)
	var ce *Error
	// Keys in order: litellm_params before model_info, X-A before X-B.
	if !errors.As(err, &ce) || ce.Key != "litellm_params.extra_headers.X-B" || !strings.Contains(ce.Reason, "os.environ/DB_PASSWORD") {
		t.Fatalf("CheckRefs: %v", err)
	}
	delete(body["litellm_params"].(map[string]any)["extra_headers"].(map[string]any), "X-B")
	if err := admin.CheckRefs("", body); !errors.As(err, &ce) || ce.Key != "model_info.tags[1]" {
		t.Fatalf("CheckRefs in a list: %v", err)
	}
	if err := admin.CheckRefs("router_settings", map[string]any{"redis_password": "os.environ/REDIS_PASSWORD", "x": " os.environ/DB_PASSWORD"}); err != nil {
		t.Errorf("CheckRefs refused an allowed name or a value that is no reference: %v", err)
	}
}

func TestAdminEnvAllowValidated(t *testing.T) {
	_, err := Parse("t.yaml", []byte("cluster_settings:\n  admin_env_allow: [\"AZURE_[\", \"\"]\n"), MapEnv{}, nil)
	if err == nil {
		t.Fatal("bad globs accepted")
	}
	for _, want := range []string{
		`t.yaml:2: cluster_settings.admin_env_allow[0]: is not a valid pattern (path.Match syntax: *, ?, [a-z]) (got "AZURE_[")`,
		`cluster_settings.admin_env_allow[1]: must not be empty`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// TestRuntimeChangesSendNoAmbientCredentialsElsewhere: a deployment added at runtime may use
// the node's own credentials (a provider's key variable, Google's or AWS's credential chain)
// only toward the provider's default endpoint, an endpoint the node's file names, or one the
// node's environment gives; to any other api_base only with credentials of its own. The file
// itself is trusted as written.
func TestRuntimeChangesSendNoAmbientCredentialsElsewhere(t *testing.T) {
	env := adminTestEnv()
	env["ANTHROPIC_API_KEY"] = "sk-ant-node-secret"
	env["OPENAI_API_KEY"] = "sk-openai-node-secret"
	env["AZURE_API_KEY"] = "sk-azure-node-secret"
	static, dyn, admin := adminEnvFixture(t, adminEnvFile, env)
	add := func(params map[string]any) error {
		_, err := Build("change", static, dyn.AddModel(map[string]any{"model_name": "x", "litellm_params": params}), admin, nil)
		return err
	}
	refused := []map[string]any{
		{"model": "anthropic/claude", "api_base": "https://collector.example"},
		{"model": "openai/gpt-4o", "api_base": "https://collector.example/v1"},
		{"model": "azure/eu-2", "api_base": "https://collector.example"},
		{"model": "vertex_ai/gemini-1.5-pro", "vertex_project": "p", "api_base": "https://collector.example"},
		{"model": "bedrock/anthropic.claude-3", "aws_region_name": "us-east-1", "api_base": "https://collector.example"},
	}
	for _, p := range refused {
		err := add(p)
		var ce *Error
		if !errors.As(err, &ce) || ce.Key != "model_list[1].litellm_params.api_base" || !strings.Contains(ce.Reason, "its own credentials") {
			t.Errorf("%v: err = %v, want a refusal on api_base", p["model"], err)
		}
		if err != nil && strings.Contains(err.Error(), "node-secret") {
			t.Errorf("the refusal shows the secret: %v", err)
		}
	}
	allowed := []map[string]any{
		{"model": "anthropic/claude"}, // the default endpoint
		{"model": "anthropic/claude", "api_base": "https://collector.example", "api_key": "sk-their-own"},
		{"model": "openai/gpt-4o"},
		{"model": "bedrock/anthropic.claude-3", "aws_region_name": "us-east-1", "api_base": "https://collector.example",
			"aws_access_key_id": "AKIDTHEIRS", "aws_secret_access_key": "theirs"},
		{"model": "azure/eu-2", "api_base": "https://eu.example.com"}, // the file's endpoint, with the node's AZURE_API_KEY
	}
	for _, p := range allowed {
		if err := add(p); err != nil {
			t.Errorf("%v: %v", p, err)
		}
	}
	// The file itself may point anywhere with the node's keys.
	file := "model_list:\n  - {model_name: x, litellm_params: {model: anthropic/claude, api_base: \"https://collector.example\"}}\n"
	if _, err := Parse("node.yaml", []byte(file), env, nil); err != nil {
		t.Errorf("the file itself: %v", err)
	}
}
