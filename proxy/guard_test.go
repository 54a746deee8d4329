package proxy

import (
	"bufio"
	"encoding/pem"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// clientFrom is an HTTP client whose connections leave from source (a loopback address such
// as 127.0.0.2), so one test can be two different clients.
func clientFrom(t *testing.T, source string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// send makes one request with c and returns the response and its body.
func send(t *testing.T, c *http.Client, method, url, body string, hdr ...string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	return doWith(t, c, method, url, rd, hdr...)
}

// wantAPIError checks an OpenAI-shaped error with status and type.
func wantAPIError(t *testing.T, resp *http.Response, body string, status int, typ string) {
	t.Helper()
	if resp.StatusCode != status || gjson.Get(body, "error.type").String() != typ ||
		gjson.Get(body, "error.code").String() != strconv.Itoa(status) || !gjson.Get(body, "error.message").Exists() ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("want %d %s as OpenAI-shaped JSON, got %d %q: %s", status, typ, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}

// TestAllowedIPs runs herd on 127.0.0.1 and calls it from two loopback addresses: only the
// one allowed_ips names gets through, on every route, whatever X-Forwarded-For claims.
func TestAllowedIPs(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	models := "model_list: [{model_name: m, litellm_params: {model: openai/m, api_base: \"{{UP}}/v1\"}}]\n"
	from1, from2 := clientFrom(t, "127.0.0.1"), clientFrom(t, "127.0.0.2")

	// Nobody on loopback is in 10.0.0.0/8.
	h := startHerd(t, models+"general_settings: {allowed_ips: [\"10.0.0.0/8\"]}\n", base, nil)
	for _, r := range []struct{ method, path, body string }{
		{http.MethodPost, "/v1/chat/completions", `{"model":"m",` + hi + `}`},
		{http.MethodGet, "/v1/models", ""},
		{http.MethodGet, "/health/liveliness", ""},
		{http.MethodGet, "/metrics", ""},
		{http.MethodGet, "/no/such/route", ""},
	} {
		resp, body := send(t, from1, r.method, h.URL+r.path, r.body)
		wantAPIError(t, resp, body, http.StatusForbidden, "permission_error")
		if msg := gjson.Get(body, "error.message").String(); msg != "Access forbidden: IP address 127.0.0.1 not allowed (general_settings.allowed_ips)." {
			t.Errorf("%s: message %q", r.path, msg)
		}
	}

	// Only 127.0.0.1 (as an address, and as a CIDR that leaves 127.0.0.2 out).
	for _, allowed := range []string{`["127.0.0.1"]`, `["10.0.0.0/8", "127.0.0.0/31"]`} {
		h = startHerd(t, models+"general_settings: {allowed_ips: "+allowed+"}\n", base, nil)
		if resp, body := send(t, from1, http.MethodPost, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`); resp.StatusCode != 200 {
			t.Errorf("allowed_ips %s: 127.0.0.1 got %d: %s", allowed, resp.StatusCode, body)
		}
		if resp, _ := send(t, from1, http.MethodGet, h.URL+"/health/liveliness", ""); resp.StatusCode != 200 {
			t.Errorf("allowed_ips %s: liveliness from 127.0.0.1 got %d", allowed, resp.StatusCode)
		}
		resp, body := send(t, from2, http.MethodPost, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`,
			"X-Forwarded-For", "127.0.0.1", "X-Real-IP", "127.0.0.1")
		wantAPIError(t, resp, body, http.StatusForbidden, "permission_error")
		if !strings.Contains(body, "127.0.0.2") {
			t.Errorf("the 403 should name the refused address: %s", body)
		}
	}
	// Refusals are counted.
	_, metrics := send(t, from1, http.MethodGet, h.URL+"/metrics", "")
	if !strings.Contains(metrics, `herd_requests_total{deployment="",model_group="",status="403"} 1`) {
		t.Error("the refusal is not counted in herd_requests_total")
	}
}

// TestUpstreamTLS calls an https upstream with a certificate from its own CA: verification
// fails by default, succeeds with the CA bundle, and is skipped with ssl_verify: false.
func TestUpstreamTLS(t *testing.T) {
	needsServers(t)
	up := httptest.NewTLSServer(fakeupstream.New(fakeupstream.Options{}))
	t.Cleanup(up.Close)
	caPath := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	models := "model_list: [{model_name: m, litellm_params: {model: openai/m, api_base: \"{{UP}}/v1\"}}]\n"
	for _, tc := range []struct {
		name, settings string
		status         int
	}{
		{"default", "", http.StatusBadGateway},
		{"true", "litellm_settings: {ssl_verify: true}\n", http.StatusBadGateway},
		{"ca bundle", "litellm_settings: {ssl_verify: " + caPath + "}\n", http.StatusOK},
		{"false", "litellm_settings: {ssl_verify: false}\n", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHerd(t, models+tc.settings, up.URL, nil)
			resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.status == http.StatusBadGateway && !strings.Contains(body, "certificate") {
				t.Errorf("the 502 should say the certificate was refused: %s", body)
			}
		})
	}
}

// blockingUpstream answers chat completions only when released, so a test can hold requests
// in flight. arrived gets one value per request that reached it.
type blockingUpstream struct {
	arrived chan struct{}
	release chan struct{}
}

func (u *blockingUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	u.arrived <- struct{}{}
	select {
	case <-u.release:
	case <-r.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
}

// TestParallelCap holds global_max_parallel_requests (2) requests at the upstream: the third
// is shed with 503 and Retry-After before reaching it, probes still answer, and once the two
// finish the node's count is back to 0 and requests flow again.
func TestParallelCap(t *testing.T) {
	needsServers(t)
	bu := &blockingUpstream{arrived: make(chan struct{}, 16), release: make(chan struct{})}
	up := httptest.NewServer(bu)
	t.Cleanup(up.Close)
	h := startHerd(t, `
model_list: [{model_name: m, litellm_params: {model: openai/m, api_base: "{{UP}}/v1"}}]
general_settings: {global_max_parallel_requests: 2, max_parallel_requests: 5}
`, up.URL, nil)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(bu.release) }) }
	t.Cleanup(release) // first: the servers' Close waits for the requests held here

	var wg sync.WaitGroup
	statuses := make(chan int, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := post(t, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`)
			statuses <- resp.StatusCode
		}()
	}
	for range 2 {
		select {
		case <-bu.arrived:
		case <-time.After(5 * time.Second):
			t.Fatal("the first two requests did not reach the upstream")
		}
	}
	if n := h.srv.inFlight.n.Load(); n != 2 {
		t.Fatalf("in flight = %d, want 2", n)
	}

	// (A client with a timeout: were the request not shed, it would wait at the upstream.)
	resp, body := send(t, clientFrom(t, "127.0.0.1"), http.MethodPost, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`)
	wantAPIError(t, resp, body, http.StatusServiceUnavailable, "service_unavailable_error")
	if resp.Header.Get("Retry-After") != "1" || resp.Header.Get("Retry-After-Ms") != "1000" {
		t.Errorf("Retry-After = %q, retry-after-ms = %q, want 1 and 1000", resp.Header.Get("Retry-After"), resp.Header.Get("Retry-After-Ms"))
	}
	if !strings.Contains(body, "limit of 2 requests in flight") {
		t.Errorf("the 503 should state the limit: %s", body)
	}
	select {
	case <-bu.arrived:
		t.Error("the shed request reached the upstream")
	default:
	}
	// Probes and listings are not LLM requests: they still answer on a full node.
	for _, p := range []string{"/health/liveliness", "/health/readiness", "/v1/models"} {
		if resp, body := get(t, h.URL+p); resp.StatusCode != 200 {
			t.Errorf("%s on a full node: %d %s", p, resp.StatusCode, body)
		}
	}

	release()
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("a held request ended with %d", s)
		}
	}
	poll(t, "the in-flight count back to 0", func() bool { return h.srv.inFlight.n.Load() == 0 })
	if resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`); resp.StatusCode != 200 {
		t.Errorf("after the load left: %d %s", resp.StatusCode, body)
	}
	poll(t, "the in-flight count back to 0", func() bool { return h.srv.inFlight.n.Load() == 0 })
}

// TestParallelCapCountsBodies: a request whose body is still arriving holds its slot, so slow
// clients cannot get round the cap; a request refused for its body gives the slot back.
func TestParallelCapCountsBodies(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, `
model_list: [{model_name: m, litellm_params: {model: openai/m, api_base: "{{UP}}/v1"}}]
general_settings: {max_parallel_requests: 1}
`, base, nil)

	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() }) // first: the server's Close waits for this request
	done := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, h.URL+"/v1/chat/completions", pr)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	if _, err := pw.Write([]byte(`{"model":"m",`)); err != nil {
		t.Fatal(err)
	}
	poll(t, "the slow request to take its slot", func() bool { return h.srv.inFlight.n.Load() == 1 })
	resp, body := send(t, clientFrom(t, "127.0.0.1"), http.MethodPost, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`)
	wantAPIError(t, resp, body, http.StatusServiceUnavailable, "service_unavailable_error")

	_, _ = pw.Write([]byte(hi + `}`))
	pw.Close()
	if s := <-done; s != 200 {
		t.Errorf("the slow request ended with %d", s)
	}
	poll(t, "the in-flight count back to 0", func() bool { return h.srv.inFlight.n.Load() == 0 })

	// Rejected requests (bad JSON, unknown model, no key) release their slot too.
	for _, b := range []string{`{`, `{"model":"nope",` + hi + `}`} {
		if resp, _ := post(t, h.URL+"/v1/chat/completions", b); resp.StatusCode != 400 {
			t.Errorf("%s: %d", b, resp.StatusCode)
		}
	}
	if n := h.srv.inFlight.n.Load(); n != 0 {
		t.Errorf("in flight after rejected requests = %d", n)
	}
}

// TestSlowBodyIsCutOff trickles a body one byte every 20 ms over a raw connection: herd answers
// 408 once request_body_timeout has passed, though bytes kept coming, and closes the connection.
func TestSlowBodyIsCutOff(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, `
model_list: [{model_name: m, litellm_params: {model: openai/m, api_base: "{{UP}}/v1"}}]
general_settings: {request_body_timeout: 0.3}
`, base, nil)

	for _, path := range []string{"/v1/chat/completions", "/health/liveliness"} {
		t.Run(strings.TrimPrefix(path, "/"), func(t *testing.T) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(h.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			method := "POST"
			if strings.HasPrefix(path, "/health") {
				method = "GET" // a route that never reads its body must not be held open by one either
			}
			if _, err := io.WriteString(conn, method+" "+path+" HTTP/1.1\r\nHost: herd\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			trickled := make(chan int, 1)
			go func() {
				tick := time.NewTicker(20 * time.Millisecond)
				defer tick.Stop()
				n := 0
				defer func() { trickled <- n }()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
						if _, err := conn.Write([]byte(" ")); err != nil {
							return
						}
						n++
					}
				}
			}()
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			elapsed := time.Since(start)
			body, _ := io.ReadAll(resp.Body)
			close(stop)
			n := <-trickled
			if path == "/v1/chat/completions" {
				wantAPIError(t, resp, string(body), http.StatusRequestTimeout, "invalid_request_error")
				if !strings.Contains(string(body), "request_body_timeout") {
					t.Errorf("the 408 should name the setting: %s", body)
				}
			}
			if elapsed < 300*time.Millisecond || elapsed > 5*time.Second {
				t.Errorf("answered after %v, want just after the 300ms body timeout", elapsed)
			}
			if n < 5 && path == "/v1/chat/completions" {
				t.Errorf("only %d bytes trickled before the cut: the deadline must hold while bytes arrive", n)
			}
			// The connection is closed (EOF, or a reset for the bytes sent after): no second
			// request on it.
			if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("connection still open after a timed-out body: %v", err)
			}
		})
	}
	poll(t, "the in-flight count back to 0", func() bool { return h.srv.inFlight.n.Load() == 0 })
}

// TestBodyTimeoutSparesStreams: the body deadline is lifted once the body is in, so a stream
// that runs longer than request_body_timeout is not cut.
func TestBodyTimeoutSparesStreams(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{ChunkDelay: 60 * time.Millisecond, StreamChunks: 8})
	h := startHerd(t, `
model_list: [{model_name: m, litellm_params: {model: openai/m, api_base: "{{UP}}/v1"}}]
general_settings: {request_body_timeout: 0.1}
`, base, nil)
	start := time.Now()
	resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"m","stream":true,`+hi+`}`)
	if resp.StatusCode != 200 || !strings.Contains(body, "data: [DONE]") || strings.Count(body, `"content"`) < 8 {
		t.Fatalf("stream cut: %d after %v:\n%s", resp.StatusCode, time.Since(start), body)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatalf("the stream took %v: too short to prove anything", time.Since(start))
	}
}

// TestRetryAfterIsCapped: an upstream 429 with Retry-After: 999999 cools its deployment down
// for max_cooldown_time at most (default 5 minutes), not 11 days.
func TestRetryAfterIsCapped(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	up.SetFault("a", fakeupstream.Fault{Status: 429, RetryAfter: "999999"})
	for _, tc := range []struct {
		settings string
		cap      time.Duration
	}{
		{"", 5 * time.Minute},
		{"router_settings: {max_cooldown_time: 60}\n", time.Minute},
	} {
		h := startHerd(t, "model_list: [{model_name: m, litellm_params: {model: openai/a, api_base: \"{{UP}}/v1\"}}]\n"+tc.settings, base, nil)
		before := time.Now()
		resp, _ := post(t, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`)
		after := time.Now()
		if resp.StatusCode != 429 {
			t.Fatalf("status %d, want the upstream's 429", resp.StatusCode)
		}
		until := h.srv.snap.Load().deps[0].cooldown.Until()
		if until.Before(before.Add(tc.cap)) || until.After(after.Add(tc.cap)) {
			t.Errorf("%q: cooldown ends in %v, want %v", tc.settings, time.Until(until).Round(time.Second), tc.cap)
		}
		// The client is told when the group has room: the capped cooldown, not 999999 s.
		resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"m",`+hi+`}`)
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode != 429 || err != nil || secs < 1 || secs > int(tc.cap/time.Second) {
			t.Errorf("during the cooldown: %d Retry-After %q, want 1..%d: %s", resp.StatusCode, resp.Header.Get("Retry-After"), int(tc.cap/time.Second), body)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"": 0, "5": 5 * time.Second, "0.5": 500 * time.Millisecond, "-3": 0, "NaN": 0, "soon": 0,
		"999999": 999999 * time.Second, "1e300": math.MaxInt64, "Inf": math.MaxInt64,
	} {
		if got := parseRetryAfter(in); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}
