package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil, env(nil), io.Discard)
	if err != nil || o.host != "0.0.0.0" || o.port != 4000 || o.configPath != "" || o.drainTimeout != 30*time.Second {
		t.Fatalf("defaults = %+v, %v", o, err)
	}
	o, err = parseFlags(nil, env(map[string]string{"HERD_CONFIG": "/etc/herd.yaml", "PORT": "8080", "HERD_DRAIN_TIMEOUT": "5s"}), io.Discard)
	if err != nil || o.configPath != "/etc/herd.yaml" || o.port != 8080 || o.drainTimeout != 5*time.Second {
		t.Fatalf("env = %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"--config", "a.yaml", "--port", "9", "--host", "127.0.0.1"}, env(map[string]string{"HERD_CONFIG": "b.yaml", "PORT": "8080"}), io.Discard)
	if err != nil || o.configPath != "a.yaml" || o.port != 9 || o.host != "127.0.0.1" {
		t.Fatalf("flags over env = %+v, %v", o, err)
	}
	for _, bad := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, map[string]string{"PORT": "http"}, `PORT="http"`},
		{nil, map[string]string{"HERD_DRAIN_TIMEOUT": "soon"}, "HERD_DRAIN_TIMEOUT"},
		{[]string{"--port", "x"}, nil, "invalid value"},
		{[]string{"serve"}, nil, `unexpected argument "serve"`},
		{[]string{"--pprof-addr", "0.0.0.0:6060"}, nil, "must be a loopback"},
		{[]string{"--pprof-addr", "6060"}, nil, "must be a loopback"},
	} {
		if _, err := parseFlags(bad.args, env(bad.env), io.Discard); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("parseFlags(%v, %v) = %v, want error containing %q", bad.args, bad.env, err, bad.want)
		}
	}
	var help strings.Builder
	if _, err := parseFlags([]string{"--help"}, env(nil), &help); !errors.Is(err, flag.ErrHelp) || !strings.Contains(help.String(), "--config FILE") {
		t.Errorf("--help: %v, %q", err, help.String())
	}
}

func TestVersion(t *testing.T) {
	var out strings.Builder
	if err := run(context.Background(), []string{"--version"}, env(nil), &out, io.Discard); err != nil || out.String() != "herd dev\n" {
		t.Fatalf("--version = %q, %v", out.String(), err)
	}
}

func TestBadConfigStopsStartup(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte("model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/x\n      rpm: -1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"--config", path, "--port", "0"}, env(nil), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "model_list[0].litellm_params.rpm") {
		t.Fatalf("err = %v, want one naming the file and key", err)
	}
	if err := run(context.Background(), []string{"--config", filepath.Join(dir, "missing.yaml")}, env(nil), io.Discard, io.Discard); err == nil {
		t.Fatal("missing config file started")
	}
}

// started runs herd in-process and returns its address once it listens, plus run's result.
func started(t *testing.T, ctx context.Context, args []string) (addr string, stderr *strings.Builder, done <-chan error) {
	t.Helper()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, args, env(nil), io.Discard, pw)
		pw.Close()
	}()
	listening := regexp.MustCompile(`msg="herd listening" addr=(\S+)`)
	stderr = new(strings.Builder)
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(10 * time.Second)
	for addr == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("herd exited before listening: %v\n%s", <-errc, stderr)
			}
			stderr.WriteString(l + "\n")
			if m := listening.FindStringSubmatch(l); m != nil {
				addr = m[1]
			}
		case <-deadline:
			t.Fatalf("herd did not start:\n%s", stderr)
		}
	}
	// Keep draining the log so run never blocks on it.
	go func() {
		for l := range lines {
			t.Log(l)
		}
	}()
	return addr, stderr, errc
}

func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, log, done := started(t, ctx, []string{"--host", "127.0.0.1", "--port", "0", "--pprof-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0"})
	if !strings.Contains(log.String(), `msg="pprof listening" addr=127.0.0.1:`) {
		t.Errorf("pprof did not start:\n%s", log)
	}
	if !strings.Contains(log.String(), "curl -s http://localhost:") {
		t.Errorf("no curl to try in the demo log:\n%s", log)
	}
	resp, err := http.Post("http://"+addr+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"demo-model","messages":[{"role":"user","content":"Hello"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"chat.completion"`) {
		t.Fatalf("demo chat: %d %s", resp.StatusCode, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

// TestGracefulShutdownFinishesStreams cancels herd (as SIGTERM does) while a stream is in
// flight: herd stops accepting at once, and the stream still runs to [DONE].
func TestGracefulShutdownFinishesStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers; skipped with -short")
	}
	_, base := fakeupstream.Start(t, fakeupstream.Options{StreamChunks: 8, ChunkDelay: 50 * time.Millisecond})
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/up\n      api_base: " + base + "/v1\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, _, done := started(t, ctx, []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--drain-timeout", "20s", "--gossip-addr", "127.0.0.1:0"})

	resp, err := http.Post("http://"+addr+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if first, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(first, "data: ") {
		t.Fatalf("first event: %q %v", first, err)
	}
	cancel() // SIGTERM

	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break // no longer accepting
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("herd still accepts connections after shutdown began")
		}
		time.Sleep(5 * time.Millisecond)
	}
	rest, err := io.ReadAll(br)
	if err != nil || !strings.HasSuffix(string(rest), "data: [DONE]\n\n") {
		t.Fatalf("stream cut by shutdown: %v, rest %q", err, rest)
	}
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
