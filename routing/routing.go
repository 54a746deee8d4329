// Package routing decides which deployment of a model group serves a request.
// It is pure: a config snapshot, usage and the time in, a decision out — no HTTP, no network.
package routing

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state"
)

// Table is an immutable routing view of one config: model groups, their deployments, limits,
// aliases and fallbacks. A config change builds a new Table; runtime state (usage, cooldowns)
// lives elsewhere, keyed by deployment ID, and carries over.
type Table struct {
	deployments []config.Deployment
	limits      []state.Limits // by deployment index
	order       []int          // by deployment index; unset sorts after every set order
	cool        []*Cooldown    // by deployment index, from the shared registry
	weights     []float64      // simple-shuffle weights by deployment index
	groups      map[string]*Group
	aliases     map[string]config.Alias
	groupNames  []string // sorted, for error messages
	listed      []string // groups plus non-hidden aliases, sorted, for /v1/models
	strategy    Strategy
	fallbacks   map[string][]string // group -> fallback groups, "*" default applied, max_fallbacks bounded
	ctxFallback map[string][]string // group -> context_window_fallbacks
}

// Group is one model group: the deployments a client's "model" can be sent to.
type Group struct {
	Name string
	// Members are indexes into Table.Deployment, in config order.
	Members []int
	// TPMLimited is set when a member has a tpm limit, so requests must reserve tokens.
	TPMLimited bool
	weighted   bool // simple-shuffle uses Table.weights; otherwise it picks uniformly
}

// UnknownModelError says a request named a model that is neither a group nor an alias.
type UnknownModelError struct {
	Model string
	Valid []string // the valid model groups, sorted
}

func (e *UnknownModelError) Error() string {
	return fmt.Sprintf("Invalid model name passed in model=%s. Available model groups: %s. Call /v1/models to view available models.",
		e.Model, strings.Join(e.Valid, ", "))
}

const unsetOrder = int(^uint(0) >> 1)

// NewTable builds the routing view of cfg. Cooldowns come from cooldowns, so they survive
// config changes; nil means a private registry (tests).
func NewTable(cfg *config.Config, cooldowns *Cooldowns) (*Table, error) {
	strategy, err := NewStrategy(cfg.RouterSettings.RoutingStrategy, cfg.RouterSettings.RoutingStrategyArgs)
	if err != nil {
		return nil, err
	}
	if cooldowns == nil {
		cooldowns = NewCooldowns()
	}
	n := len(cfg.ModelList)
	t := &Table{
		deployments: cfg.ModelList,
		limits:      make([]state.Limits, n),
		order:       make([]int, n),
		cool:        make([]*Cooldown, n),
		weights:     make([]float64, n),
		groups:      make(map[string]*Group),
		aliases:     cfg.RouterSettings.ModelGroupAlias,
		strategy:    strategy,
	}
	for i := range t.deployments {
		d := &t.deployments[i]
		t.limits[i] = state.Limits{RPM: d.Limits.RPM, TPM: d.Limits.TPM}
		if p := d.LiteLLMParams.MaxParallelRequests; p != nil {
			t.limits[i].MaxParallel = int64(*p)
		}
		t.order[i] = unsetOrder
		if o := d.LiteLLMParams.Order; o != nil {
			t.order[i] = *o
		}
		t.cool[i] = cooldowns.For(d.ID)
		g := t.groups[d.ModelName]
		if g == nil {
			g = &Group{Name: d.ModelName}
			t.groups[d.ModelName] = g
			t.groupNames = append(t.groupNames, d.ModelName)
		}
		g.Members = append(g.Members, i)
		g.TPMLimited = g.TPMLimited || t.limits[i].TPM > 0
	}
	for _, g := range t.groups {
		if w := shuffleWeights(t.deployments, g.Members); w != nil {
			for i, m := range g.Members {
				t.weights[m] = w[i]
			}
			g.weighted = true
		}
	}
	sort.Strings(t.groupNames)
	t.listed = append(t.listed, t.groupNames...)
	for name, a := range t.aliases {
		if _, ok := t.groups[a.Model]; !ok {
			return nil, fmt.Errorf("model_group_alias %q points at unknown model group %q", name, a.Model)
		}
		if !a.Hidden {
			t.listed = append(t.listed, name)
		}
	}
	sort.Strings(t.listed)
	t.fallbacks, t.ctxFallback = fallbackMaps(cfg.RouterSettings)
	return t, nil
}

// Deployment returns the deployment at index i.
func (t *Table) Deployment(i int) *config.Deployment { return &t.deployments[i] }

// Limits returns deployment i's limits.
func (t *Table) Limits(i int) state.Limits { return t.limits[i] }

// Cooldown returns deployment i's cooldown.
func (t *Table) Cooldown(i int) *Cooldown { return t.cool[i] }

// Len is the number of deployments.
func (t *Table) Len() int { return len(t.deployments) }

// GroupNames returns the model group names, sorted. The caller must not modify it.
func (t *Table) GroupNames() []string { return t.groupNames }

// Listed returns what /v1/models shows: groups and non-hidden aliases, sorted.
func (t *Table) Listed() []string { return t.listed }

// Resolve finds the group a client's model name refers to, following an alias.
func (t *Table) Resolve(model string) (*Group, error) {
	if g, ok := t.groups[model]; ok {
		return g, nil
	}
	if a, ok := t.aliases[model]; ok {
		if g, ok := t.groups[a.Model]; ok {
			return g, nil
		}
	}
	return nil, &UnknownModelError{Model: model, Valid: t.groupNames}
}

// Group returns the group named name, or nil.
func (t *Table) Group(name string) *Group { return t.groups[name] }

// Counters are what routing reads usage from: one state.Counter per deployment, by deployment
// index. (A slice rather than an interface over the snapshot: a routing decision reads every
// member of a group, and one dynamic call per member is what a 100-deployment group can afford.)
type Counters []state.Counter

// Request is what routing needs to know about a request.
type Request struct {
	Reservation state.Reservation
	Stream      bool  // latency-based routing compares time to first token for streams
	Tried       []int // deployments already tried for this request; picked again only as a last resort
}

// candidate is a deployment that may take the request now, with its load.
type candidate struct {
	dep  int
	load state.Load
}

var candidatePool = sync.Pool{New: func() any { s := make([]candidate, 0, 64); return &s }}

// Pick chooses a deployment of g for r: not cooling down, with room under its limits for r's
// reservation, of the lowest `order` among those, chosen by the table's strategy. Deployments
// in r.Tried are skipped while an untried one qualifies. ok is false when none qualifies.
func (t *Table) Pick(g *Group, u Counters, now time.Time, r *Request) (dep int, ok bool) {
	cp := candidatePool.Get().(*[]candidate)
	defer func() { *cp = (*cp)[:0]; candidatePool.Put(cp) }()
	for _, untriedOnly := range [2]bool{true, false} {
		cands := (*cp)[:0]
		best := unsetOrder
		for _, m := range g.Members {
			if untriedOnly == contains(r.Tried, m) || t.cool[m].Active(now) {
				continue
			}
			l := u[m].LoadAt(now)
			if !l.Fits(t.limits[m], r.Reservation) {
				continue
			}
			switch o := t.order[m]; {
			case o < best:
				best, cands = o, append(cands[:0], candidate{m, l})
			case o == best:
				cands = append(cands, candidate{m, l})
			}
		}
		*cp = cands
		if len(cands) > 0 {
			return cands[t.strategy.Pick(t, g, cands, r.Stream)].dep, true
		}
		if len(r.Tried) == 0 {
			break // the second pass would see the same deployments
		}
	}
	return -1, false
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// RetryAfter returns how long until some deployment of g could take r: the soonest over its
// members of the later of its cooldown end and the moment its window has room. Never 0: a
// client told "no capacity" must not retry at once.
func (t *Table) RetryAfter(g *Group, u Counters, now time.Time, r state.Reservation) time.Duration {
	best := time.Duration(-1)
	for _, m := range g.Members {
		wait := u[m].RetryAfter(t.limits[m], r)
		if c := t.cool[m].Until().Sub(now); c > wait {
			wait = c
		}
		if best < 0 || wait < best {
			best = wait
		}
	}
	if best < time.Second {
		best = time.Second
	}
	return best
}

// GroupLimits sums g's limits for the x-ratelimit-* headers. A limit is reported only when
// every member has one: one unlimited deployment makes the group unlimited.
func (t *Table) GroupLimits(g *Group) (rpm, tpm int64) {
	for _, m := range g.Members {
		l := t.limits[m]
		if rpm >= 0 {
			if l.RPM == 0 {
				rpm = -1
			} else {
				rpm += l.RPM
			}
		}
		if tpm >= 0 {
			if l.TPM == 0 {
				tpm = -1
			} else {
				tpm += l.TPM
			}
		}
	}
	return max(rpm, 0), max(tpm, 0)
}

// Fallbacks returns the groups to try, in order, after group's deployments are exhausted:
// context_window_fallbacks when contextWindow is set, else fallbacks (with "*" and
// default_fallbacks as the default). At most max_fallbacks.
func (t *Table) Fallbacks(group string, contextWindow bool) []string {
	if contextWindow {
		return t.ctxFallback[group]
	}
	if fb, ok := t.fallbacks[group]; ok {
		return fb
	}
	return t.fallbacks["*"]
}

func fallbackMaps(rs config.RouterSettings) (fallbacks, ctx map[string][]string) {
	limit := config.DefaultMaxFallbacks
	if rs.MaxFallbacks != nil {
		limit = *rs.MaxFallbacks
	}
	collect := func(list []map[string][]string) map[string][]string {
		m := map[string][]string{}
		for _, entry := range list {
			for from, to := range entry {
				m[from] = append(m[from], to...)
			}
		}
		for k, v := range m {
			if len(v) > limit {
				m[k] = v[:limit]
			}
		}
		return m
	}
	fallbacks, ctx = collect(rs.Fallbacks), collect(rs.ContextWindowFallbacks)
	if _, ok := fallbacks["*"]; !ok && len(rs.DefaultFallbacks) > 0 {
		d := rs.DefaultFallbacks
		if len(d) > limit {
			d = d[:limit]
		}
		fallbacks["*"] = d
	}
	return fallbacks, ctx
}

// shuffleWeights follows LiteLLM's simple-shuffle: weight, else rpm, else tpm, else uniform.
// A key counts only when every member of the group sets it; otherwise the pick is uniform.
func shuffleWeights(ds []config.Deployment, members []int) []float64 {
	pick := func(get func(d *config.Deployment) (float64, bool)) []float64 {
		w := make([]float64, len(members))
		for i, m := range members {
			v, ok := get(&ds[m])
			if !ok {
				return nil
			}
			w[i] = v
		}
		return w
	}
	if w := pick(func(d *config.Deployment) (float64, bool) {
		if d.LiteLLMParams.Weight == nil {
			return 0, false
		}
		return *d.LiteLLMParams.Weight, true
	}); w != nil {
		return w
	}
	if w := pick(func(d *config.Deployment) (float64, bool) { return float64(d.Limits.RPM), d.Limits.RPM > 0 }); w != nil {
		return w
	}
	if w := pick(func(d *config.Deployment) (float64, bool) { return float64(d.Limits.TPM), d.Limits.TPM > 0 }); w != nil {
		return w
	}
	return nil
}
