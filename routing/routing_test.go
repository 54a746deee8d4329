package routing

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state"
)

func table(t *testing.T, yaml string) *Table {
	t.Helper()
	cfg, err := config.Parse("t.yaml", []byte(yaml), config.MapEnv(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := NewTable(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// fakeUsage is a settable load by deployment index.
type fakeUsage map[int]state.Load

// fakeCounter reads its load from a fakeUsage; routing uses only LoadAt and RetryAfter.
type fakeCounter struct {
	state.Counter
	u   fakeUsage
	dep int
}

func (c fakeCounter) LoadAt(time.Time) state.Load { return c.u[c.dep] }

func (c fakeCounter) RetryAfter(lim state.Limits, r state.Reservation) time.Duration {
	if c.u[c.dep].Fits(lim, r) {
		return 0
	}
	return time.Duration(c.dep+1) * 10 * time.Second // distinct per deployment, so tests can tell which counted
}

// counters turns u into Counters for a table of n deployments.
func (u fakeUsage) counters(n int) Counters {
	cs := make(Counters, n)
	for i := range cs {
		cs[i] = fakeCounter{u: u, dep: i}
	}
	return cs
}

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// pick routes one request for model with usage u at t0 and returns the deployment ID.
func pick(t *testing.T, tb *Table, model string, u fakeUsage, r *Request) (string, bool) {
	t.Helper()
	g, err := tb.Resolve(model)
	if err != nil {
		t.Fatal(err)
	}
	if r == nil {
		r = &Request{Reservation: state.Reservation{Requests: 1}}
	}
	i, ok := tb.Pick(g, u.counters(tb.Len()), t0, r)
	if !ok {
		return "", false
	}
	return tb.Deployment(i).ID, true
}

// shares routes n requests for model and returns each deployment ID's share of them.
func shares(t *testing.T, tb *Table, model string, n int) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for i := 0; i < n; i++ {
		id, ok := pick(t, tb, model, fakeUsage{}, nil)
		if !ok {
			t.Fatal("no pick")
		}
		out[id] += 1 / float64(n)
	}
	return out
}

func TestSimpleShuffleWeights(t *testing.T) {
	const n = 200_000
	// With n picks the share's standard error is below 0.0012; 0.01 is over 8 sigma.
	const tol = 0.01
	tests := []struct {
		name string
		yaml string
		want map[string]float64
	}{
		{"weight", `
model_list:
  - {model_name: g, litellm_params: {model: mock/a, weight: 3, rpm: 1}, model_info: {id: a}}
  - {model_name: g, litellm_params: {model: mock/b, weight: 1, rpm: 100}, model_info: {id: b}}
`, map[string]float64{"a": 0.75, "b": 0.25}},
		{"rpm", `
model_list:
  - {model_name: g, litellm_params: {model: mock/a, rpm: 100}, model_info: {id: a}}
  - {model_name: g, litellm_params: {model: mock/b, rpm: 300}, model_info: {id: b}}
`, map[string]float64{"a": 0.25, "b": 0.75}},
		{"tpm", `
model_list:
  - {model_name: g, litellm_params: {model: mock/a, tpm: 1000}, model_info: {id: a}}
  - {model_name: g, litellm_params: {model: mock/b, tpm: 4000}, model_info: {id: b}}
`, map[string]float64{"a": 0.2, "b": 0.8}},
		{"uniform", `
model_list:
  - {model_name: g, litellm_params: {model: mock/a}, model_info: {id: a}}
  - {model_name: g, litellm_params: {model: mock/b}, model_info: {id: b}}
  - {model_name: g, litellm_params: {model: mock/c}, model_info: {id: c}}
`, map[string]float64{"a": 1. / 3, "b": 1. / 3, "c": 1. / 3}},
		{"order first", `
model_list:
  - {model_name: g, litellm_params: {model: mock/a, order: 2}, model_info: {id: a}}
  - {model_name: g, litellm_params: {model: mock/b, order: 1}, model_info: {id: b}}
  - {model_name: g, litellm_params: {model: mock/c, order: 1}, model_info: {id: c}}
`, map[string]float64{"b": 0.5, "c": 0.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := shares(t, table(t, tt.yaml), "g", n)
			for id, want := range tt.want {
				if math.Abs(got[id]-want) > tol {
					t.Errorf("share of %s = %.4f, want %.4f ± %.2f", id, got[id], want, tol)
				}
			}
			for id := range got {
				if _, ok := tt.want[id]; !ok {
					t.Errorf("deployment %s picked, want never", id)
				}
			}
		})
	}
}

func TestAliasesAndUnknownModel(t *testing.T) {
	tb := table(t, `
model_list:
  - {model_name: gpt-4o, litellm_params: {model: mock/a}}
  - {model_name: embed, litellm_params: {model: mock/e}}
router_settings:
  model_group_alias:
    gpt-4: gpt-4o
    internal: {model: gpt-4o, hidden: true}
`)
	for _, m := range []string{"gpt-4o", "gpt-4", "internal"} {
		g, err := tb.Resolve(m)
		if err != nil || g.Name != "gpt-4o" {
			t.Errorf("Resolve(%s) = %v, %v; want group gpt-4o", m, g, err)
		}
	}
	if got := strings.Join(tb.Listed(), ","); got != "embed,gpt-4,gpt-4o" {
		t.Errorf("Listed = %s, want hidden alias left out", got)
	}
	_, err := tb.Resolve("gpt-5")
	var um *UnknownModelError
	if !errors.As(err, &um) || um.Model != "gpt-5" || !strings.Contains(err.Error(), "Available model groups: embed, gpt-4o") {
		t.Errorf("Route(gpt-5) err = %v", err)
	}
}

func TestUnknownStrategy(t *testing.T) {
	_, err := NewStrategy("round-robin", config.RoutingStrategyArgs{})
	if err == nil || !strings.Contains(err.Error(), "simple-shuffle, least-busy") {
		t.Errorf("err = %v, want the valid strategies listed", err)
	}
}

func BenchmarkRoute(b *testing.B) {
	cfg, err := config.Parse("b.yaml", []byte(`
model_list:
  - {model_name: g, litellm_params: {model: mock/a, rpm: 10}}
  - {model_name: g, litellm_params: {model: mock/b, rpm: 30}}
`), config.MapEnv(nil), nil)
	if err != nil {
		b.Fatal(err)
	}
	tb, _ := NewTable(cfg, nil)
	g, _ := tb.Resolve("g")
	u := fakeUsage{}.counters(tb.Len())
	r := &Request{Reservation: state.Reservation{Requests: 1}}
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := tb.Pick(g, u, t0, r); !ok {
			b.Fatal("no pick")
		}
	}
}
