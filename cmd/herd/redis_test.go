//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/internal/redistest"
)

func TestRedisSettings(t *testing.T) {
	parse := func(yaml string) *config.Config {
		t.Helper()
		cfg, err := config.Parse("t.yaml", []byte("model_list: [{model_name: m, litellm_params: {model: openai/m}}]\n"+yaml),
			config.MapEnv{"REDIS_PASSWORD": "pw-from-env", "REDIS_SSL": "True"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	tests := []struct {
		name, yaml, from string
		addrs            []string
		password         string
		db               int
		tls, ok          bool
	}{
		{"none", "", "", nil, "", 0, false, false},
		{"seed style", "router_settings:\n  redis_host: r1\n  redis_port: 6380\n  redis_password: os.environ/REDIS_PASSWORD\n",
			"router_settings.redis_host", []string{"r1:6380"}, "pw-from-env", 0, false, true},
		{"default port, db", "router_settings:\n  redis_host: r1\n  redis_db: 3\n", "router_settings.redis_host", []string{"r1:6379"}, "", 3, false, true},
		{"url wins, tls", "router_settings:\n  redis_host: r1\n  redis_url: rediss://:secret@r2:6390/2\n", "router_settings.redis_url", []string{"r2:6390"}, "secret", 2, true, true},
		{"cluster seeds", "router_settings:\n  redis_host: a:7000, b:7001,c\n", "router_settings.redis_host", []string{"a:7000", "b:7001", "c:6379"}, "", 0, false, true},
		{"cache params", "litellm_settings:\n  cache: true\n  cache_params:\n    type: redis\n    host: c1\n    port: 6381\n    password: cpw\n    db: 1\n",
			"litellm_settings.cache_params", []string{"c1:6381"}, "cpw", 1, false, true},
		{"cache params not redis", "litellm_settings:\n  cache_params:\n    type: local\n", "", nil, "", 0, false, false},
		{"redis_ssl", "router_settings:\n  redis_host: r1\n  redis_ssl: true\n", "router_settings.redis_host", []string{"r1:6379"}, "", 0, true, true},
		{"cache params ssl from env", "litellm_settings:\n  cache_params:\n    type: redis\n    host: c1\n    ssl: os.environ/REDIS_SSL\n",
			"litellm_settings.cache_params", []string{"c1:6379"}, "", 0, true, true},
		{"router db wins over cache db", "router_settings:\n  redis_db: 4\nlitellm_settings:\n  cache_params:\n    type: redis\n    url: redis://c1:7000/2\n    db: 3\n",
			"litellm_settings.cache_params", []string{"c1:7000"}, "", 4, false, true},
	}
	// Redis Cluster and Sentinel, in herd's router_settings and in LiteLLM's cache_params.
	topo := []struct {
		name, yaml, from, master, sentinelPW string
		addrs                                []string
		cluster                              bool
	}{
		{"router cluster seeds", "router_settings:\n  redis_host: a:7000,b:7001\n  redis_password: pw\n",
			"router_settings.redis_host", "", "", []string{"a:7000", "b:7001"}, false},
		{"router one cluster seed", "router_settings:\n  redis_host: a:7000\n  redis_cluster: true\n  redis_password: pw\n",
			"router_settings.redis_host", "", "", []string{"a:7000"}, true},
		{"router sentinel", "router_settings:\n  redis_host: s1,s2:26380\n  redis_port: 26379\n  redis_sentinel_master: mm\n  redis_sentinel_password: os.environ/REDIS_PASSWORD\n  redis_password: pw\n",
			"router_settings.redis_host", "mm", "pw-from-env", []string{"s1:26379", "s2:26380"}, false},
		{"cache params startup nodes", "litellm_settings:\n  cache_params:\n    type: redis\n    redis_startup_nodes: [{host: c1, port: 7001}, {host: c2}]\n    password: cpw\n",
			"litellm_settings.cache_params.redis_startup_nodes", "", "", []string{"c1:7001", "c2:6379"}, true},
		{"cache params sentinel", "litellm_settings:\n  cache_params:\n    type: redis\n    sentinel_nodes: [[s1, 26379], [s2, 26380]]\n    service_name: mm\n    sentinel_password: spw\n    password: cpw\n",
			"litellm_settings.cache_params.sentinel_nodes", "mm", "spw", []string{"s1:26379", "s2:26380"}, false},
	}
	for _, tt := range topo {
		src, ok, err := redisSettings(parse(tt.yaml))
		if err != nil || !ok {
			t.Errorf("%s: ok=%v err=%v", tt.name, ok, err)
			continue
		}
		o := src.opts
		if src.from != tt.from || fmt.Sprint(o.Addrs) != fmt.Sprint(tt.addrs) || o.MasterName != tt.master ||
			o.SentinelPassword != tt.sentinelPW || o.ClusterMode != tt.cluster {
			t.Errorf("%s: from %q addrs %v master %q sentinel password %q cluster %v", tt.name, src.from, o.Addrs, o.MasterName, o.SentinelPassword, o.ClusterMode)
		}
		if (tt.master != "" || tt.cluster) && o.Password == "" {
			t.Errorf("%s: the nodes' password was dropped", tt.name)
		}
	}
	if _, _, err := redisSettings(parse("router_settings:\n  redis_host: s1\n  redis_sentinel_master: mm\n  redis_cluster: true\n")); err == nil ||
		!strings.Contains(err.Error(), "redis_sentinel_master and router_settings.redis_cluster") {
		t.Errorf("sentinel master and cluster: %v", err)
	}

	for _, tt := range tests {
		src, ok, err := redisSettings(parse(tt.yaml))
		opts, from := src.opts, src.from
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if ok != tt.ok || from != tt.from || fmt.Sprint(opts.Addrs) != fmt.Sprint(tt.addrs) || opts.Password != tt.password ||
			opts.DB != tt.db || (opts.TLS != nil) != tt.tls {
			t.Errorf("%s: got ok=%v from=%q addrs=%v db=%d tls=%v", tt.name, ok, from, opts.Addrs, opts.DB, opts.TLS != nil)
		}
	}
	if got := fairShareNodes(1, 2); got != 2 {
		t.Errorf("fairShareNodes(1 alive, 2 configured) = %d", got)
	}
	if got := fairShareNodes(3, 0); got != 3 {
		t.Errorf("fairShareNodes(3 alive, none configured) = %d", got)
	}
}

// readinessMode is /health/readiness's state_backend_mode.
func readinessMode(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/health/readiness")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Mode string `json:"state_backend_mode"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body.Mode
}

// TestTwoProcessesShareRedis runs two herd processes that do not gossip with each other, with
// the seed page's Redis settings (password through os.environ/): together they admit exactly
// the limit. Killing Redis degrades both to a fair share of the limit with no errors or hangs;
// restarting it brings both back to Redis.
func TestTwoProcessesShareRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; skipped with -short")
	}
	rs := redistest.Start(t)
	host, port, _ := net.SplitHostPort(rs.Addr())
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	var models strings.Builder
	for _, g := range []string{"before", "during", "after"} {
		fmt.Fprintf(&models, "  - model_name: %s\n    litellm_params:\n      model: openai/%s\n      api_base: %s/v1\n      rpm: 20\n", g, g, base)
	}
	cfg := "model_list:\n" + models.String() + "router_settings:\n  redis_host: " + host + "\n  redis_port: " + port +
		"\n  redis_password: os.environ/REDIS_PASSWORD\n  redis_fair_share_nodes: 2\n"
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"REDIS_PASSWORD=" + rs.Password()}
	common := []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0"}
	nodes := []*herdProcess{
		startProcessEnv(t, "a", env, append(common, "--node-name", "a")...),
		startProcessEnv(t, "b", env, append(common, "--node-name", "b")...),
	}
	for _, n := range nodes {
		if code, mode := readinessMode(t, n.addr); code != 200 || mode != "redis" {
			t.Fatalf("%s readiness: %d %q", n.addr, code, mode)
		}
	}

	client := &http.Client{Timeout: 5 * time.Second}
	send := func(model string, n int) map[int]int {
		t.Helper()
		codes := map[int]int{}
		for i := range n {
			start := time.Now()
			resp, err := client.Post("http://"+nodes[i%2].addr+"/v1/chat/completions", "application/json",
				strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
			if err != nil {
				t.Fatalf("%s request %d: %v", model, i, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes[resp.StatusCode]++
			if d := time.Since(start); d > time.Second {
				t.Errorf("%s request %d took %v", model, i, d)
			}
		}
		return codes
	}
	check := func(model string, codes map[int]int, lo, hi int64) {
		t.Helper()
		got := up.Count(model)
		t.Logf("%s: statuses %v, upstream saw %d", model, codes, got)
		if got < lo || got > hi {
			t.Errorf("%s: upstream saw %d, want %d..%d", model, got, lo, hi)
		}
		if int64(codes[200]) != got || codes[200]+codes[429] != 60 {
			t.Errorf("%s: statuses %v do not match the upstream's %d (only 200 and 429 expected)", model, codes, got)
		}
	}

	check("before", send("before", 60), 20, 21)

	rs.Kill()
	// Both notice on their next Redis call (or probe) and count locally at 20/2 each.
	codes := send("during", 60)
	check("during", codes, 20, 20)
	for _, n := range nodes {
		if code, mode := readinessMode(t, n.addr); code != 200 || mode != "degraded" {
			t.Errorf("%s readiness while Redis is down: %d %q", n.addr, code, mode)
		}
		resp, err := http.Get("http://" + n.addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"herd_state_backend_degraded 1", "herd_redis_errors_total", "herd_redis_local_admissions_total", "herd_redis_block_admissions_total"} {
			if !strings.Contains(string(metrics), want) {
				t.Errorf("%s: /metrics lacks %q while Redis is down", n.addr, want)
			}
		}
		if strings.Contains(string(metrics), rs.Password()) {
			t.Errorf("%s: /metrics shows the Redis password", n.addr)
		}
	}

	rs.Restart()
	deadline := time.Now().Add(15 * time.Second)
	for _, n := range nodes {
		for _, mode := readinessMode(t, n.addr); mode != "redis"; _, mode = readinessMode(t, n.addr) {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not return to redis mode", n.addr)
			}
			time.Sleep(50 * time.Millisecond) // poll interval
		}
	}
	check("after", send("after", 60), 20, 21)
}
