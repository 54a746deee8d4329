package routing

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
)

// threeWay is a group of three deployments a, b, c (indexes 0, 1, 2) under strategy.
func threeWay(t *testing.T, strategy string, extra string) *Table {
	return table(t, fmt.Sprintf(`
model_list:
  - {model_name: g, litellm_params: {model: mock/a, rpm: 100 %[2]s}, model_info: {id: a}}
  - {model_name: g, litellm_params: {model: mock/b, rpm: 100 %[2]s}, model_info: {id: b}}
  - {model_name: g, litellm_params: {model: mock/c, rpm: 100 %[2]s}, model_info: {id: c}}
router_settings:
  routing_strategy: %[1]s
  routing_strategy_args: {lowest_latency_buffer: 0.5}
`, strategy, extra))
}

// counts picks n times and counts deployment IDs.
func counts(t *testing.T, tb *Table, u fakeUsage, r *Request, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i := 0; i < n; i++ {
		id, ok := pick(t, tb, "g", u, r)
		if !ok {
			t.Fatal("no pick")
		}
		out[id]++
	}
	return out
}

// wantOnly checks that picks landed only on want, each at least 20% of n (ties broken randomly).
func wantOnly(t *testing.T, got map[string]int, n int, want ...string) {
	t.Helper()
	for id, c := range got {
		ok := false
		for _, w := range want {
			ok = ok || w == id
		}
		if !ok {
			t.Errorf("picked %s %d times; want only %v", id, c, want)
		}
	}
	for _, w := range want {
		if len(want) > 1 && got[w] < n/5 {
			t.Errorf("%s picked %d of %d times; ties should be broken randomly", w, got[w], n)
		}
		if got[w] == 0 {
			t.Errorf("%s never picked", w)
		}
	}
}

func TestLeastBusy(t *testing.T) {
	tb := threeWay(t, "least-busy", "")
	u := fakeUsage{0: {InFlight: 5}, 1: {InFlight: 2}, 2: {InFlight: 2}}
	wantOnly(t, counts(t, tb, u, nil, 1000), 1000, "b", "c")
	u[2] = state.Load{InFlight: 1}
	wantOnly(t, counts(t, tb, u, nil, 100), 100, "c")
}

func TestUsageBased(t *testing.T) {
	for _, name := range []string{"usage-based-routing", "usage-based-routing-v2"} {
		t.Run(name, func(t *testing.T) {
			tb := threeWay(t, name, ", tpm: 1000")
			u := fakeUsage{0: {Tokens: 100}, 1: {Tokens: 900}, 2: {Tokens: 100}}
			wantOnly(t, counts(t, tb, u, nil, 1000), 1000, "a", "c")
			// The least used deployment without room for the reservation is skipped.
			u[0] = state.Load{Tokens: 50}
			r := &Request{Reservation: state.Reservation{Requests: 1, Tokens: 950}}
			wantOnly(t, counts(t, tb, u, r, 100), 100, "a")
			r.Reservation.Tokens = 951
			if _, ok := pick(t, tb, "g", u, r); ok {
				t.Error("picked a deployment without room for the reservation")
			}
		})
	}
}

func TestLatencyBased(t *testing.T) {
	tb := threeWay(t, "latency-based-routing", "")
	ms := time.Millisecond
	u := fakeUsage{0: {Latency: 100 * ms, TTFT: 90 * ms}, 1: {Latency: 140 * ms, TTFT: 20 * ms}, 2: {Latency: 400 * ms, TTFT: 25 * ms}}
	// Non-streaming compares latency: b is within the 50% buffer of a (140 <= 150), c is not.
	wantOnly(t, counts(t, tb, u, nil, 1000), 1000, "a", "b")
	// Streams compare time to first token: b and c within 50% of 20ms.
	wantOnly(t, counts(t, tb, u, &Request{Reservation: state.Reservation{Requests: 1}, Stream: true}, 1000), 1000, "b", "c")
	// A deployment with no samples yet counts as fastest, so it gets measured.
	u[2] = state.Load{}
	wantOnly(t, counts(t, tb, u, nil, 100), 100, "c")
}

func TestLimitsExcludeFullDeployments(t *testing.T) {
	for _, strategy := range []string{"simple-shuffle", "least-busy", "usage-based-routing-v2", "latency-based-routing"} {
		t.Run(strategy, func(t *testing.T) {
			tb := threeWay(t, strategy, ", max_parallel_requests: 4")
			u := fakeUsage{0: {Requests: 100}, 1: {InFlight: 4}, 2: {Requests: 99}}
			wantOnly(t, counts(t, tb, u, nil, 50), 50, "c")
			u[2] = state.Load{Requests: 100}
			if id, ok := pick(t, tb, "g", u, nil); ok {
				t.Fatalf("picked %s, but every deployment is full", id)
			}
			g, _ := tb.Resolve("g")
			// Soonest room: a (index 0) per fakeUsage.RetryAfter; b is only limited by parallelism.
			if got := tb.RetryAfter(g, u.counters(tb.Len()), t0, state.Reservation{Requests: 1}); got != 10*time.Second {
				t.Errorf("RetryAfter = %v, want 10s", got)
			}
		})
	}
}

func TestOrderFallsThroughWhenLowerOrderIsFull(t *testing.T) {
	tb := table(t, `
model_list:
  - {model_name: g, litellm_params: {model: mock/a, order: 1, rpm: 10}, model_info: {id: a}}
  - {model_name: g, litellm_params: {model: mock/b, order: 2, rpm: 10}, model_info: {id: b}}
  - {model_name: g, litellm_params: {model: mock/c, order: 2, rpm: 10}, model_info: {id: c}}
`)
	u := fakeUsage{}
	wantOnly(t, counts(t, tb, u, nil, 100), 100, "a")
	u[0] = state.Load{Requests: 10}
	wantOnly(t, counts(t, tb, u, nil, 1000), 1000, "b", "c")
}

func TestCooldowns(t *testing.T) {
	tb := threeWay(t, "simple-shuffle", "")
	p := CooldownPolicy{AllowedFails: 1, Time: 5 * time.Second}
	a := tb.Cooldown(0)
	if a.Fail(t0, p, 500, 0) {
		t.Fatal("cooled down on the first 500 with allowed_fails 1")
	}
	if !a.Fail(t0.Add(time.Second), p, 502, 0) {
		t.Fatal("not cooled down after allowed_fails was exceeded")
	}
	if got, want := a.Reason(t0.Add(time.Second)), "2 failures within a minute, the last: upstream unreachable"; got != want {
		t.Errorf("Reason = %q, want %q", got, want)
	}
	if got := a.Reason(t0.Add(time.Minute)); got != "" {
		t.Errorf("Reason after the cooldown ended = %q, want none", got)
	}
	// A cooled-down deployment is skipped.
	wantOnly(t, counts(t, tb, fakeUsage{}, nil, 1000), 1000, "b", "c")
	if !a.Active(t0.Add(5*time.Second)) || a.Active(t0.Add(6*time.Second)) {
		t.Errorf("cooldown should end 5s after the failure that caused it; until %v", a.Until())
	}
	// A repeat failure extends it; the upstream's longer Retry-After wins.
	a.Fail(t0.Add(3*time.Second), p, 503, 30*time.Second)
	if !a.Active(t0.Add(32 * time.Second)) {
		t.Errorf("Retry-After 30s did not extend the cooldown; until %v", a.Until())
	}
	// An absurd Retry-After cools down for at most MaxRetryAfter; cooldown_time itself is not capped.
	capped := CooldownPolicy{AllowedFails: 1, Time: 5 * time.Second, MaxRetryAfter: time.Minute}
	for _, ra := range []time.Duration{999999 * time.Second, time.Duration(math.MaxInt64)} {
		d := NewCooldowns().For("x")
		if !d.Fail(t0, capped, 429, ra) {
			t.Fatal("429 did not cool down")
		}
		if end := d.Until(); !end.Equal(t0.Add(time.Minute)) {
			t.Errorf("Retry-After %v: cooldown until %v, want %v (the cap)", ra, end, t0.Add(time.Minute))
		}
	}
	long := NewCooldowns().For("y")
	long.Fail(t0, CooldownPolicy{Time: 10 * time.Minute, MaxRetryAfter: time.Minute}, 429, 0)
	if !long.Until().Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("cooldown_time 10m was capped: until %v", long.Until())
	}
	// A 429 cools down at once.
	b := tb.Cooldown(1)
	if !b.Fail(t0, p, 429, 0) {
		t.Error("429 did not cool down at once")
	}
	if got := b.Reason(t0); got != "upstream answered 429" {
		t.Errorf("Reason after a 429 = %q", got)
	}
	// Success resets the failure count; failures older than a minute are forgotten.
	c := tb.Cooldown(2)
	c.Fail(t0, p, 500, 0)
	c.Succeed()
	if c.Fail(t0, p, 500, 0) {
		t.Error("success did not reset the failure count")
	}
	if c.Fail(t0.Add(2*time.Minute), p, 500, 0) {
		t.Error("a failure two minutes ago still counted")
	}
	// disable_cooldowns.
	if tb.Cooldown(2).Fail(t0, CooldownPolicy{Disabled: true}, 429, 0) {
		t.Error("cooled down with cooldowns disabled")
	}
	// The group's RetryAfter reflects the soonest cooldown end when nothing is full.
	tb2 := threeWay(t, "simple-shuffle", "")
	for i := 0; i < 3; i++ {
		tb2.Cooldown(i).Fail(t0, CooldownPolicy{Time: time.Duration(i+2) * time.Second}, 429, 0)
	}
	g, _ := tb2.Resolve("g")
	if _, ok := tb2.Pick(g, fakeUsage{}.counters(3), t0, &Request{Reservation: state.Reservation{Requests: 1}}); ok {
		t.Error("picked while every deployment cools down")
	}
	if got := tb2.RetryAfter(g, fakeUsage{}.counters(3), t0, state.Reservation{Requests: 1}); got != 2*time.Second {
		t.Errorf("RetryAfter = %v, want 2s (the soonest cooldown end)", got)
	}
}

func TestRetriesPreferUntriedDeployments(t *testing.T) {
	tb := threeWay(t, "simple-shuffle", "")
	r := &Request{Reservation: state.Reservation{Requests: 1}, Tried: []int{0, 1}}
	wantOnly(t, counts(t, tb, fakeUsage{}, r, 100), 100, "c")
	// With every deployment tried, a tried one is picked again rather than none.
	r.Tried = []int{0, 1, 2}
	if _, ok := pick(t, tb, "g", fakeUsage{}, r); !ok {
		t.Error("no pick once every deployment was tried")
	}
}

func TestFallbacks(t *testing.T) {
	tb := table(t, `
model_list:
  - {model_name: a, litellm_params: {model: mock/a}}
  - {model_name: b, litellm_params: {model: mock/b}}
  - {model_name: c, litellm_params: {model: mock/c}}
router_settings:
  fallbacks: [{a: [b, c]}, {"*": [c]}]
  context_window_fallbacks: [{a: [c]}]
  max_fallbacks: 1
`)
	if got := fmt.Sprint(tb.Fallbacks("a", false)); got != "[b]" {
		t.Errorf("fallbacks(a) = %s, want [b] (max_fallbacks 1)", got)
	}
	if got := fmt.Sprint(tb.Fallbacks("b", false)); got != "[c]" {
		t.Errorf("fallbacks(b) = %s, want the * default [c]", got)
	}
	if got := fmt.Sprint(tb.Fallbacks("a", true)); got != "[c]" {
		t.Errorf("context window fallbacks(a) = %s, want [c]", got)
	}
}

func TestGroupLimits(t *testing.T) {
	tb := threeWay(t, "simple-shuffle", ", tpm: 1000")
	g, _ := tb.Resolve("g")
	if rpm, tpm := tb.GroupLimits(g); rpm != 300 || tpm != 3000 {
		t.Errorf("GroupLimits = %d, %d; want 300, 3000", rpm, tpm)
	}
	tb = table(t, `
model_list:
  - {model_name: g, litellm_params: {model: mock/a, rpm: 5}}
  - {model_name: g, litellm_params: {model: mock/b}}
`)
	g, _ = tb.Resolve("g")
	if rpm, _ := tb.GroupLimits(g); rpm != 0 {
		t.Errorf("GroupLimits rpm = %d; want 0 (one unlimited member makes the group unlimited)", rpm)
	}
}

// BenchmarkPickAdmit100 is a routing decision over a 100-deployment group (usage-based, so
// every member's load is read), against a trivial in-memory Usage.
func BenchmarkPick100(b *testing.B) {
	yaml := "model_list:\n"
	for i := 0; i < 100; i++ {
		yaml += fmt.Sprintf("  - {model_name: g, litellm_params: {model: mock/d%d, rpm: 1000, tpm: 100000}}\n", i)
	}
	yaml += "router_settings: {routing_strategy: usage-based-routing-v2}\n"
	tb := table(&testing.T{}, yaml)
	g, _ := tb.Resolve("g")
	fu := fakeUsage{}
	for i := 0; i < 100; i++ {
		fu[i] = state.Load{Requests: int64(i), Tokens: int64(1000 * (i % 7))}
	}
	u := fu.counters(100)
	r := &Request{Reservation: state.Reservation{Requests: 1, Tokens: 100}}
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := tb.Pick(g, u, t0, r); !ok {
			b.Fatal("no pick")
		}
	}
}

// TestLowestUsageDoesNotWrap: a deployment with a huge token count must not look like the
// least used one because tokens x 1e6 overflowed.
func TestLowestUsageDoesNotWrap(t *testing.T) {
	cands := []candidate{
		{dep: 0, load: state.Load{Tokens: 1 << 60, Requests: 1}},
		{dep: 1, load: state.Load{Tokens: 5, Requests: 1}},
	}
	for range 20 {
		if i := (lowestUsage{}).Pick(nil, nil, cands, false); cands[i].dep != 1 {
			t.Fatalf("picked deployment %d with %d tokens", cands[i].dep, cands[i].load.Tokens)
		}
	}
}
