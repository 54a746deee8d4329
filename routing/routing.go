// Package routing decides which deployment of a model group serves a request.
// It is pure: a config snapshot and usage in, a decision out — no HTTP, no network.
package routing

import (
	"fmt"
	"sort"
	"strings"

	"github.com/herd-proxy/herd/config"
)

// Table is an immutable routing view of one config: model groups, their deployments, aliases.
// A config change builds a new Table; nothing in it is mutated after NewTable returns.
type Table struct {
	deployments []config.Deployment
	groups      map[string]*Group
	aliases     map[string]config.Alias
	groupNames  []string // sorted, for error messages
	listed      []string // groups plus non-hidden aliases, sorted, for /v1/models
	strategy    Strategy
}

// Group is one model group: the deployments a client's "model" can be sent to.
type Group struct {
	Name string
	// Members are indexes into Table.Deployment, in config order.
	Members []int
	// weights holds simple-shuffle weights indexed by deployment index (shared by the
	// table's groups); nil when the group picks uniformly.
	weights []float64
	// lowestOrder holds the members with the lowest `order`, which are tried first.
	lowestOrder []int
}

// Decision is the outcome of routing one request.
type Decision struct {
	Group      *Group
	Deployment int // index into Table.Deployment
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

// NewTable builds the routing view of cfg.
func NewTable(cfg *config.Config) (*Table, error) {
	strategy, err := NewStrategy(cfg.RouterSettings.RoutingStrategy)
	if err != nil {
		return nil, err
	}
	t := &Table{
		deployments: cfg.ModelList,
		groups:      make(map[string]*Group),
		aliases:     cfg.RouterSettings.ModelGroupAlias,
		strategy:    strategy,
	}
	for i := range t.deployments {
		d := &t.deployments[i]
		g := t.groups[d.ModelName]
		if g == nil {
			g = &Group{Name: d.ModelName}
			t.groups[d.ModelName] = g
			t.groupNames = append(t.groupNames, d.ModelName)
		}
		g.Members = append(g.Members, i)
	}
	weights := make([]float64, len(t.deployments))
	for _, g := range t.groups {
		if w := shuffleWeights(t.deployments, g.Members); w != nil {
			for i, m := range g.Members {
				weights[m] = w[i]
			}
			g.weights = weights
		}
		g.lowestOrder = lowestOrder(t.deployments, g.Members)
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
	return t, nil
}

// Deployment returns the deployment at index i.
func (t *Table) Deployment(i int) *config.Deployment { return &t.deployments[i] }

// Len is the number of deployments.
func (t *Table) Len() int { return len(t.deployments) }

// GroupNames returns the model group names, sorted. The caller must not modify it.
func (t *Table) GroupNames() []string { return t.groupNames }

// Listed returns what /v1/models shows: groups and non-hidden aliases, sorted.
func (t *Table) Listed() []string { return t.listed }

// Resolve finds the group a client's model name refers to, following an alias.
func (t *Table) Resolve(model string) (*Group, bool) {
	if g, ok := t.groups[model]; ok {
		return g, true
	}
	if a, ok := t.aliases[model]; ok {
		g, ok := t.groups[a.Model]
		return g, ok
	}
	return nil, false
}

// Route picks a deployment for model.
func (t *Table) Route(model string) (Decision, error) {
	g, ok := t.Resolve(model)
	if !ok {
		return Decision{}, &UnknownModelError{Model: model, Valid: t.groupNames}
	}
	return Decision{Group: g, Deployment: t.strategy.Pick(g, g.lowestOrder)}, nil
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

// lowestOrder returns the members whose `order` is lowest (unset counts as after any set order).
func lowestOrder(ds []config.Deployment, members []int) []int {
	const unset = int(^uint(0) >> 1)
	best := unset
	for _, m := range members {
		if o := ds[m].LiteLLMParams.Order; o != nil && *o < best {
			best = *o
		}
	}
	var out []int
	for _, m := range members {
		o := unset
		if ds[m].LiteLLMParams.Order != nil {
			o = *ds[m].LiteLLMParams.Order
		}
		if o == best {
			out = append(out, m)
		}
	}
	return out
}
