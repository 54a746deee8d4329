//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/cluster"
	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// adminPost sends an admin request with the master key and returns the status and body.
func adminPost(t *testing.T, addr, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-admin")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// modelIDs lists the deployment IDs a node serves (/model/info).
func modelIDs(t *testing.T, addr string) []string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/model/info", nil)
	req.Header.Set("Authorization", "Bearer sk-admin")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var info struct {
		Data []struct {
			ModelInfo struct{ ID string } `json:"model_info"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range info.Data {
		ids = append(ids, d.ModelInfo.ID)
	}
	return ids
}

// TestThreeProcessesChangeConfigThroughRaft: three herd processes bootstrap raft together; a
// deployment added on one node is listed by all three within 3 s and routes; with one node
// killed, the other two still accept a delete.
func TestThreeProcessesChangeConfigThroughRaft(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; skipped with -short")
	}
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/first\n      api_base: " + base + "/v1\n" +
		"general_settings:\n  master_key: sk-admin\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	nodes := startRaftTrio(t, path)
	// The file's config is version 1 on every node.
	st := waitAll(t, nodes, "config version 1 not committed", func(st map[string]any) bool { return st["config_version"] == 1.0 })
	leader := st["leader"].(string)
	t.Logf("leader %s, term %v", leader, st["term"])

	// Add on a follower: the write is forwarded to the leader.
	var follower *herdProcess
	for i, name := range []string{"a", "b", "c"} {
		if name != leader {
			follower = nodes[i]
			break
		}
	}
	start := time.Now()
	code, body := adminPost(t, follower.addr, "/model/new",
		fmt.Sprintf(`{"model_name":"added","litellm_params":{"model":"openai/added","api_base":%q,"api_key":"sk-up"},"model_info":{"id":"added-1"}}`, base+"/v1"))
	if code != 200 || !strings.Contains(body, `"config_version":2`) {
		t.Fatalf("/model/new on follower: %d %s", code, body)
	}
	for _, n := range nodes {
		for !strings.Contains(strings.Join(modelIDs(t, n.addr), ","), "added-1") {
			if time.Since(start) > 3*time.Second {
				t.Fatalf("%s does not list the new deployment 3 s after it was added", n.addr)
			}
			time.Sleep(20 * time.Millisecond) // poll interval
		}
	}
	t.Logf("listed on all three %v after the write began", time.Since(start))
	for _, n := range nodes {
		resp, err := http.Post("http://"+n.addr+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"added","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 { // the master key guards LLM routes too
			t.Fatalf("unauthenticated call: %d", resp.StatusCode)
		}
		req, _ := http.NewRequest(http.MethodPost, "http://"+n.addr+"/v1/chat/completions",
			strings.NewReader(`{"model":"added","messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer sk-admin")
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: the new deployment does not route: %d", n.addr, resp.StatusCode)
		}
	}
	if got := up.Count("added"); got != 3 {
		t.Errorf("upstream saw %d calls to the new deployment, want 3", got)
	}
	// Every node keeps its peers' counts for the added deployment, which its config file lacks:
	// the applied config told the gossip backend its deployments.
	deadline := time.Now().Add(5 * time.Second)
	for _, n := range nodes {
		for usedOf(t, n.addr, "added-1") != 3 {
			if time.Now().After(deadline) {
				t.Fatalf("%s counts %d calls to the new deployment cluster-wide, want 3", n.addr, usedOf(t, n.addr, "added-1"))
			}
			time.Sleep(20 * time.Millisecond) // poll interval
		}
	}

	// Kill one node (the leader, the harder case): the other two elect a leader and accept a delete.
	var survivors []*herdProcess
	for i, name := range []string{"a", "b", "c"} {
		if name == leader {
			_ = nodes[i].cmd.Process.Kill()
		} else {
			survivors = append(survivors, nodes[i])
		}
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		code, body = adminPost(t, survivors[0].addr, "/model/delete", `{"id":"added-1"}`)
		if code == 200 {
			break
		}
		if code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("/model/delete after killing the leader: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond) // retry interval while the survivors elect a leader
	}
	if !strings.Contains(body, `"config_version":3`) {
		t.Errorf("delete reply %s", body)
	}
	for _, n := range survivors {
		for strings.Contains(strings.Join(modelIDs(t, n.addr), ","), "added-1") {
			if time.Now().After(deadline) {
				t.Fatalf("%s still lists the deleted deployment", n.addr)
			}
			time.Sleep(20 * time.Millisecond) // poll interval
		}
	}
}

// usedOf returns the requests a node counts for deployment id cluster-wide (/cluster/status).
func usedOf(t *testing.T, addr, id string) int64 {
	t.Helper()
	deps, _ := rawClusterStatus(t, addr)["deployments"].([]any)
	for _, d := range deps {
		if d, _ := d.(map[string]any); d["id"] == id {
			used, _ := d["rpm_used"].(float64)
			return int64(used)
		}
	}
	return -1
}

func rawClusterStatus(t *testing.T, addr string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/cluster/status", nil)
	req.Header.Set("Authorization", "Bearer sk-admin")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestWarnNoBootstrap: seeds without bootstrap_expect are worth a WARN naming the setting;
// either alone is not.
func TestWarnNoBootstrap(t *testing.T) {
	for _, tt := range []struct {
		expect int
		join   []string
		warn   bool
	}{
		{0, []string{"10.0.0.5:7946"}, true},
		{3, []string{"10.0.0.5:7946"}, false},
		{0, nil, false},
	} {
		var logs bytes.Buffer
		warnNoBootstrap(cluster.RaftConfig{BootstrapExpect: tt.expect}, tt.join, slog.New(slog.NewTextHandler(&logs, nil)))
		got := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "cluster_settings.bootstrap_expect")
		if got != tt.warn {
			t.Errorf("bootstrap_expect %d, join %v: warned %v, want %v: %s", tt.expect, tt.join, got, tt.warn, logs.String())
		}
	}
}
