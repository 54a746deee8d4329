package fakeupstream_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

const chatBody = `{"model":"gpt-4o","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hi"}]}`

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type completion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Delta struct {
			Role    string  `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		Text         string  `json:"text"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

type apiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	} `json:"error"`
}

// do sends one request; hdr is name/value pairs.
func do(t *testing.T, method, url, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

// wantError checks an OpenAI-shaped error answer.
func wantError(t *testing.T, resp *http.Response, body []byte, status int) apiError {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status = %d, want %d (body %s)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	e := decode[apiError](t, body)
	if e.Error.Message == "" || e.Error.Type == "" || e.Error.Param != nil || e.Error.Code != strconv.Itoa(status) {
		t.Errorf("error body %s not OpenAI-shaped for %d", body, status)
	}
	return e
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestChatUsage(t *testing.T) {
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	tests := []struct {
		name, body string
		prompt     int
	}{
		{"two messages", chatBody, 5}, // (14+6)/4
		{"min one", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`, 1},
		{"unescaped bytes", `{"model":"gpt-4o","messages":[{"role":"user","content":"\u00e9\u00e9\u00e9\u00e9"}]}`, 2},
		{"content parts", `{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"},{"type":"image_url","image_url":{"url":"data:xyz"}}]},{"role":"assistant","content":null}]}`, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, "POST", base+"/v1/chat/completions", tt.body)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("status %d, type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
			c := decode[completion](t, body)
			if !strings.HasPrefix(c.ID, "chatcmpl-") || c.Object != "chat.completion" || c.Model != "gpt-4o" || c.Created == 0 {
				t.Errorf("envelope: %s", body)
			}
			if len(c.Choices) != 1 || c.Choices[0].Message.Role != "assistant" ||
				c.Choices[0].Message.Content != "Hello from gpt-4o." || *c.Choices[0].FinishReason != "stop" {
				t.Errorf("choices: %s", body)
			}
			want := usage{tt.prompt, 5, tt.prompt + 5}
			if c.Usage == nil || *c.Usage != want {
				t.Errorf("usage = %+v, want %+v", c.Usage, want)
			}
		})
	}
}

func TestCompletionsUsage(t *testing.T) {
	_, base := fakeupstream.Start(t, fakeupstream.Options{StreamChunks: 3})
	tests := []struct {
		name, prompt string
		want         int
	}{
		{"string", `"Once upon a time"`, 4},
		{"strings", `["abcd","efgh"]`, 2},
		{"token ids", `[1,2,3]`, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, path := range []string{"/v1/completions", "/completions"} {
				resp, body := do(t, "POST", base+path, `{"model":"davinci","prompt":`+tt.prompt+`}`)
				if resp.StatusCode != 200 {
					t.Fatalf("%s: status %d: %s", path, resp.StatusCode, body)
				}
				c := decode[completion](t, body)
				if !strings.HasPrefix(c.ID, "cmpl-") || c.Object != "text_completion" || c.Model != "davinci" ||
					len(c.Choices) != 1 || c.Choices[0].Text != "Hello from davinci." {
					t.Errorf("%s: body %s", path, body)
				}
				if want := (usage{tt.want, 3, tt.want + 3}); *c.Usage != want {
					t.Errorf("%s: usage = %+v, want %+v", path, *c.Usage, want)
				}
			}
		})
	}
}

type embeddings struct {
	Object string `json:"object"`
	Data   []struct {
		Object    string          `json:"object"`
		Index     int             `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	} `json:"data"`
	Model string `json:"model"`
	Usage *struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

func TestEmbeddings(t *testing.T) {
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	tests := []struct {
		name, input   string
		items, prompt int
	}{
		{"string", `"hello world!"`, 1, 3},
		{"strings", `["a","b","c"]`, 3, 1},
		{"token ids", `[1,2,3,4]`, 1, 4},
		{"token arrays", `[[1,2],[3,4]]`, 2, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, "POST", base+"/v1/embeddings", `{"model":"emb","input":`+tt.input+`}`)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			e := decode[embeddings](t, body)
			if e.Object != "list" || e.Model != "emb" || len(e.Data) != tt.items {
				t.Fatalf("body %s", body)
			}
			for i, d := range e.Data {
				var vec []float64
				if err := json.Unmarshal(d.Embedding, &vec); err != nil || len(vec) != 8 || d.Index != i || d.Object != "embedding" {
					t.Errorf("item %d: %s (%v)", i, d.Embedding, err)
				}
			}
			if e.Usage == nil || e.Usage.PromptTokens != tt.prompt || e.Usage.TotalTokens != tt.prompt {
				t.Errorf("usage = %+v, want %d", e.Usage, tt.prompt)
			}
		})
	}

	t.Run("deterministic per input", func(t *testing.T) {
		_, b1 := do(t, "POST", base+"/embeddings", `{"model":"emb","input":["x","y","x"]}`)
		_, b2 := do(t, "POST", base+"/embeddings", `{"model":"emb","input":"x"}`)
		e1, e2 := decode[embeddings](t, b1), decode[embeddings](t, b2)
		x, y, x2 := string(e1.Data[0].Embedding), string(e1.Data[1].Embedding), string(e2.Data[0].Embedding)
		if x != x2 || x == y {
			t.Errorf("x=%s y=%s x again=%s", x, y, x2)
		}
	})

	t.Run("base64", func(t *testing.T) {
		_, body := do(t, "POST", base+"/embeddings", `{"model":"emb","input":"x","encoding_format":"base64"}`)
		var s string
		if err := json.Unmarshal(decode[embeddings](t, body).Data[0].Embedding, &s); err != nil {
			t.Fatal(err)
		}
		if raw, err := base64.StdEncoding.DecodeString(s); err != nil || len(raw) != 8*4 {
			t.Errorf("base64 embedding %q: %d bytes, %v", s, len(raw), err)
		}
	})
}

func TestAzure(t *testing.T) {
	u, base := fakeupstream.Start(t, fakeupstream.Options{APIKey: "az-key"})
	url := base + "/openai/deployments/my-dep/chat/completions"
	msgs := `{"messages":[{"role":"user","content":"abcdefgh"}]}`

	resp, body := do(t, "POST", url+"?api-version=2024-06-01", msgs, "api-key", "az-key")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	c := decode[completion](t, body)
	if c.Model != "my-dep" || c.Choices[0].Message.Content != "Hello from my-dep." || *c.Usage != (usage{2, 5, 7}) {
		t.Errorf("body %s", body)
	}

	// The body's model is echoed, but the deployment is still the path segment.
	_, body = do(t, "POST", url+"?x=1&api-version=2024-06-01", `{"model":"gpt-4o","messages":[{"role":"user","content":"a"}]}`, "api-key", "az-key")
	if c := decode[completion](t, body); c.Model != "gpt-4o" || c.Choices[0].Message.Content != "Hello from my-dep." {
		t.Errorf("body %s", body)
	}

	resp, body = do(t, "POST", url, msgs, "api-key", "az-key")
	if e := wantError(t, resp, body, 400); !strings.Contains(e.Error.Message, "api-version") {
		t.Errorf("message %q", e.Error.Message)
	}
	resp, body = do(t, "POST", url+"?api-version=", msgs, "api-key", "az-key")
	wantError(t, resp, body, 400)
	resp, body = do(t, "POST", url+"?api-version=1", msgs, "api-key", "wrong")
	wantError(t, resp, body, 401)
	resp, body = do(t, "POST", url+"?api-version=1", msgs, "Authorization", "Bearer az-key")
	wantError(t, resp, body, 401)

	for _, op := range []string{"completions", "embeddings"} {
		b := `{"prompt":"abcd"}`
		if op == "embeddings" {
			b = `{"input":"abcd"}`
		}
		resp, body := do(t, "POST", base+"/openai/deployments/other/"+op+"?api-version=1", b, "api-key", "az-key")
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d: %s", op, resp.StatusCode, body)
		}
	}
	if got, want := u.Counts(), map[string]int64{"my-dep": 6, "other": 2}; !reflect.DeepEqual(got, want) {
		t.Errorf("Counts = %v, want %v", got, want)
	}
}

func TestAuth(t *testing.T) {
	_, base := fakeupstream.Start(t, fakeupstream.Options{APIKey: "sk-test"})
	tests := []struct {
		name   string
		hdr    []string
		status int
	}{
		{"missing", nil, 401},
		{"wrong", []string{"Authorization", "Bearer sk-nope"}, 401},
		{"azure header on openai path", []string{"api-key", "sk-test"}, 401},
		{"ok", []string{"Authorization", "Bearer sk-test"}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, "POST", base+"/v1/chat/completions", chatBody, tt.hdr...)
			if tt.status != 200 {
				wantError(t, resp, body, tt.status)
			} else if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			resp, body = do(t, "GET", base+"/v1/models", "", tt.hdr...)
			if resp.StatusCode != tt.status {
				t.Errorf("models: status %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
}

func TestRequestErrors(t *testing.T) {
	u, base := fakeupstream.Start(t, fakeupstream.Options{})
	tests := []struct {
		name, method, path, body string
		status                   int
	}{
		{"unknown path", "POST", "/v1/nope", chatBody, 404},
		{"unknown azure op", "POST", "/openai/deployments/d/images?api-version=1", chatBody, 404},
		{"wrong method", "GET", "/v1/chat/completions", "", 405},
		{"not json", "POST", "/v1/chat/completions", "model=gpt-4o", 400},
		{"not an object", "POST", "/v1/chat/completions", `["gpt-4o"]`, 400},
		{"no model", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, 400},
		{"no messages", "POST", "/v1/chat/completions", `{"model":"gpt-4o"}`, 400},
		{"no prompt", "POST", "/v1/completions", `{"model":"gpt-4o"}`, 400},
		{"empty input", "POST", "/v1/embeddings", `{"model":"emb","input":[]}`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, tt.method, base+tt.path, tt.body)
			wantError(t, resp, body, tt.status)
		})
	}
	// Requests that reach a handler are counted under their deployment, or "" without one.
	want := map[string]int64{"": 3, "gpt-4o": 2, "emb": 1}
	if got := u.Counts(); !reflect.DeepEqual(got, want) {
		t.Errorf("Counts = %v, want %v", got, want)
	}
}

func TestModels(t *testing.T) {
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	do(t, "POST", base+"/v1/chat/completions", strings.Replace(chatBody, "gpt-4o", "b-model", 1))
	do(t, "POST", base+"/v1/chat/completions", strings.Replace(chatBody, "gpt-4o", "a-model", 1))
	resp, body := do(t, "GET", base+"/v1/models", "")
	list := decode[struct {
		Object string `json:"object"`
		Data   []struct {
			ID     string `json:"id"`
			Object string `json:"object"`
		} `json:"data"`
	}](t, body)
	if resp.StatusCode != 200 || list.Object != "list" || len(list.Data) != 2 || list.Data[0].ID != "a-model" || list.Data[1].Object != "model" {
		t.Errorf("status %d: %s", resp.StatusCode, body)
	}
}

// readEvents splits an SSE body into its data payloads, checking the framing.
func readEvents(t *testing.T, body []byte) []string {
	t.Helper()
	s := string(body)
	if !strings.HasSuffix(s, "\n\n") {
		t.Fatalf("stream does not end with a blank line: %q", s)
	}
	var out []string
	for _, ev := range strings.Split(strings.TrimSuffix(s, "\n\n"), "\n\n") {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || strings.Contains(data, "\n") {
			t.Fatalf("bad event %q", ev)
		}
		out = append(out, data)
	}
	return out
}

func TestStreamChat(t *testing.T) {
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	_, plain := do(t, "POST", base+"/v1/chat/completions", chatBody)
	wantUsage := *decode[completion](t, plain).Usage

	for _, includeUsage := range []bool{false, true} {
		t.Run(map[bool]string{false: "no usage", true: "include_usage"}[includeUsage], func(t *testing.T) {
			body := strings.Replace(chatBody, `{"model"`, `{"stream":true,"model"`, 1)
			if includeUsage {
				body = strings.Replace(body, `{"stream"`, `{"stream_options":{"include_usage":true},"stream"`, 1)
			}
			resp, raw := do(t, "POST", base+"/chat/completions", body)
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			events := readEvents(t, raw)
			want := 1 + 5 + 1 + 1 // role, content, finish, [DONE]
			if includeUsage {
				want++
			}
			if len(events) != want || events[len(events)-1] != "[DONE]" {
				t.Fatalf("%d events, want %d: %q", len(events), want, events)
			}
			var content strings.Builder
			var id string
			for i, ev := range events[:len(events)-1] {
				c := decode[completion](t, []byte(ev))
				var fields map[string]json.RawMessage
				_ = json.Unmarshal([]byte(ev), &fields)
				if id == "" {
					id = c.ID
				}
				if c.ID != id || c.Object != "chat.completion.chunk" || c.Model != "gpt-4o" {
					t.Errorf("event %d envelope: %s", i, ev)
				}
				usageRaw, hasUsage := fields["usage"]
				switch last := i == len(events)-2; {
				case includeUsage && last:
					if len(c.Choices) != 0 || c.Usage == nil || *c.Usage != wantUsage {
						t.Errorf("usage chunk %s, want usage %+v", ev, wantUsage)
					}
					continue
				case includeUsage && string(usageRaw) != "null":
					t.Errorf("event %d: usage %s, want null", i, usageRaw)
				case !includeUsage && hasUsage:
					t.Errorf("event %d has usage: %s", i, ev)
				}
				if len(c.Choices) != 1 {
					t.Fatalf("event %d: %s", i, ev)
				}
				ch := c.Choices[0]
				switch {
				case i == 0:
					if ch.Delta.Role != "assistant" || ch.FinishReason != nil {
						t.Errorf("first event is not the role: %s", ev)
					}
				case i <= 5:
					if ch.Delta.Content == nil || ch.FinishReason != nil {
						t.Errorf("event %d is not content: %s", i, ev)
					} else {
						content.WriteString(*ch.Delta.Content)
					}
				default:
					if ch.FinishReason == nil || *ch.FinishReason != "stop" {
						t.Errorf("event %d is not the finish: %s", i, ev)
					}
				}
			}
			if content.String() != "Hello from gpt-4o." {
				t.Errorf("streamed content %q", content.String())
			}
		})
	}
}

func TestStreamCompletions(t *testing.T) {
	_, base := fakeupstream.Start(t, fakeupstream.Options{StreamChunks: 30})
	_, raw := do(t, "POST", base+"/v1/completions",
		`{"model":"m","prompt":"abcdefgh","stream":true,"stream_options":{"include_usage":true}}`)
	events := readEvents(t, raw)
	if len(events) != 30+3 {
		t.Fatalf("%d events: %q", len(events), events)
	}
	var text strings.Builder
	for _, ev := range events[:30] {
		c := decode[completion](t, []byte(ev))
		if c.Object != "text_completion" || c.FinishReason() != "" {
			t.Errorf("content event %s", ev)
		}
		text.WriteString(c.Choices[0].Text)
	}
	// 30 runes are more than one sentence holds, so it repeats.
	if got := text.String(); got != "Hello from m. Hello from m. Hello from m." {
		t.Errorf("text %q", got)
	}
	if c := decode[completion](t, []byte(events[30])); c.FinishReason() != "stop" {
		t.Errorf("finish event %s", events[30])
	}
	if c := decode[completion](t, []byte(events[31])); c.Usage == nil || *c.Usage != (usage{2, 30, 32}) {
		t.Errorf("usage event %s", events[31])
	}
	_, plain := do(t, "POST", base+"/v1/completions", `{"model":"m","prompt":"abcdefgh"}`)
	if c := decode[completion](t, plain); c.Choices[0].Text != text.String() || *c.Usage != (usage{2, 30, 32}) {
		t.Errorf("non-streamed %s", plain)
	}
}

func (c completion) FinishReason() string {
	if len(c.Choices) == 0 || c.Choices[0].FinishReason == nil {
		return ""
	}
	return *c.Choices[0].FinishReason
}

func TestNoUsage(t *testing.T) {
	u, base := fakeupstream.Start(t, fakeupstream.Options{})
	u.SetFault("gpt-4o", fakeupstream.Fault{NoUsage: true})

	_, body := do(t, "POST", base+"/v1/chat/completions", chatBody)
	if c := decode[completion](t, body); c.Usage != nil || strings.Contains(string(body), `"usage"`) || len(c.Choices) != 1 {
		t.Errorf("JSON answer: %s", body)
	}
	_, body = do(t, "POST", base+"/v1/chat/completions",
		strings.Replace(chatBody, `{"model"`, `{"stream":true,"stream_options":{"include_usage":true},"model"`, 1))
	events := readEvents(t, body)
	if len(events) != 8 || strings.Contains(string(body), `"usage"`) {
		t.Errorf("stream: %q", events)
	}
	_, body = do(t, "POST", base+"/v1/embeddings", `{"model":"gpt-4o","input":"x"}`)
	if strings.Contains(string(body), `"usage"`) {
		t.Errorf("embeddings: %s", body)
	}
}

func TestStreamCut(t *testing.T) {
	u, base := fakeupstream.Start(t, fakeupstream.Options{})
	u.SetFault("gpt-4o", fakeupstream.Fault{StreamCut: 2})
	body := strings.Replace(chatBody, `{"model"`, `{"stream":true,"model"`, 1)
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("read the whole stream without error: %q", got)
	}
	if n := strings.Count(string(got), "data: "); n != 3 || strings.Contains(string(got), `"stop"`) {
		t.Errorf("got %d events before the cut (want role + 2 content): %q", n, got)
	}
	if u.Cancelled("gpt-4o") != 0 {
		t.Errorf("a cut by the upstream counted as a client cancel")
	}
}

func TestHangEndsOnCancel(t *testing.T) {
	u, base := fakeupstream.Start(t, fakeupstream.Options{})
	u.SetFault("*", fakeupstream.Fault{Hang: true})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/chat/completions", strings.NewReader(chatBody))
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	waitFor(t, "the request to arrive", func() bool { return u.Count("gpt-4o") == 1 && u.InFlight() == 1 })
	select {
	case err := <-done:
		t.Fatalf("hanging request returned: %v", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("client error = %v, want context.Canceled", err)
	}
	waitFor(t, "the handler to notice", func() bool { return u.Cancelled("gpt-4o") == 1 && u.InFlight() == 0 })
}

func TestLatency(t *testing.T) {
	t.Run("honoured", func(t *testing.T) {
		_, base := fakeupstream.Start(t, fakeupstream.Options{Latency: 40 * time.Millisecond, Jitter: 5 * time.Millisecond})
		start := time.Now()
		do(t, "POST", base+"/v1/chat/completions", chatBody)
		if d := time.Since(start); d < 40*time.Millisecond {
			t.Errorf("answered after %v, want >= 40ms", d)
		}
	})
	t.Run("fault delay adds", func(t *testing.T) {
		u, base := fakeupstream.Start(t, fakeupstream.Options{Latency: 10 * time.Millisecond})
		u.SetFault("gpt-4o", fakeupstream.Fault{Delay: 30 * time.Millisecond})
		start := time.Now()
		do(t, "POST", base+"/v1/chat/completions", chatBody)
		if d := time.Since(start); d < 40*time.Millisecond {
			t.Errorf("answered after %v, want >= 40ms", d)
		}
	})
	t.Run("chunk delay", func(t *testing.T) {
		_, base := fakeupstream.Start(t, fakeupstream.Options{ChunkDelay: 10 * time.Millisecond, StreamChunks: 3})
		start := time.Now()
		do(t, "POST", base+"/v1/chat/completions", strings.Replace(chatBody, `{"model"`, `{"stream":true,"model"`, 1))
		if d := time.Since(start); d < 40*time.Millisecond { // 3 content chunks + finish
			t.Errorf("stream took %v, want >= 40ms", d)
		}
	})
	t.Run("cancel ends the wait", func(t *testing.T) {
		u, base := fakeupstream.Start(t, fakeupstream.Options{Latency: time.Hour})
		ctx, cancel := context.WithCancel(t.Context())
		req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/chat/completions", strings.NewReader(chatBody))
		done := make(chan error, 1)
		go func() {
			_, err := http.DefaultClient.Do(req)
			done <- err
		}()
		waitFor(t, "the request to arrive", func() bool { return u.InFlight() == 1 })
		cancel()
		<-done
		waitFor(t, "the handler to end", func() bool { return u.Cancelled("gpt-4o") == 1 && u.InFlight() == 0 })
	})
}

func TestFailRate(t *testing.T) {
	for _, tt := range []struct{ status, want int }{{0, 500}, {503, 503}} {
		_, base := fakeupstream.Start(t, fakeupstream.Options{FailRate: 1, FailStatus: tt.status})
		for range 5 {
			resp, body := do(t, "POST", base+"/v1/chat/completions", chatBody)
			if e := wantError(t, resp, body, tt.want); e.Error.Type != "server_error" {
				t.Errorf("type %q", e.Error.Type)
			}
		}
	}
}

func TestFaultsPerDeployment(t *testing.T) {
	u, base := fakeupstream.Start(t, fakeupstream.Options{})
	chat := func(model string) (*http.Response, []byte) {
		return do(t, "POST", base+"/v1/chat/completions", strings.Replace(chatBody, "gpt-4o", model, 1))
	}
	u.SetFault("a", fakeupstream.Fault{Status: 429, RetryAfter: "7"})
	u.SetFault("*", fakeupstream.Fault{Status: 503})
	u.SetFault("html", fakeupstream.Fault{Status: 502, Body: "<html><body>Bad gateway</body></html>"})

	resp, body := chat("a")
	if e := wantError(t, resp, body, 429); e.Error.Code != "429" || resp.Header.Get("Retry-After") != "7" {
		t.Errorf("a: %s, Retry-After %q", body, resp.Header.Get("Retry-After"))
	}
	resp, body = chat("b")
	wantError(t, resp, body, 503)
	if resp.Header.Get("Retry-After") != "" {
		t.Errorf("b: unexpected Retry-After")
	}
	resp, body = chat("html")
	if resp.StatusCode != 502 || string(body) != "<html><body>Bad gateway</body></html>" ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("html: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}

	u.SetFault("*", fakeupstream.Fault{})
	if resp, body = chat("b"); resp.StatusCode != 200 {
		t.Errorf("b after clearing *: %d %s", resp.StatusCode, body)
	}
	if resp, _ = chat("a"); resp.StatusCode != 429 {
		t.Errorf("a lost its own fault when * was cleared: %d", resp.StatusCode)
	}
	want := map[string]int64{"a": 2, "b": 2, "html": 1}
	if got := u.Counts(); !reflect.DeepEqual(got, want) {
		t.Errorf("Counts = %v, want %v", got, want)
	}
	if u.Count("a") != 2 || u.Count("nobody") != 0 {
		t.Errorf("Count: a=%d nobody=%d", u.Count("a"), u.Count("nobody"))
	}
}

func TestLastRequestAndReset(t *testing.T) {
	u, base := fakeupstream.Start(t, fakeupstream.Options{})
	u.SetFault("gpt-4o", fakeupstream.Fault{Status: 500})
	do(t, "POST", base+"/v1/chat/completions?trace=1", chatBody, "X-Test", "yes")

	r, ok := u.LastRequest("gpt-4o")
	if !ok || r.Method != "POST" || r.Path != "/v1/chat/completions" || r.RawQuery != "trace=1" ||
		r.Header.Get("X-Test") != "yes" || string(r.Body) != chatBody {
		t.Fatalf("LastRequest = %+v, %v", r, ok)
	}
	r.Body[0] = 'X'
	r.Header.Set("X-Test", "changed")
	if again, _ := u.LastRequest("gpt-4o"); string(again.Body) != chatBody || again.Header.Get("X-Test") != "yes" {
		t.Errorf("LastRequest is not a copy")
	}

	u.Reset()
	if _, ok := u.LastRequest("gpt-4o"); ok || len(u.Counts()) != 0 || u.Count("gpt-4o") != 0 {
		t.Errorf("after Reset: counts %v", u.Counts())
	}
	if resp, body := do(t, "POST", base+"/v1/chat/completions", chatBody); resp.StatusCode != 200 {
		t.Errorf("fault survived Reset: %d %s", resp.StatusCode, body)
	}
	if u.Count("gpt-4o") != 1 {
		t.Errorf("Count after Reset = %d", u.Count("gpt-4o"))
	}
}

func TestConcurrent(t *testing.T) {
	u, base := fakeupstream.Start(t, fakeupstream.Options{})
	models := []string{"m0", "m1", "m2"}
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() {
			m := models[i%len(models)]
			if i%10 == 0 {
				u.SetFault(m, fakeupstream.Fault{})
			}
			body := strings.Replace(chatBody, "gpt-4o", m, 1)
			if i%2 == 0 {
				body = strings.Replace(body, `{"model"`, `{"stream":true,"model"`, 1)
			}
			resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			u.LastRequest(m)
		})
	}
	wg.Wait()
	for _, m := range models {
		if n := u.Count(m); n != 20 {
			t.Errorf("Count(%s) = %d, want 20", m, n)
		}
	}
	if u.InFlight() != 0 {
		t.Errorf("InFlight = %d", u.InFlight())
	}
}

// discardWriter is the cheapest ResponseWriter, so the benchmark measures the handler only.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}
func (w *discardWriter) Flush()                      {}

func benchmarkHandler(b *testing.B, body string) {
	u := fakeupstream.New(fakeupstream.Options{})
	req, _ := http.NewRequest("POST", "http://fake/v1/chat/completions", nil)
	rd := bytes.NewReader([]byte(body))
	req.Body = io.NopCloser(rd)
	w := &discardWriter{h: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset([]byte(body))
		clear(w.h)
		u.ServeHTTP(w, req)
	}
}

func BenchmarkChat(b *testing.B) { benchmarkHandler(b, chatBody) }

func BenchmarkChatStream(b *testing.B) {
	benchmarkHandler(b, strings.Replace(chatBody, `{"model"`, `{"stream":true,"stream_options":{"include_usage":true},"model"`, 1))
}

// TestOnArrival: every counted request is reported once, with its user field and the
// total_tokens its answer carries — the chaos suite's ground truth.
func TestOnArrival(t *testing.T) {
	var (
		mu  sync.Mutex
		got []fakeupstream.Arrival
	)
	_, base := fakeupstream.Start(t, fakeupstream.Options{OnArrival: func(a fakeupstream.Arrival) {
		mu.Lock()
		got = append(got, a)
		mu.Unlock()
	}})
	before := time.Now()
	resp, body := do(t, "POST", base+"/v1/chat/completions", `{"model":"dep-1","user":"req-7","stream":true,"messages":[{"role":"user","content":"abcdefgh"}]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	do(t, "POST", base+"/v1/chat/completions", `{"model":"dep-2","messages":`) // bad JSON: counted, no tokens
	do(t, "GET", base+"/v1/models", "")                                        // not counted
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("arrivals = %+v, want 2", got)
	}
	a := got[0]
	if a.Deployment != "dep-1" || a.User != "req-7" || a.Tokens != 2+5 || a.Time.Before(before) || a.Time.After(time.Now()) {
		t.Errorf("first arrival = %+v, want dep-1, req-7, 7 tokens", a)
	}
	if b := got[1]; b.Deployment != "" || b.User != "" || b.Tokens != 0 {
		t.Errorf("bad JSON arrival = %+v, want no deployment, user or tokens", b)
	}
}

// A request whose client went away before its body was complete never arrived: herd's strict
// mode aborts a call that way when its rights lapse after the head left.
func TestCutBodyIsNoArrival(t *testing.T) {
	var arrivals atomic.Int64
	u, base := fakeupstream.Start(t, fakeupstream.Options{OnArrival: func(fakeupstream.Arrival) { arrivals.Add(1) }})
	addr := strings.TrimPrefix(base, "http://")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":\"dep-1\"")
	c.Close()
	// A whole request after it, on its own connection, is served and counted.
	resp, body := do(t, "POST", base+"/v1/chat/completions", `{"model":"dep-1","messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	waitFor(t, "the cut request's handler to end", func() bool { return u.InFlight() == 0 })
	if n := arrivals.Load(); n != 1 || u.Count("dep-1") != 1 {
		t.Fatalf("arrivals %d, count %d; want only the whole request", n, u.Count("dep-1"))
	}
}
