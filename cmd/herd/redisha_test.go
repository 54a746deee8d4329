//go:build linux

package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/internal/redistest"
)

// haRPM is the rpm of every deployment in the failover tests.
const haRPM = 20

// haSetup is two herd processes that do not gossip with each other, sharing usage through
// one Redis setup, each deployment at rpm haRPM.
type haSetup struct {
	t      *testing.T
	nodes  []*herdProcess
	up     *fakeupstream.Upstream
	warmup string // a deployment without a practical limit, for warming connections up
}

// startHA writes a config with one deployment per id (model name = id = model_info.id), the
// last one the warm-up deployment, and redis (router_settings or litellm_settings lines), and
// starts two herd processes on it.
func startHA(t *testing.T, ids []string, redis string, env []string) *haSetup {
	t.Helper()
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	var models strings.Builder
	for i, id := range ids {
		rpm := haRPM
		if i == len(ids)-1 {
			rpm = 1_000_000
		}
		fmt.Fprintf(&models, "  - model_name: %s\n    litellm_params:\n      model: openai/%s\n      api_base: %s/v1\n      rpm: %d\n    model_info:\n      id: %s\n",
			id, id, base, rpm, id)
	}
	cfg := "model_list:\n" + models.String() + redis
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	common := []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0"}
	h := &haSetup{t: t, up: up, warmup: ids[len(ids)-1], nodes: []*herdProcess{
		startProcessEnv(t, "a", env, append(common, "--node-name", "a")...),
		startProcessEnv(t, "b", env, append(common, "--node-name", "b")...),
	}}
	h.waitMode("redis")
	return h
}

// waitMode polls both nodes' readiness until each reports mode (herd probes Redis every second).
func (h *haSetup) waitMode(mode string) {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range h.nodes {
		for {
			code, got := readinessMode(h.t, n.addr)
			if code != http.StatusOK {
				h.t.Fatalf("%s readiness: %d", n.addr, code)
			}
			if got == mode {
				break
			}
			if time.Now().After(deadline) {
				h.t.Fatalf("%s: state backend mode %q, want %q", n.addr, got, mode)
			}
			time.Sleep(50 * time.Millisecond) // poll interval
		}
	}
}

// send sends n chat requests for model, workers at a time, spread over both nodes, and
// returns the statuses. Every answer must come within a second: Redis trouble must not hold
// requests.
func (h *haSetup) send(model string, n, workers int) map[int]int {
	h.t.Helper()
	var mu sync.Mutex
	codes := map[int]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				codes1 := h.chat(model, h.nodes[i%len(h.nodes)])
				mu.Lock()
				codes[codes1]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return codes
}

// chat sends one chat request to node and returns its status (0 when it failed outright).
func (h *haSetup) chat(model string, node *herdProcess) int {
	client := &http.Client{Timeout: 5 * time.Second}
	start := time.Now()
	resp, err := client.Post("http://"+node.addr+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		h.t.Errorf("%s via %s: %v", model, node.addr, err)
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if d := time.Since(start); d > time.Second {
		h.t.Errorf("%s via %s took %v", model, node.addr, d)
	}
	return resp.StatusCode
}

// check fails unless the upstream received between lo and hi requests for model and the
// statuses are 200s for exactly those and 429s for the rest.
func (h *haSetup) check(model string, codes map[int]int, lo, hi int64) {
	h.t.Helper()
	got := h.up.Count(model)
	sent := 0
	for _, n := range codes {
		sent += n
	}
	h.t.Logf("%s: statuses %v, upstream saw %d", model, codes, got)
	if got < lo || got > hi {
		h.t.Errorf("%s: upstream saw %d, want %d..%d", model, got, lo, hi)
	}
	if int64(codes[200]) != got || codes[200]+codes[429] != sent {
		h.t.Errorf("%s: statuses %v do not match the upstream's %d (only 200 and 429 expected)", model, codes, got)
	}
}

// metric is the value of an unlabelled metric on node's /metrics.
func (h *haSetup) metric(node *herdProcess, name string) float64 {
	h.t.Helper()
	resp, err := http.Get("http://" + node.addr + "/metrics")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				h.t.Fatalf("%s: %s %q", node.addr, name, v)
			}
			return f
		}
	}
	h.t.Fatalf("%s: /metrics lacks %s", node.addr, name)
	return 0
}

// localAdmissions is how many admissions both nodes have decided locally so far.
func (h *haSetup) localAdmissions() int64 {
	var n float64
	for _, node := range h.nodes {
		n += h.metric(node, "herd_redis_local_admissions_total")
	}
	return int64(n)
}

// warm sends bursts for the warm-up deployment until one is decided in Redis entirely: the
// nodes' connection pools are full, so a measured phase does not pay for new connections
// (on a loaded machine, under -race, dialling a new one can take longer than a call's 50 ms).
func (h *haSetup) warm() {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		before := h.localAdmissions()
		h.send(h.warmup, 12, 6)
		if h.localAdmissions() == before {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("after 30 s, bursts for %s are still decided locally", h.warmup)
		}
	}
}

// exact sends 3x the limit for model from both nodes at once: exactly the limit gets through,
// decided in Redis. A call that misses its 50 ms deadline (a loaded machine, -race) is
// decided by the node's local fair share instead, as herd promises, so each such decision
// may let one more through, or one fewer: its script may still have run in Redis, which then
// counts a request the local share refused (Redis may count more than was admitted, never
// less: docs/architecture.md). Most must be Redis's.
func (h *haSetup) exact(model string) {
	h.t.Helper()
	h.warm()
	before := h.localAdmissions()
	codes := h.send(model, 3*haRPM, 6)
	local := h.localAdmissions() - before
	if local > 0 {
		h.t.Logf("%s: %d of %d admissions decided locally (calls that missed their deadline)", model, local, 3*haRPM)
	}
	if local > 2*haRPM {
		h.t.Errorf("%s: %d of %d admissions decided locally with every Redis node up", model, local, 3*haRPM)
	}
	h.check(model, codes, haRPM-local, haRPM+local)
}

// failover runs the scenario both setups share. before: 3x the limit from both nodes gets
// exactly the limit through (see exact: no CROSSSLOT, every redirect followed). kill ends the
// master of during's and after's (the deployment named after) keys and waitFailover waits
// until a replica took over, while requests for during keep coming: every one is answered
// (200 or 429, within a second), each node falls back to its local fair share (half the limit)
// while the master is gone, and says so in its log and metrics; during gets at most those
// shares (the limit together) plus the limit again through the new master, which does not
// count what the nodes admitted locally. Once both nodes are back on Redis, after gets exactly
// the limit, through the new master.
func (h *haSetup) failover(after string, kill, waitFailover func()) {
	t := h.t
	h.exact("before")

	kill()
	killed := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for w := range 2 {
		wg.Go(func() {
			for i := w; ; i += 2 {
				select {
				case <-stop:
					return
				default:
				}
				c := h.chat("during", h.nodes[i%2])
				mu.Lock()
				codes[c]++
				mu.Unlock()
				time.Sleep(20 * time.Millisecond) // paces the load; not a wait for an event
			}
		})
	}
	waitFailover()
	t.Logf("a replica took over %v after the kill", time.Since(killed).Round(time.Millisecond))
	h.waitMode("redis")
	close(stop)
	wg.Wait()
	h.check("during", codes, haRPM/2, 2*haRPM)
	for _, n := range h.nodes {
		if la := h.metric(n, "herd_redis_local_admissions_total"); la == 0 {
			t.Errorf("%s admitted nothing locally while the master was gone", n.addr)
		}
		if !n.logged("redis state backend degraded") || !n.logged("Redis reachable again") {
			t.Errorf("%s did not log going degraded and coming back", n.addr)
		}
	}

	h.exact(after)
}

// TestRedisClusterFailover: two herd processes given a 3-master Redis Cluster (a replica each)
// by router_settings.redis_host's seed list keep limits exact, keep serving through the kill
// of a master, and are exact again once its replica has taken over.
func TestRedisClusterFailover(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	key := func(id string) string { return "herd:{" + id + "}:w" }
	m := c.MasterOf(key("during"))
	// after and the warm-up deployment live on the same master as during.
	onM := func(name string) string {
		id := name
		for i := 0; c.MasterOf(key(id)) != m; i++ {
			id = fmt.Sprintf("%s-%d", name, i)
		}
		return id
	}
	after, warmup := onM("after"), onM("warmup")
	h := startHA(t, []string{"before", "during", after, warmup}, "router_settings:\n  redis_host: "+strings.Join(c.Addrs()[:3], ",")+
		"\n  redis_password: os.environ/REDIS_PASSWORD\n  redis_fair_share_nodes: 2\n", []string{"REDIS_PASSWORD=" + c.Password()})
	h.failover(after, m.Kill, func() { c.WaitFailover(key("during"), m) })
}

// TestRedisSentinelFailover: two herd processes given Sentinels by LiteLLM's cache_params
// (sentinel_nodes, service_name, sentinel_password) keep limits exact, keep serving through
// the kill of the master, and are exact again once the Sentinels have promoted the replica.
func TestRedisSentinelFailover(t *testing.T) {
	s := redistest.StartSentinel(t, 1, 3)
	var nodes []string
	for _, a := range s.Addrs() {
		host, port, _ := strings.Cut(a, ":")
		nodes = append(nodes, fmt.Sprintf("[%s, %s]", host, port))
	}
	h := startHA(t, []string{"before", "during", "after", "warmup"}, "router_settings:\n  redis_fair_share_nodes: 2\nlitellm_settings:\n  cache_params:\n"+
		"    type: redis\n    sentinel_nodes: ["+strings.Join(nodes, ", ")+"]\n    service_name: "+redistest.MasterName+
		"\n    password: os.environ/REDIS_PASSWORD\n    sentinel_password: os.environ/SENTINEL_PASSWORD\n",
		[]string{"REDIS_PASSWORD=" + s.Password(), "SENTINEL_PASSWORD=" + s.SentinelPassword()})
	m := s.Master()
	h.failover("after", m.Kill, func() { s.WaitFailover(m) })
}
