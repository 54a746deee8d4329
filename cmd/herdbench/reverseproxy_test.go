package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe to write from one goroutine and read from another.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it is true or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func TestReverseProxyForwards(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	type seen struct {
		method, path, body, auth, host string
	}
	got := make(chan seen, 1)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.URL.Path, string(b), r.Header.Get("Authorization"), r.Host}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", "yes")
		w.WriteHeader(http.StatusTeapot)
		io.WriteString(w, `{"ok":true}`)
	}))
	defer upstream.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"reverseproxy", "--listen", "127.0.0.1:0", "--target", upstream.URL}, &stdout, &stderr)
	}()
	var addr string
	waitFor(t, "the listening line", func() bool {
		var ok bool
		addr, ok = readyPrefix("listening on ")(strings.TrimSpace(stdout.String()))
		return ok
	})

	body := string(chatBody(upstreamModel))
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer sk-test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	respBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot || string(respBody) != `{"ok":true}` || resp.Header.Get("X-Upstream") != "yes" {
		t.Errorf("response: %d %q %v", resp.StatusCode, respBody, resp.Header)
	}
	s := <-got
	want := seen{http.MethodPost, "/v1/chat/completions", body, "Bearer sk-test", strings.TrimPrefix(upstream.URL, "http://")}
	if s != want {
		t.Errorf("upstream saw %+v, want %+v", s, want)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v (stderr: %s)", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reverseproxy did not stop after its context ended")
	}
}

func TestReverseProxyFlags(t *testing.T) {
	for _, args := range [][]string{
		{"reverseproxy"},
		{"reverseproxy", "--target", "127.0.0.1:80"},
		{"reverseproxy", "--target", "http://127.0.0.1:80", "extra"},
		{"reverseproxy", "--target", "http://127.0.0.1:80", "--max-lifetime", "-1s"},
	} {
		var uerr usageError
		if err := run(context.Background(), args, io.Discard, io.Discard); !errors.As(err, &uerr) {
			t.Errorf("%v: err = %v, want a usage error", args, err)
		}
	}
}

func TestUpstreamTransportMatchesHerd(t *testing.T) {
	tr := newUpstreamTransport()
	if tr.MaxIdleConnsPerHost != 1024 || tr.MaxIdleConns != 0 || tr.IdleConnTimeout != 90*time.Second ||
		!tr.DisableCompression || !tr.ForceAttemptHTTP2 {
		t.Errorf("transport = %+v", tr)
	}
}
