package chaos

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// RunInfo is run.json: what was run, so a stored run can be analysed again without its flags.
type RunInfo struct {
	Seed int64  `json:"seed"`
	Mode string `json:"mode"` // fast, strict or redis
	// Redis is redis mode's setup: single, cluster or sentinel (RedisSetups); empty in runs
	// from before it existed, which were single.
	Redis string `json:"redis,omitempty"`
	// Provider is the deployments' provider (Providers); empty in runs from before it
	// existed, which were openai.
	Provider string        `json:"provider,omitempty"`
	Nodes    []NodeInfo    `json:"nodes"`
	Nemeses  []string      `json:"nemeses"`  // the fault kinds scheduled (KindPartition, ...)
	Duration time.Duration `json:"duration"` // how long the workload ran
	Demand   float64       `json:"demand"`   // offered load as a multiple of each group's limit
	// ClockSkew is the most the clock nemesis skewed a node by, either way.
	ClockSkew time.Duration `json:"clock_skew,omitempty"`
	Start     int64         `json:"start"` // unix nanoseconds of history time 0
	// Deployments are the chat workload's deployments, with the limits they had all run long.
	Deployments []DeploymentInfo `json:"deployments"`
	// ManagedPrefix marks the deployments the config workload adds, updates and deletes
	// (their IDs start with it); the chat workload never uses them.
	ManagedPrefix string `json:"managed_prefix"`
	// Propagation is the delay the limits checker allows for usage to reach the other nodes
	// while nothing is wrong (fast mode): see Bound.
	Propagation time.Duration `json:"propagation"`
	// Repair is how long after a fault heals a node may still miss counts it lost during the
	// fault (gossip's full-state exchange repairs them): see Bound.
	Repair time.Duration `json:"repair"`
	// ConvergeWithin is the time after the last heal by which every node must serve the same
	// config version.
	ConvergeWithin time.Duration `json:"converge_within"`
	HerdVersion    string        `json:"herd_version,omitempty"`
}

// NodeInfo is one herd node.
type NodeInfo struct {
	Name string `json:"name"`
	Addr string `json:"addr"` // its address inside the run's network
}

// DeploymentInfo is one chat deployment and its limits.
type DeploymentInfo struct {
	ID    string `json:"id"`
	Group string `json:"group"` // model_name
	RPM   int64  `json:"rpm"`
	TPM   int64  `json:"tpm,omitempty"` // 0 = no tpm limit
}

// Valid is a verdict: true, false, or unknown (the run could not tell), written to JSON as
// true, false or "unknown", as Jepsen does.
type Valid int8

const (
	Unknown Valid = iota
	True
	False
)

func (v Valid) MarshalJSON() ([]byte, error) {
	switch v {
	case True:
		return []byte("true"), nil
	case False:
		return []byte("false"), nil
	}
	return []byte(`"unknown"`), nil
}

func (v *Valid) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case "true":
		*v = True
	case "false":
		*v = False
	case `"unknown"`:
		*v = Unknown
	default:
		return fmt.Errorf("valid: %s is not true, false or \"unknown\"", b)
	}
	return nil
}

func (v Valid) String() string {
	switch v {
	case True:
		return "valid"
	case False:
		return "invalid"
	}
	return "unknown"
}

// And combines verdicts: any false is false, else any unknown is unknown.
func (v Valid) And(o Valid) Valid {
	switch {
	case v == False || o == False:
		return False
	case v == Unknown || o == Unknown:
		return Unknown
	}
	return True
}

// CheckResult is one checker's verdict.
type CheckResult struct {
	Valid   Valid  `json:"valid"`
	Summary string `json:"summary"` // the verdict in plain words, for people
	// Problems lists what made it invalid or unknown, one line each (capped).
	Problems []string `json:"problems,omitempty"`
	// Figures are the checker's measurements (counts, shares, times), recomputable from the logs.
	Figures map[string]any `json:"figures,omitempty"`
}

// DeploymentResult is one chat deployment's figures, from the upstream log.
type DeploymentResult struct {
	ID                 string `json:"id"`
	LimitRPM           int64  `json:"limit_rpm"`
	LimitTPM           int64  `json:"limit_tpm"`
	MaxIn60s           int64  `json:"max_in_any_60s"`
	MaxTokensIn60s     int64  `json:"max_tokens_in_any_60s"`
	Bound              int64  `json:"bound"`        // the request bound of the window that came closest to (or furthest over) it
	TokenBound         int64  `json:"token_bound"`  // the same for tokens (0 = no tpm limit)
	WorstWindowStart   int64  `json:"worst_window"` // history time (ns) where that window starts
	Admitted           int64  `json:"admitted"`     // upstream arrivals over the run
	Refused            int64  `json:"refused"`      // 429s answered for the deployment's group
	OverLimitWindows   int64  `json:"windows_over_limit"`
	OverBoundWindows   int64  `json:"windows_over_bound"`
	FaultFactorInWorst int    `json:"fault_factor"` // m of the worst window: how many views the faults allowed
}

// Results is results.json.
type Results struct {
	Valid       Valid                  `json:"valid"`
	Checkers    map[string]CheckResult `json:"checkers"`
	Deployments []DeploymentResult     `json:"deployments"`
}

// CheckerNames are the checkers' names, sorted: the order verdicts are shown in.
func (r *Results) CheckerNames() []string {
	names := make([]string, 0, len(r.Checkers))
	for n := range r.Checkers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// MarshalIndent is results.json's encoding.
func (r *Results) MarshalIndent() ([]byte, error) { return json.MarshalIndent(r, "", "  ") }
