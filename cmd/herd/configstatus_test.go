//go:build linux

package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// configMetrics reads herd_config_version{kind=...} and herd_config_unservable from /metrics.
func configMetrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	lines := regexp.MustCompile(`(?m)^herd_config_(version\{kind="\w+"\}|unservable) \S+$`).FindAll(body, -1)
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = string(l)
	}
	return strings.Join(out, " ")
}

// TestUnservableVersionIsReported replays issue 12 attack 7's last part: a version that builds
// on the node that took it (it has the environment variable) but not on another. The other
// node keeps serving its last good config, and /cluster/status and /metrics say so and why,
// where /cluster/status used to report the new version as if it were served. A later version
// that builds clears it.
func TestUnservableVersionIsReported(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; skipped with -short")
	}
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/first\n      api_base: " + base + "/v1\n" +
		"general_settings:\n  master_key: sk-admin\ncluster_settings:\n  admin_env_allow: [\"ONLY_*\"]\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	common := []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0", "--bootstrap-expect", "2"}
	a := startProcessEnv(t, "a", []string{"ONLY_A=sk-only-on-a"}, append(common, "--node-name", "a")...)
	b := startProcess(t, "b", append(common, "--node-name", "b", "--join", a.gossipAddr)...)
	waitConfigVersion(t, a.addr, 1)
	waitConfigVersion(t, b.addr, 1)

	code, body := adminPost(t, a.addr, "/model/new", fmt.Sprintf(`{"model_name":"x","litellm_params":{"model":"openai/x","api_base":%q,"api_key":"os.environ/ONLY_A"},"model_info":{"id":"only-a"}}`, base+"/v1"))
	if code != 200 || !strings.Contains(body, `"config_version":2`) {
		t.Fatalf("/model/new on a: %d %s", code, body)
	}
	deadline := time.Now().Add(30 * time.Second)
	var st map[string]any
	for st = rawClusterStatus(t, b.addr); st["config_version"] != 2.0; st = rawClusterStatus(t, b.addr) {
		if time.Now().After(deadline) {
			t.Fatalf("b never committed version 2: %v", st)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	msg, _ := st["config_error"].(string)
	if st["served_config_version"] != 1.0 || !strings.Contains(msg, "ONLY_A") || !strings.Contains(msg, "not set") || strings.Contains(msg, "sk-only-on-a") {
		t.Fatalf("b's /cluster/status: %v", st)
	}
	t.Logf("b says: %s", msg)
	if got, want := configMetrics(t, b.addr), `herd_config_unservable 1 herd_config_version{kind="committed"} 2 herd_config_version{kind="served"} 1`; got != want {
		t.Errorf("b's metrics: %s, want %s", got, want)
	}
	if st := rawClusterStatus(t, a.addr); st["served_config_version"] != 2.0 || st["config_error"] != "" {
		t.Errorf("a's /cluster/status: %v", st)
	}
	if got, want := configMetrics(t, a.addr), `herd_config_unservable 0 herd_config_version{kind="committed"} 2 herd_config_version{kind="served"} 2`; got != want {
		t.Errorf("a's metrics: %s, want %s", got, want)
	}
	// a's member list shows the version each node serves (from gossip): b is behind.
	servedSeen := func(st map[string]any) string {
		var out []string
		for _, m := range st["members"].([]any) {
			m := m.(map[string]any)
			out = append(out, fmt.Sprintf("%v=%v", m["name"], m["served_config_version"]))
		}
		return strings.Join(out, " ")
	}
	deadline = time.Now().Add(30 * time.Second)
	for got := servedSeen(rawClusterStatus(t, a.addr)); got != "a=2 b=1"; got = servedSeen(rawClusterStatus(t, a.addr)) {
		if time.Now().After(deadline) {
			t.Fatalf("a's members serve %s, want a=2 b=1", got)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}

	if code, body := adminPost(t, a.addr, "/model/delete", `{"id":"only-a"}`); code != 200 {
		t.Fatalf("/model/delete: %d %s", code, body)
	}
	waitConfigVersion(t, b.addr, 3)
	if st := rawClusterStatus(t, b.addr); st["config_error"] != "" {
		t.Errorf("b still reports an error after a version that builds: %v", st)
	}
}
