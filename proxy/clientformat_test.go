package proxy

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// An OpenAI-format deployment behind /v1/messages, driven by Anthropic's own SDK, with the
// master key in x-api-key as Anthropic clients send it; rpm 2 so the third call is a 429.
const messagesConfig = `
model_list:
  - model_name: claude-sonnet
    litellm_params:
      model: openai/gpt-4o-2024
      api_base: {{UP}}/v1
      api_key: sk-upstream-secret
      rpm: 2
general_settings:
  master_key: sk-herd-master
`

func TestMessagesAPIWithAnthropicSDK(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, messagesConfig, base, nil)
	client := anthropic.NewClient(option.WithBaseURL(h.URL), option.WithHeader("X-Api-Key", "sk-herd-master"), option.WithMaxRetries(0))
	params := anthropic.MessageNewParams{
		Model:     "claude-sonnet",
		MaxTokens: 100,
		System:    []anthropic.TextBlockParam{{Text: "You are terse."}},
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say hi"))},
	}
	// "You are terse." + "Say hi": N = 20, so 5 prompt tokens; the fake answers 5.
	const want = "Hello from gpt-4o-2024."

	msg, err := client.Messages.New(context.Background(), params)
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Content) != 1 || msg.Content[0].Text != want || msg.StopReason != anthropic.StopReasonEndTurn ||
		msg.Usage.InputTokens != 5 || msg.Usage.OutputTokens != 5 {
		t.Errorf("message = %+v", msg)
	}
	got, _ := up.LastRequest("gpt-4o-2024")
	if gjson.GetBytes(got.Body, "messages.0.role").Str != "system" || gjson.GetBytes(got.Body, "max_tokens").Int() != 100 {
		t.Errorf("upstream got %s", got.Body)
	}

	stream := client.Messages.NewStreaming(context.Background(), params)
	var acc anthropic.Message
	for stream.Next() {
		if err := acc.Accumulate(stream.Current()); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(acc.Content) != 1 || acc.Content[0].Text != want || acc.StopReason != anthropic.StopReasonEndTurn || acc.Usage.OutputTokens != 5 {
		t.Errorf("streamed message = %+v", acc)
	}

	// rpm 2 is spent: the SDK sees a rate-limit error in Anthropic's shape.
	_, err = client.Messages.New(context.Background(), params)
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests || !strings.Contains(apiErr.RawJSON(), `"rate_limit_error"`) {
		t.Errorf("3rd call: %v", err)
	}

	// A Messages request with no chat equivalent is a 400 in Anthropic's shape.
	resp, body := post(t, h.URL+"/v1/messages", `{"model":"claude-sonnet","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"container":"x"}`,
		"x-api-key", "sk-herd-master")
	if resp.StatusCode != 400 || gjson.Get(body, "type").Str != "error" || gjson.Get(body, "error.type").Str != "invalid_request_error" {
		t.Errorf("unknown parameter: %d %s", resp.StatusCode, body)
	}
	// Without the key, refused.
	resp, _ = post(t, h.URL+"/v1/messages", `{}`, "x-api-key", "wrong")
	if resp.StatusCode != 401 {
		t.Errorf("wrong x-api-key: %d", resp.StatusCode)
	}
}

func TestResponsesAPIThroughChat(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	// hosted_vllm/ answers chat only: the Responses request is read as chat.
	cfg := strings.NewReplacer("rpm: 2", "rpm: 100", "openai/gpt-4o-2024", "hosted_vllm/gpt-4o-2024").Replace(messagesConfig)
	h := startHerd(t, cfg, base, nil)
	auth := []string{"Authorization", "Bearer sk-herd-master"}
	resp, body := post(t, h.URL+"/v1/responses", `{"model":"claude-sonnet","instructions":"You are terse.","input":"Say hi"}`, auth...)
	if resp.StatusCode != 200 || gjson.Get(body, "object").Str != "response" || gjson.Get(body, "status").Str != "completed" ||
		gjson.Get(body, "output.0.content.0.text").Str != "Hello from gpt-4o-2024." || gjson.Get(body, "usage.input_tokens").Int() != 5 ||
		gjson.Get(body, "usage.output_tokens").Int() != 5 {
		t.Errorf("response: %d %s", resp.StatusCode, body)
	}
	resp, body = post(t, h.URL+"/v1/responses", `{"model":"claude-sonnet","instructions":"You are terse.","input":"Say hi","stream":true}`, auth...)
	var text strings.Builder
	var completed string
	for _, ev := range strings.Split(body, "\n\n") {
		_, data, _ := strings.Cut(ev, "data: ")
		switch gjson.Get(data, "type").Str {
		case "response.output_text.delta":
			text.WriteString(gjson.Get(data, "delta").Str)
		case "response.completed":
			completed = data
		}
	}
	if resp.StatusCode != 200 || text.String() != "Hello from gpt-4o-2024." || gjson.Get(completed, "response.usage.total_tokens").Int() != 10 {
		t.Errorf("stream: %d text %q completed %s\n%s", resp.StatusCode, text.String(), completed, body)
	}
	resp, body = post(t, h.URL+"/v1/responses", `{"model":"claude-sonnet","input":"hi","previous_response_id":"resp_1"}`, auth...)
	if resp.StatusCode != 400 || gjson.Get(body, "error.param").Str != "previous_response_id" {
		t.Errorf("previous_response_id: %d %s", resp.StatusCode, body)
	}
}

// Deployments that speak the client's API get its request as it is, and herd counts the
// usage those APIs report: openai/ behind /v1/responses, anthropic/ behind /v1/messages.
func TestNativeAPIsPassThrough(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, `
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o-2024
      api_base: {{UP}}/v1
      api_key: sk-upstream
      tpm: 100000
  - model_name: claude
    litellm_params:
      model: anthropic/claude-x
      api_base: {{UP}}
      api_key: sk-ant-upstream
      tpm: 100000
`, base, nil)

	// "You are terse." + "Say hi": N = 20, so 5 prompt tokens, and 5 completion tokens.
	resp, body := post(t, h.URL+"/v1/responses", `{"model":"gpt","instructions":"You are terse.","input":"Say hi","store":false}`)
	if resp.StatusCode != 200 || gjson.Get(body, "output.0.content.0.text").Str != "Hello from gpt-4o-2024." {
		t.Fatalf("responses: %d %s", resp.StatusCode, body)
	}
	got, _ := up.LastRequest("gpt-4o-2024")
	if got.Path != "/v1/responses" || gjson.GetBytes(got.Body, "store").Raw != "false" || gjson.GetBytes(got.Body, "input").Str != "Say hi" {
		t.Errorf("upstream got %s %s", got.Path, got.Body)
	}
	resp, body = post(t, h.URL+"/v1/responses", `{"model":"gpt","instructions":"You are terse.","input":"Say hi","stream":true}`)
	if resp.StatusCode != 200 || !strings.Contains(body, "event: response.completed") {
		t.Errorf("responses stream: %d %s", resp.StatusCode, body)
	}
	h.settled(t)
	if got := h.tokens(0); got != 20 {
		t.Errorf("gpt counted %d tokens, want 20 (10 per call, read from the Responses API's usage)", got)
	}

	client := anthropic.NewClient(option.WithBaseURL(h.URL), option.WithHeader("X-Api-Key", "unused: no master key"),
		option.WithHeader("Anthropic-Beta", "interleaved-thinking-2025-05-14"), option.WithMaxRetries(0))
	params := anthropic.MessageNewParams{Model: "claude", MaxTokens: 100,
		System:   []anthropic.TextBlockParam{{Text: "You are terse."}},
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say hi"))}}
	msg, err := client.Messages.New(context.Background(), params)
	if err != nil || len(msg.Content) != 1 || msg.Content[0].Text != "Hello from claude-x." || msg.Usage.InputTokens != 5 {
		t.Fatalf("messages: %v %+v", err, msg)
	}
	got, _ = up.LastRequest("claude-x")
	if got.Path != "/v1/messages" || got.Header.Get("X-Api-Key") != "sk-ant-upstream" || gjson.GetBytes(got.Body, "max_tokens").Int() != 100 ||
		got.Header.Get("Anthropic-Beta") != "interleaved-thinking-2025-05-14" || got.Header.Get("Anthropic-Version") == "" ||
		gjson.GetBytes(got.Body, "system.0.text").Str != "You are terse." {
		t.Errorf("upstream got %s %s %v", got.Path, got.Body, got.Header)
	}
	stream := client.Messages.NewStreaming(context.Background(), params)
	var acc anthropic.Message
	for stream.Next() {
		if err := acc.Accumulate(stream.Current()); err != nil {
			t.Fatal(err)
		}
	}
	if stream.Err() != nil || len(acc.Content) != 1 || acc.Content[0].Text != "Hello from claude-x." || acc.Usage.OutputTokens != 5 {
		t.Errorf("messages stream: %v %+v", stream.Err(), acc)
	}
	h.settled(t)
	if got := h.tokens(1); got != 20 {
		t.Errorf("claude counted %d tokens, want 20 (10 per call, read from the Messages API's usage)", got)
	}
}
