package main

import (
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/herd-proxy/herd/internal/redistest"
)

// TestWarnOpenHTTP: an API beyond loopback without a master key is worth a WARN; with a key,
// or on loopback, it is not.
func TestWarnOpenHTTP(t *testing.T) {
	for _, tt := range []struct {
		ip     string
		hasKey bool
		warn   bool
	}{
		{"0.0.0.0", false, true},
		{"0.0.0.0", true, false},
		{"127.0.0.1", false, false},
		{"::1", false, false},
	} {
		var logs redistest.Buffer
		warnOpenHTTP(&net.TCPAddr{IP: net.ParseIP(tt.ip), Port: 4000}, tt.hasKey, slog.New(slog.NewTextHandler(&logs, nil)))
		if got := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "general_settings.master_key"); got != tt.warn {
			t.Errorf("%s, key %v: warned %v, want %v: %s", tt.ip, tt.hasKey, got, tt.warn, logs.String())
		}
	}
}
