package config

import (
	"testing"
	"time"
)

// TestHTTPLimits: request_header_timeout and max_inflight_request_mb have defaults, are read,
// and bad values stop startup naming the key.
func TestHTTPLimits(t *testing.T) {
	cfg, _ := mustParse(t, "", MapEnv{})
	gs := cfg.GeneralSettings
	if got := gs.RequestHeaderTimeout.Duration(); got != DefaultRequestHeaderTimeout {
		t.Errorf("request_header_timeout default = %v", got)
	}
	if got := *gs.MaxInflightRequestMB; got != DefaultMaxInflightRequestMB {
		t.Errorf("max_inflight_request_mb default = %v", got)
	}
	cfg, _ = mustParse(t, "general_settings: {request_header_timeout: 0.5, max_inflight_request_mb: 64}", MapEnv{})
	if got := cfg.GeneralSettings.RequestHeaderTimeout.Duration(); got != 500*time.Millisecond {
		t.Errorf("request_header_timeout = %v, want 500ms", got)
	}
	if got := *cfg.GeneralSettings.MaxInflightRequestMB; got != 64 {
		t.Errorf("max_inflight_request_mb = %v, want 64", got)
	}
	// A larger max_request_size_mb raises the default so the largest body still fits.
	cfg, _ = mustParse(t, "general_settings: {max_request_size_mb: 1024}", MapEnv{})
	if got := *cfg.GeneralSettings.MaxInflightRequestMB; got != 1024 {
		t.Errorf("max_inflight_request_mb with max_request_size_mb 1024 = %v, want 1024", got)
	}

	wantError(t, parseErr(t, "general_settings:\n  request_header_timeout: 0\n"), "general_settings.request_header_timeout", "must be greater than 0")
	wantError(t, parseErr(t, "general_settings:\n  max_inflight_request_mb: -1\n"), "general_settings.max_inflight_request_mb", "must be greater than 0")
	wantError(t, parseErr(t, "general_settings:\n  max_inflight_request_mb: 16\n"), "general_settings.max_inflight_request_mb", "must be at least max_request_size_mb (32)")
}
