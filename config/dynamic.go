package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// Dynamic is the part of a config that changes at runtime, through the admin API and Raft:
// model_list and router_settings, as written. os.environ/ references stay unresolved, so each
// node resolves them from its own environment and the replicated log holds the reference, not
// the secret, wherever the file used one. Everything else (general_settings, cluster_settings,
// ...) stays with the file each node was started with: the Static part.
//
// A Dynamic value is never modified: the operations below return a new one.
type Dynamic struct {
	Version        uint64           `json:"version"` // 0 until the first change is applied; +1 for every change
	ModelList      []map[string]any `json:"model_list"`
	RouterSettings map[string]any   `json:"router_settings,omitempty"`
}

// Static is the rest of a config file, kept as parsed YAML.
type Static map[string]any

// The keys Dynamic owns.
const (
	keyModelList      = "model_list"
	keyRouterSettings = "router_settings"
)

// Split separates a config file into the part each node keeps (Static) and the part the
// cluster replicates (Dynamic, at version 0). The file must already have passed Parse.
func Split(data []byte) (Static, Dynamic, error) {
	var root map[string]any
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, Dynamic{}, fmt.Errorf("config: split: %w", err)
	}
	static := Static{}
	dyn := Dynamic{}
	for k, v := range root {
		switch k {
		case keyModelList:
			list, _ := v.([]any)
			for _, e := range list {
				m, ok := e.(map[string]any)
				if !ok {
					return nil, Dynamic{}, fmt.Errorf("config: split: a model_list entry is not a mapping")
				}
				dyn.ModelList = append(dyn.ModelList, m)
			}
		case keyRouterSettings:
			dyn.RouterSettings, _ = v.(map[string]any)
		default:
			static[k] = v
		}
	}
	// One canonical form (what JSON, and so the raft log, can carry) for comparisons.
	norm, err := dyn.normalize()
	if err != nil {
		return nil, Dynamic{}, err
	}
	return static, norm, nil
}

// normalize round-trips d through JSON, so that a Dynamic read from a file and one read back
// from the replicated log compare equal (YAML ints become float64, and so on).
func (d Dynamic) normalize() (Dynamic, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return Dynamic{}, fmt.Errorf("config: %w", err)
	}
	var out Dynamic
	if err := json.Unmarshal(b, &out); err != nil {
		return Dynamic{}, fmt.Errorf("config: %w", err)
	}
	return out, nil
}

// SameContent reports whether d and o hold the same deployments and router settings,
// whatever their versions.
func (d Dynamic) SameContent(o Dynamic) bool {
	a, errA := json.Marshal(Dynamic{ModelList: d.ModelList, RouterSettings: d.RouterSettings})
	b, errB := json.Marshal(Dynamic{ModelList: o.ModelList, RouterSettings: o.RouterSettings})
	return errA == nil && errB == nil && string(a) == string(b)
}

// Build decodes and validates static and d together exactly as a file would be, resolving
// os.environ/ references from env. name labels log lines (e.g. "raft config v12"). Errors are
// *Error values without line numbers (there is no file to point into), joined as Parse joins them.
func Build(name string, static Static, d Dynamic, env Env, logger *slog.Logger) (*Config, error) {
	root := maps.Clone(static)
	if root == nil {
		root = map[string]any{}
	}
	list := make([]any, len(d.ModelList))
	for i, m := range d.ModelList {
		list[i] = m
	}
	root[keyModelList] = list
	if d.RouterSettings != nil {
		root[keyRouterSettings] = d.RouterSettings
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if env == nil {
		env = MapEnv{}
	}
	// The nodes are made directly rather than by printing YAML and parsing it back, which took
	// two thirds of the time: every write and every node's apply builds the whole config.
	nodes := 0
	node, err := toNode(map[string]any(root), &nodes)
	if err != nil {
		return nil, &Error{Reason: "cannot encode the runtime config: " + err.Error(), Err: err}
	}
	cfg, err := parseRoot(name, node, nodes, env, logger)
	if err != nil {
		return nil, withoutLines(err)
	}
	cfg.File = name
	return cfg, nil
}

// toNode makes the YAML node that parsing yaml.Marshal(v) would give, for the values a Dynamic
// and a Static hold (JSON's, and YAML's int), counting the nodes in *n. Mapping keys are
// sorted (by bytes; yaml.Marshal's order differs only for keys mixing letters with '_' or
// digits), and each node's Line is its place in that order, so several errors come out in
// document order as they would from a file. Anything else goes through yaml's own encoder.
func toNode(v any, n *int) (*yaml.Node, error) {
	line := *n + 1
	node, err := makeNode(v, n)
	if node != nil && node.Line == 0 {
		node.Line = line
	}
	return node, err
}

func makeNode(v any, n *int) (*yaml.Node, error) {
	*n++
	switch x := v.(type) {
	case nil:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}, nil
	case string:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: x}, nil
	case bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(x)}, nil
	case int:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(x)}, nil
	case int64:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatInt(x, 10)}, nil
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			break
		}
		// yaml.Marshal writes strconv's shortest form; the parser reads it back as an int when
		// it is one ("600"), else as a float ("0.5", "1e+20").
		s := strconv.FormatFloat(x, 'g', -1, 64)
		tag := "!!float"
		if _, err := strconv.ParseInt(s, 10, 64); err == nil {
			tag = "!!int"
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: s}, nil
	case []any:
		out := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Content: make([]*yaml.Node, 0, len(x))}
		for _, e := range x {
			c, err := toNode(e, n)
			if err != nil {
				return nil, err
			}
			out.Content = append(out.Content, c)
		}
		return out, nil
	case map[string]any:
		out := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Content: make([]*yaml.Node, 0, 2*len(x))}
		for _, k := range slices.Sorted(maps.Keys(x)) {
			*n++
			key := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k, Line: *n}
			c, err := toNode(x[k], n)
			if err != nil {
				return nil, err
			}
			out.Content = append(out.Content, key, c)
		}
		return out, nil
	}
	var out yaml.Node
	if err := out.Encode(v); err != nil {
		return nil, err
	}
	*n += 16 // a bound for the budget; such values are rare (YAML-only types in the file)
	return &out, nil
}

// lineRef is a reason's pointer to another line, as in "(also model_list[2], line 19)".
var lineRef = regexp.MustCompile(`, line \d+`)

// withoutLines drops file and line from every *Error in err: they would point into a document
// that exists only in memory.
func withoutLines(err error) error {
	var list []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	} else {
		list = []error{err}
	}
	out := make([]error, 0, len(list))
	for _, e := range list {
		var ce *Error
		if errors.As(e, &ce) {
			c := *ce
			c.File, c.Line = "", 0
			c.Reason = lineRef.ReplaceAllString(c.Reason, "")
			out = append(out, &c)
		} else {
			out = append(out, e)
		}
	}
	if len(out) == 1 {
		return out[0]
	}
	return errors.Join(out...)
}

// ErrUnknownDeployment is returned for an update or delete naming no deployment.
var ErrUnknownDeployment = errors.New("no deployment with that id")

// AddModel returns d with entry appended to model_list. Building the result validates it; a
// model_info.id already in use is refused there.
func (d Dynamic) AddModel(entry map[string]any) Dynamic {
	out := d.clone()
	out.ModelList = append(out.ModelList, entry)
	return out
}

// UpdateModel returns d with the deployment at index i (see IndexOf), whose ID is id, updated
// as LiteLLM's /model/update does: model_name replaced when given, litellm_params and
// model_info merged key by key (a null value removes a key). The ID is pinned in model_info.id,
// so a change to what the ID is otherwise derived from (api_base, ...) keeps the deployment's
// counters and cooldowns.
func (d Dynamic) UpdateModel(i int, id string, patch map[string]any) Dynamic {
	out := d.clone()
	cur := maps.Clone(out.ModelList[i])
	defer func() {
		info, _ := cur["model_info"].(map[string]any)
		info = maps.Clone(info)
		if info == nil {
			info = map[string]any{}
		}
		info["id"] = id
		cur["model_info"] = info
		out.ModelList[i] = cur
	}()
	for k, v := range patch {
		sub, isMap := v.(map[string]any)
		old, oldMap := cur[k].(map[string]any)
		switch {
		case v == nil:
			delete(cur, k)
		case isMap && oldMap:
			merged := maps.Clone(old)
			for sk, sv := range sub {
				if sv == nil {
					delete(merged, sk)
				} else {
					merged[sk] = sv
				}
			}
			cur[k] = merged
		default:
			cur[k] = v
		}
	}
	out.ModelList[i] = cur
	return out
}

// SetModel returns d with the deployment at index i replaced by entry (what UpdateModel made
// of it, as the replicated log carries it).
func (d Dynamic) SetModel(i int, entry map[string]any) Dynamic {
	out := d.clone()
	out.ModelList[i] = entry
	return out
}

// SetRouterSettings returns d with router_settings replaced by rs.
func (d Dynamic) SetRouterSettings(rs map[string]any) Dynamic {
	out := d.clone()
	out.RouterSettings = rs
	return out
}

// DeleteModel returns d without the deployment at index i.
func (d Dynamic) DeleteModel(i int) Dynamic {
	out := d.clone()
	out.ModelList = slices.Delete(out.ModelList, i, i+1)
	return out
}

// UpdateRouterSettings returns d with patch merged into router_settings key by key (a null
// value removes a key, restoring its default).
func (d Dynamic) UpdateRouterSettings(patch map[string]any) Dynamic {
	out := d.clone()
	rs := maps.Clone(out.RouterSettings)
	if rs == nil {
		rs = map[string]any{}
	}
	for k, v := range patch {
		if v == nil {
			delete(rs, k)
		} else {
			rs[k] = v
		}
	}
	out.RouterSettings = rs
	return out
}

// AddedID checks that next is cur plus deployments (an added model_info.id must not take an
// existing deployment's ID, which would move that one to a new ID and reset its counters) and
// returns the ID of next's last deployment.
func AddedID(cur, next *Config) (string, error) {
	for i, dep := range cur.ModelList {
		if i >= len(next.ModelList) || next.ModelList[i].ID != dep.ID {
			return "", &Error{Key: "model_info.id", Reason: fmt.Sprintf("duplicate id: %q is already the id of model_list[%d] (%s)", dep.ID, i, dep.ModelName)}
		}
	}
	if len(next.ModelList) == 0 {
		return "", nil
	}
	return next.ModelList[len(next.ModelList)-1].ID, nil
}

// IndexOf returns the model_list index of the deployment with id in cfg (d built), or
// ErrUnknownDeployment.
func IndexOf(cfg *Config, id string) (int, error) {
	for i, dep := range cfg.ModelList {
		if dep.ID == id {
			return i, nil
		}
	}
	return -1, fmt.Errorf("%w: %q", ErrUnknownDeployment, id)
}

// clone copies the list and map headers; entries themselves are replaced, never modified.
func (d Dynamic) clone() Dynamic {
	return Dynamic{
		Version:        d.Version,
		ModelList:      slices.Clone(d.ModelList),
		RouterSettings: maps.Clone(d.RouterSettings),
	}
}
