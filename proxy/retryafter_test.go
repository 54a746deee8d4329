package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicopt "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/routing"
)

func TestSetRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		wait     time.Duration
		secs, ms string
	}{
		{-1, "1", "1000"}, // unknown
		{0, "1", "1000"},
		{300 * time.Millisecond, "1", "300"},
		{1500*time.Millisecond + time.Microsecond, "2", "1501"},
		{59 * time.Second, "59", "59000"},
		{59*time.Second + time.Nanosecond, "59", "59000"},
		{61 * time.Second, "59", "59000"}, // a window just filled
		{5 * time.Minute, "59", "59000"},  // a cooldown
	} {
		h := http.Header{}
		n := setRetryAfter(h, tc.wait)
		if h.Get("Retry-After") != tc.secs || h.Get("Retry-After-Ms") != tc.ms || strconv.FormatInt(n, 10) != tc.secs {
			t.Errorf("setRetryAfter(%v): Retry-After %q retry-after-ms %q (returned %d), want %s and %s",
				tc.wait, h.Get("Retry-After"), h.Get("Retry-After-Ms"), n, tc.secs, tc.ms)
		}
	}
}

// TestRetryAfterWithinWhatSDKsObey fills a window: the 429 says when to come back in a form
// the SDKs obey (under a minute; before the fix it said 60 or 61 s, which they ignore) and in
// milliseconds, the two agreeing, and the message says the same seconds.
func TestRetryAfterWithinWhatSDKsObey(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, `model_list: [{model_name: m, litellm_params: {model: openai/a, api_base: "{{UP}}/v1", rpm: 1}}]`, base, nil)
	if resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`); resp.StatusCode != 200 {
		t.Fatalf("first request: %d %s", resp.StatusCode, body)
	}
	resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`)
	wantError(t, resp, body, 429, "No deployments available")
	secs, err1 := strconv.Atoi(resp.Header.Get("Retry-After"))
	ms, err2 := strconv.Atoi(resp.Header.Get("Retry-After-Ms"))
	if err1 != nil || err2 != nil || secs < 1 || secs > 59 || ms < 1 || ms > 59000 || (ms+999)/1000 != secs {
		t.Errorf("Retry-After %q, retry-after-ms %q: want 1..59 s and the same wait in ms", resp.Header.Get("Retry-After"), resp.Header.Get("Retry-After-Ms"))
	}
	if !strings.Contains(body, "Try again in "+strconv.Itoa(secs)+" seconds") {
		t.Errorf("the message should say %d seconds: %s", secs, body)
	}
}

// TestSDKWaitsAsHerdSays: the OpenAI Go SDK, retries on, meets herd's 429 for a group cooling
// down for 1.2 s and retries when retry-after-ms says — not after Retry-After's rounded-up
// 2 s, nor its own half-second backoff — and then succeeds.
func TestSDKWaitsAsHerdSays(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, `model_list: [{model_name: m, litellm_params: {model: openai/a, api_base: "{{UP}}/v1"}}]`, base, nil)
	var (
		mu       sync.Mutex
		arrivals []time.Time
	)
	at := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		h.srv.ServeHTTP(w, r)
	}))
	t.Cleanup(at.Close)

	const cool = 1200 * time.Millisecond
	h.srv.snap.Load().deps[0].cooldown.Fail(time.Now(), routing.CooldownPolicy{Time: cool}, 429, 0)
	c := sdk(at.URL, option.WithMaxRetries(2))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "m", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	})
	if err != nil {
		t.Fatalf("the SDK gave up: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(arrivals) != 2 || up.Count("a") != 1 {
		t.Fatalf("herd saw %d requests, the upstream %d; want 2 and 1", len(arrivals), up.Count("a"))
	}
	if gap := arrivals[1].Sub(arrivals[0]); gap < cool-200*time.Millisecond || gap >= 1900*time.Millisecond {
		t.Errorf("the SDK retried after %v, want about %v (retry-after-ms)", gap, cool)
	}
}

// TestAnthropicSDKWaitsAsHerdSays: the same for Anthropic's SDK on /v1/messages, whose 429 is
// in the Messages shape and whose retry reads retry-after-ms too.
func TestAnthropicSDKWaitsAsHerdSays(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, `model_list: [{model_name: m, litellm_params: {model: anthropic/a, api_base: "{{UP}}", api_key: k}}]`, base, nil)
	var (
		mu       sync.Mutex
		arrivals []time.Time
	)
	at := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		h.srv.ServeHTTP(w, r)
	}))
	t.Cleanup(at.Close)

	const cool = 1200 * time.Millisecond
	h.srv.snap.Load().deps[0].cooldown.Fail(time.Now(), routing.CooldownPolicy{Time: cool}, 429, 0)
	c := anthropic.NewClient(anthropicopt.WithBaseURL(at.URL), anthropicopt.WithHeader("X-Api-Key", "unused"), anthropicopt.WithMaxRetries(2))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg, err := c.Messages.New(ctx, anthropic.MessageNewParams{Model: "m", MaxTokens: 10,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))}})
	if err != nil || len(msg.Content) != 1 || msg.Content[0].Text != "Hello from a." {
		t.Fatalf("the SDK gave up: %v %+v", err, msg)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(arrivals) != 2 || up.Count("a") != 1 {
		t.Fatalf("herd saw %d requests, the upstream %d; want 2 and 1", len(arrivals), up.Count("a"))
	}
	if gap := arrivals[1].Sub(arrivals[0]); gap < cool-200*time.Millisecond || gap >= 1900*time.Millisecond {
		t.Errorf("the SDK retried after %v, want about %v (retry-after-ms)", gap, cool)
	}
}
