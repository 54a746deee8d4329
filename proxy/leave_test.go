package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// TestLeavingEarlyIsCounted replays issue 12's attack 4: clients that leave before their answer
// against a deployment with rpm 3. Whenever the client leaves — before the upstream's response
// headers, after them but before any content, or mid-stream — a request that reached the
// upstream is counted, so the fourth is refused with 429 and never reaches it. (Before the
// fix, a client leaving before the headers released its reservation: the upstream got all 10
// and herd counted none.)
func TestLeavingEarlyIsCounted(t *testing.T) {
	needsServers(t)
	const cfg = `
model_list:
  - model_name: m
    litellm_params: {model: openai/up, api_base: "{{UP}}/v1", rpm: 3, tpm: 100000}
`
	for _, tc := range []struct {
		name   string
		opts   fakeupstream.Options
		fault  fakeupstream.Fault
		stream bool
		// leave is called once herd answered with 200 headers (streams) and cancels the client
		// at the phase under test; nil: the client leaves before response headers.
		leave func(t *testing.T, resp *http.Response, cancel func())
	}{
		{name: "before response headers", fault: fakeupstream.Fault{Hang: true}},
		{name: "before response headers, stream", fault: fakeupstream.Fault{Hang: true}, stream: true},
		{
			name: "after headers, before content", stream: true,
			opts: fakeupstream.Options{ChunkDelay: time.Minute},
			leave: func(t *testing.T, resp *http.Response, cancel func()) {
				cancel()
			},
		},
		{
			name: "mid-stream", stream: true,
			opts: fakeupstream.Options{ChunkDelay: 100 * time.Millisecond, StreamChunks: 50},
			leave: func(t *testing.T, resp *http.Response, cancel func()) {
				br := bufio.NewReader(resp.Body)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						t.Errorf("the stream ended before its first content event: %v", err)
						break
					}
					if strings.Contains(line, `"content":"`) && !strings.Contains(line, `"role"`) {
						break
					}
				}
				cancel()
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			arrived := make(chan struct{}, 16)
			opts := tc.opts
			opts.OnArrival = func(fakeupstream.Arrival) { arrived <- struct{}{} }
			up, base := fakeupstream.Start(t, opts)
			up.SetFault("*", tc.fault)
			h := startHerd(t, cfg, base, nil)
			body := `{"model":"m","stream":` + map[bool]string{true: "true", false: "false"}[tc.stream] + `,` + hi + `}`

			refused := 0
			for i := range 10 {
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.URL+"/v1/chat/completions", strings.NewReader(body))
				type result struct {
					resp *http.Response
					err  error
				}
				done := make(chan result, 1)
				go func() {
					resp, err := http.DefaultClient.Do(req)
					done <- result{resp, err}
				}()
				var r result
				seen := false // the upstream's arrival, taken from the channel
				select {
				case <-arrived:
					seen = true
					if tc.leave == nil {
						cancel() // the upstream has the request; leave before its headers
						if r = <-done; r.err == nil {
							t.Fatalf("request %d: answered %d although the upstream hangs", i, r.resp.StatusCode)
						}
						break
					}
					r = <-done
				case r = <-done:
				}
				switch {
				case tc.leave == nil && r.err != nil: // left, above
				case r.err != nil:
					t.Fatalf("request %d: %v", i, r.err)
				case r.resp.StatusCode == http.StatusOK && tc.leave != nil:
					if !seen { // the stream's headers can come back before the arrival is seen
						<-arrived
					}
					tc.leave(t, r.resp, cancel)
					r.resp.Body.Close()
				default:
					// Answered without reaching the upstream: it must be the rpm limit.
					b, _ := io.ReadAll(r.resp.Body)
					r.resp.Body.Close()
					wantError(t, r.resp, string(b), http.StatusTooManyRequests, "No deployments available")
					refused++
				}
				cancel()
				// herd settles or releases once it sees the client gone.
				poll(t, "herd to end the request", func() bool { return h.load(0).InFlight == 0 })
			}
			reached := up.Count("up")
			if got := h.load(0).Requests; got != reached {
				t.Errorf("the upstream received %d requests, herd counted %d", reached, got)
			}
			if reached != 3 || refused != 7 {
				t.Errorf("reached %d, refused %d; want 3 and 7 under rpm 3", reached, refused)
			}
			if tok := h.tokens(0); tok <= 0 {
				t.Errorf("tokens counted = %d: a request that reached the upstream is settled at its estimate or its usage", tok)
			}
		})
	}
}

// TestNeverSentIsReleased: a request whose connection was refused, or whose TLS handshake never
// finished before the deployment's timeout, never left herd, so its reservation is given back
// (before the fix a timeout kept it); one the upstream read and then dropped without answering
// did reach it, so it stays counted (before the fix it was released).
func TestNeverSentIsReleased(t *testing.T) {
	needsServers(t)
	// An upstream that reads each request whole, then closes the connection without a word.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var dropped atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				if _, err := io.Copy(io.Discard, req.Body); err == nil {
					dropped.Add(1)
				}
			}()
		}
	}()
	// A TCP listener that never speaks TLS.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mute.Close() })
	h := startHerd(t, `
model_list:
  - model_name: refused
    litellm_params: {model: openai/r, api_base: "http://127.0.0.1:1/v1", rpm: 100, tpm: 100000}
  - model_name: dropped
    litellm_params: {model: openai/d, api_base: "http://`+ln.Addr().String()+`/v1", rpm: 100, tpm: 100000}
  - model_name: mute
    litellm_params: {model: openai/x, api_base: "https://`+mute.Addr().String()+`/v1", rpm: 100, tpm: 100000, timeout: 0.1}
`, "", nil)

	resp, body := post(t, h.URL+"/v1/chat/completions", `{"model":"refused",`+hi+`}`)
	wantError(t, resp, body, http.StatusBadGateway, "unreachable")
	if l := h.load(0); l.Requests != 0 || l.Tokens != 0 || l.InFlight != 0 {
		t.Errorf("a refused connection left %+v counted; want it released", l)
	}

	resp, body = post(t, h.URL+"/v1/chat/completions", `{"model":"dropped",`+hi+`}`)
	wantError(t, resp, body, http.StatusBadGateway, "unreachable")
	if l := h.load(1); l.Requests != dropped.Load() || l.Requests == 0 || l.Tokens == 0 || l.InFlight != 0 {
		t.Errorf("the upstream read %d requests and dropped them; herd counted %+v", dropped.Load(), l)
	}

	resp, body = post(t, h.URL+"/v1/chat/completions", `{"model":"mute",`+hi+`}`)
	wantError(t, resp, body, http.StatusGatewayTimeout, "timed out")
	if l := h.load(2); l.Requests != 0 || l.Tokens != 0 || l.InFlight != 0 {
		t.Errorf("a call that timed out before its TLS handshake finished left %+v counted; want it released", l)
	}
}
