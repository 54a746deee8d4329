package main

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
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
