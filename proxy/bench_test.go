package proxy

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/state/local"
)

const benchBody = `{"model":"bench","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write one sentence about load balancers."}],"max_tokens":64}`

func benchServer(b *testing.B, yaml string) *Server {
	b.Helper()
	cfg, err := config.Parse("bench.yaml", []byte(yaml), config.MapEnv(nil), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Options{Config: cfg, State: local.New(nil), Node: "bench", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Close)
	return srv
}

// discardWriter is a minimal ResponseWriter so the benchmark measures herd, not a recorder.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}
func (w *discardWriter) Flush()                      {}

func runChat(b *testing.B, srv *Server, body string) {
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
		rd := strings.NewReader(body)
		for pb.Next() {
			rd.Reset(body)
			r.Body = io.NopCloser(rd)
			r.ContentLength = int64(len(body))
			clear(w.h)
			srv.ServeHTTP(w, r)
		}
	})
}

// BenchmarkChatMock is herd's own cost per request: parse, route, admit, rewrite, answer —
// the upstream answers in-process (mock provider), so no network time is included.
func BenchmarkChatMock(b *testing.B) {
	srv := benchServer(b, `
model_list:
  - {model_name: bench, litellm_params: {model: mock/a, rpm: 1000000}}
  - {model_name: bench, litellm_params: {model: mock/b, rpm: 1000000}}
`)
	runChat(b, srv, benchBody)
}

// BenchmarkChatUpstream is a full request through herd to the fake upstream over loopback.
func BenchmarkChatUpstream(b *testing.B) {
	_, base := fakeupstream.Start(b, fakeupstream.Options{})
	srv := benchServer(b, `
model_list:
  - {model_name: bench, litellm_params: {model: openai/up, api_base: "`+base+`/v1", api_key: sk-x}}
`)
	runChat(b, srv, benchBody)
}

func BenchmarkParseRewrite(b *testing.B) {
	body := []byte(benchBody)
	dst := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		r, err := parseRequest(body)
		if err != nil {
			b.Fatal(err)
		}
		dst = rewrite(dst[:0], body, &r, `"upstream"`, false)
	}
}
