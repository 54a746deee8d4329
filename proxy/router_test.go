package proxy

import (
	"context"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

const hi = `"messages":[{"role":"user","content":"hi"}]`

// TestSeedConfigAdmitsExactlyTheLimit runs the seed page's config (two Azure deployments with
// rpm 6 each), its api_base pointed at the fake upstream: of 20 requests sent at once, exactly 12
// are admitted and the other 8 get LiteLLM's 429 with a Retry-After, without reaching upstream.
func TestSeedConfigAdmitsExactlyTheLimit(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	seed, err := os.ReadFile("../testdata/config/good/seed_multiple_instances.yaml")
	if err != nil {
		t.Fatal(err)
	}
	yaml := regexp.MustCompile(`api_base: \S+`).ReplaceAllString(string(seed), "api_base: {{UP}}")
	h := startHerd(t, yaml, base, map[string]string{"AZURE_API_KEY": "k", "REDIS_HOST": "redis.internal", "REDIS_PASSWORD": "p"})

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		statuses = map[int]int{}
		refusals []string
	)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"gpt-3.5-turbo",`+hi+`}`)
			mu.Lock()
			defer mu.Unlock()
			statuses[resp.StatusCode]++
			if resp.StatusCode == 429 {
				refusals = append(refusals, resp.Header.Get("Retry-After")+" "+body)
			}
		}()
	}
	wg.Wait()
	if statuses[200] != 12 || statuses[429] != 8 {
		t.Fatalf("statuses = %v, want 12×200 and 8×429", statuses)
	}
	if got := up.Count("gpt-turbo-small-eu") + up.Count("gpt-turbo-small-ca"); got != 12 {
		t.Errorf("upstream received %d requests, want 12", got)
	}
	if up.Count("gpt-turbo-small-eu") != 6 {
		t.Errorf("each deployment should take its 6: eu got %d", up.Count("gpt-turbo-small-eu"))
	}
	msg := regexp.MustCompile(`^(\d+) .*"message":"No deployments available for selected model, Try again in (\d+) seconds. Passed model=gpt-3.5-turbo"`)
	for _, r := range refusals {
		m := msg.FindStringSubmatch(r)
		if m == nil {
			t.Fatalf("429 = %s", r)
		}
		if n, _ := strconv.Atoi(m[1]); n < 1 || n > 62 || m[1] != m[2] {
			t.Errorf("Retry-After %s, message says %s; want the same value in 1..62 (a use counts for up to 62 s)", m[1], m[2])
		}
	}
	// The rate-limit headers show the group's sum, and nothing left.
	resp, _ := post(t, h.URL+"/v1/chat/completions", `{"model":"gpt-3.5-turbo",`+hi+`}`)
	if resp.Header.Get("x-ratelimit-limit-requests") != "12" || resp.Header.Get("x-ratelimit-remaining-requests") != "0" {
		t.Errorf("rate-limit headers: limit %q remaining %q", resp.Header.Get("x-ratelimit-limit-requests"), resp.Header.Get("x-ratelimit-remaining-requests"))
	}
}

func TestRateLimitHeaders(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, `
model_list:
  - {model_name: m, litellm_params: {model: openai/a, api_base: "{{UP}}/v1", rpm: 10, tpm: 1000}}
  - {model_name: m, litellm_params: {model: openai/b, api_base: "{{UP}}/v1", rpm: 30, tpm: 3000}}
`, base, nil)
	resp, _ := post(t, h.URL+"/v1/chat/completions", `{"model":"m","max_tokens":10,`+hi+`}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	h.settled(t) // the answer is written before its usage is settled
	used := h.tokens(0) + h.tokens(1)
	for k, want := range map[string]string{
		"x-ratelimit-limit-requests":     "40",
		"x-ratelimit-remaining-requests": "39",
		"x-ratelimit-limit-tokens":       "4000",
		"x-ratelimit-remaining-tokens":   strconv.FormatInt(4000-used, 10),
		"x-litellm-attempted-retries":    "0",
		"x-litellm-attempted-fallbacks":  "0",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

func TestFailingDeploymentIsRoutedAround(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	up.SetFault("broken", fakeupstream.Fault{Status: 500})
	h := startHerd(t, `
model_list:
  - {model_name: m, litellm_params: {model: openai/broken, api_base: "{{UP}}/v1"}}
  - {model_name: m, litellm_params: {model: openai/healthy, api_base: "{{UP}}/v1"}}
router_settings:
  num_retries: 1
  allowed_fails: 2
  cooldown_time: 60
`, base, nil)
	retried := 0
	for i := 0; i < 30; i++ {
		resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`)
		if resp.StatusCode != 200 || resp.Header.Get("x-litellm-model-id") != h.srv.snap.Load().deps[1].cfg.ID {
			t.Fatalf("request %d: status %d from %s: %s", i, resp.StatusCode, resp.Header.Get("x-litellm-model-id"), body)
		}
		if resp.Header.Get("x-litellm-attempted-retries") == "1" {
			retried++
		}
	}
	// After allowed_fails (2) were exceeded the broken deployment cooled down: it saw 3 calls.
	if got := up.Count("broken"); got != 3 {
		t.Errorf("broken deployment received %d calls, want 3 (cooled down after allowed_fails)", got)
	}
	if retried != 3 {
		t.Errorf("%d responses say they were retried, want 3", retried)
	}
	_, metrics := get(t, h.URL+"/metrics")
	if !strings.Contains(metrics, `herd_upstream_failures_total{deployment="`+h.srv.snap.Load().deps[0].cfg.ID+`",model_group="m",status="500"} 3`) {
		t.Error("upstream failures not counted in /metrics")
	}
}

func TestFallbacks(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	up.SetFault("primary", fakeupstream.Fault{Status: 503})
	up.SetFault("small", fakeupstream.Fault{Status: 400, Body: `{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}`})
	h := startHerd(t, `
model_list:
  - {model_name: primary, litellm_params: {model: openai/primary, api_base: "{{UP}}/v1"}}
  - {model_name: backup, litellm_params: {model: openai/backup, api_base: "{{UP}}/v1"}}
  - {model_name: small, litellm_params: {model: openai/small, api_base: "{{UP}}/v1"}}
  - {model_name: large, litellm_params: {model: openai/large, api_base: "{{UP}}/v1"}}
router_settings:
  fallbacks: [{primary: [backup]}]
  context_window_fallbacks: [{small: [large]}]
  disable_cooldowns: true
`, base, nil)
	resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"primary",`+hi+`}`)
	if resp.StatusCode != 200 || resp.Header.Get("x-litellm-model-group") != "backup" || resp.Header.Get("x-litellm-attempted-fallbacks") != "1" {
		t.Errorf("fallback: status %d group %q fallbacks %q: %s", resp.StatusCode, resp.Header.Get("x-litellm-model-group"),
			resp.Header.Get("x-litellm-attempted-fallbacks"), body)
	}
	resp, body = post(t, h.URL+"/v1/chat/completions", `{"model":"small",`+hi+`}`)
	if resp.StatusCode != 200 || resp.Header.Get("x-litellm-model-group") != "large" {
		t.Errorf("context window fallback: status %d group %q: %s", resp.StatusCode, resp.Header.Get("x-litellm-model-group"), body)
	}
	// A client error that is not the deployment's fault is passed through, not retried.
	up.SetFault("backup", fakeupstream.Fault{Status: 422, Body: `{"error":{"message":"bad param","type":"invalid_request_error","param":null,"code":"422"}}`})
	before := up.Count("backup")
	resp, body = post(t, h.URL+"/v1/chat/completions", `{"model":"backup",`+hi+`}`)
	if resp.StatusCode != 422 || !strings.Contains(body, "bad param") || up.Count("backup") != before+1 {
		t.Errorf("422: status %d, calls %d: %s", resp.StatusCode, up.Count("backup")-before, body)
	}
}

func TestStreamTokensCountAgainstTPM(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{StreamChunks: 40})
	h := startHerd(t, `
model_list:
  - {model_name: m, litellm_params: {model: openai/s, api_base: "{{UP}}/v1", tpm: 100}}
router_settings:
  default_max_tokens: 10
`, base, nil)
	// The stream uses 40 completion tokens plus its prompt, though it reserved only ~14.
	resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"m","stream":true,`+hi+`}`)
	if resp.StatusCode != 200 || !strings.Contains(body, "[DONE]") {
		t.Fatalf("stream: %d %s", resp.StatusCode, body)
	}
	used := h.tokens(0)
	if used < 41 {
		t.Fatalf("tpm counted %d tokens for the stream, want its real usage (>= 41)", used)
	}
	// Requests keep being admitted only while their reservation fits in what is left.
	admitted := 0
	for i := 0; i < 10; i++ {
		resp, _ := post(t, h.URL+"/v1/chat/completions", `{"model":"m","max_tokens":30,`+hi+`}`)
		if resp.StatusCode == 200 {
			admitted++
		} else if resp.StatusCode != 429 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if total := h.tokens(0); total > 100 {
		t.Errorf("tpm 100 but %d tokens counted", total)
	}
	if admitted == 0 || admitted == 10 {
		t.Errorf("admitted %d of 10 after the stream; want some, not all", admitted)
	}
	if got := up.Count("s"); got != int64(1+admitted) {
		t.Errorf("upstream got %d calls, want %d", got, 1+admitted)
	}
}

func TestMaxParallelRequestsHeldUntilStreamEnds(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	up.SetFault("p", fakeupstream.Fault{Hang: true})
	h := startHerd(t, `
model_list:
  - {model_name: m, litellm_params: {model: openai/p, api_base: "{{UP}}/v1", max_parallel_requests: 1}}
`, base, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.URL+"/v1/chat/completions",
			strings.NewReader(`{"model":"m","stream":true,`+hi+`}`))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		first <- err
	}()
	poll(t, "first call to be in flight", func() bool { return up.InFlight() == 1 })
	resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`)
	wantError(t, resp, body, 429, "No deployments available")

	up.SetFault("p", fakeupstream.Fault{})
	cancel() // the first call ends: its slot is given back
	<-first
	poll(t, "the slot to free", func() bool { return h.load(0).InFlight == 0 })
	if resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`); resp.StatusCode != 200 {
		t.Fatalf("after the first call ended: status %d: %s", resp.StatusCode, body)
	}
}
