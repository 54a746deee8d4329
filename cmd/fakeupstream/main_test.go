package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

const chatBody = `{"model":"gpt-4o","messages":[{"role":"user","content":"abcdefgh"}]}`

// start runs the command in-process and returns its base URL and the channel run's error
// arrives on.
func start(t *testing.T, ctx context.Context, args ...string) (string, <-chan error) {
	t.Helper()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, pw)
		pw.CloseWithError(errors.New("run returned"))
		done <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no listening line: %v (run: %v)", err, <-done)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	base, ok := strings.CutPrefix(strings.TrimSpace(line), "fakeupstream listening on ")
	if !ok || !strings.HasPrefix(base, "http://127.0.0.1:") || strings.HasSuffix(base, ":0") {
		t.Fatalf("listening line %q", line)
	}
	return base, done
}

func waitRun(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return")
	}
}

func send(t *testing.T, method, url, body string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func getStats(t *testing.T, base string) stats {
	t.Helper()
	code, body := send(t, "GET", base+"/fake/stats", "")
	var s stats
	if err := json.Unmarshal([]byte(body), &s); code != 200 || err != nil {
		t.Fatalf("stats: %d %s (%v)", code, body, err)
	}
	return s
}

func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	base, done := start(t, ctx, "--addr", "127.0.0.1:0", "--api-key", "k", "--stream-chunks", "3")
	auth := []string{"Authorization", "Bearer k"}

	code, body := send(t, "POST", base+"/v1/chat/completions", chatBody, auth...)
	if code != 200 || !strings.Contains(body, `"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}`) {
		t.Fatalf("chat: %d %s", code, body)
	}
	if code, _ := send(t, "POST", base+"/v1/chat/completions", chatBody); code != 401 {
		t.Errorf("without key: %d", code)
	}

	code, body = send(t, "POST", base+"/fake/fault?deployment=gpt-4o", `{"status":429,"retry_after":"1","delay":"1ms"}`)
	if code != 204 {
		t.Fatalf("set fault: %d %s", code, body)
	}
	if code, body := send(t, "POST", base+"/v1/chat/completions", chatBody, auth...); code != 429 {
		t.Errorf("faulted chat: %d %s", code, body)
	}
	for _, bad := range []struct{ query, body string }{
		{"", `{"status":500}`},
		{"?deployment=x", `{"statuss":500}`},
		{"?deployment=x", `{"delay":2}`},
		{"?deployment=x", `{"status":1000}`},
	} {
		if code, body := send(t, "POST", base+"/fake/fault"+bad.query, bad.body); code != 400 || !strings.Contains(body, `"error"`) {
			t.Errorf("fault %s %s: %d %s", bad.query, bad.body, code, body)
		}
	}

	want := stats{Counts: map[string]int64{"gpt-4o": 3}, Cancelled: map[string]int64{"gpt-4o": 0}}
	if got := getStats(t, base); !reflect.DeepEqual(got, want) {
		t.Errorf("stats = %+v, want %+v", got, want)
	}
	if code, _ := send(t, "POST", base+"/fake/reset", ""); code != 204 {
		t.Errorf("reset: %d", code)
	}
	if code, body := send(t, "POST", base+"/v1/chat/completions", chatBody, auth...); code != 200 {
		t.Errorf("fault survived reset: %d %s", code, body)
	}
	if got := getStats(t, base); got.Counts["gpt-4o"] != 1 || len(got.Counts) != 1 {
		t.Errorf("stats after reset = %+v", got)
	}

	cancel()
	waitRun(t, done)
	if _, err := http.Get(base + "/fake/stats"); err == nil {
		t.Error("still serving after run returned")
	}
}

func TestRunShutdownEndsHangs(t *testing.T) {
	old := shutdownGrace
	shutdownGrace = 20 * time.Millisecond
	t.Cleanup(func() { shutdownGrace = old })

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	base, done := start(t, ctx, "--addr", "127.0.0.1:0")
	if code, body := send(t, "POST", base+"/fake/fault?deployment=*", `{"hang":true}`); code != 204 {
		t.Fatalf("set fault: %d %s", code, body)
	}
	hung := make(chan error, 1)
	go func() {
		resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(chatBody))
		if err == nil {
			resp.Body.Close()
		}
		hung <- err
	}()
	deadline := time.Now().Add(3 * time.Second)
	for getStats(t, base).InFlight != 1 {
		if time.Now().After(deadline) {
			t.Fatal("hanging request never arrived")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	waitRun(t, done)
	if err := <-hung; err == nil {
		t.Error("hanging request got an answer")
	}
}

func TestRunMaxLifetime(t *testing.T) {
	_, done := start(t, t.Context(), "--addr", "127.0.0.1:0", "--max-lifetime", "30ms")
	waitRun(t, done)
}

func TestRunBadArgs(t *testing.T) {
	for _, args := range [][]string{
		{"--nope"},
		{"--fail-rate", "2"},
		{"--fail-status", "42"},
		{"--latency", "-1s"},
		{"--stream-chunks", "0"},
		{"extra"},
		{"--addr", "127.0.0.1:99999"},
	} {
		var out strings.Builder
		err := run(t.Context(), args, &out)
		if err == nil || out.Len() != 0 {
			t.Errorf("run %q: err %v, stdout %q", args, err, out.String())
		}
		var uerr usageError
		if errors.As(err, &uerr) && !strings.Contains(uerr.usage, "-max-lifetime") {
			t.Errorf("run %q: usage text %q", args, uerr.usage)
		}
	}
}
