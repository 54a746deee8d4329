package provider

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/state"
)

// The translated upstream against the fake's Bedrock dialect, which checks the SigV4
// signature: the whole exchange as the proxy sees it, OpenAI in and out, over a real socket.
func TestBedrockAgainstFakeUpstream(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	fake, base := fakeupstream.Start(t, fakeupstream.Options{})
	const model = "anthropic.claude-x-v1:0"
	d := &config.Deployment{ID: "b", Provider: "bedrock", UpstreamModel: model, APIBase: base, Region: "us-east-1",
		Timeout: 5 * time.Second, StreamTimeout: 5 * time.Second}
	d.LiteLLMParams.AWSAccessKeyID = config.Secret(fakeupstream.BedrockAccessKeyID)
	d.LiteLLMParams.AWSSecretAccessKey = config.Secret(fakeupstream.BedrockSecretAccessKey)
	up, err := New(d, NewPool(nil))
	if err != nil {
		t.Fatal(err)
	}
	// "You are terse." + "Say hi": N = 20, so 5 prompt tokens; 5 completion tokens.
	body := `{"model":"` + model + `","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hi"}]}`
	const want = "Hello from " + model + "."

	t.Run("answer", func(t *testing.T) {
		resp, err := up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || gjson.GetBytes(b, "choices.0.message.content").Str != want ||
			gjson.GetBytes(b, "model").Str != model || gjson.GetBytes(b, "choices.0.finish_reason").Str != "stop" {
			t.Fatalf("answer %d %s", resp.StatusCode, b)
		}
		if u, ok := ParseUsage(b); !ok || u != (state.Usage{PromptTokens: 5, CompletionTokens: 5}) {
			t.Errorf("usage = %+v, %v; want 5 + 5", u, ok)
		}
		got, _ := fake.LastRequest(model)
		if got.Path != "/model/"+model+"/converse" || gjson.GetBytes(got.Body, "system.0.text").Str != "You are terse." {
			t.Errorf("upstream got %s %s", got.Path, got.Body)
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
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("stream: %v, %d %s %s", err, resp.StatusCode, resp.Header.Get("Content-Type"), b)
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
	t.Run("throttled", func(t *testing.T) {
		fake.SetFault(model, fakeupstream.Fault{Status: 429})
		defer fake.SetFault(model, fakeupstream.Fault{})
		resp, err := up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 429 || gjson.GetBytes(b, "error.type").Str != "rate_limit_error" || gjson.GetBytes(b, "error.message").Str == "" {
			t.Errorf("got %d %s", resp.StatusCode, b)
		}
	})
	t.Run("stream cut", func(t *testing.T) {
		fake.SetFault(model, fakeupstream.Fault{StreamCut: 2})
		defer fake.SetFault(model, fakeupstream.Fault{})
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
	t.Run("wrong secret", func(t *testing.T) {
		d2 := *d
		d2.LiteLLMParams.AWSSecretAccessKey = config.Secret("not-the-secret")
		up2, err := New(&d2, NewPool(nil))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := up2.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || !strings.Contains(gjson.GetBytes(b, "error.message").Str, "signature") {
			t.Errorf("got %d %s", resp.StatusCode, b)
		}
	})
}

// Embeddings through InvokeModel, Titan's body and Cohere's, against the fake.
func TestBedrockEmbeddingsAgainstFakeUpstream(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	_, base := fakeupstream.Start(t, fakeupstream.Options{APIKey: "bedrock-api-key"})
	for _, tt := range []struct {
		model, body string
		vectors     int
		usage       state.Usage
	}{
		// Titan counts "abcdefgh": N = 8, 2 tokens; Cohere counts nothing, herd estimates.
		{"amazon.titan-embed-text-v2:0", `{"model":"amazon.titan-embed-text-v2:0","input":"abcdefgh"}`, 1, state.Usage{PromptTokens: 2}},
		{"cohere.embed-english-v3", `{"model":"cohere.embed-english-v3","input":["abcdefgh","abcd"],"encoding_format":"base64"}`, 2, state.Usage{PromptTokens: 3}},
	} {
		d := &config.Deployment{ID: tt.model, Provider: "bedrock", UpstreamModel: tt.model, APIBase: base, Region: "us-east-1",
			Timeout: 5 * time.Second, StreamTimeout: 5 * time.Second}
		d.LiteLLMParams.APIKey = config.Secret("bedrock-api-key") // a Bedrock API key: bearer, no signature
		up, err := New(d, NewPool(nil))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := up.Do(context.Background(), &Call{Endpoint: Embeddings, Body: []byte(tt.body)})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		data := gjson.GetBytes(b, "data").Array()
		if resp.StatusCode != 200 || len(data) != tt.vectors || gjson.GetBytes(b, "model").Str != tt.model {
			t.Fatalf("%s: %d %s", tt.model, resp.StatusCode, b)
		}
		if base64 := strings.Contains(tt.body, "base64"); (data[0].Get("embedding").Type == gjson.String) != base64 {
			t.Errorf("%s: embedding %s, base64 asked: %v", tt.model, data[0].Get("embedding").Raw, base64)
		}
		if u, ok := ParseUsage(b); !ok || u != tt.usage {
			t.Errorf("%s: usage %+v, %v; want %+v", tt.model, u, ok, tt.usage)
		}
	}
}

// A Messages API request to an Anthropic model through InvokeModel against the fake, signed:
// Anthropic's JSON back as it is, and the stream as Anthropic's SSE, with the exact usage.
func TestBedrockMessagesAgainstFakeUpstream(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	fake, base := fakeupstream.Start(t, fakeupstream.Options{})
	const model = "us.anthropic.claude-x-v1:0"
	d := &config.Deployment{ID: "b", Provider: "bedrock", UpstreamModel: model, APIBase: base, Region: "us-east-1",
		Timeout: 5 * time.Second, StreamTimeout: 5 * time.Second}
	d.LiteLLMParams.AWSAccessKeyID = config.Secret(fakeupstream.BedrockAccessKeyID)
	d.LiteLLMParams.AWSSecretAccessKey = config.Secret(fakeupstream.BedrockSecretAccessKey)
	up, err := New(d, NewPool(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !Serves(up, Messages) {
		t.Fatal("an Anthropic model on Bedrock does not take the Messages API")
	}
	// "You are terse." + "Say hi": N = 20, so 5 input tokens; 5 output tokens.
	body := `{"model":"` + model + `","max_tokens":64,"system":"You are terse.","messages":[{"role":"user","content":"Say hi"}]}`
	const want = "Hello from " + model + "."
	five := state.Usage{PromptTokens: 5, CompletionTokens: 5}

	t.Run("answer", func(t *testing.T) {
		resp, err := up.Do(context.Background(), &Call{Endpoint: Messages, Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || gjson.GetBytes(b, "type").Str != "message" || gjson.GetBytes(b, "content.0.text").Str != want {
			t.Fatalf("answer %d %s", resp.StatusCode, b)
		}
		if u, ok := ParseUsage(b); !ok || u != five {
			t.Errorf("usage = %+v, %v; want 5 + 5", u, ok)
		}
		got, _ := fake.LastRequest(model)
		if got.Path != "/model/"+model+"/invoke" || gjson.GetBytes(got.Body, "anthropic_version").Str != "bedrock-2023-05-31" {
			t.Errorf("upstream got %s %s", got.Path, got.Body)
		}
	})
	t.Run("stream", func(t *testing.T) {
		sb := strings.Replace(body, `{"model"`, `{"stream":true,"model"`, 1)
		resp, err := up.Do(context.Background(), &Call{Endpoint: Messages, Body: []byte(sb), Stream: true})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("stream: %v, %d %s %s", err, resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
		var text strings.Builder
		var usage state.Usage
		var types []string
		for _, ev := range strings.Split(strings.TrimSuffix(string(b), "\n\n"), "\n\n") {
			typ, data, ok := strings.Cut(strings.TrimPrefix(ev, "event: "), "\ndata: ")
			if !ok || gjson.Get(data, "type").Str != typ {
				t.Fatalf("not an Anthropic SSE event: %q", ev)
			}
			types = append(types, typ)
			text.WriteString(gjson.Get(data, "delta.text").Str)
			StreamEventUsage(Messages, []byte(data), &usage)
		}
		if text.String() != want || usage != five || types[0] != "message_start" || types[len(types)-1] != "message_stop" {
			t.Errorf("stream text %q, usage %+v, events %v\n%s", text.String(), usage, types, b)
		}
		got, _ := fake.LastRequest(model)
		if got.Path != "/model/"+model+"/invoke-with-response-stream" || gjson.GetBytes(got.Body, "stream").Exists() {
			t.Errorf("upstream got %s %s", got.Path, got.Body)
		}
	})
	t.Run("stream cut", func(t *testing.T) {
		fake.SetFault(model, fakeupstream.Fault{StreamCut: 2})
		defer fake.SetFault(model, fakeupstream.Fault{})
		resp, err := up.Do(context.Background(), &Call{Endpoint: Messages, Body: []byte(strings.Replace(body, `{"model"`, `{"stream":true,"model"`, 1)), Stream: true})
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Error("a stream cut after 2 events read as complete")
		}
	})
}
