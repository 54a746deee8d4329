package proxy

import (
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
)

func (s *Server) models(c echo.Context) error {
	return c.JSONBlob(http.StatusOK, s.snap.Load().models)
}

// model answers GET /v1/models/{id} (the SDKs' models.retrieve) for a model group or an alias.
// A hidden alias is answered too: hiding keeps it out of the list, but a client that names
// one can already use it, and chat completions would tell it as much. The ID is taken from
// the decoded path, so a group name with '/' works sent as is or with %2F (Node SDK).
func (s *Server) model(c echo.Context) error {
	id := c.Request().URL.Path
	for _, p := range []string{"/v1/models/", "/models/"} {
		if strings.HasPrefix(id, p) {
			id = id[len(p):]
			break
		}
	}
	if _, err := s.snap.Load().table.Resolve(id); err != nil {
		return &apiError{
			Status:  http.StatusNotFound,
			Message: "The model '" + id + "' does not exist",
			Type:    "invalid_request_error",
			Param:   "model",
			Code:    "model_not_found",
		}
	}
	return c.JSON(http.StatusOK, newModelObject(id))
}

func (s *Server) modelInfo(c echo.Context) error {
	return c.JSONBlob(http.StatusOK, s.snap.Load().modelInfo)
}

func liveliness(c echo.Context) error {
	return c.JSON(http.StatusOK, "I'm alive!")
}

// readiness tells a load balancer whether to send traffic here. It makes no upstream calls.
func (s *Server) readiness(c echo.Context) error {
	snap := s.snap.Load()
	status, code := "healthy", http.StatusOK
	reason := ""
	if s.notReady != nil {
		if reason = s.notReady(); reason != "" {
			// Strict limits before any node holds rights: every limited request would be
			// refused, so a load balancer should wait.
			status, code = "starting", http.StatusServiceUnavailable
		}
	}
	if s.draining.Load() {
		status, code = "draining", http.StatusServiceUnavailable
	}
	mode := s.backend
	if s.backendMode != nil {
		// A degraded backend (Redis unreachable, counting locally at a fair share) still
		// serves: readiness reports it but stays 200, or every node would leave the pool at once.
		mode = s.backendMode()
	}
	out := map[string]any{
		"status":             status,
		"node":               s.node[0],
		"state_backend":      s.backend,
		"state_backend_mode": mode,
		"herd_version":       s.version,
		"model_groups":       len(snap.table.GroupNames()),
		"deployments":        snap.table.Len(),
		"db":                 "Not connected", // LiteLLM's field: herd needs no database
	}
	if reason != "" {
		out["reason"] = reason
	}
	return c.JSON(code, out)
}

// health records each deployment's recent outcomes from real traffic, so /health can answer
// without making paid upstream calls.
type health struct {
	lastOK     atomic.Int64 // unix nanos of the last success
	lastFail   atomic.Int64 // unix nanos of the last failure
	failStatus atomic.Int64 // status of the last failure (502 unreachable, 504 timeout, or upstream's)
	failures   atomic.Int64 // consecutive failures
}

func (s *Server) healthOf(id string) *health {
	h, _ := s.healths.LoadOrStore(id, new(health))
	return h.(*health)
}

func (h *health) record(status int, now time.Time) {
	// 4xx other than auth and rate limiting are the client's fault, not the deployment's.
	failed := status >= 500 || status == http.StatusUnauthorized || status == http.StatusTooManyRequests ||
		status == http.StatusRequestTimeout || status == http.StatusNotFound
	if failed {
		h.lastFail.Store(now.UnixNano())
		h.failStatus.Store(int64(status))
		h.failures.Add(1)
		return
	}
	h.lastOK.Store(now.UnixNano())
	h.failures.Store(0)
}

// health answers LiteLLM's /health shape from passive observations: a deployment is unhealthy
// when its latest upstream call failed. It never calls an upstream.
func (s *Server) health(c echo.Context) error {
	snap := s.snap.Load()
	healthy, unhealthy := []map[string]any{}, []map[string]any{}
	for i := range snap.deps {
		d := &snap.deps[i]
		e := map[string]any{"model": d.cfg.LiteLLMParams.Model, "model_name": d.cfg.ModelName, "model_id": d.cfg.ID}
		if d.baseHdr != nil {
			e["api_base"] = d.baseHdr[0]
		}
		if f := d.health.failures.Load(); f > 0 {
			e["error"] = http.StatusText(int(d.health.failStatus.Load()))
			e["status"] = d.health.failStatus.Load()
			e["consecutive_failures"] = f
			e["last_failure"] = time.Unix(0, d.health.lastFail.Load()).UTC().Format(time.RFC3339)
			unhealthy = append(unhealthy, e)
			continue
		}
		if t := d.health.lastOK.Load(); t > 0 {
			e["last_success"] = time.Unix(0, t).UTC().Format(time.RFC3339)
		}
		healthy = append(healthy, e)
	}
	return c.JSON(http.StatusOK, map[string]any{
		"healthy_endpoints":   healthy,
		"unhealthy_endpoints": unhealthy,
		"healthy_count":       len(healthy),
		"unhealthy_count":     len(unhealthy),
	})
}
