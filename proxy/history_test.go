package proxy

import (
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/state/local"
)

// The sampler turns running totals into per-second counts: each sample goes to the second
// before it, skipped seconds count nothing, and a group's requests include herd's own 429s.
func TestHistoryCountsPerSecond(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	a, b := m.deployment("g", "a"), m.deployment("g", "b")
	snap := &snapshot{deps: []deployment{
		{cfg: &config.Deployment{ID: "a", ModelName: "g"}, metrics: a},
		{cfg: &config.Deployment{ID: "b", ModelName: "g"}, metrics: b},
	}}
	h := newHistory()
	t0 := time.Unix(1_800_000_000, 0)

	a.count(200)
	a.count(200)
	b.upstreamFailure(429)
	b.count(429)
	m.countUnrouted("g", 429)
	h.sample(m, t0.Add(100*time.Millisecond)) // second t0-1
	a.count(200)
	h.sample(m, t0.Add(time.Second)) // second t0
	h.sample(m, t0.Add(time.Second+500*time.Millisecond))
	m.countUnrouted("g", 429)
	m.countUnrouted("g", 429)
	h.sample(m, t0.Add(4*time.Second)) // second t0+3; t0+1 and t0+2 were skipped

	got := h.read(snap, 6)
	if got.End != t0.Unix()+3 || got.StepSeconds != 1 {
		t.Fatalf("end %d step %d, want end %d", got.End, got.StepSeconds, t0.Unix()+3)
	}
	// Oldest first: t0-2 (before the first sample), t0-1, t0, t0+1, t0+2, t0+3.
	want := map[string][]uint32{
		"a requests":  {0, 2, 1, 0, 0, 0},
		"b requests":  {0, 1, 0, 0, 0, 0},
		"b throttled": {0, 1, 0, 0, 0, 0},
		"g requests":  {0, 4, 1, 0, 0, 2},
		"g rejected":  {0, 1, 0, 0, 0, 2},
	}
	have := map[string][]uint32{
		"a requests":  got.Deployments["a"].Requests,
		"b requests":  got.Deployments["b"].Requests,
		"b throttled": got.Deployments["b"].Throttled,
		"g requests":  got.Groups["g"].Requests,
		"g rejected":  got.Groups["g"].Rejected,
	}
	for k, w := range want {
		if !slices.Equal(have[k], w) {
			t.Errorf("%s = %v, want %v", k, have[k], w)
		}
	}

	// A stall longer than the whole history leaves nothing of the past behind.
	a.count(200)
	h.sample(m, t0.Add((historySeconds+10)*time.Second))
	got = h.read(snap, historySeconds)
	var sum uint32
	for _, n := range got.Deployments["a"].Requests {
		sum += n
	}
	if last := got.Deployments["a"].Requests[historySeconds-1]; last != 1 || sum != 1 {
		t.Errorf("after a long stall: last second %d, whole history %d, want 1 and 1", last, sum)
	}
}

// fakeMembership is a fixed member list.
type fakeMembership []Member

func (f fakeMembership) Members() []Member { return slices.Clone(f) }

// /cluster/status says what the dashboard shows: members' raft roles, the version each serves
// and when each was last heard; the limit mode and degradation; each deployment's latency and
// why it cools down; and ?history=N, this node's requests and 429s per second.
func TestClusterStatusForTheDashboard(t *testing.T) {
	needsServers(t)
	_, good := fakeupstream.Start(t, fakeupstream.Options{})
	_, full := fakeupstream.Start(t, fakeupstream.Options{FailRate: 1, FailStatus: 429})
	cfg, err := config.Parse("test.yaml", []byte(`model_list:
  - model_name: g
    litellm_params: {model: openai/a, api_base: "`+good+`", api_key: k, rpm: 3}
  - model_name: full
    litellm_params: {model: openai/b, api_base: "`+full+`", api_key: k}
router_settings: {num_retries: 0}
`), config.MapEnv{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	served := uint64(6)
	heard := time.Now().Add(-2 * time.Second)
	srv, err := New(Options{Config: cfg, State: local.New(local.Options{}), Backend: "redis", Node: "n1", Logger: testLogger(t),
		BackendMode:   func() string { return "strict-degraded" },
		BackendHealth: func() BackendHealth { return BackendHealth{LimitMode: "strict", Degraded: true} },
		Members: fakeMembership{
			{Name: "n1", Status: "alive", Self: true},
			{Name: "n2", Status: "alive", ServedConfigVersion: &served, LastHeard: heard},
			{Name: "n3", Status: "dead"},
			{Name: "n4", Status: "alive"},
		},
		Consensus: func() ConsensusStatus {
			return ConsensusStatus{Leader: "n2", Term: 4, Voters: []string{"n1", "n2", "n3"}, NonVoters: []string{"n4"}, ConfigVersion: 7}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Apply(cfg, 7); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	t.Cleanup(srv.Close)

	for range 5 { // 3 fit rpm 3, then herd answers 429 itself
		post(t, ts.URL+"/v1/chat/completions", `{"model":"g","messages":[{"role":"user","content":"hi"}]}`)
	}
	if resp, body := post(t, ts.URL+"/v1/chat/completions", `{"model":"full","messages":[{"role":"user","content":"hi"}]}`); resp.StatusCode != 429 {
		t.Fatalf("the full upstream's answer: %d %s", resp.StatusCode, body)
	}
	srv.history.sample(srv.metrics, time.Now().Add(time.Second)) // don't wait for the ticker

	resp, st := get(t, ts.URL+"/cluster/status?history=300")
	if resp.StatusCode != 200 {
		t.Fatalf("/cluster/status?history=300: %d %s", resp.StatusCode, st)
	}
	checks := []struct {
		path string
		want any
	}{
		{"backend", "redis"}, {"backend_mode", "strict-degraded"}, {"limit_mode", "strict"}, {"backend_degraded", true},
		{"members.0.self", true}, {"members.0.raft_role", "voter"}, {"members.0.served_config_version", float64(7)},
		{"members.1.self", false}, {"members.1.raft_role", "leader"}, {"members.1.served_config_version", float64(6)},
		{"members.2.raft_role", "voter"}, {"members.3.raft_role", "nonvoter"},
		{`deployments.#(model_name=="full").cooldown_reason`, "upstream answered 429"},
		{`deployments.#(model_name=="g").rpm_used`, float64(3)},
		{"history.step_seconds", float64(1)},
	}
	for _, c := range checks {
		if got := gjson.Get(st, c.path).Value(); got != c.want {
			t.Errorf("%s = %v, want %v", c.path, got, c.want)
		}
	}
	if ago := gjson.Get(st, "members.1.last_heard_seconds").Float(); ago < 2 || ago > 60 {
		t.Errorf("members.1.last_heard_seconds = %v, want about 2", ago)
	}
	for _, absent := range []string{"members.0.last_heard_seconds", "members.2.served_config_version", `deployments.#(model_name=="g").cooldown_reason`} {
		if gjson.Get(st, absent).Exists() {
			t.Errorf("%s is present: %s", absent, gjson.Get(st, absent).Raw)
		}
	}
	if gjson.Get(st, `deployments.#(model_name=="g").latency_ms`).Float() <= 0 {
		t.Errorf("no latency for the deployment that answered: %s", st)
	}
	sum := func(path string) (n int64) {
		for _, v := range gjson.Get(st, path).Array() {
			n += v.Int()
		}
		return n
	}
	gID := gjson.Get(st, `deployments.#(model_name=="g").id`).String()
	fullID := gjson.Get(st, `deployments.#(model_name=="full").id`).String()
	for path, want := range map[string]int64{
		"history.groups.g.requests": 5, "history.groups.g.rejected": 2, "history.deployments." + gID + ".requests": 3,
		"history.deployments." + fullID + ".throttled": 1, "history.groups.full.rejected": 0,
	} {
		if got := sum(path); got != want {
			t.Errorf("sum of %s = %d, want %d", path, got, want)
		}
	}
	if n := len(gjson.Get(st, "history.groups.g.requests").Array()); n != 300 {
		t.Errorf("history=300 gave %d seconds", n)
	}

	for _, bad := range []string{"0", "301", "x", "-1"} {
		resp, body := get(t, ts.URL+"/cluster/status?history="+bad)
		wantError(t, resp, body, 400, "history")
	}
	if _, plain := get(t, ts.URL+"/cluster/status"); gjson.Get(plain, "history").Exists() {
		t.Error("history sent without being asked for")
	}
}
