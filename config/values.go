package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Reasons shared by the loader and the UnmarshalYAML methods, so a bad value reads the same
// whichever way it was decoded.
const (
	reasonSeconds  = `must be a number of seconds (30, 0.5) or a duration like "1m30s"`
	reasonNegative = "must not be negative"
	reasonTooLarge = "is too large"
	reasonAlias    = "must be a model group name or a mapping {model: <group>, hidden: <bool>}"
)

// maxSeconds keeps seconds*1e9 inside time.Duration.
const maxSeconds = float64(math.MaxInt64) / float64(time.Second)

// secondsFromNode decodes a YAML scalar as Seconds. The reason is "" on success; it never
// includes the value, so callers can decide whether the value may be shown.
func secondsFromNode(n *yaml.Node) (Seconds, string) {
	if n.Kind != yaml.ScalarNode {
		return 0, reasonSeconds
	}
	switch n.ShortTag() {
	case "!!int", "!!float":
		var x any
		if n.Decode(&x) == nil {
			switch v := x.(type) {
			case int:
				return secondsFromFloat(float64(v))
			case int64:
				return secondsFromFloat(float64(v))
			case uint64:
				return secondsFromFloat(float64(v))
			case float64:
				return secondsFromFloat(v)
			}
		}
	case "!!str":
		return secondsFromText(n.Value)
	}
	return 0, reasonSeconds
}

// secondsFromText accepts "30", "0.5" (LiteLLM's float seconds) and Go durations ("30s").
func secondsFromText(s string) (Seconds, string) {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return secondsFromFloat(f)
	} else if errors.Is(err, strconv.ErrRange) {
		return 0, reasonTooLarge
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil && strings.Contains(err.Error(), "invalid duration"):
		return 0, reasonSeconds
	case err != nil:
		return 0, reasonTooLarge
	case d < 0:
		return 0, reasonNegative
	}
	return Seconds(d), ""
}

func secondsFromFloat(f float64) (Seconds, string) {
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return 0, reasonSeconds
	case f < 0:
		return 0, reasonNegative
	case f > maxSeconds:
		return 0, reasonTooLarge
	}
	return Seconds(time.Duration(math.Round(f * float64(time.Second)))), ""
}

// seconds returns s in LiteLLM's notation: a plain number of seconds.
func (s Seconds) seconds() float64 { return time.Duration(s).Seconds() }

// UnmarshalYAML accepts a number of seconds or a Go duration string and rejects negatives.
func (s *Seconds) UnmarshalYAML(n *yaml.Node) error {
	v, reason := secondsFromNode(n)
	if reason != "" {
		return fmt.Errorf("%s (got %s)", reason, describeNode(n))
	}
	*s = v
	return nil
}

// MarshalYAML writes seconds as a number, so a config written back out reads the same way
// (a time.Duration would otherwise be written as nanoseconds and read back as seconds).
func (s Seconds) MarshalYAML() (any, error) { return s.seconds(), nil }

// MarshalJSON writes seconds as a number, LiteLLM's convention in /model/info.
func (s Seconds) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatFloat(s.seconds(), 'f', -1, 64)), nil
}

// UnmarshalJSON accepts a number of seconds or a duration string.
func (s *Seconds) UnmarshalJSON(b []byte) error {
	text := string(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &text); err != nil {
			return err
		}
	}
	v, reason := secondsFromText(text)
	if reason != "" {
		return fmt.Errorf("%s (got %s)", reason, truncate(string(b)))
	}
	*s = v
	return nil
}

// aliasSpec is the mapping form of a model_group_alias value.
type aliasSpec struct {
	Model  string `yaml:"model"`
	Hidden bool   `yaml:"hidden"`
}

// UnmarshalYAML accepts both LiteLLM forms: "gpt-4": "gpt-4o" and
// "gpt-4": {model: gpt-4o, hidden: true}.
func (a *Alias) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*a = Alias{Model: n.Value}
		return nil
	case yaml.MappingNode:
		var s aliasSpec
		if err := n.Decode(&s); err != nil {
			return err
		}
		*a = Alias(s)
		return nil
	}
	return fmt.Errorf("%s (got %s)", reasonAlias, describeNode(n))
}

// MarshalYAML writes the short form unless the alias is hidden.
func (a Alias) MarshalYAML() (any, error) {
	if !a.Hidden {
		return a.Model, nil
	}
	return aliasSpec(a), nil
}

// describeNode shows a value in an error: numbers and booleans as written, strings quoted and
// shortened, collections by kind. Callers must not use it for secrets or environment values.
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		if n.Alias != nil {
			return describeNode(n.Alias)
		}
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!int", "!!float", "!!bool", "!!null":
			return truncate(n.Value)
		}
		return strconv.Quote(truncate(n.Value))
	}
	return "nothing"
}

// truncate keeps error lines readable when a long value lands in the wrong key.
func truncate(s string) string {
	const max = 60
	if len(s) <= max {
		return s
	}
	r := []rune(s)
	if len(r) <= max {
		return s
	}
	return string(r[:max]) + "…"
}
