package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// peakRSS is a process's peak resident set (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// TestHostileRequestsAgainstProcess replays issue 12's request attacks against a real herd
// without a master key (anyone may send them): each gets a 4xx, the process stays up, and its
// peak RSS stays bounded (three million open brackets once cost 811 MB, six million killed it).
func TestHostileRequestsAgainstProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; skipped with -short")
	}
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n      api_base: " + base + "/v1\n      tpm: 1000\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startProcess(t, "hostile", "--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0")
	deep := append([]byte(`{"model":"m","messages":`), bytes.Repeat([]byte("["), 6_000_000)...)
	msgs := `[{"role":"user","content":"hi"}]`
	for _, a := range []struct {
		name string
		body []byte
		want int
	}{
		{"six million open brackets", deep, 400},
		{"max_tokens 1e309", []byte(`{"model":"m","messages":` + msgs + `,"max_tokens":1e309}`), 400},
		{"max_tokens beyond int64", []byte(`{"model":"m","messages":` + msgs + `,"max_tokens":99999999999999999999}`), 400},
		{"messages twice", []byte(`{"model":"m","messages":[],"messages":` + msgs + `}`), 400},
		{"model in another case", []byte(`{"model":"m","Model":"x","messages":` + msgs + `}`), 400},
	} {
		client := &http.Client{Timeout: 30 * time.Second}
		resp, err := client.Post("http://"+n.addr+"/v1/chat/completions", "application/json", bytes.NewReader(a.body))
		if err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != a.want {
			t.Errorf("%s: status %d, want %d", a.name, resp.StatusCode, a.want)
		}
	}
	resp, err := http.Get("http://" + n.addr + "/health/liveliness")
	if err != nil {
		t.Fatalf("herd is not up after the attacks: %v", err)
	}
	_ = resp.Body.Close()
	if rss := peakRSS(t, n.cmd.Process.Pid); rss > 256<<20 {
		t.Errorf("peak RSS %d MB after the attacks", rss>>20)
	} else {
		t.Logf("peak RSS %d MB", rss>>20)
	}
}

// TestClockOffsetIsShown: a node whose clock is 3 s ahead (the test-only offset file) shows up
// with that offset in its peer's /cluster/status and /metrics.
func TestClockOffsetIsShown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; skipped with -short")
	}
	dir := t.TempDir()
	skewFile := filepath.Join(dir, "skew")
	if err := os.WriteFile(skewFile, []byte("3s"), 0o600); err != nil {
		t.Fatal(err)
	}
	common := []string{"--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0"}
	a := startProcess(t, "a", append(common, "--node-name", "a")...)
	startProcessEnv(t, "b", []string{testClockEnv + "=" + skewFile}, append(common, "--node-name", "b", "--join", a.gossipAddr)...)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var off float64 = -1
		if ms, ok := rawClusterStatus(t, a.addr)["members"].([]any); ok {
			for _, m := range ms {
				if mm, _ := m.(map[string]any); mm["name"] == "b" {
					if v, ok := mm["clock_offset_seconds"].(float64); ok {
						off = v
					}
				}
			}
		}
		if off > 2.9 && off < 3.1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a sees b's clock offset as %v, want 3s", off)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	resp, err := http.Get("http://" + a.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !regexp.MustCompile(`herd_cluster_clock_offset_seconds\{peer="b"\} 2\.9\d*|herd_cluster_clock_offset_seconds\{peer="b"\} 3(\.0\d*)?\b`).Match(body) {
		t.Errorf("no 3 s offset for b in /metrics")
	}
	if !a.logged("a peer's clock is off") {
		t.Error("no WARN about b's clock")
	}
}

// TestSkewedPeerAlignedAndReported: the usage counters align a peer's buckets by the offset
// membership estimates (Options.Offset, wired in usage.go), and a peer beyond the 30 s they
// accept is reported as clock_offset in herd_cluster_rejected_messages_total. Without the wiring
// the counters know no offset and report nothing.
func TestSkewedPeerAlignedAndReported(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; skipped with -short")
	}
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	cfg := "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n      api_base: " + base + "/v1\n      rpm: 100000\n"
	skewFile := filepath.Join(dir, "skew")
	for file, data := range map[string]string{path: cfg, skewFile: "45s"} {
		if err := os.WriteFile(file, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	common := []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0"}
	a := startProcess(t, "a", append(common, "--node-name", "a")...)
	b := startProcessEnv(t, "b", []string{testClockEnv + "=" + skewFile}, append(common, "--node-name", "b", "--join", a.gossipAddr)...)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	reported := regexp.MustCompile(`herd_cluster_rejected_messages_total\{reason="clock_offset"\} [1-9]`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		// b's usage reaches a as deltas; a reports them once heartbeats told it b's offset.
		resp, err := http.Post("http://"+b.addr+"/v1/chat/completions", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		m, err := http.Get("http://" + a.addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		text, _ := io.ReadAll(m.Body)
		_ = m.Body.Close()
		if reported.Match(text) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a never reported b's clock, 45 s ahead, as clock_offset")
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	waitFor := time.Now().Add(10 * time.Second)
	for !a.logged("clock_offset=") {
		if time.Now().After(waitFor) {
			t.Fatal("no WARN naming clock_offset")
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
}
