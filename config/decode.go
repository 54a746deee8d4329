package config

import (
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// envPrefix marks a value read from the environment, as in LiteLLM.
const envPrefix = "os.environ/"

// maxDepth bounds nesting of merges and free-form values; the YAML parser does not reject alias
// cycles, so without it a crafted file could recurse forever.
const maxDepth = 64

var (
	secondsType = reflect.TypeFor[Seconds]()
	aliasType   = reflect.TypeFor[Alias]()
	configType  = reflect.TypeFor[Config]()
)

// decoder turns a yaml.Node tree into typed config values. It is hand-written rather than
// yaml.Node.Decode so that every error and warning carries the full key path and line, unknown
// keys are noticed, and values read from the environment are never echoed.
type decoder struct {
	file string
	env  Env

	errs  []*Error
	notes []notice

	fromEnv   map[*yaml.Node]string // scalars whose value came from os.environ/NAME
	envFailed map[*yaml.Node]bool   // os.environ/ references that could not be resolved
	keyAt     map[string]*yaml.Node // key path -> key node (or list item), for line numbers
	valAt     map[string]*yaml.Node // key path -> value node
	bad       map[string]bool       // key paths already reported; later checks stay quiet

	budget      int  // node visits left; bounds alias expansion ("billion laughs")
	overBudget  bool // reported once
	depth       int
	tooDeep     bool // reported once
	skipEnvVars bool // environment_variables was decoded (and applied) before everything else
}

// notice is a warning or info line, logged after decoding in file order.
type notice struct {
	level slog.Level
	msg   string
	line  int
	key   string
	attrs []any  // extra slog attributes
	text  string // the Config.Warnings text after the key
}

func newDecoder(file string, env Env, size int) *decoder {
	return &decoder{
		file:      file,
		env:       env,
		fromEnv:   map[*yaml.Node]string{},
		envFailed: map[*yaml.Node]bool{},
		keyAt:     map[string]*yaml.Node{},
		valAt:     map[string]*yaml.Node{},
		bad:       map[string]bool{},
		budget:    50_000 + 200*size,
	}
}

// errorAt records an error at node n's line.
func (d *decoder) errorAt(n *yaml.Node, path, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Key: path, Reason: fmt.Sprintf(format, args...)})
	d.bad[path] = true
}

// fail records a validation error for path unless path was already reported.
func (d *decoder) fail(path, format string, args ...any) {
	if d.bad[path] {
		return
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: d.lineOf(path), Key: path, Reason: fmt.Sprintf(format, args...)})
	d.bad[path] = true
}

// warn records a warning for path.
func (d *decoder) warn(path, msg, text string, attrs ...any) {
	d.notes = append(d.notes, notice{level: slog.LevelWarn, msg: msg, line: d.lineOf(path), key: path, attrs: attrs, text: text})
}

// lineOf is the line of path's key, or of its nearest ancestor present in the file (a missing
// required key is reported where its parent is).
func (d *decoder) lineOf(path string) int {
	for p := path; p != ""; p = parentPath(p) {
		if n := d.keyAt[p]; n != nil {
			return n.Line
		}
	}
	return 0
}

// describe shows a value in an error, naming the variable instead when it came from the
// environment (environment values are often secrets).
func (d *decoder) describe(n *yaml.Node) string {
	if name, ok := d.fromEnv[n]; ok {
		return "the value of os.environ/" + name
	}
	return describeNode(n)
}

// shown formats a decoded value of path for an error, with the same rule as describe.
func (d *decoder) shown(path string, v any) string {
	if n := d.valAt[path]; n != nil {
		if name, ok := d.fromEnv[n]; ok {
			return "the value of os.environ/" + name
		}
	}
	if s, ok := v.(string); ok {
		return strconv.Quote(truncate(s))
	}
	return fmt.Sprint(v)
}

// spend charges one node visit against the budget.
func (d *decoder) spend(path string, n *yaml.Node) bool {
	d.budget--
	if d.budget >= 0 {
		return true
	}
	if !d.overBudget {
		// Where the budget ran out says nothing useful, so the error names only the file.
		d.overBudget = true
		d.errs = append(d.errs, &Error{File: d.file, Reason: "document expands too many aliases (or is too large)"})
		d.bad[path] = true
	}
	return false
}

// enter guards recursion that the YAML structure, not the Go types, controls.
func (d *decoder) enter(path string, n *yaml.Node) bool {
	d.depth++
	if d.depth <= maxDepth {
		return true
	}
	if !d.tooDeep {
		d.tooDeep = true
		d.errorAt(n, path, "nested too deeply (or an alias refers to itself)")
	}
	return false
}

func (d *decoder) leave() { d.depth-- }

// deref follows aliases and document nodes to the value they stand for.
func (d *decoder) deref(path string, n *yaml.Node) *yaml.Node {
	for n != nil && (n.Kind == yaml.AliasNode || n.Kind == yaml.DocumentNode) {
		if !d.spend(path, n) {
			return nil
		}
		if n.Kind == yaml.AliasNode {
			n = n.Alias
		} else if len(n.Content) > 0 {
			n = n.Content[0]
		} else {
			return nil
		}
	}
	if n == nil || !d.spend(path, n) {
		return nil
	}
	return n
}

// resolveEnv replaces an os.environ/NAME scalar with the variable's value, once per node. The
// node's tag and style are cleared so the value resolves implicitly and decodes into numbers
// and booleans. It reports false when the variable is unset.
func (d *decoder) resolveEnv(path string, n *yaml.Node) bool {
	if n.Kind != yaml.ScalarNode {
		return true
	}
	if _, done := d.fromEnv[n]; done {
		return true
	}
	if d.envFailed[n] {
		d.bad[path] = true
		return false
	}
	if !strings.HasPrefix(n.Value, envPrefix) {
		return true
	}
	name := strings.TrimSpace(strings.TrimPrefix(n.Value, envPrefix))
	if name == "" {
		d.envFailed[n] = true
		d.errorAt(n, path, "%s names no environment variable", envPrefix)
		return false
	}
	if a, ok := d.env.(*AdminEnv); ok && runtimeKey(path) {
		if reason := a.refusal(name); reason != "" {
			d.envFailed[n] = true
			d.errorAt(n, path, "%s", reason)
			return false
		}
	}
	v, ok := d.env.Lookup(name)
	if !ok {
		d.envFailed[n] = true
		d.errorAt(n, path, "environment variable %s is not set", truncate(name))
		return false
	}
	n.Value, n.Tag, n.Style = v, "", 0
	d.fromEnv[n] = truncate(name)
	return true
}

// decodeValue decodes n into v and reports whether it set anything (null leaves v alone).
func (d *decoder) decodeValue(path string, n *yaml.Node, v reflect.Value) bool {
	n = d.deref(path, n)
	if n == nil {
		return false
	}
	d.valAt[path] = n
	if !d.resolveEnv(path, n) {
		return false
	}
	return d.decodeInto(path, n, v)
}

func (d *decoder) decodeInto(path string, n *yaml.Node, v reflect.Value) bool {
	t := v.Type()
	if isNull(n) {
		// An empty environment variable is still a string value; anything else null is unset.
		if _, env := d.fromEnv[n]; !env || baseKind(t) != reflect.String {
			return false
		}
	}
	switch t {
	case secondsType:
		s, reason := secondsFromNode(n)
		if reason != "" {
			d.errorAt(n, path, "%s (got %s)", reason, d.describe(n))
			return false
		}
		v.Set(reflect.ValueOf(s))
		return true
	case aliasType:
		switch n.Kind {
		case yaml.ScalarNode:
			v.Set(reflect.ValueOf(Alias{Model: n.Value}))
			return true
		case yaml.MappingNode:
			var s aliasSpec
			ok := d.decodeStruct(path, n, reflect.ValueOf(&s).Elem())
			v.Set(reflect.ValueOf(Alias(s)))
			return ok
		}
		d.errorAt(n, path, "%s (got %s)", reasonAlias, d.describe(n))
		return false
	}
	switch t.Kind() {
	case reflect.Pointer:
		nv := reflect.New(t.Elem())
		if !d.decodeInto(path, n, nv.Elem()) {
			return false
		}
		v.Set(nv)
		return true
	case reflect.Struct:
		return d.decodeStruct(path, n, v)
	case reflect.Slice:
		return d.decodeSlice(path, n, v)
	case reflect.Map:
		return d.decodeMap(path, n, v)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.errorAt(n, path, "must be a string (got %s)", d.describe(n))
			return false
		}
		v.SetString(n.Value)
		return true
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Float32, reflect.Float64:
		return d.decodeScalar(path, n, v)
	case reflect.Interface:
		x := d.plain(path, n)
		if x == nil {
			return false
		}
		v.Set(reflect.ValueOf(x))
		return true
	}
	d.errorAt(n, path, "cannot hold a %s", t)
	return false
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

func baseKind(t reflect.Type) reflect.Kind {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Kind()
}

// structInfo maps a struct's yaml keys to its fields.
type structInfo struct {
	fields map[string]int
	inline int // index of the ",inline" map field, or -1
	known  []string
}

var structInfos sync.Map // reflect.Type -> *structInfo

func infoFor(t reflect.Type) *structInfo {
	if si, ok := structInfos.Load(t); ok {
		return si.(*structInfo)
	}
	si := &structInfo{fields: map[string]int{}, inline: -1}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		if !f.IsExported() || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(opts, "inline") && f.Type.Kind() == reflect.Map {
			si.inline = i
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		si.fields[name] = i
	}
	si.known = knownKeys(t, si.fields)
	structInfos.Store(t, si)
	return si
}

func (d *decoder) decodeStruct(path string, n *yaml.Node, v reflect.Value) bool {
	if n.Kind != yaml.MappingNode {
		d.errorAt(n, path, "must be a mapping (got %s)", d.describe(n))
		return false
	}
	t := v.Type()
	si := infoFor(t)
	for _, p := range d.pairs(path, n) {
		d.keyAt[p.path] = p.key
		key := p.key.Value
		if t == configType && key == "environment_variables" && d.skipEnvVars {
			continue
		}
		if i, ok := si.fields[key]; ok {
			d.decodeValue(p.path, p.val, v.Field(i))
			continue
		}
		if si.inline >= 0 {
			m := v.Field(si.inline)
			if m.IsNil() {
				m.Set(reflect.MakeMap(m.Type()))
			}
			elem := reflect.New(m.Type().Elem()).Elem()
			d.decodeValue(p.path, p.val, elem)
			if !d.bad[p.path] {
				m.SetMapIndex(reflect.ValueOf(key).Convert(m.Type().Key()), elem)
			}
			continue
		}
		d.unknownKey(t, si, p)
	}
	return true
}

func (d *decoder) unknownKey(t reflect.Type, si *structInfo, p pair) {
	key := p.key.Value
	if hint, ok := litellmUnsupported[t][key]; ok {
		d.notes = append(d.notes, notice{level: slog.LevelWarn, msg: "LiteLLM setting not supported by herd",
			line: p.key.Line, key: p.path, attrs: []any{"hint", hint}, text: "LiteLLM setting not supported by herd; " + hint})
		return
	}
	if isLiteLLMOnly(t, key) {
		d.notes = append(d.notes, notice{level: slog.LevelWarn, msg: "LiteLLM setting not used by herd",
			line: p.key.Line, key: p.path, text: "LiteLLM setting not used by herd"})
		return
	}
	nt := notice{level: slog.LevelWarn, msg: "unknown config key ignored", line: p.key.Line, key: p.path,
		text: "unknown config key ignored"}
	if s := suggest(key, si.known); s != "" {
		nt.attrs = []any{"did_you_mean", s}
		nt.text += fmt.Sprintf("; did you mean %q?", s)
	}
	d.notes = append(d.notes, nt)
}

func (d *decoder) decodeSlice(path string, n *yaml.Node, v reflect.Value) bool {
	if n.Kind != yaml.SequenceNode {
		d.errorAt(n, path, "must be a list (got %s)", d.describe(n))
		return false
	}
	out := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		ip := path + "[" + strconv.Itoa(i) + "]"
		d.keyAt[ip] = item
		d.decodeValue(ip, item, out.Index(i))
	}
	v.Set(out)
	return true
}

func (d *decoder) decodeMap(path string, n *yaml.Node, v reflect.Value) bool {
	if n.Kind != yaml.MappingNode {
		d.errorAt(n, path, "must be a mapping (got %s)", d.describe(n))
		return false
	}
	t := v.Type()
	m := reflect.MakeMapWithSize(t, len(n.Content)/2)
	for _, p := range d.pairs(path, n) {
		d.keyAt[p.path] = p.key
		elem := reflect.New(t.Elem()).Elem()
		d.decodeValue(p.path, p.val, elem)
		if !d.bad[p.path] {
			m.SetMapIndex(reflect.ValueOf(p.key.Value).Convert(t.Key()), elem)
		}
	}
	v.Set(m)
	return true
}

// decodeScalar decodes numbers and booleans. It is stricter than yaml.v3 (which truncates 1.5
// into an int) and more forgiving of quoted numbers ("5"), which LiteLLM configs often have.
func (d *decoder) decodeScalar(path string, n *yaml.Node, v reflect.Value) bool {
	var want string
	switch v.Kind() {
	case reflect.Bool:
		want = "must be true or false"
	case reflect.Float32, reflect.Float64:
		want = "must be a number"
	default:
		want = "must be an integer"
	}
	var x any
	if n.Kind != yaml.ScalarNode || n.Decode(&x) != nil {
		d.errorAt(n, path, "%s (got %s)", want, d.describe(n))
		return false
	}
	switch v.Kind() {
	case reflect.Bool:
		b, ok := x.(bool)
		if s, isStr := x.(string); isStr {
			var err error
			b, err = strconv.ParseBool(strings.TrimSpace(s))
			ok = err == nil
		}
		if !ok {
			d.errorAt(n, path, "%s (got %s)", want, d.describe(n))
			return false
		}
		v.SetBool(b)
	case reflect.Float32, reflect.Float64:
		f, ok := toFloat(x)
		if !ok || math.IsNaN(f) || math.IsInf(f, 0) || v.OverflowFloat(f) {
			d.errorAt(n, path, "must be a finite number (got %s)", d.describe(n))
			return false
		}
		v.SetFloat(f)
	default:
		i, ok, inRange := toInt(x)
		switch {
		case !ok:
			d.errorAt(n, path, "%s (got %s)", want, d.describe(n))
			return false
		case !inRange || v.OverflowInt(i):
			d.errorAt(n, path, "is out of range (got %s)", d.describe(n))
			return false
		}
		v.SetInt(i)
	}
	return true
}

func toFloat(x any) (float64, bool) {
	switch v := x.(type) {
	case int:
		return float64(v), true
	case int64:
		return float64(v), true
	case uint64:
		return float64(v), true
	case float64:
		return v, true
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		return f, err == nil
	}
	return 0, false
}

// toInt reports the integer in x, whether x is an integer at all, and whether it fits int64.
func toInt(x any) (int64, bool, bool) {
	switch v := x.(type) {
	case int:
		return int64(v), true, true
	case int64:
		return v, true, true
	case uint64:
		return int64(v), true, v <= math.MaxInt64
	case float64:
		if v != math.Trunc(v) || math.IsInf(v, 0) {
			return 0, false, false
		}
		return int64(v), true, v >= math.MinInt64 && v < math.MaxInt64
	case string:
		i, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			_, isNum := toFloat(v)
			return 0, false, isNum
		}
		return i, true, true
	}
	return 0, false, false
}

// plain decodes a free-form value (model_info extras) into JSON-safe Go values: string keys,
// no NaN or infinities, timestamps and binaries kept as written.
func (d *decoder) plain(path string, n *yaml.Node) any {
	if _, env := d.fromEnv[n]; env {
		return n.Value
	}
	if !d.enter(path, n) {
		return nil
	}
	defer d.leave()
	switch n.Kind {
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return nil
		case "!!bool", "!!int", "!!float":
			var x any
			if n.Decode(&x) == nil {
				if f, isFloat := x.(float64); !isFloat || !(math.IsNaN(f) || math.IsInf(f, 0)) {
					return x
				}
			}
		}
		return n.Value
	case yaml.MappingNode:
		m := map[string]any{}
		for _, p := range d.pairs(path, n) {
			d.keyAt[p.path] = p.key
			if v := d.deref(p.path, p.val); v != nil && d.resolveEnv(p.path, v) {
				m[p.key.Value] = d.plain(p.path, v)
			}
		}
		return m
	case yaml.SequenceNode:
		s := make([]any, 0, len(n.Content))
		for i, item := range n.Content {
			ip := path + "[" + strconv.Itoa(i) + "]"
			if v := d.deref(ip, item); v != nil && d.resolveEnv(ip, v) {
				s = append(s, d.plain(ip, v))
			} else {
				s = append(s, nil)
			}
		}
		return s
	}
	return nil
}

// pair is one key/value of a mapping, with merge keys (<<) already expanded.
type pair struct {
	key, val *yaml.Node
	path     string
}

// pairs lists a mapping's entries in file order, expanding YAML merge keys (explicit keys win)
// and rejecting duplicate keys, which YAML forbids and which usually mean a pasting mistake.
func (d *decoder) pairs(path string, n *yaml.Node) []pair {
	if !d.enter(path, n) {
		return nil
	}
	defer d.leave()
	var out, merged []pair
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode {
			if k = d.deref(path, k); k == nil {
				continue
			}
		}
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merged = append(merged, d.merge(path, v)...)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.errorAt(k, path, "keys must be strings (got %s)", describeNode(k))
			continue
		}
		kp := keyPath(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			d.errorAt(k, kp, "duplicate key (first on line %d)", first.Line)
			continue
		}
		seen[k.Value] = k
		out = append(out, pair{key: k, val: v, path: kp})
	}
	for _, p := range merged {
		if _, dup := seen[p.key.Value]; !dup {
			seen[p.key.Value] = p.key
			out = append(out, p)
		}
	}
	return out
}

// merge returns the entries a merge key brings in; with a list, earlier mappings win.
func (d *decoder) merge(path string, v *yaml.Node) []pair {
	if v = d.deref(path, v); v == nil {
		return nil
	}
	switch v.Kind {
	case yaml.MappingNode:
		return d.pairs(path, v)
	case yaml.SequenceNode:
		var out []pair
		seen := map[string]bool{}
		for _, item := range v.Content {
			item = d.deref(path, item)
			if item == nil {
				continue
			}
			if item.Kind != yaml.MappingNode {
				d.errorAt(item, path, "<< must merge a mapping or a list of mappings (got %s)", describeNode(item))
				continue
			}
			for _, p := range d.pairs(path, item) {
				if !seen[p.key.Value] {
					seen[p.key.Value] = true
					out = append(out, p)
				}
			}
		}
		return out
	}
	d.errorAt(v, path, "<< must merge a mapping or a list of mappings (got %s)", describeNode(v))
	return nil
}

// keyPath appends key to path: ".key" for plain keys, `["key"]` for keys such as model group
// names that contain dots or spaces, so the path stays unambiguous.
func keyPath(path, key string) string {
	plain := key != ""
	for _, r := range key {
		if !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			plain = false
			break
		}
	}
	switch {
	case !plain:
		return path + "[" + strconv.Quote(key) + "]"
	case path == "":
		return key
	}
	return path + "." + key
}

// parentPath drops the last segment of a key path built by keyPath or an index.
func parentPath(p string) string {
	last := 0
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '.':
			last = i
		case '[':
			last = i
			if i+1 < len(p) && p[i+1] == '"' {
				if q, err := strconv.QuotedPrefix(p[i+1:]); err == nil {
					i += len(q)
				}
			}
		}
	}
	return p[:last]
}
