package provider

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/state"
)

func init() {
	goldenTranslators["anthropic"] = func(t *testing.T, drop bool) translator {
		target, _ := url.Parse(anthropicMessagesURL("https://api.anthropic.com"))
		h := http.Header{"Content-Type": {"application/json"}, "X-Api-Key": {"sk-ant-test"}, "Anthropic-Version": {AnthropicVersion}}
		return &anthropic{now: goldenNow, target: target, header: h, drop: drop, maxLen: 1 << 20}
	}
}

func TestAnthropicMessagesURL(t *testing.T) {
	for base, want := range map[string]string{
		"https://api.anthropic.com":                "https://api.anthropic.com/v1/messages",
		"https://api.anthropic.com/v1":             "https://api.anthropic.com/v1/messages",
		"https://gw.example/anthropic/v1/messages": "https://gw.example/anthropic/v1/messages",
	} {
		if got := anthropicMessagesURL(base); got != want {
			t.Errorf("anthropicMessagesURL(%s) = %s, want %s", base, got, want)
		}
	}
}

// The translated upstream against the fake's Anthropic dialect: the whole exchange as the
// proxy sees it, OpenAI in and out, over a real socket.
func TestAnthropicAgainstFakeUpstream(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	fake, base := fakeupstream.Start(t, fakeupstream.Options{APIKey: "sk-ant-fake"})
	d := &config.Deployment{ID: "a", Provider: "anthropic", UpstreamModel: "claude-x", APIBase: base,
		Timeout: 5 * time.Second, StreamTimeout: 5 * time.Second}
	d.LiteLLMParams.APIKey = config.Secret("sk-ant-fake")
	up, err := New(d, NewPool(nil))
	if err != nil {
		t.Fatal(err)
	}
	// "You are terse." + "Say hi": N = 20, so 5 prompt tokens; 5 completion tokens.
	body := `{"model":"claude-x","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hi"}]}`
	const want = "Hello from claude-x."

	t.Run("answer", func(t *testing.T) {
		call := &Call{Endpoint: ChatCompletions, Body: []byte(body)}
		resp, err := up.Do(context.Background(), call)
		if err != nil {
			t.Fatal(err)
		}
		if call.Translated <= 0 {
			t.Error("Do reported no translation time: herd's overhead header would leave it out")
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || gjson.GetBytes(b, "choices.0.message.content").Str != want ||
			gjson.GetBytes(b, "object").Str != "chat.completion" || gjson.GetBytes(b, "choices.0.finish_reason").Str != "stop" {
			t.Fatalf("answer %d %s", resp.StatusCode, b)
		}
		if u, ok := ParseUsage(b); !ok || u != (state.Usage{PromptTokens: 5, CompletionTokens: 5}) {
			t.Errorf("usage = %+v, %v; want 5 + 5", u, ok)
		}
		got, _ := fake.LastRequest("claude-x")
		if got.Path != "/v1/messages" || got.Header.Get("X-Api-Key") != "sk-ant-fake" || got.Header.Get("Anthropic-Version") != AnthropicVersion ||
			gjson.GetBytes(got.Body, "max_tokens").Int() != AnthropicDefaultMaxTokens || gjson.GetBytes(got.Body, "system.0.text").Str != "You are terse." {
			t.Errorf("upstream got %s %v %s", got.Path, got.Header, got.Body)
		}
	})
	t.Run("stream", func(t *testing.T) {
		sb := strings.Replace(body, `{"model"`, `{"stream":true,"stream_options":{"include_usage":true},"model"`, 1)
		resp, err := up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(sb), Stream: true})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("stream: %v, %s", err, resp.Header.Get("Content-Type"))
		}
		var text strings.Builder
		var usage state.Usage
		events := strings.Split(strings.TrimSpace(string(b)), "\n\n")
		for _, ev := range events {
			data := strings.TrimPrefix(ev, "data: ")
			text.WriteString(gjson.Get(data, "choices.0.delta.content").Str)
			if u, ok := ParseUsage([]byte(data)); ok {
				usage = u
			}
		}
		if text.String() != want || usage != (state.Usage{PromptTokens: 5, CompletionTokens: 5}) || events[len(events)-1] != "data: [DONE]" {
			t.Errorf("stream text %q, usage %+v, last %q\n%s", text.String(), usage, events[len(events)-1], b)
		}
	})
	t.Run("rate limited", func(t *testing.T) {
		fake.SetFault("claude-x", fakeupstream.Fault{Status: 429, RetryAfter: "7"})
		defer fake.SetFault("claude-x", fakeupstream.Fault{})
		resp, err := up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "7" || gjson.GetBytes(b, "error.type").Str != "rate_limit_error" ||
			gjson.GetBytes(b, "error.message").Str == "" {
			t.Errorf("got %d, Retry-After %q, %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
		}
	})
	t.Run("stream cut", func(t *testing.T) {
		fake.SetFault("claude-x", fakeupstream.Fault{StreamCut: 2})
		defer fake.SetFault("claude-x", fakeupstream.Fault{})
		resp, err := up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(strings.Replace(body, `{"model"`, `{"stream":true,"model"`, 1)), Stream: true})
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Error("a stream cut after 2 events read as complete")
		}
	})
	t.Run("refused before sending", func(t *testing.T) {
		before := fake.Count("claude-x")
		_, err := up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(strings.Replace(body, `{"model"`, `{"n":2,"model"`, 1))})
		var bad *BadRequest
		if !errors.As(err, &bad) || bad.Param != "n" {
			t.Fatalf("err = %v, want a BadRequest on n", err)
		}
		if fake.Count("claude-x") != before {
			t.Error("a refused request reached the upstream")
		}
	})
}
