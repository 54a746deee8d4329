package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state/local"
)

// countingListener counts the bytes the server reads from its connections and the connections
// it closed, and keeps what it wrote to them, write by write.
type countingListener struct {
	net.Listener
	read, closed atomic.Int64
	mu           sync.Mutex
	writes       []string
}

func (l *countingListener) allWrites() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.writes)
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, l: l}, nil
}

type countingConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.l.mu.Lock()
	c.l.writes = append(c.l.writes, string(p))
	c.l.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *countingConn) Close() error {
	c.once.Do(func() { c.l.closed.Add(1) })
	return c.Conn.Close()
}

// CloseWrite lets herd half-close a connection it refuses, as it would a *net.TCPConn.
func (c *countingConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// startCounted serves yaml (mock deployments only) on a listener that counts what herd reads.
func startCounted(t *testing.T, yaml string) (*Server, string, *countingListener) {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(yaml), config.MapEnv{}, testLogger(t))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	srv, err := New(Options{Config: cfg, State: local.New(local.Options{}), Backend: "local", Node: "node-1", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv)
	cl := &countingListener{Listener: ts.Listener}
	ts.Listener = cl
	ts.Start()
	t.Cleanup(ts.Close)
	return srv, strings.TrimPrefix(ts.URL, "http://"), cl
}

// rawRequest opens a connection to addr and writes head (a request line and headers, without
// the blank line that ends them) and body.
func rawRequest(t *testing.T, addr, head, body string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, head+"\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	return conn
}

// readAnswer reads one response from conn and its body.
func readAnswer(t *testing.T, conn net.Conn, br *bufio.Reader, within time.Duration) (*http.Response, string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(within))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer within %v: %v", within, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("answer body: %v", err)
	}
	return resp, string(b)
}

// closedWithin reports whether the server closed conn (EOF or reset) within d.
func closedWithin(conn net.Conn, br *bufio.Reader, d time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	_, err := br.ReadByte()
	return err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

const keyed = `
model_list: [{model_name: m, litellm_params: {model: mock/m}}]
general_settings: {master_key: sk-right, request_body_timeout: 10}
`

// TestUnauthenticatedBodyIsNotRead: with a master key set, a request without the right key
// gets its 401 at once and its connection closed, and herd reads nothing of its body: not a
// declared 100 MB, nor a chunked or small body the client trickles. (Before the fix, net/http
// read up to 256 KB of a trickled body first, for up to request_body_timeout, and only then
// sent the 401; the 100 MB case already held, net/http refusing to drain that much.)
func TestUnauthenticatedBodyIsNotRead(t *testing.T) {
	needsServers(t)
	_, addr, cl := startCounted(t, keyed)
	const path = "POST /v1/chat/completions HTTP/1.1\r\nHost: herd\r\nContent-Type: application/json\r\n"
	for _, tc := range []struct {
		name, head string
		chunked    bool
	}{
		{"wrong key, 100 MB declared", path + "Authorization: Bearer sk-wrong\r\nContent-Length: 104857600", false},
		{"no key, chunked", path + "Transfer-Encoding: chunked", true},
		{"wrong key, small body trickled", path + "api-key: nope\r\nContent-Length: 1000", false},
		{"no key, admin route, expecting 100-continue", "POST /model/new HTTP/1.1\r\nHost: herd\r\nExpect: 100-continue\r\nContent-Length: 50000000", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := cl.read.Load()
			start := time.Now()
			first := `{"model":"m",`
			if tc.chunked {
				first = fmt.Sprintf("%x\r\n%s\r\n", len(first), first)
			}
			conn := rawRequest(t, addr, tc.head, first)
			// Keep sending: as fast as the socket takes it for the declared 100 MB, a byte
			// every 10 ms otherwise.
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				p, fast := []byte(" "), strings.Contains(tc.head, "104857600")
				switch {
				case fast:
					p = bytes.Repeat([]byte("a"), 64<<10)
				case tc.chunked:
					p = []byte("1\r\n \r\n")
				}
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				for {
					if !fast {
						select {
						case <-stop:
							return
						case <-tick.C:
						}
					}
					if _, err := conn.Write(p); err != nil {
						return
					}
				}
			}()
			br := bufio.NewReader(conn)
			resp, body := readAnswer(t, conn, br, 5*time.Second)
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("the 401 took %v; want it at once, not after request_body_timeout (10s)", took)
			}
			wantError(t, resp, body, http.StatusUnauthorized, "Authentication Error")
			if !resp.Close {
				t.Error("the 401 does not say Connection: close")
			}
			if !closedWithin(conn, br, 3*time.Second) {
				t.Error("the connection is still open after the 401")
			}
			// The headers and whatever arrived with them in one read; never the body.
			if n := cl.read.Load() - before; n > 16<<10 {
				t.Errorf("herd read %d bytes of an unauthenticated request", n)
			}
		})
	}
}

// TestBodyBudgetSheds fills max_inflight_request_mb (2 MB) with two 1 MB bodies that have not
// finished arriving: a third request gets 503 with Retry-After at once, and once a held body
// completes and is served, requests flow again and the budget is back to 0. (Before the fix
// there was no such budget: the third body was buffered too.)
func TestBodyBudgetSheds(t *testing.T) {
	needsServers(t)
	srv, addr, _ := startCounted(t, `
model_list: [{model_name: m, litellm_params: {model: mock/m}}]
general_settings: {max_request_size_mb: 1, max_inflight_request_mb: 2}
`)
	const size = 1 << 20
	body := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("a", size-60) + `"}]}`
	body += strings.Repeat(" ", size-len(body))
	head := fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: herd\r\nContent-Type: application/json\r\nContent-Length: %d", size)
	var held []net.Conn
	for range 2 {
		held = append(held, rawRequest(t, addr, head, body[:size-10])) // all but the last 10 bytes
	}
	poll(t, "two 1 MB bodies held", func() bool { return srv.bodyBytes.n.Load() == 2*size })

	resp, out := post(t, "http://"+addr+"/v1/chat/completions", `{"model":"m",`+hi+`}`)
	wantAPIError(t, resp, out, http.StatusServiceUnavailable, "service_unavailable_error")
	if resp.Header.Get("Retry-After") != "1" || resp.Header.Get("Retry-After-Ms") != "1000" || !strings.Contains(out, "max_inflight_request_mb") {
		t.Errorf("the 503 should carry Retry-After: 1, retry-after-ms: 1000 and name the setting: %q %q %s",
			resp.Header.Get("Retry-After"), resp.Header.Get("Retry-After-Ms"), out)
	}
	if n := srv.bodyBytes.n.Load(); n != 2*size {
		t.Errorf("the shed request left %d bytes held, want %d", n, 2*size)
	}

	// The first held body completes: it is served, and its megabyte is given back.
	if _, err := io.WriteString(held[0], body[size-10:]); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(held[0])
	if resp, out := readAnswer(t, held[0], br, 5*time.Second); resp.StatusCode != 200 {
		t.Fatalf("the completed body got %d: %s", resp.StatusCode, out)
	}
	poll(t, "the served body's bytes given back", func() bool { return srv.bodyBytes.n.Load() == size })
	if resp, out := post(t, "http://"+addr+"/v1/chat/completions", `{"model":"m",`+hi+`}`); resp.StatusCode != 200 {
		t.Errorf("with room again: %d %s", resp.StatusCode, out)
	}
	held[1].Close()
	poll(t, "the budget back to 0", func() bool { return srv.bodyBytes.n.Load() == 0 })
}

// TestIdleConnectionsAreCut opens 1,000 connections whose bodies never finish, half with the
// key and half without: the keyed ones get 408 at request_body_timeout, the others 401 at
// once, and herd closes every one of them.
func TestIdleConnectionsAreCut(t *testing.T) {
	needsServers(t)
	const timeout = 3 * time.Second
	srv, addr, cl := startCounted(t, `
model_list: [{model_name: m, litellm_params: {model: mock/m}}]
general_settings: {master_key: sk-right, request_body_timeout: 3}
`)
	const n = 1000
	type result struct {
		status int
		after  time.Duration
		closed bool
	}
	results := make(chan result, n)
	var wg sync.WaitGroup
	for i := range n {
		key := "sk-right"
		if i%2 == 1 {
			key = "sk-wrong"
		}
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer conn.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			_, err := io.WriteString(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: herd\r\nAuthorization: Bearer "+key+
				"\r\nContent-Length: 1000\r\n\r\n{\"model\":")
			if err != nil {
				results <- result{}
				return
			}
			br := bufio.NewReader(conn)
			_ = conn.SetReadDeadline(time.Now().Add(timeout + 10*time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				results <- result{}
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			r := result{status: resp.StatusCode, after: time.Since(start)}
			r.closed = closedWithin(conn, br, 5*time.Second)
			results <- r
		}()
	}
	wg.Wait()
	close(results)
	counts := map[int]int{}
	for r := range results {
		counts[r.status]++
		switch {
		case !r.closed:
			t.Errorf("a %d left its connection open", r.status)
		case r.status == http.StatusRequestTimeout && r.after < timeout:
			t.Errorf("a 408 came after %v, before the %v body timeout", r.after, timeout)
		case r.status == http.StatusUnauthorized && r.after >= timeout:
			t.Errorf("a 401 came after %v: it should not wait for the body", r.after)
		}
	}
	if counts[http.StatusRequestTimeout] != n/2 || counts[http.StatusUnauthorized] != n/2 {
		t.Errorf("answers %v, want %d of 408 and %d of 401", counts, n/2, n/2)
	}
	poll(t, "herd to close every connection", func() bool { return cl.closed.Load() == n })
	if v := srv.inFlight.n.Load(); v != 0 {
		t.Errorf("%d requests still in flight", v)
	}
}

// TestLargeBodyMemory measures what a 4 MB request allocates end to end (mock deployment):
// about three times its size — the body (its buffer doubling to it: once more in copies) and
// the copy sent upstream. Before the fix it was seven to nine times: append's 1.25x growth copied the
// body over and over, the upstream copy grew the same way, and the tpm estimate copied the
// messages.
func TestLargeBodyMemory(t *testing.T) {
	needsServers(t)
	const size = 4 << 20
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("a", size-60) + `"}]}`)
	for _, tc := range []struct {
		name, yaml string
		length     int64
	}{
		{"known length", "model_list: [{model_name: m, litellm_params: {model: mock/m}}]\n", int64(len(body))},
		{"chunked", "model_list: [{model_name: m, litellm_params: {model: mock/m}}]\n", -1},
		{"tpm estimate", "model_list: [{model_name: m, litellm_params: {model: mock/m, tpm: 100000000}}]\n", int64(len(body))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse("test.yaml", []byte(tc.yaml), config.MapEnv{}, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			srv, err := New(Options{Config: cfg, State: local.New(local.Options{}), Node: "n", Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			serve := func() int {
				r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
				r.Body = io.NopCloser(bytes.NewReader(body))
				r.ContentLength = tc.length
				w := httptest.NewRecorder()
				srv.ServeHTTP(w, r)
				return w.Code
			}
			if code := serve(); code != 200 { // warm up: pools, lazily built state
				t.Fatalf("status %d", code)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			code := serve()
			runtime.ReadMemStats(&after)
			if code != 200 {
				t.Fatalf("status %d", code)
			}
			ratio := float64(after.TotalAlloc-before.TotalAlloc) / float64(len(body))
			t.Logf("%s: %.1f MB allocated for a %.1f MB body (%.2fx)", tc.name, float64(after.TotalAlloc-before.TotalAlloc)/(1<<20), float64(len(body))/(1<<20), ratio)
			if ratio > 3.3 {
				t.Errorf("a %.1f MB body allocated %.2fx its size, want at most 3.3x", float64(len(body))/(1<<20), ratio)
			}
			if srv.bodyBytes.n.Load() != 0 {
				t.Errorf("body bytes held after the request: %d", srv.bodyBytes.n.Load())
			}
		})
	}
}

// TestReadAll: a body of declared size ends in a buffer of exactly that size; the buffer never
// runs more than twice ahead of what arrived, whatever was declared; a body over the maximum,
// longer than declared, or beyond the node's budget fails with the matching error.
func TestReadAll(t *testing.T) {
	const maxLen = 1 << 20
	data := bytes.Repeat([]byte("x"), 300_000)
	for _, tc := range []struct {
		name     string
		body     []byte
		size     int64
		budget   int64
		want     error
		wantCap  int
		checkCap bool
	}{
		{name: "declared size", body: data, size: int64(len(data)), want: nil, wantCap: len(data), checkCap: true},
		{name: "unknown size", body: data, size: -1},
		{name: "declared 1 MB, 300 KB sent", body: data, size: maxLen, want: io.ErrUnexpectedEOF},
		{name: "longer than declared", body: data, size: 1000, want: errLongerThanDeclared},
		{name: "over the maximum, unknown size", body: bytes.Repeat([]byte("x"), maxLen+1), size: -1, want: errTooLarge},
		{name: "exactly the maximum", body: bytes.Repeat([]byte("x"), maxLen), size: -1, wantCap: maxLen, checkCap: true},
		{name: "beyond the budget", body: data, size: int64(len(data)), budget: 200_000, want: errBusy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := &Server{maxBodyBytes: 1 << 30}
			if tc.budget > 0 {
				srv.maxBodyBytes = tc.budget
			}
			hold := bodyHold{s: srv}
			var r io.Reader = bytes.NewReader(tc.body)
			if tc.want == io.ErrUnexpectedEOF {
				r = io.MultiReader(r, errReader{io.ErrUnexpectedEOF})
			}
			start := make([]byte, 0, 16<<10)
			hold.take(int64(cap(start)))
			got, err := readAll(&peakReader{r: r, hold: &hold, t: t}, start, maxLen, tc.size, &hold)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if err == nil && !bytes.Equal(got, tc.body) {
				t.Fatalf("read %d bytes, want %d", len(got), len(tc.body))
			}
			if tc.checkCap && cap(got) != tc.wantCap {
				t.Errorf("buffer capacity %d, want exactly %d", cap(got), tc.wantCap)
			}
			if err != errBusy && hold.n != int64(cap(got)) {
				t.Errorf("held %d bytes for a buffer of %d", hold.n, cap(got))
			}
			hold.release()
			if srv.bodyBytes.n.Load() != 0 {
				t.Errorf("budget not given back: %d", srv.bodyBytes.n.Load())
			}
		})
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// peakReader checks, on every read, that the buffer held is at most twice what was read so
// far (plus the first 64 KB step).
type peakReader struct {
	r    io.Reader
	n    int64
	hold *bodyHold
	t    *testing.T
}

func (p *peakReader) Read(b []byte) (int, error) {
	if p.hold.n > 2*p.n+64<<10 {
		p.t.Errorf("%d bytes held after %d read", p.hold.n, p.n)
	}
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}
