package config

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
)

// MasterKeyEnv is the variable LiteLLM (and herd) read the master key from when
// general_settings.master_key is unset.
const MasterKeyEnv = "LITELLM_MASTER_KEY"

// AdminEnv is the environment runtime config changes are built with (the admin API's
// /model/new, /model/update and /config/update, and every version raft applies): an
// os.environ/NAME reference in model_list or router_settings resolves only when
//
//   - this node's config file already uses NAME in its own model_list or router_settings (the
//     file sends that value to an upstream or to Redis anyway), or
//   - NAME matches a cluster_settings.admin_env_allow glob (path.Match syntax; default none),
//     and is not one of herd's own keys: LITELLM_MASTER_KEY, any HERD_* name, or a name the
//     file reads under general_settings or cluster_settings (master key, cluster key).
//
// Anything else is refused with an *Error naming the variable and the setting, so a master-key
// holder cannot make herd send, say, a database password or the master key itself to an
// api_base of their choosing. For the same reason vertex_credentials other than the file's own
// (fileCreds) may not be a path, and credentials JSON only of the types that name no file, URL
// or command (see vertexCredentials). References elsewhere in the file (general_settings, ...), the
// provider fallbacks (AZURE_API_KEY, OPENAI_API_KEY, ...) and environment_variables are not
// affected: they come from the file, not from the admin API.
type AdminEnv struct {
	Env // where allowed names are looked up, and environment_variables are written

	file      map[string]bool // names the file's model_list and router_settings use
	endpoints map[string]bool // the api_base of every deployment of the file, as resolved
	fileCreds map[string]bool // vertex_credentials (paths or JSON) the file's model_list holds literally
	allow     []string        // cluster_settings.admin_env_allow
	protected map[string]bool // herd's own keys: globs never match them
}

// NewAdminEnv returns env restricted for runtime changes. static and file are config.Split of
// this node's config file; allow is its cluster_settings.admin_env_allow (validated by Parse).
func NewAdminEnv(env Env, static Static, file Dynamic, allow []string) *AdminEnv {
	a := &AdminEnv{Env: env, file: map[string]bool{}, fileCreds: map[string]bool{}, allow: slices.Clone(allow),
		protected: map[string]bool{MasterKeyEnv: true}}
	add := func(set map[string]bool) func(name string) { return func(name string) { set[name] = true } }
	for _, m := range file.ModelList {
		envRefs(m, add(a.file))
		lp, _ := m["litellm_params"].(map[string]any)
		if c, ok := lp["vertex_credentials"].(string); ok && !strings.HasPrefix(c, envPrefix) {
			a.fileCreds[strings.TrimSpace(c)] = true
		}
	}
	envRefs(file.RouterSettings, add(a.file))
	a.endpoints = map[string]bool{}
	if cfg, err := Build("the config file", static, file, env, nil); err == nil {
		for _, dep := range cfg.ModelList {
			a.endpoints[dep.APIBase] = true
		}
	}
	for _, block := range []string{"general_settings", "cluster_settings"} {
		envRefs(static[block], add(a.protected))
	}
	return a
}

// refusal is why name may not be resolved in a runtime change, or "" when it may.
func (a *AdminEnv) refusal(name string) string {
	if a.file[name] {
		return ""
	}
	ref := envPrefix + truncate(name)
	if a.protected[name] || strings.HasPrefix(name, "HERD_") {
		return ref + " is not allowed in the admin API: it holds one of herd's own keys (" + MasterKeyEnv +
			", HERD_*, or a variable general_settings or cluster_settings reads), which cluster_settings.admin_env_allow cannot allow"
	}
	for _, p := range a.allow {
		if ok, _ := path.Match(p, name); ok {
			return ""
		}
	}
	return ref + " is not allowed in the admin API: this node's config file does not use it in model_list or router_settings; add it to cluster_settings.admin_env_allow"
}

// CheckRefs checks every os.environ/ reference in v, a JSON value from an admin request body
// whose keys start at prefix ("" for a model_list entry, or "router_settings"), and returns an
// *Error for the first one not allowed (in key order), or nil.
func (a *AdminEnv) CheckRefs(prefix string, v any) error {
	var err error
	walkEnvRefs(prefix, v, func(p, name string) bool {
		if reason := a.refusal(name); reason != "" {
			err = &Error{Key: p, Reason: reason}
			return false
		}
		return true
	})
	return err
}

// runtimeKey reports whether path is in the part of a config runtime changes write.
func runtimeKey(path string) bool {
	top, _, _ := strings.Cut(path, ".")
	top, _, _ = strings.Cut(top, "[")
	return top == keyModelList || top == keyRouterSettings
}

// envRefs calls fn with the name of every os.environ/ reference in v (parsed YAML or JSON).
func envRefs(v any, fn func(name string)) {
	walkEnvRefs("", v, func(_, name string) bool { fn(name); return true })
}

// walkEnvRefs calls fn with the key path and name of every os.environ/ reference in v, maps in
// key order, until fn returns false. A reference is a string value, as the decoder sees it.
func walkEnvRefs(p string, v any, fn func(path, name string) bool) bool {
	switch x := v.(type) {
	case string:
		if strings.HasPrefix(x, envPrefix) {
			return fn(p, strings.TrimSpace(strings.TrimPrefix(x, envPrefix)))
		}
	case map[string]any:
		for _, k := range sortedKeys(x) {
			if !walkEnvRefs(keyPath(p, k), x[k], fn) {
				return false
			}
		}
	case []any:
		for i, e := range x {
			if !walkEnvRefs(p+"["+strconv.Itoa(i)+"]", e, fn) {
				return false
			}
		}
	case []map[string]any:
		for i, e := range x {
			if !walkEnvRefs(p+"["+strconv.Itoa(i)+"]", e, fn) {
				return false
			}
		}
	}
	return true
}

// validGlob reports why p cannot be an admin_env_allow pattern, or "".
func validGlob(p string) string {
	if strings.TrimSpace(p) == "" {
		return "must not be empty"
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Sprintf("is not a valid pattern (path.Match syntax: *, ?, [a-z]) (got %q)", truncate(p))
	}
	return ""
}

// fileEndpoint: the node's config file (or its environment) names apiBase, so the node's
// own credentials may go there (see guardAmbient).
func (a *AdminEnv) fileEndpoint(apiBase string) bool { return a.endpoints[apiBase] }
