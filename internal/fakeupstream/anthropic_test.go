package fakeupstream_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

func TestAnthropicDialectValidates(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	u, base := fakeupstream.Start(t, fakeupstream.Options{APIKey: "k"})
	ok := `{"model":"claude","max_tokens":10,"system":"abcd","messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"}]}]}`
	tests := []struct {
		name, key, version, body string
		status                   int
		errType                  string
	}{
		{"valid", "k", "2023-06-01", ok, 200, ""},
		{"bad key", "x", "2023-06-01", ok, 401, "authentication_error"},
		{"no version", "k", "", ok, 400, "invalid_request_error"},
		{"no max_tokens", "k", "2023-06-01", `{"model":"claude","messages":[{"role":"user","content":"hi"}]}`, 400, "invalid_request_error"},
		{"no messages", "k", "2023-06-01", `{"model":"claude","max_tokens":1}`, 400, "invalid_request_error"},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest("POST", base+"/v1/messages", strings.NewReader(tt.body))
		req.Header.Set("X-Api-Key", tt.key)
		if tt.version != "" {
			req.Header.Set("Anthropic-Version", tt.version)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || gjson.GetBytes(b, "error.type").Str != tt.errType {
			t.Errorf("%s: %d %s, want %d %s", tt.name, resp.StatusCode, b, tt.status, tt.errType)
		}
		if tt.status == 200 {
			// N = 4 (system) + 8 = 12: 3 input tokens; 5 output tokens.
			if gjson.GetBytes(b, "usage.input_tokens").Int() != 3 || gjson.GetBytes(b, "usage.output_tokens").Int() != 5 ||
				gjson.GetBytes(b, "content.0.text").Str != "Hello from claude." {
				t.Errorf("answer %s", b)
			}
		}
	}
	if n := u.Count("claude"); n != int64(len(tests)) {
		t.Errorf("count = %d, want %d (every request is counted)", n, len(tests))
	}
}
