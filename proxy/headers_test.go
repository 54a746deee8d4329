package proxy

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// headerUpstream answers like OpenAI, with OpenAI's response headers and some that must not
// reach the client: a streamed answer when asked, a 400 for model "bad", a 429 for "busy".
func headerUpstream(t *testing.T) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h := w.Header()
		h.Set("x-request-id", "req_123")
		h.Set("openai-processing-ms", "321")
		h.Set("x-ratelimit-remaining-requests", "9999")
		h.Set("Set-Cookie", "__cf_bm=secret; path=/")
		h.Set("Connection", "X-Hop")
		h.Set("X-Hop", "per-connection")
		// As a LiteLLM upstream passes on its own upstream's headers.
		h.Set("Llm_provider-X-Request-Id", "inner-request")
		h.Set("Llm_provider-Openai-Organization", "inner-org")
		switch gjson.GetBytes(body, "model").String() {
		case "bad":
			h.Set("Content-Type", "application/json")
			w.WriteHeader(400)
			_, _ = io.WriteString(w, `{"error":{"message":"bad request","type":"invalid_request_error","param":null,"code":null}}`)
			return
		case "busy":
			h.Set("Content-Type", "application/json")
			h.Set("Retry-After", "7")
			h.Set("Retry-After-Ms", "6500")
			w.WriteHeader(429)
			_, _ = io.WriteString(w, `{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":null}}`)
			return
		}
		if gjson.GetBytes(body, "stream").Bool() {
			h.Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n")
			return
		}
		h.Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
	}))
	t.Cleanup(up.Close)
	return up
}

// TestProviderHeaders: the upstream's own headers reach the client as llm_provider-<name>, as
// LiteLLM sends them — on a success, a stream, and an upstream error passed through — without
// its cookies, its framing or its hop-by-hop headers, and herd's own headers stay herd's.
func TestProviderHeaders(t *testing.T) {
	needsServers(t)
	up := headerUpstream(t)
	h := startHerd(t, `
model_list:
  - {model_name: m, litellm_params: {model: openai/m, api_base: "{{UP}}/v1", rpm: 100}}
  - {model_name: bad, litellm_params: {model: openai/bad, api_base: "{{UP}}/v1"}}
  - {model_name: busy, litellm_params: {model: openai/busy, api_base: "{{UP}}/v1"}}
`, up.URL, nil)
	for _, tc := range []struct{ name, body string }{
		{"success", `{"model":"m",` + hi + `}`},
		{"stream", `{"model":"m","stream":true,` + hi + `}`},
		{"upstream 400", `{"model":"bad",` + hi + `}`},
		{"upstream 429", `{"model":"busy",` + hi + `}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := post(t, h.URL+"/v1/chat/completions", tc.body)
			t.Logf("%d %v %s", resp.StatusCode, resp.Header, body)
			for k, want := range map[string]string{
				"llm_provider-x-request-id":                     "req_123", // this upstream's own, over the inner one
				"llm_provider-openai-organization":              "inner-org",
				"llm_provider-openai-processing-ms":             "321",
				"llm_provider-x-ratelimit-remaining-requests":   "9999",
				"llm_provider-llm_provider-openai-organization": "",
				"llm_provider-set-cookie":                       "",
				"llm_provider-connection":                       "",
				"llm_provider-x-hop":                            "",
				"llm_provider-content-type":                     "",
				"llm_provider-content-length":                   "",
				"set-cookie":                                    "",
			} {
				if got := resp.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if tc.name == "success" && resp.Header.Get("x-ratelimit-remaining-requests") != "99" {
				t.Errorf("herd's own x-ratelimit-remaining-requests = %q, want 99", resp.Header.Get("x-ratelimit-remaining-requests"))
			}
			if tc.name == "upstream 429" && (resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "7" || resp.Header.Get("Retry-After-Ms") != "6500") {
				t.Errorf("the upstream's 429 and its waits should pass as sent: %d %q %q", resp.StatusCode,
					resp.Header.Get("Retry-After"), resp.Header.Get("Retry-After-Ms"))
			}
			if !uuidV4.MatchString(resp.Header.Get("x-litellm-call-id")) {
				t.Errorf("x-litellm-call-id = %q, want a UUID v4", resp.Header.Get("x-litellm-call-id"))
			}
		})
	}
}

func TestCopyProviderHeadersIsBounded(t *testing.T) {
	up := http.Header{"Huge": {strings.Repeat("x", maxProviderHeaderBytes)}, "X-Request-Id": {"req_1"}}
	for i := range 200 {
		up[fmt.Sprintf("X-Junk-%03d", i)] = []string{"v"}
	}
	h := http.Header{}
	copyProviderHeaders(h, up)
	if len(h) != maxProviderHeaders {
		t.Errorf("copied %d headers, want %d", len(h), maxProviderHeaders)
	}
	if h.Get("Llm_provider-Huge") != "" {
		t.Error("a header larger than the whole budget was copied")
	}
	size := 0
	for k, vs := range h {
		size += len(k) + len(vs[0])
	}
	if size > maxProviderHeaderBytes {
		t.Errorf("copied %d bytes, over the %d bound", size, maxProviderHeaderBytes)
	}
	// Under the bound, everything passes, the huge header excepted.
	h = http.Header{}
	copyProviderHeaders(h, http.Header{"Huge": up["Huge"], "X-Request-Id": {"req_1"}, "Openai-Version": {"2020-10-01"}})
	if len(h) != 2 || h.Get("llm_provider-x-request-id") != "req_1" {
		t.Errorf("copied %v", h)
	}
}

// TestCallIDOnEveryLLMResponse: herd's own refusals carry x-litellm-call-id too, each its own.
func TestCallIDOnEveryLLMResponse(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, retrieveConfig, base, nil)
	auth := []string{"Authorization", "Bearer sk-master-1234"}
	seen := map[string]bool{}
	for _, tc := range []struct {
		status int
		body   string
		hdr    []string
	}{
		{200, `{"model":"gpt-4o",` + hi + `}`, auth},
		{200, `{"model":"gpt-4o",` + hi + `}`, auth},
		{400, `{"model":"nope",` + hi + `}`, auth},
		{401, `{"model":"gpt-4o",` + hi + `}`, nil},
	} {
		resp, body := post(t, h.URL+"/v1/chat/completions", tc.body, tc.hdr...)
		id := resp.Header.Get("x-litellm-call-id")
		if resp.StatusCode != tc.status || !uuidV4.MatchString(id) || seen[id] {
			t.Errorf("%d (want %d) with x-litellm-call-id %q (want a new UUID v4): %s", resp.StatusCode, tc.status, id, body)
		}
		seen[id] = true
	}
}

// BenchmarkProviderHeaders is what passing on an OpenAI answer's headers and adding the call ID
// cost a request (the headers as api.openai.com sends them with a chat completion).
func BenchmarkProviderHeaders(b *testing.B) {
	up := http.Header{}
	for k, v := range map[string]string{
		"Date": "Tue, 01 Dec 2026 10:00:00 GMT", "Content-Type": "application/json", "Transfer-Encoding": "chunked",
		"Connection": "keep-alive", "Access-Control-Expose-Headers": "X-Request-ID", "Openai-Organization": "user-abc123",
		"Openai-Processing-Ms": "412", "Openai-Project": "proj_abc123", "Openai-Version": "2020-10-01",
		"X-Ratelimit-Limit-Requests": "10000", "X-Ratelimit-Limit-Tokens": "30000000", "X-Ratelimit-Remaining-Requests": "9999",
		"X-Ratelimit-Remaining-Tokens": "29999980", "X-Ratelimit-Reset-Requests": "6ms", "X-Ratelimit-Reset-Tokens": "0s",
		"X-Request-Id": "req_0123456789abcdef0123456789abcdef", "Strict-Transport-Security": "max-age=31536000; includeSubDomains; preload",
		"Cf-Cache-Status": "DYNAMIC", "Set-Cookie": "__cf_bm=abc; path=/; HttpOnly", "X-Content-Type-Options": "nosniff",
		"Server": "cloudflare", "Cf-Ray": "8f0123456789abcd-AMS", "Alt-Svc": `h3=":443"; ma=86400`,
	} {
		up[k] = []string{v}
	}
	h := http.Header{}
	b.ReportAllocs()
	for b.Loop() {
		clear(h)
		copyProviderHeaders(h, up)
		h[hdrCallID] = newCallID()
	}
}
