package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecuritySettingsStopStartup: a bad allowed_ips entry or ssl_verify path stops herd with
// an error naming the file and the key.
func TestSecuritySettingsStopStartup(t *testing.T) {
	dir := t.TempDir()
	for key, settings := range map[string]string{
		"general_settings.allowed_ips[1]": "general_settings: {allowed_ips: [127.0.0.1, 10.0.0.0/40]}\n",
		"litellm_settings.ssl_verify":     "litellm_settings: {ssl_verify: " + filepath.Join(dir, "missing-ca.pem") + "}\n",
	} {
		path := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(path, []byte("model_list: [{model_name: m, litellm_params: {model: mock/m}}]\n"+settings), 0o600); err != nil {
			t.Fatal(err)
		}
		err := run(context.Background(), []string{"--config", path, "--port", "0"}, env(nil), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), path+":2: "+key+": ") {
			t.Errorf("err = %v, want one naming %s:2 and %s", err, path, key)
		}
	}
}

// TestSecuritySettingsAtStartup runs herd with allowed_ips that leave loopback out and
// ssl_verify: false: the start logs a WARN naming ssl_verify, and a local client gets 403.
func TestSecuritySettingsAtStartup(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(`model_list: [{model_name: m, litellm_params: {model: mock/m}}]
litellm_settings: {ssl_verify: false}
general_settings: {allowed_ips: ["10.0.0.0/8"]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, log, done := started(t, ctx, []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0"})
	if !strings.Contains(log.String(), `level=WARN msg="upstream TLS certificates are not verified`) ||
		!strings.Contains(log.String(), "key=litellm_settings.ssl_verify") {
		t.Errorf("no WARN for ssl_verify: false:\n%s", log)
	}
	resp, err := http.Get("http://" + addr + "/health/liveliness")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "allowed_ips") {
		t.Errorf("from 127.0.0.1: %d %s, want 403", resp.StatusCode, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
