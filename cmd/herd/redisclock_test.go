//go:build linux

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/internal/redistest"
)

// TestRedisModeClockAhead is issue 13's done-when for Redis mode: two herd processes share one
// Redis, one of them with its clock 30 s ahead (the test-only clock file), both loaded over the
// limit for longer than the skew. The upstream never sees more than rpm in any 60 s, and the
// fast node expires none of the other's in-flight leases (max_parallel holds while the slow
// calls outlive the lease TTL). With windows on the nodes' clocks (herd before issue 13), the fast
// node's first admission moved the window 30 s ahead, and the other node's first minute of
// admissions left it 31 s after they were made: twice the limit in a minute.
func TestRedisModeClockAhead(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and runs for 40 s; skipped with -short")
	}
	rs := redistest.Start(t)
	host, port, _ := net.SplitHostPort(rs.Addr())
	var (
		mu       sync.Mutex
		arrivals []time.Time // of "limited"
	)
	up, base := fakeupstream.Start(t, fakeupstream.Options{OnArrival: func(a fakeupstream.Arrival) {
		if a.Deployment == "limited" {
			mu.Lock()
			arrivals = append(arrivals, a.Time)
			mu.Unlock()
		}
	}})
	const rpm = 20
	up.SetFault("slow", fakeupstream.Fault{Delay: 12 * time.Second}) // longer than the 10 s lease
	cfg := fmt.Sprintf(`model_list:
  - model_name: limited
    litellm_params: {model: openai/limited, api_base: %s/v1, rpm: %d}
  - model_name: slow
    litellm_params: {model: openai/slow, api_base: %s/v1, max_parallel_requests: 2, timeout: 30}
router_settings:
  redis_host: %s
  redis_port: %s
  redis_password: os.environ/REDIS_PASSWORD
`, base, rpm, base, host, port)
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	clockFile := filepath.Join(dir, "clock")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(clockFile, []byte("30s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"REDIS_PASSWORD=" + rs.Password()}
	common := []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0"}
	slowNode := startProcessEnv(t, "a", env, append(common, "--node-name", "a")...)
	fastNode := startProcessEnv(t, "b", append(env, testClockEnv+"="+clockFile), append(common, "--node-name", "b")...)
	if !fastNode.logged("TEST ONLY") {
		t.Fatal("the fast node does not say its clock is skewed")
	}

	client := &http.Client{Timeout: 30 * time.Second}
	post := func(addr, model string) int {
		resp, err := client.Post("http://"+addr+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Errorf("%s %s: %v", addr, model, err)
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	// The slow node takes both max_parallel slots with calls that outlive a lease.
	var wg sync.WaitGroup
	slowCodes := make([]int, 2)
	for i := range slowCodes {
		wg.Go(func() { slowCodes[i] = post(slowNode.addr, "slow") })
	}
	for deadline := time.Now().Add(5 * time.Second); up.Count("slow") < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("the slow calls never reached the upstream (%d did)", up.Count("slow"))
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}

	// The slow node fills the window first; then both nodes are loaded over the limit for longer
	// than the skew, so a window the fast clock had moved would let a second minute's worth in.
	for range rpm {
		post(slowNode.addr, "limited")
	}
	start := time.Now()
	for _, n := range []*herdProcess{slowNode, fastNode} {
		wg.Go(func() {
			for time.Since(start) < 35*time.Second {
				post(n.addr, "limited")
				time.Sleep(100 * time.Millisecond) // the load's pace, not a wait for a condition
			}
		})
	}
	// Past the lease TTL (real processes: their time has to pass), the slow calls still hold both
	// slots, on both nodes.
	<-time.After(time.Until(start.Add(11 * time.Second)))
	for _, n := range []*herdProcess{fastNode, slowNode} {
		if code := post(n.addr, "slow"); code != http.StatusTooManyRequests {
			t.Errorf("%s admitted a third call at max_parallel 2 while two run (status %d): their leases expired", n.addr, code)
		}
	}
	wg.Wait()
	for i, code := range slowCodes {
		if code != http.StatusOK {
			t.Errorf("slow call %d: status %d", i, code)
		}
	}
	if n := up.Count("slow"); n != 2 {
		t.Errorf("the upstream saw %d slow calls, want the 2 admitted", n)
	}

	mu.Lock()
	got := slices.Clone(arrivals)
	mu.Unlock()
	slices.SortFunc(got, func(a, b time.Time) int { return a.Compare(b) })
	worst, at := 0, time.Time{}
	for i := range got {
		j, _ := slices.BinarySearchFunc(got, got[i].Add(time.Minute), func(a, b time.Time) int { return a.Compare(b) })
		if j-i > worst {
			worst, at = j-i, got[i]
		}
	}
	t.Logf("%d requests reached the upstream; at most %d in a minute (from %v)", len(got), worst, at.Sub(start))
	if worst > rpm {
		t.Fatalf("%d requests in the minute from %v, rpm %d: the fast clock moved the window", worst, at.Sub(start), rpm)
	}
	if worst < rpm {
		t.Fatalf("only %d in the busiest minute at rpm %d: the test did not fill the window", worst, rpm)
	}
}
