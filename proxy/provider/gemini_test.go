package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
)

func init() {
	goldenTranslators["gemini"] = func(t *testing.T, drop bool) translator {
		h := http.Header{"Content-Type": {"application/json"}, "X-Goog-Api-Key": {"AIza-test"}}
		return &gemini{googleChat: goldenGoogleChat("gemini", drop), base: geminiBase(""), header: h}
	}
}

// goldenGoogleChat is the shared Google translation with a fixed clock and numbered ids.
func goldenGoogleChat(provider string, drop bool) googleChat {
	n := 0
	ids := func() string { n++; return fmt.Sprintf("%024d", n) }
	return googleChat{provider: provider, now: goldenNow, newID: ids, drop: drop, maxLen: 1 << 20}
}

func TestGeminiBase(t *testing.T) {
	for base, want := range map[string]string{
		"": "https://generativelanguage.googleapis.com/v1beta",
		"https://generativelanguage.googleapis.com/": "https://generativelanguage.googleapis.com/v1beta",
		"https://gw.example/google/v1beta":           "https://gw.example/google/v1beta",
		"https://gw.example/google/v1":               "https://gw.example/google/v1",
	} {
		if got := geminiBase(base); got != want {
			t.Errorf("geminiBase(%q) = %s, want %s", base, got, want)
		}
	}
}

func TestGeminiSchema(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"dropped keys and upper-cased types",
			`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","additionalProperties":false,"properties":{"a":{"type":"string","format":"uri","examples":["x"]},"b":{"type":"integer","exclusiveMinimum":0,"format":"int64"}},"required":["a","ghost"]}`,
			`{"type":"OBJECT","properties":{"a":{"type":"STRING"},"b":{"type":"INTEGER","format":"int64"}},"required":["a"]}`},
		{"null alternatives become nullable",
			`{"properties":{"a":{"anyOf":[{"type":"string"},{"type":"null"}],"description":"maybe"},"b":{"type":["integer","null"]}}}`,
			`{"properties":{"a":{"type":"STRING","description":"maybe","nullable":true},"b":{"type":"INTEGER","nullable":true}},"type":"OBJECT"}`},
		{"refs resolved, siblings kept",
			`{"type":"object","properties":{"p":{"$ref":"#/$defs/Point","description":"where"}},"$defs":{"Point":{"type":"object","properties":{"x":{"type":"number"}}}}}`,
			`{"type":"OBJECT","properties":{"p":{"type":"OBJECT","properties":{"x":{"type":"NUMBER"}},"description":"where"}}}`},
		{"enums of strings only, const",
			`{"type":"object","properties":{"s":{"type":"string","enum":["a","b"]},"i":{"type":"integer","enum":[1,2]},"c":{"const":"x"}}}`,
			`{"type":"OBJECT","properties":{"s":{"type":"STRING","enum":["a","b"]},"i":{"type":"INTEGER"},"c":{"enum":["x"],"type":"STRING"}}}`},
		{"several types, oneOf",
			`{"type":"object","properties":{"v":{"type":["string","number"]},"w":{"oneOf":[{"type":"string"},{"type":"boolean"}]}}}`,
			`{"type":"OBJECT","properties":{"v":{"anyOf":[{"type":"STRING"},{"type":"NUMBER"}]},"w":{"anyOf":[{"type":"STRING"},{"type":"BOOLEAN"}]}}}`},
	}
	for _, tt := range tests {
		got, err := geminiSchema(gjson.Parse(tt.in), false)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if string(got) != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, got, tt.want)
		}
	}
	ordered, _ := geminiSchema(gjson.Parse(`{"type":"object","properties":{"z":{"type":"string"},"a":{"type":"string"}}}`), true)
	if !strings.Contains(string(ordered), `"propertyOrdering":["z","a"]`) {
		t.Errorf("response schema without the properties' order: %s", ordered)
	}
	for _, bad := range []string{
		`{"$ref":"#/$defs/Loop","$defs":{"Loop":{"type":"object","properties":{"next":{"$ref":"#/$defs/Loop"}}}}}`,
		`{"type":"object","properties":{"a":{"$ref":"https://example.com/schema"}}}`,
		`{"type":"object","properties":{"a":{"$ref":"#/$defs/Missing"}}}`,
	} {
		if got, err := geminiSchema(gjson.Parse(bad), false); err == nil {
			t.Errorf("geminiSchema(%s) = %s, want an error", bad, got)
		}
	}
}

func TestGeminiThinking(t *testing.T) {
	g := &googleChat{provider: "gemini"}
	for _, tt := range []struct{ effort, model, want string }{
		{"low", "gemini-2.5-pro", `{"includeThoughts":true,"thinkingBudget":1024}`},
		{"high", "gemini-2.5-flash", `{"includeThoughts":true,"thinkingBudget":4096}`},
		{"minimal", "gemini-2.5-flash", `{"includeThoughts":true,"thinkingBudget":1}`},
		{"minimal", "gemini-2.5-flash-lite", `{"includeThoughts":true,"thinkingBudget":512}`},
		{"none", "gemini-2.5-flash", `{"includeThoughts":false,"thinkingBudget":0}`},
		{"medium", "gemini-3-pro-preview", `{"includeThoughts":true,"thinkingLevel":"high"}`},
		{"medium", "gemini-3-flash-preview", `{"includeThoughts":true,"thinkingLevel":"medium"}`},
		{"none", "gemini-3-flash-preview", `{"includeThoughts":false,"thinkingLevel":"minimal"}`},
		{"none", "gemini-3-pro-preview", `{"includeThoughts":false,"thinkingLevel":"low"}`},
	} {
		tc, err := g.thinking(tt.effort, tt.model)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := json.Marshal(tc); string(got) != tt.want {
			t.Errorf("%s on %s = %s, want %s", tt.effort, tt.model, got, tt.want)
		}
	}
	var bad *BadRequest
	if _, err := g.thinking("extreme", "gemini-2.5-pro"); !errors.As(err, &bad) || bad.Param != "reasoning_effort" {
		t.Errorf("reasoning_effort extreme: %v, want a 400 on reasoning_effort", err)
	}
}

// TestGeminiUpstream runs calls through the translated upstream against a fake Gemini API:
// the key travels in a header, never in the URL, and answers and streams come back as OpenAI's.
func TestGeminiUpstream(t *testing.T) {
	var gotURL, gotKey string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotURL, gotKey = r.URL.String(), r.Header.Get("X-Goog-Api-Key")
		if strings.HasSuffix(r.URL.Path, ":streamGenerateContent") {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hi\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":1,\"totalTokenCount\":4}}\r\n\r\n")
			return
		}
		io.WriteString(w, `{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"totalTokenCount":4}}`)
	}))
	defer srv.Close()
	d := &config.Deployment{ID: "g", UpstreamModel: "gemini-2.5-flash", Timeout: 5 * time.Second, StreamTimeout: 5 * time.Second}
	up, err := newGemini(d, NewPool(nil), geminiParams{APIBase: srv.URL, APIKey: "AIza-secret"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(`{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if gotURL != "/v1beta/models/gemini-2.5-flash:generateContent" || gotKey != "AIza-secret" {
		t.Errorf("called %s with key %q", gotURL, gotKey)
	}
	if u, ok := ParseUsage(body); !ok || u.PromptTokens != 3 || u.CompletionTokens != 1 || gjson.GetBytes(body, "choices.0.message.content").Str != "Hi" {
		t.Errorf("answer %s", body)
	}

	resp, err = up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Stream: true, Body: []byte(`{"model":"gemini-2.5-flash","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if gotURL != "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse" || strings.Contains(gotURL, "key=") {
		t.Errorf("stream called %s", gotURL)
	}
	if !strings.HasSuffix(string(stream), "data: [DONE]\n\n") || !strings.Contains(string(stream), `"finish_reason":"stop"`) || !strings.Contains(string(stream), `"total_tokens":4`) {
		t.Errorf("stream:\n%s", stream)
	}
}
