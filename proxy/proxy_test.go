package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/local"
)

// needsServers skips tests that start servers when running with -short.
func needsServers(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts servers; skipped with -short")
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// harness is herd serving yaml over a real socket, with its state backend at hand.
type harness struct {
	URL   string
	state *local.Backend
	srv   *Server
}

// startHerd serves yaml (with {{UP}} replaced by upstream's base URL).
func startHerd(t *testing.T, yaml, upstream string, env map[string]string) *harness {
	t.Helper()
	yaml = strings.ReplaceAll(yaml, "{{UP}}", upstream)
	cfg, err := config.Parse("test.yaml", []byte(yaml), config.MapEnv(env), testLogger(t))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	st := local.New(local.Options{})
	srv, err := New(Options{Config: cfg, State: st, Backend: "local", Node: "node-1", Version: "test", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	t.Cleanup(srv.Close)
	return &harness{URL: ts.URL, state: st, srv: srv}
}

// load returns deployment i's usage in the current window.
func (h *harness) load(i int) state.Load {
	return h.state.Counter(h.srv.snap.Load().deps[i].cfg.ID).Load()
}

func (h *harness) tokens(i int) int64 { return h.load(i).Tokens }

// settled waits until no deployment has a call in flight: a non-streaming answer reaches the
// client before its usage is settled, so counts read right after it may not include it yet.
func (h *harness) settled(t *testing.T) {
	t.Helper()
	poll(t, "every call settled", func() bool {
		for i := range h.srv.snap.Load().deps {
			if h.load(i).InFlight != 0 {
				return false
			}
		}
		return true
	})
}

func post(t *testing.T, url, body string, hdr ...string) (*http.Response, string) {
	t.Helper()
	return do(t, http.MethodPost, url, strings.NewReader(body), append([]string{"Content-Type", "application/json"}, hdr...)...)
}

func get(t *testing.T, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	return do(t, http.MethodGet, url, nil, hdr...)
}

// do sends one request with header name/value pairs and returns the response and its body.
func do(t *testing.T, method, url string, body io.Reader, hdr ...string) (*http.Response, string) {
	t.Helper()
	return doWith(t, http.DefaultClient, method, url, body, hdr...)
}

// doWith is do with client c.
func doWith(t *testing.T, c *http.Client, method, url string, body io.Reader, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// wantError asserts an OpenAI-shaped error with status and a message containing substr.
func wantError(t *testing.T, resp *http.Response, body string, status int, substr string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status = %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q, want JSON", ct)
	}
	e := gjson.Get(body, "error")
	if !e.IsObject() || !e.Get("message").Exists() || !e.Get("type").Exists() || !e.Get("param").Exists() {
		t.Fatalf("not an OpenAI-shaped error: %s", body)
	}
	if got := e.Get("code").String(); got != fmt.Sprint(status) {
		t.Errorf("code = %q, want %q", got, fmt.Sprint(status))
	}
	if !strings.Contains(e.Get("message").String(), substr) {
		t.Errorf("message %q does not contain %q", e.Get("message").String(), substr)
	}
}

// poll waits until cond holds or the deadline passes.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

const openAIConfig = `
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o-2024
      api_base: {{UP}}/v1
      api_key: sk-upstream-secret
      rpm: 100
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt4o-eu
      api_base: {{UP}}
      api_key: azure-upstream-secret
      api_version: "2024-10-21"
      rpm: 100
  - model_name: embed
    litellm_params:
      model: openai/text-embedding-3-small
      api_base: {{UP}}/v1
      api_key: sk-upstream-secret
router_settings:
  model_group_alias:
    gpt-4: gpt-4o
    secret-alias: {model: gpt-4o, hidden: true}
`

const chatBody = `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello there, how are you?"}],"temperature":0.2}`

func TestChatPassThrough(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, openAIConfig, base, nil)

	seen := map[string]bool{}
	for i := 0; i < 40 && len(seen) < 2; i++ {
		resp, body := post(t, h.URL+"/v1/chat/completions", chatBody)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		id := resp.Header.Get("x-litellm-model-id")
		seen[id] = true
		if resp.Header.Get("x-litellm-model-group") != "gpt-4o" || resp.Header.Get("x-herd-node") != "node-1" {
			t.Errorf("headers: %v", resp.Header)
		}
		if resp.Header.Get("x-litellm-model-api-base") == "" || resp.Header.Get("x-litellm-overhead-duration-ms") == "" {
			t.Errorf("missing api-base/overhead headers: %v", resp.Header)
		}
		if gjson.Get(body, "choices.0.message.content").String() == "" || !gjson.Get(body, "usage.total_tokens").Exists() {
			t.Errorf("body not passed through: %s", body)
		}
	}
	if len(seen) != 2 {
		t.Fatalf("40 requests reached only deployments %v; want both", seen)
	}
	// The OpenAI deployment got the body untouched except model, and its key as a bearer token.
	req, ok := up.LastRequest("gpt-4o-2024")
	if !ok {
		t.Fatal("openai deployment received nothing")
	}
	wantBody := strings.Replace(chatBody, `"model":"gpt-4o"`, `"model":"gpt-4o-2024"`, 1)
	if string(req.Body) != wantBody {
		t.Errorf("upstream body =\n%s\nwant\n%s", req.Body, wantBody)
	}
	if req.Path != "/v1/chat/completions" || req.Header.Get("Authorization") != "Bearer sk-upstream-secret" {
		t.Errorf("openai request: path %s auth %q", req.Path, req.Header.Get("Authorization"))
	}
	// The Azure deployment got its URL form, api-version and api-key.
	az, ok := up.LastRequest("gpt4o-eu")
	if !ok {
		t.Fatal("azure deployment received nothing")
	}
	if az.Path != "/openai/deployments/gpt4o-eu/chat/completions" || az.RawQuery != "api-version=2024-10-21" ||
		az.Header.Get("api-key") != "azure-upstream-secret" || az.Header.Get("Authorization") != "" {
		t.Errorf("azure request: path %s query %s headers %v", az.Path, az.RawQuery, az.Header)
	}
}

func TestPathForms(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, openAIConfig, base, nil)
	bodies := map[string]string{
		"chat/completions": `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`,
		"completions":      `{"model":"gpt-4o","prompt":"Say hi"}`,
		"embeddings":       `{"model":"embed","input":["a","b"]}`,
	}
	objects := map[string]string{"chat/completions": "chat.completion", "completions": "text_completion", "embeddings": "list"}
	for op, body := range bodies {
		model := gjson.Get(body, "model").String()
		for _, path := range []string{"/" + op, "/v1/" + op, "/engines/" + model + "/" + op, "/openai/deployments/" + model + "/" + op + "?api-version=2024-06-01"} {
			t.Run(path, func(t *testing.T) {
				before := up.Counts()
				// The path forms with a model in the URL must work without one in the body.
				b := body
				if strings.Contains(path, "/engines/") || strings.Contains(path, "/deployments/") {
					b = strings.Replace(body, `"model":"`+model+`",`, "", 1)
				}
				resp, out := post(t, h.URL+path, b)
				if resp.StatusCode != 200 {
					t.Fatalf("status %d: %s", resp.StatusCode, out)
				}
				if got := gjson.Get(out, "object").String(); got != objects[op] {
					t.Errorf("object = %q, want %q: %s", got, objects[op], out)
				}
				if total(up.Counts())-total(before) != 1 {
					t.Errorf("upstream calls = %d, want 1", total(up.Counts())-total(before))
				}
			})
		}
	}
}

func total(m map[string]int64) (n int64) {
	for _, v := range m {
		n += v
	}
	return n
}

// readEvents reads an SSE body into its data payloads.
func readEvents(t *testing.T, r io.Reader) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, p)
		}
	}
	return out
}

func TestStreamUsage(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{StreamChunks: 4})
	h := startHerd(t, `
model_list:
  - model_name: m
    litellm_params: {model: openai/up, api_base: "{{UP}}/v1", tpm: 100000}
`, base, nil)

	for _, clientAsks := range []bool{false, true} {
		t.Run(fmt.Sprintf("client_asks_usage=%v", clientAsks), func(t *testing.T) {
			body := `{"model":"m","stream":true,"messages":[{"role":"user","content":"count to four please"}]}`
			if clientAsks {
				body = `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"count to four please"}]}`
			}
			h.settled(t) // the previous subtest's non-streaming call
			tokensBefore := h.tokens(0)
			resp, out := post(t, h.URL+"/chat/completions", body)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("status %d type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), out)
			}
			events := readEvents(t, strings.NewReader(out))
			if events[len(events)-1] != "[DONE]" {
				t.Errorf("last event %q, want [DONE]", events[len(events)-1])
			}
			var usageChunks int
			for _, e := range events {
				if gjson.Get(e, "usage").IsObject() {
					usageChunks++
				}
			}
			if clientAsks && usageChunks != 1 || !clientAsks && usageChunks != 0 {
				t.Errorf("usage chunks = %d with client_asks_usage=%v; events %q", usageChunks, clientAsks, events)
			}
			// herd always asked the upstream for usage, and counted it.
			req, _ := up.LastRequest("up")
			if !gjson.GetBytes(req.Body, "stream_options.include_usage").Bool() {
				t.Errorf("upstream was not asked for usage: %s", req.Body)
			}
			tokensAfter := h.tokens(0)
			want := nonStreamUsage(t, h.URL, strings.Replace(body, `"stream":true`, `"stream":false`, 1))
			if got := tokensAfter - tokensBefore; got != want {
				t.Errorf("stream counted %d tokens, want %d (the upstream's usage)", got, want)
			}
		})
	}
}

// nonStreamUsage returns total_tokens of the same request without streaming.
func nonStreamUsage(t *testing.T, url, body string) int64 {
	resp, out := post(t, url+"/chat/completions", body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	return gjson.Get(out, "usage.total_tokens").Int()
}

func TestStreamWithoutUsageIsEstimated(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{StreamChunks: 6})
	up.SetFault("*", fakeupstream.Fault{NoUsage: true})
	h := startHerd(t, `
model_list:
  - model_name: m
    litellm_params: {model: openai/up, api_base: "{{UP}}/v1"}
`, base, nil)
	resp, out := post(t, h.URL+"/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"a fairly long prompt for estimation"}]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	if tokens := h.tokens(0); tokens <= 0 {
		t.Fatalf("tokens = %d, want an estimate > 0", tokens)
	}
}

// TestStreamFlushesEachEvent uses an upstream that sends one event and then waits: the client
// must receive that event while the upstream is still waiting.
func TestStreamFlushesEachEvent(t *testing.T) {
	needsServers(t)
	release := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"first\"}}]}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" second\"}}]}\n\ndata: [DONE]\n\n")
	}))
	t.Cleanup(upstream.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	h := startHerd(t, `
model_list:
  - model_name: m
    litellm_params: {model: openai/up, api_base: "{{UP}}"}
`, upstream.URL, nil)

	resp, err := http.Post(h.URL+"/chat/completions", "application/json", strings.NewReader(`{"model":"m","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || !strings.Contains(line, "first") {
		t.Fatalf("first event = %q, %v", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "second") || !strings.Contains(string(rest), "[DONE]") {
		t.Fatalf("rest of stream = %q", rest)
	}
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	needsServers(t)
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			up, base := fakeupstream.Start(t, fakeupstream.Options{})
			up.SetFault("*", fakeupstream.Fault{Hang: true})
			h := startHerd(t, `
model_list:
  - model_name: m
    litellm_params: {model: openai/up, api_base: "{{UP}}/v1"}
`, base, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.URL+"/chat/completions",
				strings.NewReader(fmt.Sprintf(`{"model":"m","stream":%v,"messages":[{"role":"user","content":"hi"}]}`, stream)))
			done := make(chan error, 1)
			go func() {
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					resp.Body.Close()
				}
				done <- err
			}()
			poll(t, "upstream to receive the call", func() bool { return up.InFlight() == 1 })
			cancel()
			<-done
			poll(t, "upstream call to be cancelled", func() bool { return up.Cancelled("up") == 1 })
			poll(t, "reservation to end", func() bool { return h.load(0).InFlight == 0 })
		})
	}
}

func TestUpstreamFailures(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	// Nothing listens on port 1 (tcpmux), so connecting is refused at once.
	const deadAddr = "127.0.0.1:1"
	h := startHerd(t, `
model_list:
  - model_name: slow
    litellm_params: {model: openai/slow, api_base: "{{UP}}/v1", timeout: 0.2, stream_timeout: 0.2}
  - model_name: dead
    litellm_params: {model: openai/dead, api_base: "http://`+deadAddr+`/v1"}
  - model_name: limited
    litellm_params: {model: openai/limited, api_base: "{{UP}}/v1"}
  - model_name: html
    litellm_params: {model: openai/html, api_base: "{{UP}}/v1"}
  - model_name: cut
    litellm_params: {model: openai/cut, api_base: "{{UP}}/v1"}
`, base, nil)
	up.SetFault("slow", fakeupstream.Fault{Hang: true})
	up.SetFault("limited", fakeupstream.Fault{Status: 429, RetryAfter: "7"})
	up.SetFault("html", fakeupstream.Fault{Status: 503, Body: "<html><body>Service Unavailable</body></html>"})
	up.SetFault("cut", fakeupstream.Fault{StreamCut: 2})

	t.Run("timeout 504", func(t *testing.T) {
		start := time.Now()
		resp, body := post(t, h.URL+"/chat/completions", `{"model":"slow","messages":[{"role":"user","content":"hi"}]}`)
		wantError(t, resp, body, 504, "timed out")
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("timeout took %v, want about 0.2s", d)
		}
	})
	t.Run("stream timeout 504", func(t *testing.T) {
		resp, body := post(t, h.URL+"/chat/completions", `{"model":"slow","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
		wantError(t, resp, body, 504, "timed out")
	})
	t.Run("unreachable 502", func(t *testing.T) {
		resp, body := post(t, h.URL+"/chat/completions", `{"model":"dead","messages":[{"role":"user","content":"hi"}]}`)
		wantError(t, resp, body, 502, "unreachable")
	})
	t.Run("upstream 429 passed through", func(t *testing.T) {
		resp, body := post(t, h.URL+"/chat/completions", `{"model":"limited","messages":[{"role":"user","content":"hi"}]}`)
		wantError(t, resp, body, 429, "")
		if resp.Header.Get("Retry-After") != "7" {
			t.Errorf("Retry-After = %q, want 7", resp.Header.Get("Retry-After"))
		}
	})
	t.Run("upstream HTML 503 wrapped", func(t *testing.T) {
		resp, body := post(t, h.URL+"/chat/completions", `{"model":"html","messages":[{"role":"user","content":"hi"}]}`)
		wantError(t, resp, body, 503, "Service Unavailable")
	})
	t.Run("stream cut mid-way ends with an error event", func(t *testing.T) {
		resp, body := post(t, h.URL+"/chat/completions", `{"model":"cut","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		events := readEvents(t, strings.NewReader(body))
		last := events[len(events)-1]
		if gjson.Get(last, "error.code").String() != "502" {
			t.Errorf("last event = %q, want a 502 error event", last)
		}
	})
	t.Run("health reports failing deployments without calling them", func(t *testing.T) {
		before := total(up.Counts())
		resp, body := get(t, h.URL+"/health")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if total(up.Counts()) != before {
			t.Error("/health called an upstream")
		}
		unhealthy := map[string]bool{}
		for _, e := range gjson.Get(body, "unhealthy_endpoints").Array() {
			unhealthy[e.Get("model_name").String()] = true
		}
		for _, g := range []string{"slow", "dead", "limited", "html", "cut"} {
			if !unhealthy[g] {
				t.Errorf("%s not reported unhealthy: %s", g, body)
			}
		}
	})
}

func TestBadRequests(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, openAIConfig+`
general_settings:
  max_request_size_mb: 0.001
`, base, nil)
	tests := []struct {
		name, path, body string
		status           int
		substr           string
	}{
		{"bad json", "/v1/chat/completions", `{"model":`, 400, "could not parse the JSON"},
		{"not an object", "/v1/chat/completions", `["gpt-4o"]`, 400, "JSON object"},
		{"no model", "/v1/chat/completions", `{"messages":[]}`, 400, "'model' is required"},
		{"unknown model", "/v1/chat/completions", `{"model":"gpt-5"}`, 400, "model=gpt-5. Available model groups: embed, gpt-4o"},
		{"too large", "/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"` + strings.Repeat("x", 2000) + `"}]}`, 413, "too large"},
		{"unknown route", "/v1/nope", `{}`, 404, "Not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := post(t, h.URL+tt.path, tt.body)
			wantError(t, resp, body, tt.status, tt.substr)
		})
	}
	t.Run("method not allowed", func(t *testing.T) {
		resp, body := get(t, h.URL+"/v1/chat/completions")
		wantError(t, resp, body, 405, "Method not allowed")
	})
	if n := total(up.Counts()); n != 0 {
		t.Errorf("bad requests reached the upstream %d times", n)
	}
}

func TestAuth(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, openAIConfig+`
general_settings:
  master_key: os.environ/HERD_TEST_KEY
`, base, map[string]string{"HERD_TEST_KEY": "sk-master-1234"})

	body := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
	for name, hdr := range map[string][]string{
		"none":         nil,
		"wrong bearer": {"Authorization", "Bearer sk-master-9999"},
		"prefix only":  {"Authorization", "Bearer sk-master"},
	} {
		t.Run(name, func(t *testing.T) {
			resp, out := post(t, h.URL+"/v1/chat/completions", body, hdr...)
			wantError(t, resp, out, 401, "Authentication Error")
			if strings.Contains(out, "sk-master-1234") {
				t.Error("401 body leaks the master key")
			}
		})
	}
	if resp, out := post(t, h.URL+"/v1/chat/completions", body, "Authorization", "Bearer sk-master-1234"); resp.StatusCode != 200 {
		t.Errorf("bearer: status %d: %s", resp.StatusCode, out)
	}
	if resp, out := post(t, h.URL+"/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01", `{"messages":[{"role":"user","content":"hi"}]}`, "api-key", "sk-master-1234"); resp.StatusCode != 200 {
		t.Errorf("azure api-key: status %d: %s", resp.StatusCode, out)
	}
	for _, p := range []string{"/v1/models", "/model/info", "/health"} {
		if resp, _ := get(t, h.URL+p); resp.StatusCode != 401 {
			t.Errorf("GET %s without key: status %d, want 401", p, resp.StatusCode)
		}
	}
	for _, p := range []string{"/health/liveliness", "/health/readiness", "/metrics"} {
		if resp, _ := get(t, h.URL+p); resp.StatusCode != 200 {
			t.Errorf("GET %s without key: status %d, want 200", p, resp.StatusCode)
		}
	}
}

func TestModelsAndInfo(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, openAIConfig, base, nil)

	_, body := get(t, h.URL+"/v1/models")
	var ids []string
	for _, m := range gjson.Get(body, "data").Array() {
		ids = append(ids, m.Get("id").String())
	}
	if got := strings.Join(ids, ","); got != "embed,gpt-4,gpt-4o" {
		t.Errorf("/v1/models ids = %s, want embed,gpt-4,gpt-4o (hidden alias left out)", got)
	}
	// Aliases route, hidden ones too.
	for _, alias := range []string{"gpt-4", "secret-alias"} {
		resp, out := post(t, h.URL+"/v1/chat/completions", `{"model":"`+alias+`","messages":[{"role":"user","content":"hi"}]}`)
		if resp.StatusCode != 200 || resp.Header.Get("x-litellm-model-group") != "gpt-4o" {
			t.Errorf("alias %s: status %d group %q: %s", alias, resp.StatusCode, resp.Header.Get("x-litellm-model-group"), out)
		}
	}
	for _, p := range []string{"/model/info", "/v1/model/info"} {
		_, info := get(t, h.URL+p)
		if n := len(gjson.Get(info, "data").Array()); n != 3 {
			t.Errorf("%s: %d deployments, want 3", p, n)
		}
		if strings.Contains(info, "secret") || strings.Contains(info, "api_key") {
			t.Errorf("%s leaks a secret: %s", p, info)
		}
		if gjson.Get(info, "data.0.model_info.id").String() == "" {
			t.Errorf("%s: no model_info.id: %s", p, info)
		}
	}
	_, live := get(t, h.URL+"/health/liveliness")
	if strings.TrimSpace(live) != `"I'm alive!"` {
		t.Errorf("liveliness = %s", live)
	}
	_, ready := get(t, h.URL+"/health/readiness")
	if gjson.Get(ready, "status").String() != "healthy" || gjson.Get(ready, "state_backend").String() != "local" {
		t.Errorf("readiness = %s", ready)
	}
	h.srv.Drain()
	if resp, _ := get(t, h.URL+"/health/readiness"); resp.StatusCode != 503 {
		t.Errorf("readiness while draining: %d, want 503", resp.StatusCode)
	}
}

func TestMetrics(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, openAIConfig, base, nil)
	post(t, h.URL+"/v1/chat/completions", chatBody)
	post(t, h.URL+"/v1/chat/completions", `{"model":"nope"}`)
	_, m := get(t, h.URL+"/metrics")
	for _, want := range []string{
		`herd_requests_total{deployment="`, `model_group="gpt-4o",status="200"}`,
		`herd_requests_total{deployment="",model_group="",status="400"} 1`,
		`herd_request_duration_seconds_bucket{model_group="gpt-4o"`,
		`herd_overhead_duration_seconds_bucket{model_group="gpt-4o"`,
		`herd_in_flight_requests{model_group="gpt-4o"} 0`,
		`herd_tokens_total{deployment="`, `type="prompt"}`, `type="completion"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(m, "secret") || strings.Contains(m, "nope") {
		t.Error("/metrics leaks a secret or a client-chosen model name")
	}
}

func TestMockProvider(t *testing.T) {
	needsServers(t)
	h := startHerd(t, `
model_list:
  - model_name: demo
    litellm_params: {model: mock/demo, mock_response: "Hi from the mock"}
`, "", nil)
	resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"demo","messages":[{"role":"user","content":"hello"}]}`)
	if resp.StatusCode != 200 || gjson.Get(body, "choices.0.message.content").String() != "Hi from the mock" {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if gjson.Get(body, "usage.total_tokens").Int() <= 0 {
		t.Errorf("mock reports no usage: %s", body)
	}
	resp, body = post(t, h.URL+"/v1/chat/completions", `{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	var text strings.Builder
	for _, e := range readEvents(t, strings.NewReader(body)) {
		if e == "[DONE]" {
			continue
		}
		if gjson.Get(e, "usage").IsObject() {
			t.Errorf("usage chunk sent to a client that did not ask: %s", e)
		}
		text.WriteString(gjson.Get(e, "choices.0.delta.content").String())
	}
	if text.String() != "Hi from the mock" {
		t.Errorf("streamed text = %q", text.String())
	}
	resp, body = post(t, h.URL+"/v1/embeddings", `{"model":"demo","input":["a","b","c"]}`)
	if n := len(gjson.Get(body, "data").Array()); resp.StatusCode != 200 || n != 3 {
		t.Errorf("embeddings: status %d, %d vectors: %s", resp.StatusCode, n, body)
	}
}

// panickyState stands in for a backend with a bug: admission panics.
type panickyState struct{}

func (panickyState) Counter(string) state.Counter { return panickyCounter{} }

type panickyCounter struct{ state.Counter }

func (panickyCounter) LoadAt(time.Time) state.Load { return state.Load{} }

func (panickyCounter) Admit(state.Limits, state.Reservation) (state.Ticket, error) {
	panic("bug in backend")
}

func TestPanicBecomesJSONError(t *testing.T) {
	needsServers(t)
	cfg, err := config.Parse("t.yaml", []byte("model_list:\n  - {model_name: m, litellm_params: {model: mock/m}}\n"), config.MapEnv(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{Config: cfg, State: panickyState{}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	resp, body := post(t, ts.URL+"/v1/chat/completions", `{"model":"m","messages":[]}`)
	wantError(t, resp, body, 500, "Internal server error")
	if strings.Contains(body, "bug in backend") {
		t.Error("panic value leaked to the client")
	}
}

// A backend that cannot admit yet (strict limits before the homes table) makes readiness 503
// with its reason, and healthy once it can.
func TestReadinessWaitsForTheBackend(t *testing.T) {
	cfg, err := config.Parse("test.yaml", []byte("model_list: []\n"), config.MapEnv(nil), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	var reason atomic.Value
	reason.Store("strict limits: waiting for the raft leader's homes table")
	srv, err := New(Options{Config: cfg, State: local.New(local.Options{}), Backend: "gossip", Node: "n", Logger: testLogger(t),
		BackendNotReady: func() string { return reason.Load().(string) }})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	t.Cleanup(srv.Close)
	resp, body := get(t, ts.URL+"/health/readiness")
	if resp.StatusCode != 503 || gjson.Get(body, "status").String() != "starting" || !strings.Contains(gjson.Get(body, "reason").String(), "homes table") {
		t.Fatalf("readiness before the backend is ready: %d %s", resp.StatusCode, body)
	}
	reason.Store("")
	if resp, body := get(t, ts.URL+"/health/readiness"); resp.StatusCode != 200 || gjson.Get(body, "reason").Exists() {
		t.Fatalf("readiness once ready: %d %s", resp.StatusCode, body)
	}
}
