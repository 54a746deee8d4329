package provider

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state"
)

func TestURLs(t *testing.T) {
	az := &config.Deployment{Provider: "azure", UpstreamModel: "gpt35", APIBase: "https://x.openai.azure.com", APIVersion: "2024-10-21"}
	if got, want := azureURL(az, ChatCompletions), "https://x.openai.azure.com/openai/deployments/gpt35/chat/completions?api-version=2024-10-21"; got != want {
		t.Errorf("azure = %s, want %s", got, want)
	}
	az.APIBase = "https://x.openai.azure.com/openai"
	if got, want := azureURL(az, Embeddings), "https://x.openai.azure.com/openai/deployments/gpt35/embeddings?api-version=2024-10-21"; got != want {
		t.Errorf("azure with /openai base = %s, want %s", got, want)
	}
	oa := &config.Deployment{Provider: "openai", UpstreamModel: "gpt-4o", APIBase: "http://vllm:8000/v1"}
	if got, want := openAIURL(oa, Completions), "http://vllm:8000/v1/completions"; got != want {
		t.Errorf("openai = %s, want %s", got, want)
	}
}

func TestStreamUsageByAPIVersion(t *testing.T) {
	pool := NewPool(nil)
	for v, want := range map[string]bool{"2024-10-21": true, "2024-09-01-preview": true, "2024-06-01": false, "2023-05-15": false} {
		up, err := New(&config.Deployment{ID: "a", Provider: "azure", UpstreamModel: "d", APIBase: "https://x", APIVersion: v, Timeout: time.Second, StreamTimeout: time.Second}, pool)
		if err != nil {
			t.Fatal(err)
		}
		if up.StreamUsage() != want {
			t.Errorf("api-version %s: StreamUsage = %v, want %v", v, up.StreamUsage(), want)
		}
	}
}

func TestParseUsage(t *testing.T) {
	tests := []struct {
		body string
		want state.Usage
		ok   bool
	}{
		{`{"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}`, state.Usage{PromptTokens: 10, CompletionTokens: 5}, true},
		{`{"object":"list","usage":{"prompt_tokens":8,"total_tokens":8}}`, state.Usage{PromptTokens: 8}, true},
		{`{"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":40}}`, state.Usage{PromptTokens: 10, CompletionTokens: 30}, true},
		{`{"usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":5}}`, state.Usage{PromptTokens: 1110, CompletionTokens: 5}, true},
		{`{"object":"response","usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":4},"output_tokens":5,"total_tokens":15}}`, state.Usage{PromptTokens: 10, CompletionTokens: 5}, true},
		{`{"usage":null}`, state.Usage{}, false},
		{`{"choices":[]}`, state.Usage{}, false},
		{`not json`, state.Usage{}, false},
	}
	for _, tt := range tests {
		got, ok := ParseUsage([]byte(tt.body))
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseUsage(%s) = %+v, %v; want %+v, %v", tt.body, got, ok, tt.want, tt.ok)
		}
	}
}

func TestEstimatePromptTokens(t *testing.T) {
	chat := `{"messages":[{"role":"system","content":"12345678"},{"role":"user","content":[{"type":"text","text":"abcd"}]}]}`
	if got := EstimatePromptTokens([]byte(chat)); got != 3+2*3 {
		t.Errorf("chat estimate = %d, want 9 (12 bytes / 4 + 3 per message)", got)
	}
	if got := EstimatePromptTokens([]byte(`{"input":["abcd","efgh"]}`)); got != 2+2*3 {
		t.Errorf("embeddings estimate = %d, want 8", got)
	}
	if got := EstimatePromptTokens([]byte(`{"prompt":"abcdefgh"}`)); got != 2+3 {
		t.Errorf("completion estimate = %d, want 5", got)
	}
}

func httpDeployment(base string, timeout, streamTimeout time.Duration) *config.Deployment {
	return &config.Deployment{ID: "d", Provider: "openai", UpstreamModel: "m", APIBase: base, Timeout: timeout, StreamTimeout: streamTimeout}
}

func TestTimeouts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers; skipped with -short")
	}
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Reading the body lets net/http watch the connection and cancel r's context when the
		// client leaves.
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/chat/completions" {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: {}\n\n")
			w.(http.Flusher).Flush()
		}
		select { // then go silent
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer func() { close(release); srv.Close() }()
	up, err := New(httpDeployment(srv.URL, 100*time.Millisecond, 100*time.Millisecond), NewPool(nil))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("non-stream deadline", func(t *testing.T) {
		_, err := up.Do(context.Background(), &Call{Endpoint: Completions, Body: []byte(`{}`)})
		if KindOf(err) != Timeout || !Sent(err) {
			t.Fatalf("err = %v (sent %v), want a Timeout after the request was sent", err, Sent(err))
		}
	})
	t.Run("stream idle after first event", func(t *testing.T) {
		resp, err := up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(`{}`), Stream: true})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		if KindOf(err) != Timeout {
			t.Fatalf("read err = %v, want a Timeout", err)
		}
	})
	t.Run("client gone is Canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := up.Do(ctx, &Call{Endpoint: Completions, Body: []byte(`{}`)})
		if KindOf(err) != Canceled || Sent(err) {
			t.Fatalf("err = %v (sent %v), want Canceled, never sent", err, Sent(err))
		}
	})
	t.Run("refused is Unreachable", func(t *testing.T) {
		dead, _ := New(httpDeployment("http://127.0.0.1:1", time.Second, time.Second), NewPool(nil))
		_, err := dead.Do(context.Background(), &Call{Endpoint: Completions, Body: []byte(`{}`)})
		var pe *Error
		if !errors.As(err, &pe) || pe.Kind != Unreachable || pe.Sent {
			t.Fatalf("err = %v (sent %v), want Unreachable, never sent", err, Sent(err))
		}
	})
	t.Run("timeout before a connection is never sent", func(t *testing.T) {
		// A TCP listener that never speaks TLS: the handshake waits until the deadline.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		mute, _ := New(httpDeployment("https://"+ln.Addr().String(), 100*time.Millisecond, time.Second), NewPool(nil))
		_, err = mute.Do(context.Background(), &Call{Endpoint: Completions, Body: []byte(`{}`)})
		if KindOf(err) != Timeout || Sent(err) {
			t.Fatalf("err = %v (sent %v), want a Timeout, never sent", err, Sent(err))
		}
	})
	t.Run("client gone after sending", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		arrived := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			close(arrived)
			<-r.Context().Done()
		}))
		defer srv.Close()
		go func() { <-arrived; cancel() }()
		up, _ := New(httpDeployment(srv.URL, time.Minute, time.Minute), NewPool(nil))
		_, err := up.Do(ctx, &Call{Endpoint: Completions, Body: []byte(`{}`)})
		if KindOf(err) != Canceled || !Sent(err) {
			t.Fatalf("err = %v (sent %v), want Canceled after the request was sent", err, Sent(err))
		}
	})
}

// Confirm runs before any byte of the request's body leaves (net/http flushes the head of a
// body it cannot see into first): a refusal there means the upstream never gets a whole
// request, and a confirmation is what lets it go.
func TestConfirmGatesTheRequest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c) // until the client closes the connection
		got <- string(b)
	}()
	up, _ := New(httpDeployment("http://"+ln.Addr().String(), time.Minute, time.Minute), NewPool(nil))
	refused := errors.New("rights lapsed")
	calls := 0
	_, err = up.Do(context.Background(), &Call{Endpoint: Completions, Body: []byte(`{"model":"m"}`), Confirm: func() error { calls++; return refused }})
	if !errors.Is(err, refused) || calls != 1 {
		t.Fatalf("err = %v after %d confirms; want the confirm's refusal after one", err, calls)
	}
	if b := <-got; strings.Contains(b, `"model"`) {
		t.Fatalf("the upstream received %q of a refused call; want at most the head, never the body", b)
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, `{}`)
	}))
	defer srv.Close()
	up, _ = New(httpDeployment(srv.URL, time.Minute, time.Minute), NewPool(nil))
	calls = 0
	resp, err := up.Do(context.Background(), &Call{Endpoint: Completions, Body: []byte(`{}`), Confirm: func() error { calls++; return nil }})
	if err != nil || calls != 1 {
		t.Fatalf("err = %v after %d confirms; want a response after one", err, calls)
	}
	resp.Body.Close()
}

// A redirect from the upstream is not followed: it is the upstream's answer, passed on as it
// is, and nothing is sent where it points.
func TestRedirectsAreNotFollowed(t *testing.T) {
	var followed atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		followed.Add(1)
		_, _ = io.WriteString(w, `{}`)
	}))
	defer elsewhere.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	up, _ := New(httpDeployment(srv.URL, time.Minute, time.Minute), NewPool(nil))
	resp, err := up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(resp.Header.Get("Location"), elsewhere.URL) {
		t.Errorf("got %d to %q, want the upstream's 307 as it is", resp.StatusCode, resp.Header.Get("Location"))
	}
	if n := followed.Load(); n != 0 {
		t.Errorf("the redirect was followed: %d requests where it pointed", n)
	}
}

func TestStreamEventUsage(t *testing.T) {
	var u state.Usage
	if StreamEventUsage(Messages, []byte(`{"type":"message_start","message":{"usage":{"input_tokens":25,"cache_read_input_tokens":100,"output_tokens":1}}}`), &u) ||
		u != (state.Usage{PromptTokens: 125, CompletionTokens: 1}) {
		t.Errorf("message_start: %+v (or final too early)", u)
	}
	if StreamEventUsage(Messages, []byte(`{"type":"content_block_delta","delta":{"text":"usage"}}`), &u) {
		t.Error("a delta is not the end")
	}
	if !StreamEventUsage(Messages, []byte(`{"type":"message_delta","usage":{"output_tokens":15}}`), &u) ||
		u != (state.Usage{PromptTokens: 125, CompletionTokens: 15}) {
		t.Errorf("message_delta: %+v", u)
	}
	u = state.Usage{}
	if StreamEventUsage(Responses, []byte(`{"type":"response.output_text.delta","delta":"x"}`), &u) ||
		!StreamEventUsage(Responses, []byte(`{"type":"response.completed","response":{"usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10}}}`), &u) ||
		u != (state.Usage{PromptTokens: 7, CompletionTokens: 3}) {
		t.Errorf("responses: %+v", u)
	}
}

func TestServesNativeAPIs(t *testing.T) {
	pool := NewPool(nil)
	dep := func(provider, model, version string) *config.Deployment {
		d := &config.Deployment{ID: "x", Provider: provider, UpstreamModel: "m", APIBase: "https://x", APIVersion: version, Timeout: time.Second, StreamTimeout: time.Second}
		d.LiteLLMParams.Model = model
		return d
	}
	tests := []struct {
		d                   *config.Deployment
		responses, messages bool
	}{
		{dep("openai", "openai/gpt-4o", ""), true, false},
		{dep("openai", "gpt-4o", ""), true, false},
		{dep("openai", "groq/llama", ""), false, false},
		{dep("azure", "azure/d", "2024-10-21"), false, false},
		{dep("azure", "azure/d", "2025-03-01-preview"), true, false},
		{dep("anthropic", "anthropic/claude", ""), false, true},
		{dep("mock", "mock/x", ""), false, false},
	}
	for _, tt := range tests {
		up, err := New(tt.d, pool)
		if err != nil {
			t.Fatal(err)
		}
		if Serves(up, Responses) != tt.responses || Serves(up, Messages) != tt.messages || !Serves(up, ChatCompletions) {
			t.Errorf("%s (%s): Responses %v, Messages %v; want %v, %v", tt.d.LiteLLMParams.Model, tt.d.APIVersion,
				Serves(up, Responses), Serves(up, Messages), tt.responses, tt.messages)
		}
	}
	az := dep("azure", "azure/d", "2025-03-01-preview")
	az.UpstreamModel = "d"
	if got, want := azureURL(az, Responses), "https://x/openai/responses?api-version=2025-03-01-preview"; got != want {
		t.Errorf("azure responses URL = %s, want %s", got, want)
	}
}

// The idle watch cuts a stream only after stream_timeout of silence: reads that keep coming
// more often than that keep it alive however long the stream lasts, without re-arming a timer
// on each.
func TestIdleWatchCutsOnlySilence(t *testing.T) {
	if testing.Short() {
		t.Skip("real timers: skipped under -short")
	}
	const timeout = 300 * time.Millisecond
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var w idleWatch
	w.watch(timeout, cancel)
	defer w.stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(4 * timeout); time.Now().Before(end); {
		<-tick.C
		w.heard()
		if ctx.Err() != nil {
			t.Fatalf("cut while the upstream was heard every 10ms: %v", context.Cause(ctx))
		}
	}
	silent := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(20 * timeout):
		t.Fatal("not cut after 20 timeouts of silence")
	}
	if got := time.Since(silent); got < timeout-10*time.Millisecond {
		t.Errorf("cut %v after the upstream fell silent, before the %v timeout", got, timeout)
	}
	if !errors.Is(context.Cause(ctx), errStreamIdle) {
		t.Errorf("cause %v, want errStreamIdle", context.Cause(ctx))
	}
}
