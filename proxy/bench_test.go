package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/routing"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/local"
)

const benchBody = `{"model":"bench","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write one sentence about load balancers."}],"max_tokens":64}`

func benchServer(b *testing.B, yaml string) *Server {
	b.Helper()
	cfg, err := config.Parse("bench.yaml", []byte(yaml), config.MapEnv(nil), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Options{Config: cfg, State: local.New(local.Options{}), Node: "bench", Logger: slog.New(slog.DiscardHandler)})
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

// benchRouteAdmit measures one routing decision plus admission and settle on the local
// backend, for a group of n deployments with rpm and tpm limits, as the request path does it.
func benchRouteAdmit(b *testing.B, n int, strategy string) {
	yaml := "model_list:\n"
	for i := 0; i < n; i++ {
		yaml += fmt.Sprintf("  - {model_name: g, litellm_params: {model: mock/d%d, rpm: 1000000000, tpm: 1000000000000}}\n", i)
	}
	yaml += "router_settings: {routing_strategy: " + strategy + "}\n"
	srv := benchServer(b, yaml)
	snap := srv.snap.Load()
	g, _ := snap.table.Resolve("g")
	r := &routing.Request{Reservation: state.Reservation{Requests: 1, Tokens: 300}}
	b.ReportAllocs()
	for b.Loop() {
		i, ok := snap.table.Pick(g, snap.counters, time.Now(), r)
		if !ok {
			b.Fatal("no pick")
		}
		c := snap.deps[i].counter
		t, err := c.Admit(snap.table.Limits(i), r.Reservation)
		if err != nil {
			b.Fatal(err)
		}
		c.Settle(t, state.Usage{PromptTokens: 100, CompletionTokens: 150})
	}
}

func BenchmarkRouteAdmit(b *testing.B) {
	for _, n := range []int{2, 100} {
		for _, s := range []string{"simple-shuffle", "least-busy", "usage-based-routing-v2", "latency-based-routing"} {
			b.Run(fmt.Sprintf("%s/%d", s, n), func(b *testing.B) { benchRouteAdmit(b, n, s) })
		}
	}
}

// BenchmarkChatUpstreamStream is a streamed request through herd to the fake upstream for a
// client that did not ask for usage: herd asks for it, counts it, and takes the "usage":null
// it brings out of every chunk.
func BenchmarkChatUpstreamStream(b *testing.B) {
	_, base := fakeupstream.Start(b, fakeupstream.Options{})
	srv := benchServer(b, `
model_list:
  - {model_name: bench, litellm_params: {model: openai/up, api_base: "`+base+`/v1", api_key: sk-x}}
`)
	runChat(b, srv, strings.Replace(benchBody, `"max_tokens":64`, `"max_tokens":64,"stream":true`, 1))
}

// BenchmarkClusterStatus500 is what the dashboard asks every second of a large cluster: 50
// members and 500 deployments, plain and with the first poll's 180 s of history.
func BenchmarkClusterStatus500(b *testing.B) {
	var yaml strings.Builder
	yaml.WriteString("model_list:\n")
	for i := range 500 {
		fmt.Fprintf(&yaml, "  - model_name: group-%d\n    litellm_params: {model: mock/m%d, rpm: 1000, tpm: 100000}\n", i/5, i)
	}
	cfg, err := config.Parse("bench.yaml", []byte(yaml.String()), config.MapEnv(nil), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	members := make(fakeMembership, 50)
	for i := range members {
		members[i] = Member{Name: fmt.Sprintf("node-%02d", i), Addr: fmt.Sprintf("10.0.0.%d:7946", i), Status: "alive", Self: i == 0, LastHeard: time.Now()}
	}
	srv, err := New(Options{Config: cfg, State: local.New(local.Options{}), Node: "node-00", Logger: slog.New(slog.DiscardHandler), Members: members,
		Consensus: func() ConsensusStatus {
			return ConsensusStatus{Leader: "node-01", Voters: []string{"node-00", "node-01", "node-02"}}
		}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Close)
	for s := range 200 {
		srv.history.sample(srv.metrics, time.Unix(1_800_000_000+int64(s), 0))
	}
	for _, path := range []string{"/cluster/status", "/cluster/status?history=5", "/cluster/status?history=180"} {
		b.Run(path, func(b *testing.B) {
			b.ReportAllocs()
			var size int
			for b.Loop() {
				w := httptest.NewRecorder()
				srv.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
				if w.Code != 200 {
					b.Fatalf("%s: %d %s", path, w.Code, w.Body)
				}
				size = w.Body.Len()
			}
			b.ReportMetric(float64(size)/1024, "KiB/op")
		})
	}
}
