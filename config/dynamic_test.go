package config

import (
	"errors"
	"strings"
	"testing"
)

const dynamicFile = `model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-eu
      api_base: https://eu.example.com
      api_key: os.environ/AZURE_KEY
      rpm: 6
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-us
      api_base: https://us.example.com
      api_key: os.environ/AZURE_KEY
      rpm: 6
router_settings:
  routing_strategy: least-busy
  num_retries: 2
general_settings:
  master_key: sk-master
`

func splitTestFile(t *testing.T) (Static, Dynamic) {
	t.Helper()
	static, dyn, err := Split([]byte(dynamicFile))
	if err != nil {
		t.Fatal(err)
	}
	return static, dyn
}

func TestSplitAndBuildMatchParse(t *testing.T) {
	env := MapEnv{"AZURE_KEY": "sk-az"}
	want, err := Parse("f.yaml", []byte(dynamicFile), env, nil)
	if err != nil {
		t.Fatal(err)
	}
	static, dyn := splitTestFile(t)
	if _, ok := static["model_list"]; ok {
		t.Error("static part holds model_list")
	}
	if dyn.Version != 0 || len(dyn.ModelList) != 2 || dyn.RouterSettings["routing_strategy"] != "least-busy" {
		t.Fatalf("dynamic part %+v", dyn)
	}
	// The reference, not the secret, is what gets replicated.
	if got := dyn.ModelList[0]["litellm_params"].(map[string]any)["api_key"]; got != "os.environ/AZURE_KEY" {
		t.Errorf("api_key replicated as %v", got)
	}
	got, err := Build("raft config v0", static, dyn, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.ModelList) != 2 || got.ModelList[0].ID != want.ModelList[0].ID || got.ModelList[1].ID != want.ModelList[1].ID {
		t.Errorf("IDs differ from the file's: %v vs %v", got.ModelList, want.ModelList)
	}
	if got.ModelList[0].LiteLLMParams.APIKey.Reveal() != "sk-az" || got.GeneralSettings.MasterKey.Reveal() != "sk-master" {
		t.Error("env or static settings not applied")
	}
	if got.RouterSettings.RoutingStrategy != "least-busy" || *got.RouterSettings.NumRetries != 2 {
		t.Errorf("router settings %+v", got.RouterSettings)
	}
	if !dyn.SameContent(dyn.AddModel(nil).DeleteModel(2)) {
		t.Error("SameContent: equal content reported different")
	}
}

func TestDynamicOperations(t *testing.T) {
	env := MapEnv{"AZURE_KEY": "sk-az"}
	static, dyn := splitTestFile(t)
	base, err := Build("v0", static, dyn, env, nil)
	if err != nil {
		t.Fatal(err)
	}

	added := dyn.AddModel(map[string]any{
		"model_name":     "gpt-4o-mini",
		"litellm_params": map[string]any{"model": "openai/gpt-4o-mini", "api_key": "sk-x", "rpm": 10.0},
		"model_info":     map[string]any{"id": "mini-1"},
	})
	cfg, err := Build("v1", static, added, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.ModelList) != 3 || cfg.ModelList[2].ID != "mini-1" || cfg.ModelList[2].Limits.RPM != 10 {
		t.Fatalf("after add: %+v", cfg.ModelList)
	}
	if len(dyn.ModelList) != 2 {
		t.Fatal("AddModel changed its receiver")
	}

	i, err := IndexOf(cfg, "mini-1")
	if err != nil || i != 2 {
		t.Fatalf("IndexOf = %d, %v", i, err)
	}
	updated := added.UpdateModel(i, "mini-1", map[string]any{"litellm_params": map[string]any{"rpm": 20.0, "api_key": nil}})
	cfg2, err := Build("v2", static, updated, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg2.ModelList[2].Limits.RPM != 20 || cfg2.ModelList[2].LiteLLMParams.Model != "openai/gpt-4o-mini" {
		t.Errorf("after update: %+v", cfg2.ModelList[2])
	}
	if cfg2.ModelList[2].LiteLLMParams.APIKey != "" {
		t.Error("null did not remove api_key")
	}
	if added.ModelList[2]["litellm_params"].(map[string]any)["rpm"] != 10.0 {
		t.Error("UpdateModel changed its receiver's entry")
	}

	deleted := updated.DeleteModel(0)
	cfg3, err := Build("v3", static, deleted, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg3.ModelList) != 2 || cfg3.ModelList[0].ID != base.ModelList[1].ID {
		t.Errorf("after delete, IDs %s, %s", cfg3.ModelList[0].ID, cfg3.ModelList[1].ID)
	}
	if _, err := IndexOf(cfg3, "nope"); !errors.Is(err, ErrUnknownDeployment) {
		t.Errorf("IndexOf unknown: %v", err)
	}

	rs := deleted.UpdateRouterSettings(map[string]any{"routing_strategy": "simple-shuffle", "num_retries": nil})
	cfg4, err := Build("v4", static, rs, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg4.RouterSettings.RoutingStrategy != "simple-shuffle" || *cfg4.RouterSettings.NumRetries != 0 {
		t.Errorf("router settings %+v", cfg4.RouterSettings)
	}
}

func TestBuildRejectsBadChangesWithoutLines(t *testing.T) {
	static, dyn := splitTestFile(t)
	env := MapEnv{"AZURE_KEY": "sk-az"}
	for name, d := range map[string]Dynamic{
		"negative rpm": dyn.AddModel(map[string]any{"model_name": "m", "litellm_params": map[string]any{"model": "openai/m", "rpm": -1.0}}),
		"bad strategy": dyn.UpdateRouterSettings(map[string]any{"routing_strategy": "fastest"}),
		"duplicate id": dyn.AddModel(map[string]any{"model_name": "a", "litellm_params": map[string]any{"model": "openai/a"}, "model_info": map[string]any{"id": "x"}}).
			AddModel(map[string]any{"model_name": "b", "litellm_params": map[string]any{"model": "openai/b"}, "model_info": map[string]any{"id": "x"}}),
		"unset env": dyn.AddModel(map[string]any{"model_name": "m", "litellm_params": map[string]any{"model": "openai/m", "api_key": "os.environ/NOPE"}}),
	} {
		_, err := Build("change", static, d, env, nil)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "line ") || strings.Contains(err.Error(), "change:") {
			t.Errorf("%s: error points into a generated document: %v", name, err)
		}
		if !strings.Contains(err.Error(), "model_list[2]") && !strings.Contains(err.Error(), "router_settings") && !strings.Contains(err.Error(), "model_list[3]") {
			t.Errorf("%s: error names no key: %v", name, err)
		}
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("%s: not a *config.Error: %T", name, err)
		}
	}
}

// Updating what a hashed ID derives from keeps the ID; adding a deployment whose explicit id is
// another's hashed ID is refused instead of re-keying that one.
func TestIDsStayPut(t *testing.T) {
	env := MapEnv{"AZURE_KEY": "sk-az"}
	static, dyn := splitTestFile(t)
	cur, err := Build("v0", static, dyn, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	id0 := cur.ModelList[0].ID
	moved := dyn.UpdateModel(0, id0, map[string]any{"litellm_params": map[string]any{"api_base": "https://eu2.example.com"}})
	cfg, err := Build("v1", static, moved, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ModelList[0].ID != id0 || cfg.ModelList[0].APIBase != "https://eu2.example.com" {
		t.Errorf("after changing api_base: id %s (want %s), base %s", cfg.ModelList[0].ID, id0, cfg.ModelList[0].APIBase)
	}

	clash := dyn.AddModel(map[string]any{"model_name": "x", "litellm_params": map[string]any{"model": "openai/x"}, "model_info": map[string]any{"id": id0}})
	next, err := Build("v1", static, clash, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := AddedID(cur, next); err == nil || !strings.Contains(err.Error(), "duplicate id") {
		t.Errorf("AddedID with a clashing id: %v", err)
	}
	fine := dyn.AddModel(map[string]any{"model_name": "x", "litellm_params": map[string]any{"model": "openai/x"}})
	next, err = Build("v1", static, fine, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := AddedID(cur, next); err != nil || id != next.ModelList[2].ID {
		t.Errorf("AddedID = %q, %v", id, err)
	}
}
