package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/herd-proxy/herd/config"
)

// ConfigAdmin changes the runtime config on every node (the cluster's raft-replicated store,
// wired in cmd/herd). Each method returns after the change is committed and applied on this
// node, with the new config version.
type ConfigAdmin interface {
	AddModel(ctx context.Context, entry map[string]any) (id string, version uint64, err error)
	UpdateModel(ctx context.Context, id string, patch map[string]any) (version uint64, err error)
	DeleteModel(ctx context.Context, id string) (version uint64, err error)
	UpdateRouterSettings(ctx context.Context, patch map[string]any) (version uint64, err error)
}

// Errors a ConfigAdmin wraps so the API can answer with the right status. Invalid changes are
// *config.Error values (400) and unknown IDs config.ErrUnknownDeployment (400, as LiteLLM).
var (
	// ErrConfigUnavailable: the change could not be committed (no raft quorum or leader): 503.
	ErrConfigUnavailable = errors.New("the cluster cannot commit config changes now")
	// ErrConfigConflict: concurrent changes kept winning: 409.
	ErrConfigConflict = errors.New("the config changed concurrently")
)

// maxAdminBody caps an admin request body.
const maxAdminBody = 1 << 20

var (
	errNoAdmin = &apiError{Status: http.StatusNotImplemented, Type: "invalid_request_error",
		Message: "Runtime config changes are not available on this node."}
	errAdminNeedsKey = &apiError{Status: http.StatusForbidden, Type: "auth_error",
		Message: "Config changes need a master key: set general_settings.master_key (or LITELLM_MASTER_KEY) and send it."}
)

// adminBody reads a JSON object body. Like the LLM routes it ignores Content-Type: curl -d
// sends application/x-www-form-urlencoded, and the README's examples (and LiteLLM's) use it.
func (s *Server) adminBody(c echo.Context) (map[string]any, error) {
	data, err := io.ReadAll(io.LimitReader(c.Request().Body, maxAdminBody+1))
	if err != nil {
		return nil, s.bodyReadError(err)
	}
	if len(data) > maxAdminBody {
		return nil, &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Message: "Request body is too large."}
	}
	var body map[string]any
	if err := json.Unmarshal(data, &body); err != nil || body == nil {
		return nil, badRequest("The body must be a JSON object.", "")
	}
	return body, nil
}

// admin wraps an admin handler: master key configured and presented (requireKey checked the
// latter), an admin attached, a body read.
func (s *Server) admin(h func(c echo.Context, body map[string]any) error) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.configAdmin == nil {
			return errNoAdmin
		}
		if !s.key.set {
			return errAdminNeedsKey
		}
		body, err := s.adminBody(c)
		if err != nil {
			return err
		}
		return h(c, body)
	}
}

// adminError maps a ConfigAdmin error to the API's.
func adminError(err error) error {
	var ce *config.Error
	switch {
	case errors.Is(err, config.ErrUnknownDeployment):
		return badRequest(err.Error(), "id")
	case errors.As(err, &ce):
		return badRequest("Invalid config change: "+joinedMessage(err), ce.Key)
	case errors.Is(err, ErrConfigUnavailable), errors.Is(err, context.DeadlineExceeded):
		return &apiError{Status: http.StatusServiceUnavailable, Type: "service_unavailable",
			Message: "Config change not committed: " + err.Error() + ". Reads keep serving the last config; retry when the cluster has a quorum."}
	case errors.Is(err, ErrConfigConflict):
		return &apiError{Status: http.StatusConflict, Type: "conflict_error", Message: err.Error() + "; retry."}
	default:
		return err
	}
}

// checkEnvRefs refuses a body with an os.environ/ reference this node does not allow in the
// admin API (config.AdminEnv), before anything is proposed to raft: the log then holds nothing
// that names such a variable. prefix is where the body's keys sit in a config ("" for a
// model_list entry).
func (s *Server) checkEnvRefs(prefix string, body map[string]any) error {
	if s.adminEnv == nil {
		return nil
	}
	if err := s.adminEnv.CheckRefs(prefix, body); err != nil {
		return adminError(err)
	}
	return nil
}

// checkAPIBase refuses a literal litellm_params.api_base the upstream policy does not allow
// (config.UpstreamPolicy: link-local and metadata addresses, private ones if configured)
// before anything is proposed to raft. Names, and os.environ/ references, are checked again
// by the upstream transport each time it connects.
func (s *Server) checkAPIBase(body map[string]any) error {
	params, _ := body["litellm_params"].(map[string]any)
	raw, ok := params["api_base"].(string)
	if !ok || strings.HasPrefix(raw, "os.environ/") {
		return nil
	}
	if err := s.upstream.CheckAPIBase("litellm_params.api_base", raw); err != nil {
		return adminError(err)
	}
	return nil
}

// joinedMessage puts several joined config errors on one line.
func joinedMessage(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// stringField reads a non-empty string field.
func stringField(body map[string]any, key string) (string, bool) {
	v, ok := body[key].(string)
	return v, ok && v != ""
}

// modelNew is POST /model/new with LiteLLM's body: model_name, litellm_params, model_info.
func (s *Server) modelNew(c echo.Context, body map[string]any) error {
	if _, ok := stringField(body, "model_name"); !ok {
		return badRequest("model_name is required.", "model_name")
	}
	if _, ok := body["litellm_params"].(map[string]any); !ok {
		return badRequest("litellm_params is required and must be an object.", "litellm_params")
	}
	if err := s.checkEnvRefs("", body); err != nil {
		return err
	}
	if err := s.checkAPIBase(body); err != nil {
		return err
	}
	id, version, err := s.configAdmin.AddModel(c.Request().Context(), body)
	if err != nil {
		return adminError(err)
	}
	s.log.Info("deployment added", "id", id, "model_name", body["model_name"], "config_version", version)
	return c.JSON(http.StatusOK, map[string]any{"status": "success", "id": id, "model_name": body["model_name"], "config_version": version})
}

// modelUpdate is POST /model/update: model_info.id (or id) names the deployment; the other
// fields are merged into it.
func (s *Server) modelUpdate(c echo.Context, body map[string]any) error {
	id, ok := stringField(body, "id")
	patch := make(map[string]any, len(body))
	for k, v := range body {
		if k != "id" {
			patch[k] = v
		}
	}
	if info, isMap := body["model_info"].(map[string]any); isMap {
		if v, has := info["id"].(string); has && v != "" {
			id, ok = v, true
			// The id names the deployment; it is not part of the patch.
			rest := make(map[string]any, len(info))
			for k, v := range info {
				if k != "id" {
					rest[k] = v
				}
			}
			patch["model_info"] = rest
		}
	}
	if !ok {
		return badRequest("model_info.id (or id) is required.", "model_info.id")
	}
	if err := s.checkEnvRefs("", patch); err != nil {
		return err
	}
	if err := s.checkAPIBase(patch); err != nil {
		return err
	}
	version, err := s.configAdmin.UpdateModel(c.Request().Context(), id, patch)
	if err != nil {
		return adminError(err)
	}
	s.log.Info("deployment updated", "id", id, "fields", sortedKeys(patch), "config_version", version)
	return c.JSON(http.StatusOK, map[string]any{"status": "success", "id": id, "config_version": version})
}

// modelDelete is POST /model/delete with {"id": ...}.
func (s *Server) modelDelete(c echo.Context, body map[string]any) error {
	id, ok := stringField(body, "id")
	if !ok {
		return badRequest("id is required.", "id")
	}
	version, err := s.configAdmin.DeleteModel(c.Request().Context(), id)
	if err != nil {
		return adminError(err)
	}
	s.log.Info("deployment deleted", "id", id, "config_version", version)
	return c.JSON(http.StatusOK, map[string]any{"status": "success", "id": id, "config_version": version})
}

// configUpdate is POST /config/update. Only router_settings change at runtime; the other
// blocks stay with each node's file.
func (s *Server) configUpdate(c echo.Context, body map[string]any) error {
	var other []string
	for k := range body {
		if k != "router_settings" {
			other = append(other, k)
		}
	}
	if len(other) > 0 {
		sort.Strings(other)
		return badRequest(fmt.Sprintf("Only router_settings can change at runtime (got %s); the other blocks come from each node's config file.",
			strings.Join(other, ", ")), other[0])
	}
	rs, ok := body["router_settings"].(map[string]any)
	if !ok {
		return badRequest("router_settings is required and must be an object.", "router_settings")
	}
	for _, k := range sortedKeys(rs) {
		if strings.HasPrefix(k, "redis_") {
			// The state backend is chosen at startup; accepting these would change nothing.
			return badRequest(fmt.Sprintf("router_settings.%s takes effect at startup only: change it in each node's config file.", k), "router_settings."+k)
		}
	}
	if err := s.checkEnvRefs("router_settings", rs); err != nil {
		return err
	}
	version, err := s.configAdmin.UpdateRouterSettings(c.Request().Context(), rs)
	if err != nil {
		return adminError(err)
	}
	s.log.Info("router settings updated", "keys", sortedKeys(rs), "config_version", version)
	return c.JSON(http.StatusOK, map[string]any{"status": "success", "config_version": version})
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
