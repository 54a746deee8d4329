package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/local"
)

// The attacks of issue 12 on the request path, replayed against the whole handler in-process
// (no sockets, so they run under -short too), and the fuzz target that drives the same handler.

// inproc is herd serving a config in-process: requests go straight to ServeHTTP.
type inproc struct {
	srv   *Server
	state *local.Backend
}

func newInproc(tb testing.TB, yaml string) *inproc {
	tb.Helper()
	log := slog.New(slog.DiscardHandler)
	cfg, err := config.Parse("hostile.yaml", []byte(yaml), config.MapEnv(nil), log)
	if err != nil {
		tb.Fatalf("config: %v", err)
	}
	st := local.New(local.Options{})
	srv, err := New(Options{Config: cfg, State: st, Backend: "local", Node: "node-1", Version: "test", Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(srv.Close)
	return &inproc{srv: srv, state: st}
}

// serve sends one request and returns the recorded response.
func (h *inproc) serve(method, target string, body []byte, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, bytes.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.srv.ServeHTTP(w, r)
	return w
}

func (h *inproc) chat(body string) *httptest.ResponseRecorder {
	return h.serve(http.MethodPost, "/v1/chat/completions", []byte(body), "Content-Type", "application/json")
}

// loads returns every deployment's usage.
func (h *inproc) loads() []state.Load {
	var out []state.Load
	for _, d := range h.srv.snap.Load().deps {
		out = append(out, h.state.Counter(d.cfg.ID).Load())
	}
	return out
}

// wantStatus checks w's status, and that an error is OpenAI-shaped and names param (if any).
func wantStatus(t *testing.T, w *httptest.ResponseRecorder, status int, param string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d: %.300s", w.Code, status, w.Body)
	}
	if status == http.StatusOK {
		return
	}
	body := w.Body.String()
	if !strings.Contains(body, `"error":{"message":`) {
		t.Fatalf("error is not OpenAI-shaped: %s", body)
	}
	if param != "" && !strings.Contains(body, `"param":"`+param+`"`) {
		t.Fatalf("error does not name param %q: %s", param, body)
	}
}

// tpmConfig is one mock deployment with tpm 1000 whose answers use about 400 completion tokens
// (1,600 bytes), so honest requests with max_tokens 400 fit twice per window.
var tpmConfig = `
model_list:
  - model_name: m
    litellm_params: {model: mock/a, tpm: 1000, mock_response: "` + strings.Repeat("word ", 320) + `"}
`

// honestUntilRefused sends honest requests (max_tokens 400) and returns how many of n were
// admitted; each one refused must be a 429.
func honestUntilRefused(t *testing.T, h *inproc, n int) int {
	t.Helper()
	ok := 0
	for range n {
		w := h.chat(`{"model":"m","max_tokens":400,` + hi + `}`)
		switch w.Code {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("honest request: status %d: %.300s", w.Code, w.Body)
		}
	}
	return ok
}

// Attack 1: six million '[' killed the process with a stack overflow in gjson's recursive
// validator (without the fix this test's process dies). Now a 400, at once.
func TestDeeplyNestedBodyIsRefused(t *testing.T) {
	h := newInproc(t, tpmConfig)
	body := append([]byte(`{"model":"m","messages":`), bytes.Repeat([]byte("["), 6_000_000)...)
	wantStatus(t, h.serve(http.MethodPost, "/v1/chat/completions", body), 400, "")
	// The same depth hidden in a value herd does not read, and closed, is refused too.
	body = []byte(`{"model":"m",` + hi + `,"metadata":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`)
	wantStatus(t, h.serve(http.MethodPost, "/v1/chat/completions", body), 400, "")
	// Brackets inside strings are text, however many.
	wantStatus(t, h.chat(`{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"`+strings.Repeat(`[{\"`, 500)+`"}]}`), 200, "")
}

// Attack 2: max_tokens 1e309 became MaxInt64 and wrapped the reservation negative: tpm 1000
// then admitted everything for a window. Now such values are a 400 naming the field, and the
// limit still holds for the honest requests that follow.
func TestMaxTokensOverflowIsRefused(t *testing.T) {
	h := newInproc(t, tpmConfig)
	for _, v := range []string{"1e309", "99999999999999999999", "9223372036854775807", "-1", "1.5", "100.0", "1e3", `"400"`, "true", "10000001"} {
		for _, key := range []string{"max_tokens", "max_completion_tokens"} {
			wantStatus(t, h.chat(`{"model":"m","`+key+`":`+v+`,`+hi+`}`), 400, key)
		}
	}
	for _, v := range []string{"0", "129", "1e309", "-1", "2.0"} {
		wantStatus(t, h.chat(`{"model":"m","n":`+v+`,`+hi+`}`), 400, "n")
	}
	for _, l := range h.loads() {
		if l.Requests != 0 || l.Tokens != 0 || l.InFlight != 0 {
			t.Fatalf("refused requests were counted: %+v", l)
		}
	}
	if got := honestUntilRefused(t, h, 6); got != 2 {
		t.Errorf("tpm 1000 admitted %d of 6 requests of ~405 tokens, want 2", got)
	}
	if l := h.loads()[0]; l.Tokens < 0 || l.Tokens > 1000 {
		t.Errorf("window holds %d tokens, want 0..1000", l.Tokens)
	}
}

// Attack 3: with "messages" twice herd estimated from the first and the upstream used the last.
// Duplicate top-level keys, however spelled, and case variants of the keys herd reads are a 400.
func TestAmbiguousKeysAreRefused(t *testing.T) {
	h := newInproc(t, tpmConfig)
	big := `"messages":[{"role":"user","content":"` + strings.Repeat("x", 8000) + `"}]`
	for name, tc := range map[string]struct{ body, param string }{
		"messages twice":      {`{"model":"m",` + hi + `,` + big + `}`, "messages"},
		"model twice":         {`{"model":"m","model":"m",` + hi + `}`, "model"},
		"escaped model twice": {`{"model":"m","mod\u0065l":"m",` + hi + `}`, "model"},
		"other key twice":     {`{"model":"m","user":"a","user":"b",` + hi + `}`, "user"},
		"Model":               {`{"Model":"m",` + hi + `}`, "Model"},
		"MESSAGES":            {`{"model":"m",` + hi + `,"MESSAGES":[]}`, "MESSAGES"},
		"Max_Tokens":          {`{"model":"m","Max_Tokens":99999999,` + hi + `}`, "Max_Tokens"},
		"long s stream":       {`{"model":"m","ſtream":true,` + hi + `}`, "ſtream"},
	} {
		t.Run(name, func(t *testing.T) { wantStatus(t, h.chat(tc.body), 400, tc.param) })
	}
	// Keys herd does not read may use any case; nested keys may repeat (they are estimated
	// as every string, so a repeat only adds to the estimate).
	wantStatus(t, h.chat(`{"model":"m","User":"a",`+hi+`}`), 200, "")
	wantStatus(t, h.chat(`{"model":"m","messages":[{"role":"user","content":"a","content":"b"}]}`), 200, "")
}

// Item 6: the reservation counts n completions, and tools and images in the prompt. Each of
// these requests estimates above tpm 1000 and cannot be admitted (before, each reserved
// about 20 tokens and was).
func TestReservationCountsChoicesToolsAndImages(t *testing.T) {
	h := newInproc(t, tpmConfig)
	schema := `{"type":"object","properties":{` + strings.Repeat(`"p":{"type":"string","description":"`+strings.Repeat("d", 100)+`"},`, 40) + `"q":{"type":"string"}}}`
	for name, body := range map[string]string{
		"n":       `{"model":"m","n":4,"max_tokens":300,` + hi + `}`,
		"best_of": `{"model":"m","best_of":4,"max_tokens":300,` + hi + `}`,
		"tools":   `{"model":"m","max_tokens":10,` + hi + `,"tools":[{"type":"function","function":{"name":"f","parameters":` + schema + `}}]}`,
		"images":  `{"model":"m","max_tokens":10,"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]}]}`,
	} {
		t.Run(name, func(t *testing.T) { wantStatus(t, h.chat(body), 429, "") })
	}
	// A low-detail image fits, and its data is not counted as text.
	img := `{"type":"image_url","image_url":{"url":"data:image/png;base64,` + strings.Repeat("A", 100_000) + `","detail":"low"}}`
	wantStatus(t, h.chat(`{"model":"m","max_tokens":10,"messages":[{"role":"user","content":[`+img+`]}]}`), 200, "")
}

// handlerStatuses are the statuses herd's HTTP API answers with: 204 is echo's answer to an
// OPTIONS request on a route (with Allow). 403 (allowed_ips, admin
// without a master key), 408 (a body slower than request_body_timeout), 499 (recorded for a
// client that left; nothing is written), 502 and 504 (upstream failures) and 503 (the node's
// in-flight cap, readiness while draining, admin without quorum) need a setting, a socket or an
// upstream the fuzz target does not have; 409 is the admin API's. 500 is never answered: it
// would mean a panic was recovered.
var handlerStatuses = map[int]bool{200: true, 204: true, 400: true, 401: true, 403: true, 404: true, 405: true, 408: true,
	409: true, 413: true, 429: true, 499: true, 501: true, 502: true, 503: true, 504: true}

const fuzzConfig = `
model_list:
  - {model_name: small, litellm_params: {model: mock/s, tpm: 1000, rpm: 100000}}
  - {model_name: big, litellm_params: {model: mock/b, tpm: 1000000000000}}
  - {model_name: free, litellm_params: {model: mock/f}}
router_settings:
  model_group_alias: {alias: big}
general_settings:
  master_key: sk-fuzz-1234
  max_request_size_mb: 1
`

// FuzzHandler drives the whole HTTP handler with a fuzzed method, path, Authorization and
// Content-Type header and body, against mock deployments in-process. It asserts that herd does
// not crash, answers with a status of handlerStatuses (never 500), that errors are
// OpenAI-shaped JSON, and that every deployment's counters stay non-negative and end each
// request with nothing in flight. Run it with
//
//	go test -run '^$' -fuzz '^FuzzHandler$' -fuzztime 10m ./proxy/
func FuzzHandler(f *testing.F) {
	const key = "Bearer sk-fuzz-1234"
	for _, s := range []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"small",` + hi + `}`},
		{"/v1/chat/completions", `{"model":"big","max_tokens":100,"n":2,"stream":true,` + hi + `}`},
		{"/chat/completions", `{"model":"alias","stream":true,"stream_options":{"include_usage":false},` + hi + `}`},
		{"/v1/completions", `{"model":"free","prompt":["a",[1,2,3]],"best_of":3}`},
		{"/v1/embeddings", `{"model":"big","input":["abc","def"]}`},
		{"/engines/small/chat/completions", `{` + hi + `}`},
		{"/openai/deployments/big/chat/completions?api-version=2024-06-01", `{"model":"x",` + hi + `}`},
		{"/v1/chat/completions", `{"model":"big","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"data:x","detail":"low"}}]}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}`},
		// The attacks, scaled down.
		{"/v1/chat/completions", `{"model":"small","messages":` + strings.Repeat("[", 20_000)},
		{"/v1/chat/completions", `{"model":"small","max_tokens":1e309,` + hi + `}`},
		{"/v1/chat/completions", `{"model":"small","max_tokens":99999999999999999999,` + hi + `}`},
		{"/v1/chat/completions", `{"model":"small",` + hi + `,"messages":[{"role":"user","content":"` + strings.Repeat("x", 4000) + `"}]}`},
		{"/v1/chat/completions", `{"Model":"big",` + hi + `}`},
		{"/v1/messages", `{"model":"small","max_tokens":10,"system":"s","messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/messages", `{"model":"big","max_tokens":10,"stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"tool_result","tool_use_id":"t","content":"x"}]}],"tools":[{"name":"f","input_schema":{}}]}`},
		{"/v1/responses", `{"model":"small","input":"hi","instructions":"x"}`},
		{"/v1/responses", `{"model":"big","stream":true,"input":[{"role":"user","content":[{"type":"input_text","text":"a"}]},{"type":"function_call","call_id":"c","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"c","output":"o"}]}`},
		{"/v1/models", ``},
		{"/model/info", ``},
		{"/health/readiness", ``},
		{"/model/new", `{"model_name":"x","litellm_params":{"model":"mock/x"}}`},
		{"/nope", `{}`},
	} {
		f.Add(uint8(0), s.path, key, "application/json", []byte(s.body))
	}
	f.Add(uint8(1), "/v1/models", key, "", []byte{})
	f.Add(uint8(0), "/v1/chat/completions", "Bearer wrong", "text/plain", []byte(`{"model":"small"}`))

	h := newInproc(f, fuzzConfig)
	methods := []string{http.MethodPost, http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodOptions, http.MethodHead, "PATCH", "BREW"}
	f.Fuzz(func(t *testing.T, method uint8, path, auth, ctype string, body []byte) {
		u, err := url.ParseRequestURI(path)
		if err != nil {
			u = &url.URL{Path: path}
		}
		r := &http.Request{
			Method: methods[int(method)%len(methods)], URL: u, RequestURI: path,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Host: "herd",
			Header:     http.Header{"Authorization": {auth}, "Content-Type": {ctype}},
			Body:       io.NopCloser(bytes.NewReader(body)),
			RemoteAddr: "192.0.2.1:1234", ContentLength: int64(len(body)),
		}
		w := httptest.NewRecorder()
		h.srv.ServeHTTP(w, r)
		if !handlerStatuses[w.Code] || w.Code == http.StatusInternalServerError {
			t.Fatalf("%s %q: status %d: %.300s", r.Method, path, w.Code, w.Body)
		}
		if w.Code >= 400 && r.Method != http.MethodHead && !isAPIError(w.Body.Bytes()) &&
			!(strings.HasSuffix(u.Path, "/messages") && isMessagesError(w.Body.Bytes())) {
			t.Fatalf("%s %q: status %d with a body that is not an OpenAI error: %q", r.Method, path, w.Code, w.Body)
		}
		for i, l := range h.loads() {
			if l.Requests < 0 || l.Tokens < 0 || l.InFlight != 0 {
				t.Fatalf("%s %q: deployment %d counts %+v after the request", r.Method, path, i, l)
			}
		}
	})
}

// isMessagesError reports whether b is an error in the Messages API's shape.
func isMessagesError(b []byte) bool {
	return json.Valid(b) && gjson.GetBytes(b, "type").Str == "error" && gjson.GetBytes(b, "error.message").Exists()
}

// isAPIError reports whether b is an OpenAI-shaped error body.
func isAPIError(b []byte) bool {
	return json.Valid(b) && bytes.HasPrefix(b, []byte(`{"error":{"message":`))
}
