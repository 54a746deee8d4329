//go:build linux

package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// TestStrictModeOverProcesses: three herds bootstrapped together in strict mode write one homes
// table of all three, report strict mode, and keep a limit exactly under a simultaneous burst
// spread over them (the upstream is the judge) and under demand on one node only (which
// borrows the others' shares).
func TestStrictModeOverProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; skipped with -short")
	}
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := "model_list:\n" +
		"  - model_name: burst\n    litellm_params:\n      model: openai/burst\n      api_base: " + base + "/v1\n      rpm: 60\n" +
		"  - model_name: hot\n    litellm_params:\n      model: openai/hot\n      api_base: " + base + "/v1\n      rpm: 60\n" +
		"router_settings:\n  cluster_limit_mode: strict\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	common := []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0", "--bootstrap-expect", "3"}
	a := startProcess(t, "a", append(common, "--node-name", "a")...)
	b := startProcess(t, "b", append(common, "--node-name", "b", "--join", a.gossipAddr)...)
	c := startProcess(t, "c", append(common, "--node-name", "c", "--join", a.gossipAddr)...)
	nodes := []*herdProcess{a, b, c}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		for {
			st := rawClusterStatus(t, n.addr)
			homes, _ := st["homes"].([]any)
			if len(homes) == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: homes %v after 30 s; want all three", n.addr, st["homes"])
			}
			time.Sleep(20 * time.Millisecond) // poll interval
		}
		var ready struct {
			Mode string `json:"state_backend_mode"`
		}
		getJSON(t, "http://"+n.addr+"/health/readiness", &ready)
		if ready.Mode != "strict" {
			t.Fatalf("readiness state_backend_mode %q; want strict", ready.Mode)
		}
	}

	post := func(n *herdProcess, model string) int {
		resp, err := http.Post("http://"+n.addr+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Error(err)
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	// A balanced burst of 180 simultaneous requests on an empty window.
	var (
		mu    sync.Mutex
		codes = map[int]int{}
		wg    sync.WaitGroup
	)
	for i := range 180 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code := post(nodes[i%3], "burst")
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	got := up.Count("burst")
	t.Logf("burst: statuses %v; upstream saw %d", codes, got)
	if got < 57 || got > 60 || codes[200] != int(got) {
		t.Errorf("burst of 180 against rpm 60: upstream saw %d, statuses %v; want 57-60, all others refused", got, codes)
	}

	// Every node shows its rights: a home with a third of the limit, spent.
	for _, n := range nodes {
		var st struct {
			Deployments []struct {
				ModelName string `json:"model_name"`
				Rights    *struct {
					Home  bool
					Share int64
					Busy  int64
				}
			}
		}
		getJSON(t, "http://"+n.addr+"/cluster/status", &st)
		for _, d := range st.Deployments {
			if d.ModelName == "burst" && (d.Rights == nil || !d.Rights.Home || d.Rights.Share != 20 || d.Rights.Busy == 0) {
				t.Errorf("%s: rights of burst %+v; want a home's share of 20, partly spent", n.addr, d.Rights)
			}
		}
	}

	// All demand on one node, at 6x the limit for 15 s: it borrows the idle homes' shares.
	clear(codes)
	for range 90 {
		codes[post(a, "hot")]++
		time.Sleep(time.Second / 6) // paces the load (6 req/s); not a wait for an event
	}
	got = up.Count("hot")
	t.Logf("hot node: statuses %v; upstream saw %d", codes, got)
	if got < 57 || got > 60 {
		t.Errorf("hot node at 6x: upstream saw %d; want 57-60", got)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}
