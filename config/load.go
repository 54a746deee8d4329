package config

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load reads the config file at path with the process environment: environment_variables are
// set with os.Setenv first, then os.environ/NAME references are resolved. Problems that do not
// stop startup are logged to logger (nil discards them) and kept in Config.Warnings.
func Load(path string, logger *slog.Logger) (*Config, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data, OSEnv{}, logger)
}

// ReadFile reads a config file's bytes (for Parse and Split), failing with an *Error that
// names the file.
func ReadFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		reason := err.Error()
		var pe *fs.PathError
		if errors.As(err, &pe) {
			reason = pe.Err.Error()
		}
		return nil, &Error{File: path, Reason: "cannot read config file: " + reason, Err: err}
	}
	return data, nil
}

// Parse is Load for a file already in memory, with an injected environment (nil means empty).
// file is used only in messages. The error is a *Error or several joined with errors.Join,
// in file order.
func Parse(file string, data []byte, env Env, logger *slog.Logger) (*Config, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if env == nil {
		env = MapEnv{}
	}
	root, perr := parseYAML(file, data)
	if perr != nil {
		return nil, perr
	}
	return parseRoot(file, root, len(data), env, logger)
}

// parseRoot is Parse from the document's root node (nil: empty); size is the document's size
// in bytes (or a bound on its nodes), which sets the decoder's budget.
func parseRoot(file string, root *yaml.Node, size int, env Env, logger *slog.Logger) (*Config, error) {
	d := newDecoder(file, env, size)
	cfg := &Config{File: file}
	if root != nil && !isNull(root) {
		if root.Kind != yaml.MappingNode {
			d.errorAt(root, "", "config must be a mapping of blocks such as model_list and router_settings (got %s)", describeNode(root))
		} else {
			d.applyEnvironmentVariables(root, cfg)
			d.skipEnvVars = true
			d.decodeInto("", root, reflect.ValueOf(cfg).Elem())
		}
	}
	d.resolve(cfg)

	slices.SortStableFunc(d.notes, func(a, b notice) int { return a.line - b.line })
	for _, n := range d.notes {
		logger.Log(context.Background(), n.level, n.msg, append([]any{"file", file, "line", n.line, "key", n.key}, n.attrs...)...)
		if n.level >= slog.LevelWarn {
			cfg.Warnings = append(cfg.Warnings, (&Error{File: file, Line: n.line, Key: n.key, Reason: n.text}).Error())
		}
	}
	if len(d.errs) > 0 {
		return nil, d.err()
	}
	return cfg, nil
}

// err joins the collected errors in file order.
func (d *decoder) err() error {
	slices.SortStableFunc(d.errs, func(a, b *Error) int { return a.Line - b.Line })
	if len(d.errs) == 1 {
		return d.errs[0]
	}
	errs := make([]error, len(d.errs))
	for i, e := range d.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

// parseYAML parses data into its root node (nil for an empty document). A syntax error becomes
// an *Error naming the file and line.
func parseYAML(file string, data []byte) (root *yaml.Node, err error) {
	// The parser is third-party code fed untrusted input; a panic in it must not take startup
	// (or the admin API) down with it.
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, &Error{File: file, Reason: fmt.Sprintf("invalid YAML: parser failed: %v", r)}
		}
	}()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := splitYAMLError(err)
		if l := syntaxErrorLine(data, msg); l > 0 {
			line = l
		}
		return nil, &Error{File: file, Line: line, Reason: "invalid YAML: " + msg, Err: err}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

// splitYAMLError separates the line yaml.v3 reports (0 if none) from its message.
func splitYAMLError(err error) (int, string) {
	msg, line := err.Error(), 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	}
	return line, strings.TrimPrefix(msg, "yaml: ")
}

// syntaxErrorLine finds the line a syntax error is on. yaml.v3 reports where the enclosing
// block began (often line 1 for a mis-indented key deep inside model_list) or no line at all,
// so this finds the shortest run of leading lines that already fails with the same message.
// Prefixes of a document fail monotonically, so a binary search suffices. 0 means unknown.
func syntaxErrorLine(data []byte, msg string) int {
	var ends []int
	for i, b := range data {
		if b == '\n' {
			ends = append(ends, i+1)
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		ends = append(ends, len(data))
	}
	fails := func(lines int) (failed bool) {
		defer func() {
			if recover() != nil {
				failed = false
			}
		}()
		var n yaml.Node
		err := yaml.Unmarshal(data[:ends[lines-1]], &n)
		if err == nil {
			return false
		}
		_, m := splitYAMLError(err)
		return m == msg
	}
	lo, hi := 1, len(ends)
	if hi == 0 || !fails(hi) {
		return 0
	}
	for lo < hi {
		if mid := (lo + hi) / 2; fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// applyEnvironmentVariables sets environment_variables in file order before anything else is
// decoded, as LiteLLM does, so os.environ/ references and provider fallbacks see them. Values are
// taken literally (an os.environ/ value is not resolved).
func (d *decoder) applyEnvironmentVariables(root *yaml.Node, cfg *Config) {
	const path = "environment_variables"
	var val *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k := root.Content[i]; k.Kind == yaml.ScalarNode && k.Value == path {
			d.keyAt[path] = k
			val = root.Content[i+1]
			break
		}
	}
	if val == nil {
		return
	}
	if val = d.deref(path, val); val == nil || isNull(val) {
		return
	}
	if val.Kind != yaml.MappingNode {
		d.errorAt(val, path, "must be a mapping of NAME: value (got %s)", describeNode(val))
		return
	}
	for _, p := range d.pairs(path, val) {
		d.keyAt[p.path] = p.key
		v := d.deref(p.path, p.val)
		if v == nil {
			continue
		}
		if v.Kind != yaml.ScalarNode {
			d.errorAt(v, p.path, "must be a string (got %s)", describeNode(v))
			continue
		}
		value := v.Value
		if isNull(v) {
			value = ""
		}
		if err := d.env.Set(p.key.Value, value); err != nil {
			d.errorAt(p.key, p.path, "cannot set environment variable: %v", err)
			continue
		}
		if cfg.EnvironmentVariables == nil {
			cfg.EnvironmentVariables = map[string]string{}
		}
		cfg.EnvironmentVariables[p.key.Value] = value
	}
}
