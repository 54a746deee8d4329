package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse: it must never panic, must fail only with *Error
// values, must not leak the environment's secrets, and must accept only configs whose resolved
// fields are usable and deterministic.
func FuzzParse(f *testing.F) {
	for _, dir := range []string{"good", "bad"} {
		files, _ := filepath.Glob(filepath.Join(testdata, dir, "*.yaml"))
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add([]byte(demoYAML))
	f.Add([]byte("a: &a {b: *a}\nmodel_list: [{model_name: x, litellm_params: {model: mock/x}, model_info: {c: *a}}]"))
	f.Add([]byte("model_list: [{<<: {model_name: x}, litellm_params: {model: os.environ/AZURE_API_KEY}}]"))

	f.Fuzz(func(t *testing.T, data []byte) {
		env := func() MapEnv { return testEnv(fileEnv["realistic.yaml"]) }
		cfg, err := Parse("fuzz.yaml", data, env(), nil)
		if err != nil {
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			errorsOf(t, err)
			assertNoSecrets(t, err.Error())
			return
		}
		assertNoSecrets(t, strings.Join(cfg.Warnings, "\n"))
		if _, err := json.Marshal(cfg); err != nil {
			t.Fatalf("resolved config does not marshal: %v", err)
		}
		seen := map[string]bool{}
		for i, d := range cfg.ModelList {
			switch {
			case d.ID == "" || seen[d.ID]:
				t.Fatalf("deployment %d: empty or duplicate ID %q", i, d.ID)
			case d.Provider != "openai" && d.Provider != "azure" && d.Provider != "mock":
				t.Fatalf("deployment %d: provider %q", i, d.Provider)
			case d.Provider != "mock" && !strings.HasPrefix(d.APIBase, "http"):
				t.Fatalf("deployment %d: api_base %q", i, d.APIBase)
			case d.Timeout <= 0 || d.StreamTimeout <= 0 || d.Limits.RPM < 0 || d.Limits.TPM < 0:
				t.Fatalf("deployment %d: timeouts %v/%v limits %+v", i, d.Timeout, d.StreamTimeout, d.Limits)
			}
			seen[d.ID] = true
		}
		again, err := Parse("fuzz.yaml", data, env(), nil)
		if err != nil || !slices.Equal(ids(again), ids(cfg)) {
			t.Fatalf("second parse differs: %v, %q vs %q", err, ids(again), ids(cfg))
		}
	})
}
