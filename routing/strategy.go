package routing

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/herd-proxy/herd/config"
)

// Strategy picks one deployment among candidates, a non-empty subset of g.Members.
type Strategy interface {
	Pick(g *Group, candidates []int) int
}

var _ Strategy = simpleShuffle{}

// NewStrategy returns the strategy named by router_settings.routing_strategy ("" = default).
func NewStrategy(name string) (Strategy, error) {
	switch name {
	case "", "simple-shuffle":
		return simpleShuffle{}, nil
	}
	for _, s := range config.RoutingStrategies {
		if s == name {
			// Known to LiteLLM; until herd implements it, spread load as simple-shuffle does.
			return simpleShuffle{}, nil
		}
	}
	return nil, fmt.Errorf("unknown routing_strategy %q (valid: %s)", name, strings.Join(config.RoutingStrategies, ", "))
}

// simpleShuffle is LiteLLM's default: a weighted random pick.
type simpleShuffle struct{}

func (simpleShuffle) Pick(g *Group, candidates []int) int {
	if len(candidates) == 1 {
		return candidates[0]
	}
	if g.weights == nil {
		return candidates[rand.IntN(len(candidates))]
	}
	var total float64
	for _, c := range candidates {
		total += g.weights[c]
	}
	if total <= 0 {
		return candidates[rand.IntN(len(candidates))]
	}
	r := rand.Float64() * total
	for _, c := range candidates {
		r -= g.weights[c]
		if r < 0 {
			return c
		}
	}
	return candidates[len(candidates)-1]
}
