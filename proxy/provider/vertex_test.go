package provider

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/auth"
	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
)

func init() {
	goldenTranslators["vertex_ai"] = func(t *testing.T, drop bool) translator {
		h := http.Header{"Content-Type": {"application/json"}}
		return &vertex{
			googleChat: goldenGoogleChat("vertex_ai", drop),
			anthropic:  &anthropic{now: goldenNow, drop: drop, maxLen: 1 << 20},
			auth:       &googleAuth{tokens: staticToken("ya29.test")},
			base:       vertexBase(vertexParams{Project: "my-project", Location: "us-central1"}),
			header:     h,
		}
	}
}

// staticToken is a token provider that needs no Google.
type staticToken string

func (s staticToken) Token(context.Context) (*auth.Token, error) {
	return &auth.Token{Value: string(s), Type: "Bearer", Expiry: time.Now().Add(time.Hour)}, nil
}

// failingTokens fails every token, counting the attempts.
type failingTokens struct{ calls atomic.Int32 }

func (f *failingTokens) Token(context.Context) (*auth.Token, error) {
	f.calls.Add(1)
	return nil, errors.New("metadata server unreachable")
}

func TestVertexBase(t *testing.T) {
	for _, tt := range []struct {
		p    vertexParams
		want string
	}{
		{vertexParams{Project: "p", Location: "europe-west4"}, "https://europe-west4-aiplatform.googleapis.com/v1/projects/p/locations/europe-west4"},
		{vertexParams{Project: "p", Location: "global"}, "https://aiplatform.googleapis.com/v1/projects/p/locations/global"},
		{vertexParams{Project: "p"}, "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1"},
		{vertexParams{Project: "p", Location: "us-east5", APIBase: "https://gw.example/vertex/"}, "https://gw.example/vertex/v1/projects/p/locations/us-east5"},
		{vertexParams{Project: "p", Location: "us-east5", APIBase: "https://gw.example/v1beta1"}, "https://gw.example/v1beta1/projects/p/locations/us-east5"},
	} {
		if got := vertexBase(tt.p); got != tt.want {
			t.Errorf("vertexBase(%+v) = %s, want %s", tt.p, got, tt.want)
		}
	}
	u, _ := vertexModelURL("https://h/v1/projects/p/locations/l", "4965075652664360960", ":generateContent")
	if got, want := u.String(), "https://h/v1/projects/p/locations/l/endpoints/4965075652664360960:generateContent"; got != want {
		t.Errorf("tuned model URL = %s, want %s", got, want)
	}
}

// A token herd cannot get fails the call as unreachable and not sent, so the proxy may try
// another deployment; application default credentials are looked for again on the next call.
func TestVertexTokenFailure(t *testing.T) {
	detects := 0
	ga := &googleAuth{detect: func() (auth.TokenProvider, error) {
		detects++
		return nil, errors.New("could not find default credentials")
	}}
	v := &vertex{googleChat: goldenGoogleChat("vertex_ai", false), auth: ga, base: vertexBase(vertexParams{Project: "p"}), header: http.Header{}}
	call := &Call{Endpoint: ChatCompletions, Body: []byte(`{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}`)}
	for range 2 {
		_, err := v.request(context.Background(), call)
		if KindOf(err) != Unreachable || Sent(err) {
			t.Fatalf("request without credentials: %v (kind %v, sent %v), want unreachable and not sent", err, KindOf(err), Sent(err))
		}
	}
	if detects != 2 {
		t.Errorf("credentials detected %d times, want a try per call while none are found", detects)
	}

	failing := &failingTokens{}
	ga = &googleAuth{detect: func() (auth.TokenProvider, error) { return failing, nil }}
	v.auth = ga
	for range 2 {
		if _, err := v.request(context.Background(), call); KindOf(err) != Unreachable || Sent(err) || !strings.Contains(err.Error(), "metadata server unreachable") {
			t.Fatalf("failing token: %v", err)
		}
	}
	if failing.calls.Load() != 2 {
		t.Errorf("token asked %d times, want once per call", failing.calls.Load())
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := v.request(ctx, call); KindOf(err) != Canceled {
		t.Errorf("canceled call: kind %v, want canceled", KindOf(err))
	}
}

func TestVertexCredentials(t *testing.T) {
	if _, err := newGoogleAuth(`{"project_id":"p"}`); err == nil {
		t.Error("credentials without a type accepted")
	}
	if _, err := newGoogleAuth("/nonexistent/key.json"); err == nil {
		t.Error("a missing credentials file accepted")
	}
	ga, err := newGoogleAuth(`{"type":"authorized_user","client_id":"id","client_secret":"s","refresh_token":"r"}`)
	if err != nil || ga.tokens == nil {
		t.Errorf("authorized_user credentials: %v", err)
	}
}

// TestVertexUpstream calls a fake Vertex AI through the translated upstream: Google's models
// at generateContent, Anthropic's at rawPredict, both with the bearer token.
func TestVertexUpstream(t *testing.T) {
	var gotPath, gotAuth, gotBody string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotPath, gotAuth, gotBody = r.URL.Path, r.Header.Get("Authorization"), string(b)
		if strings.Contains(r.URL.Path, "/publishers/anthropic/") {
			io.WriteString(w, `{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}`)
			return
		}
		io.WriteString(w, `{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"totalTokenCount":4}}`)
	}))
	defer srv.Close()
	d := &config.Deployment{ID: "v", Timeout: 5 * time.Second, StreamTimeout: 5 * time.Second}
	up, err := newVertex(d, NewPool(nil), vertexParams{APIBase: srv.URL, Project: "proj", Location: "us-east5", Credentials: `{"type":"authorized_user","client_id":"id","client_secret":"s","refresh_token":"r"}`})
	if err != nil {
		t.Fatal(err)
	}
	up.(*translated).t.(*vertex).auth = &googleAuth{tokens: staticToken("ya29.abc")}
	for model, wantPath := range map[string]string{
		"gemini-2.5-pro":           "/v1/projects/proj/locations/us-east5/publishers/google/models/gemini-2.5-pro:generateContent",
		"claude-sonnet-4@20250514": "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict",
	} {
		resp, err := up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(`{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`)})
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if gotPath != wantPath || gotAuth != "Bearer ya29.abc" {
			t.Errorf("%s: called %s with %q, want %s", model, gotPath, gotAuth, wantPath)
		}
		if u, ok := ParseUsage(body); !ok || u.PromptTokens != 3 || u.CompletionTokens != 1 {
			t.Errorf("%s: answer %s", model, body)
		}
		if strings.HasPrefix(model, "claude") && (!strings.Contains(gotBody, `"anthropic_version":"vertex-2023-10-16"`) || strings.Contains(gotBody, `"model"`)) {
			t.Errorf("%s: body %s, want anthropic_version and no model", model, gotBody)
		}
	}
}

// New builds Google's deployments from resolved config values; Vertex without credentials
// looks for application default credentials only when a call needs a token.
func TestNewGoogleProviders(t *testing.T) {
	pool := NewPool(nil)
	g, err := New(&config.Deployment{ID: "g", Provider: "gemini", UpstreamModel: "gemini-2.5-flash", APIBase: "https://generativelanguage.googleapis.com", Timeout: time.Second, StreamTimeout: time.Second}, pool)
	if err != nil {
		t.Fatal(err)
	}
	if h := g.(*translated).t.(*gemini).header; h.Get("X-Goog-Api-Key") != "" {
		t.Errorf("a key header without a key: %v", h)
	}
	v, err := New(&config.Deployment{ID: "v", Provider: "vertex_ai", UpstreamModel: "gemini-2.5-pro", APIBase: "https://europe-west4-aiplatform.googleapis.com", Project: "p", Location: "europe-west4", Timeout: time.Second, StreamTimeout: time.Second}, pool)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := v.(*translated).t.(*vertex).base, "https://europe-west4-aiplatform.googleapis.com/v1/projects/p/locations/europe-west4"; got != want {
		t.Errorf("vertex base %s, want %s", got, want)
	}
	if v.(*translated).t.(*vertex).auth.tokens != nil {
		t.Error("application default credentials detected before any call")
	}
}

// TestGoogleAgainstFakeUpstream runs herd's Google translations against fakeupstream's Google
// dialects: both ends agree on paths, credentials and the usage formula.
func TestGoogleAgainstFakeUpstream(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	_, base := fakeupstream.Start(t, fakeupstream.Options{APIKey: "k", StreamChunks: 3})
	d := &config.Deployment{ID: "d", Timeout: 5 * time.Second, StreamTimeout: 5 * time.Second}
	pool := NewPool(nil)
	gem, err := newGemini(d, pool, geminiParams{APIBase: base, APIKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	vtx, err := newVertex(d, pool, vertexParams{APIBase: base, Project: "p", Location: "europe-west4"})
	if err != nil {
		t.Fatal(err)
	}
	vtx.(*translated).t.(*vertex).auth = &googleAuth{tokens: staticToken("k")}
	// "You are terse." + "Say hi" = 20 bytes: 5 prompt tokens, and 3 completion tokens.
	chat := func(model string, stream bool) []byte {
		b := `{"model":"` + model + `","max_tokens":64,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hi"}]`
		if stream {
			b += `,"stream":true,"stream_options":{"include_usage":true}`
		}
		return []byte(b + "}")
	}
	for _, tt := range []struct {
		name  string
		up    Upstream
		model string
	}{
		{"gemini", gem, "gemini-2.5-flash"},
		{"vertex", vtx, "gemini-2.5-pro"},
		{"vertex anthropic", vtx, "claude-sonnet-4@20250514"},
	} {
		for _, stream := range []bool{false, true} {
			resp, err := tt.up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: chat(tt.model, stream), Stream: stream})
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("%s stream=%v: %d %v %s", tt.name, stream, resp.StatusCode, err, body)
			}
			usage := body
			if stream {
				events := strings.Split(strings.TrimSpace(string(body)), "\n\n")
				if len(events) < 2 || events[len(events)-1] != "data: [DONE]" {
					t.Fatalf("%s: stream %s", tt.name, body)
				}
				usage = []byte(strings.TrimPrefix(events[len(events)-2], "data: "))
			}
			if u, ok := ParseUsage(usage); !ok || u.PromptTokens != 5 || u.CompletionTokens != 3 {
				t.Errorf("%s stream=%v: usage %+v in %s", tt.name, stream, u, body)
			}
		}
	}
	resp, err := vtx.Do(context.Background(), &Call{Endpoint: Embeddings, Body: []byte(`{"model":"text-embedding-005","input":["abcdefgh","abcd"]}`)})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if u, ok := ParseUsage(body); !ok || u.PromptTokens != 3 || len(gjson.GetBytes(body, "data").Array()) != 2 {
		t.Errorf("vertex embeddings: %s", body)
	}
}

// A Messages API request to a Vertex deployment of an Anthropic model goes to rawPredict as
// the client wrote it: model in the URL, Vertex's anthropic_version added, the rest untouched.
func TestVertexTakesMessagesForClaude(t *testing.T) {
	v := goldenTranslators["vertex_ai"](t, false).(*vertex)
	if v.serves(Messages) {
		t.Error("a Gemini deployment claims the Messages API")
	}
	v.claude = true
	if !v.serves(Messages) || v.serves(Responses) {
		t.Error("a Claude deployment does not take the Messages API (or takes Responses)")
	}
	body := `{"model":"claude-sonnet-4@20250514","max_tokens":10,"stream":true,"system":[{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"d"}}]}]}`
	out, err := v.request(t.Context(), &Call{Endpoint: Messages, Body: []byte(body), Stream: true,
		ClientHeader: http.Header{"Anthropic-Beta": {"context-1m-2025-08-07"}, "Anthropic-Version": {"2023-06-01"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out.url.Path, "/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict") || !out.stream ||
		gjson.GetBytes(out.body, "model").Exists() || gjson.GetBytes(out.body, "anthropic_version").Str != VertexAnthropicVersion ||
		gjson.GetBytes(out.body, "messages.0.content.0.type").Str != "document" || gjson.GetBytes(out.body, "system.0.cache_control.type").Str != "ephemeral" ||
		out.header.Get("Authorization") != "Bearer ya29.test" || out.header.Get("Anthropic-Beta") != "context-1m-2025-08-07" ||
		out.header.Get("Anthropic-Version") != "" {
		t.Errorf("%s stream=%v %s %v", out.url, out.stream, out.body, out.header)
	}
}
