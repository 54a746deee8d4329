package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
)

func TestClusterFlagPrecedence(t *testing.T) {
	cfg, err := config.Parse("c.yaml", []byte(`
cluster_settings:
  node_name: from-file
  gossip_addr: 127.0.0.1:9000
  join: [file-seed:7946]
`), config.MapEnv(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := clusterConfig(clusterFlags{}, cfg, env(nil), nil)
	if err != nil || c.NodeName != "from-file" || c.BindAddr != "127.0.0.1:9000" || strings.Join(c.Join, ",") != "file-seed:7946" {
		t.Errorf("file: %+v, %v", c, err)
	}
	c, _ = clusterConfig(clusterFlags{}, cfg, env(map[string]string{"HERD_JOIN": "a:1, b:2"}), nil)
	if strings.Join(c.Join, ",") != "a:1,b:2" {
		t.Errorf("HERD_JOIN over the file: %v", c.Join)
	}
	c, _ = clusterConfig(clusterFlags{nodeName: "n", gossipAddr: "127.0.0.1:1", join: "x:3"}, cfg, env(map[string]string{"HERD_JOIN": "a:1"}), nil)
	if c.NodeName != "n" || c.BindAddr != "127.0.0.1:1" || strings.Join(c.Join, ",") != "x:3" {
		t.Errorf("flags over everything: %+v", c)
	}
	empty, _ := config.Parse("e.yaml", []byte("model_list: []\n"), config.MapEnv(nil), nil)
	// No seeds, no advertise address: a cluster of one keeps its cluster ports on loopback.
	if c, _ := clusterConfig(clusterFlags{}, empty, env(nil), nil); c.BindAddr != "127.0.0.1:7946" || c.NodeName == "" {
		t.Errorf("defaults: %+v", c)
	}
	// Seeds (or an advertise address) mean peers must reach it: every interface.
	for _, f := range []clusterFlags{{join: "10.0.0.5:7946"}, {advertiseAddr: "10.0.0.6:7946"}} {
		if c, _ := clusterConfig(f, empty, env(nil), nil); c.BindAddr != "0.0.0.0:7946" {
			t.Errorf("%+v: gossip on %s, want 0.0.0.0:7946", f, c.BindAddr)
		}
	}
}

// clusterStatus fetches /cluster/status from a herd at addr.
func clusterStatus(t *testing.T, addr string) (st struct {
	Node        string
	Backend     string
	Members     []struct{ Name, Status string }
	Deployments []struct {
		RPMUsed  int64 `json:"rpm_used"`
		RPMLimit int64 `json:"rpm_limit"`
	}
}) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/cluster/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestTwoNodesShareLimits starts two herds over real loopback sockets, the second joining the
// first: requests alternate between them and, once each count has reached the other node,
// exactly rpm are admitted in all. /cluster/status shows both members, and a node that shuts
// down is seen to leave.
func TestTwoNodesShareLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers; skipped with -short")
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	// Fast mode: this is about counts gossiped between nodes (strict_test.go covers strict).
	if err := os.WriteFile(path, []byte("model_list:\n  - model_name: m\n    litellm_params: {model: mock/m, rpm: 10}\nrouter_settings: {cluster_limit_mode: fast}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := func(name string, extra ...string) []string {
		return append([]string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0", "--node-name", name}, extra...)
	}
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	addrA, logA, doneA := started(t, ctxA, args("a"))
	m := regexp.MustCompile(`msg="cluster started" node=a gossip_addr=(\S+)`).FindStringSubmatch(logA.String())
	if m == nil {
		t.Fatalf("no gossip address in the log:\n%s", logA)
	}
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	addrB, _, doneB := started(t, ctxB, args("b", "--join", m[1]))

	// b joined through a before it served; a learns of b from the same exchange, a moment later.
	deadline := time.Now().Add(10 * time.Second)
	for _, addr := range []string{addrA, addrB} {
		for {
			st := clusterStatus(t, addr)
			if st.Backend == "gossip" && len(st.Members) == 2 && st.Members[0].Status == "alive" && st.Members[1].Status == "alive" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: /cluster/status = %+v", addr, st)
			}
			time.Sleep(5 * time.Millisecond) // poll interval
		}
	}
	admitted := 0
	for i := 0; i < 14; i++ {
		addr, other := addrA, addrB
		if i%2 == 1 {
			addr, other = addrB, addrA
		}
		resp, err := http.Post("http://"+addr+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case 200:
			admitted++
		case 429:
		default:
			t.Fatalf("status %d", resp.StatusCode)
		}
		// Wait for this count to reach the other node before the next request goes there.
		deadline := time.Now().Add(5 * time.Second)
		for clusterStatus(t, other).Deployments[0].RPMUsed != int64(admitted) {
			if time.Now().After(deadline) {
				t.Fatalf("node %s never saw %d requests: %+v", other, admitted, clusterStatus(t, other))
			}
			time.Sleep(2 * time.Millisecond) // poll interval
		}
	}
	if admitted != 10 {
		t.Errorf("admitted %d of 14 across two nodes with rpm 10, want 10", admitted)
	}
	// Both nodes measured how long the other's deltas took to arrive.
	for _, addr := range []string{addrA, addrB} {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := regexp.MustCompile(`herd_cluster_propagation_delay_seconds_count (\d+)`).FindSubmatch(body)
		if m == nil || string(m[1]) == "0" {
			t.Errorf("%s: no propagation delays observed", addr)
		}
		// Honest peers reject nothing of each other's.
		rej := regexp.MustCompile(`herd_cluster_rejected_messages_total\{reason="(\w+)"\} (\S+)`).FindAllSubmatch(body, -1)
		if len(rej) == 0 {
			t.Errorf("%s: /metrics lacks herd_cluster_rejected_messages_total", addr)
		}
		for _, m := range rej {
			if string(m[2]) != "0" {
				t.Errorf("%s: %s", addr, m[0])
			}
		}
		for _, name := range []string{"herd_cluster_members 2", "herd_gossip_sent_bytes_total", "herd_gossip_received_bytes_total",
			"herd_gossip_sent_packets_total", "herd_gossip_received_packets_total",
			`herd_cluster_usage_repairs_total{direction="asked"}`, `herd_cluster_usage_repairs_total{direction="sent"}`} {
			if !strings.Contains(string(body), name) {
				t.Errorf("%s: /metrics lacks %s", addr, name)
			}
		}
	}

	cancelB()
	if err := <-doneB; err != nil {
		t.Fatalf("node b: %v", err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		st := clusterStatus(t, addrA)
		if len(st.Members) == 2 && st.Members[1].Name == "b" && st.Members[1].Status == "left" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a never saw b leave: %+v", st.Members)
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	cancelA()
	if err := <-doneA; err != nil {
		t.Fatalf("node a: %v", err)
	}
}
