package fakeupstream_test

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

const vertexBase = "/v1/projects/proj/locations/us-central1/publishers"

// post sends body to path with the given headers and returns the status and body.
func post(t *testing.T, url, body string, header ...string) (int, []byte, error) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func TestGeminiDialectValidates(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	u, base := fakeupstream.Start(t, fakeupstream.Options{APIKey: "k"})
	// N = 4 (systemInstruction) + 8 + 4 (a tool's text) = 16: 4 prompt tokens.
	ok := `{"systemInstruction":{"parts":[{"text":"abcd"}]},"contents":[{"role":"user","parts":[{"text":"abcdefgh"}]},{"role":"user","parts":[{"functionResponse":{"name":"f","response":{"content":"wxyz"}}}]}]}`
	gen := "/v1beta/models/gemini-2.5-flash:generateContent"
	tests := []struct {
		name, path, body string
		header           []string
		status           int
		googleStatus     string
	}{
		{"valid", gen, ok, []string{"X-Goog-Api-Key", "k"}, 200, ""},
		{"key in the query", gen + "?key=k", ok, nil, 200, ""},
		{"no key", gen, ok, nil, 403, "PERMISSION_DENIED"},
		{"wrong key", gen, ok, []string{"X-Goog-Api-Key", "x"}, 400, "INVALID_ARGUMENT"},
		{"no contents", gen, `{"contents":[]}`, []string{"X-Goog-Api-Key", "k"}, 400, "INVALID_ARGUMENT"},
		{"bad JSON", gen, `{`, []string{"X-Goog-Api-Key", "k"}, 400, "INVALID_ARGUMENT"},
		{"stream without alt=sse", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", ok, []string{"X-Goog-Api-Key", "k"}, 400, "INVALID_ARGUMENT"},
		{"vertex without a token", vertexBase + "/google/models/gemini-2.5-flash:generateContent", ok, nil, 401, "UNAUTHENTICATED"},
		{"vertex with another token", vertexBase + "/google/models/gemini-2.5-flash:generateContent", ok, []string{"Authorization", "Bearer x"}, 401, "UNAUTHENTICATED"},
		{"vertex", vertexBase + "/google/models/gemini-2.5-flash:generateContent", ok, []string{"Authorization", "Bearer k"}, 200, ""},
		{"vertex without a location", "/v1/projects/proj/publishers/google/models/gemini-2.5-flash:generateContent", ok, []string{"Authorization", "Bearer k"}, 404, "NOT_FOUND"},
	}
	for _, tt := range tests {
		status, b, err := post(t, base+tt.path, tt.body, tt.header...)
		if err != nil {
			t.Fatal(err)
		}
		if status != tt.status || gjson.GetBytes(b, "error.status").Str != tt.googleStatus {
			t.Errorf("%s: %d %s, want %d %s", tt.name, status, b, tt.status, tt.googleStatus)
		}
		if status == 200 {
			if gjson.GetBytes(b, "usageMetadata.promptTokenCount").Int() != 4 || gjson.GetBytes(b, "usageMetadata.candidatesTokenCount").Int() != 5 ||
				gjson.GetBytes(b, "usageMetadata.totalTokenCount").Int() != 9 || gjson.GetBytes(b, "candidates.0.finishReason").Str != "STOP" ||
				gjson.GetBytes(b, "candidates.0.content.parts.0.text").Str != "Hello from gemini-2.5-flash." {
				t.Errorf("%s: answer %s", tt.name, b)
			}
		}
	}
	if n := u.Count("gemini-2.5-flash"); n != int64(len(tests)) {
		t.Errorf("count = %d, want %d (every request is counted under the path's model)", n, len(tests))
	}
}

func TestGeminiDialectStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	u, base := fakeupstream.Start(t, fakeupstream.Options{StreamChunks: 3})
	body := `{"contents":[{"role":"user","parts":[{"text":"abcdefgh"}]}]}`
	status, b, err := post(t, base+"/v1beta/models/m:streamGenerateContent?alt=sse", body, "X-Goog-Api-Key", "any")
	if err != nil || status != 200 {
		t.Fatalf("%d %v %s", status, err, b)
	}
	var text strings.Builder
	var last gjson.Result
	events := strings.Split(strings.TrimSuffix(string(b), "\r\n\r\n"), "\r\n\r\n")
	for _, ev := range events {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok {
			t.Fatalf("event %q", ev)
		}
		last = gjson.Parse(data)
		text.WriteString(last.Get("candidates.0.content.parts.0.text").Str)
	}
	if len(events) != 4 || text.String() != "Hello from m." || last.Get("candidates.0.finishReason").Str != "STOP" ||
		last.Get("usageMetadata.totalTokenCount").Int() != 2+3 {
		t.Errorf("stream:\n%s", b)
	}

	u.SetFault("m", fakeupstream.Fault{StreamCut: 2})
	_, b, err = post(t, base+"/v1beta/models/m:streamGenerateContent?alt=sse", body, "X-Goog-Api-Key", "any")
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(string(b), "finishReason") {
		t.Errorf("cut stream: %v\n%s", err, b)
	}
	u.SetFault("m", fakeupstream.Fault{Status: 429})
	status, b, _ = post(t, base+"/v1beta/models/m:streamGenerateContent?alt=sse", body, "X-Goog-Api-Key", "any")
	if status != 429 || gjson.GetBytes(b, "error.status").Str != "RESOURCE_EXHAUSTED" || gjson.GetBytes(b, "error.code").Int() != 429 {
		t.Errorf("fault: %d %s", status, b)
	}
}

func TestGeminiDialectEmbeds(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	status, b, _ := post(t, base+"/v1beta/models/text-embedding-004:batchEmbedContents",
		`{"requests":[{"model":"models/text-embedding-004","content":{"parts":[{"text":"abcd"}]}},{"model":"models/text-embedding-004","content":{"parts":[{"text":"efgh"}]}}]}`,
		"X-Goog-Api-Key", "any")
	if status != 200 || len(gjson.GetBytes(b, "embeddings").Array()) != 2 || len(gjson.GetBytes(b, "embeddings.0.values").Array()) != 8 ||
		gjson.GetBytes(b, "embeddings.0.values").Raw == gjson.GetBytes(b, "embeddings.1.values").Raw {
		t.Errorf("gemini embeddings: %d %s", status, b)
	}
	// N = 9 + 4: 3 prompt tokens, split as 2 (the first input takes the rest) and 1.
	status, b, _ = post(t, base+vertexBase+"/google/models/text-embedding-005:predict",
		`{"instances":[{"content":"abcdefghi"},{"content":"abcd"}]}`, "Authorization", "Bearer t")
	if status != 200 || gjson.GetBytes(b, "predictions.0.embeddings.statistics.token_count").Int() != 2 ||
		gjson.GetBytes(b, "predictions.1.embeddings.statistics.token_count").Int() != 1 ||
		len(gjson.GetBytes(b, "predictions.1.embeddings.values").Array()) != 8 {
		t.Errorf("vertex embeddings: %d %s", status, b)
	}
}

func TestVertexAnthropicDialect(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	u, base := fakeupstream.Start(t, fakeupstream.Options{})
	path := base + vertexBase + "/anthropic/models/claude-sonnet-4@20250514:rawPredict"
	ok := `{"anthropic_version":"vertex-2023-10-16","max_tokens":10,"messages":[{"role":"user","content":"abcdefgh"}]}`
	tests := []struct {
		name, path, body, auth string
		status                 int
		shape                  string // the error's: anthropic or google
	}{
		{"valid", path, ok, "Bearer t", 200, ""},
		{"no token", path, ok, "", 401, "google"},
		{"no anthropic_version", path, `{"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`, "Bearer t", 400, "anthropic"},
		{"no max_tokens", path, `{"anthropic_version":"vertex-2023-10-16","messages":[{"role":"user","content":"hi"}]}`, "Bearer t", 400, "anthropic"},
		{"stream asked of rawPredict", path, `{"anthropic_version":"vertex-2023-10-16","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}`, "Bearer t", 400, "anthropic"},
	}
	for _, tt := range tests {
		status, b, _ := post(t, tt.path, tt.body, "Authorization", tt.auth)
		shape := ""
		switch {
		case gjson.GetBytes(b, "type").Str == "error":
			shape = "anthropic"
		case gjson.GetBytes(b, "error.status").Exists():
			shape = "google"
		}
		if status != tt.status || shape != tt.shape {
			t.Errorf("%s: %d %s, want %d (%s)", tt.name, status, b, tt.status, tt.shape)
		}
		if status == 200 && (gjson.GetBytes(b, "usage.input_tokens").Int() != 2 || gjson.GetBytes(b, "model").Str != "claude-sonnet-4@20250514") {
			t.Errorf("answer %s", b)
		}
	}
	status, b, _ := post(t, strings.Replace(path, ":rawPredict", ":streamRawPredict", 1),
		`{"anthropic_version":"vertex-2023-10-16","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}`, "Authorization", "Bearer t")
	if status != 200 || !strings.Contains(string(b), "event: message_stop") {
		t.Errorf("stream: %d %s", status, b)
	}
	if n := u.Count("claude-sonnet-4@20250514"); n != int64(len(tests)+1) {
		t.Errorf("count = %d, want %d", n, len(tests)+1)
	}
}
