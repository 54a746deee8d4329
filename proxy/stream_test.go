package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

const streamModel = `
model_list:
  - model_name: m
    litellm_params: {model: openai/up, api_base: "{{UP}}"}
`

const streamRequest = `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`

func chunk(i int) string {
	return fmt.Sprintf("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w%d \"}}],\"usage\":null}\n\n", i)
}

// An upstream that sends one event and waits for the client to have it before sending the
// next: herd must pass each on at once, never hold one for company.
func TestStreamEventsGoOutOneByOne(t *testing.T) {
	needsServers(t)
	const n = 5
	got := make(chan int, n)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range n {
			fmt.Fprint(w, chunk(i))
			w.(http.Flusher).Flush()
			select {
			case j := <-got:
				if j != i {
					t.Errorf("client got event %d while the upstream sent %d", j, i)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("event %d did not reach the client within 5s: herd held it", i)
				return
			}
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	defer up.Close()
	h := startHerd(t, streamModel, up.URL, nil)

	resp, err := http.Post(h.URL+"/v1/chat/completions", "application/json", strings.NewReader(streamRequest))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	events := 0
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") || line == "data: [DONE]" {
			continue
		}
		if strings.Contains(line, `"usage"`) {
			t.Errorf("the client did not ask for usage but got %s", line)
		}
		got <- events
		events++
	}
	if events != n {
		t.Errorf("client got %d events, want %d", events, n)
	}
}

// flushCounter is a ResponseWriter that counts flushes and what was written before each.
type flushCounter struct {
	mu      sync.Mutex
	h       http.Header
	pending int      // bytes written since the last flush
	flushes []string // per flush: how many events it carried
	body    strings.Builder
}

func (f *flushCounter) Header() http.Header { return f.h }
func (f *flushCounter) WriteHeader(int)     {}
func (f *flushCounter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending += strings.Count(string(p), "data: ")
	f.body.Write(p)
	return len(p), nil
}

func (f *flushCounter) Flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending > 0 {
		f.flushes = append(f.flushes, fmt.Sprint(f.pending))
	}
	f.pending = 0
}

// Events that reach herd together leave together: one flush (one write to the client) for a
// burst, where there used to be one per event. An event alone is still flushed at once.
func TestStreamEventsThatArriveTogetherLeaveTogether(t *testing.T) {
	needsServers(t)
	release, abort := make(chan struct{}), make(chan struct{})
	wait := func() bool {
		select {
		case <-release:
			return true
		case <-abort: // the test failed: let the server close
			return false
		}
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		var burst strings.Builder
		for i := range 10 {
			burst.WriteString(chunk(i))
		}
		_, _ = io.WriteString(w, burst.String()) // one write: one read for herd
		w.(http.Flusher).Flush()
		if !wait() {
			return
		}
		fmt.Fprint(w, chunk(10))
		w.(http.Flusher).Flush()
		if !wait() {
			return
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	defer up.Close()
	defer close(abort) // before up.Close, which waits for the handler
	lengthenEndHold(t)
	h := startHerd(t, streamModel, up.URL, nil)

	w := &flushCounter{h: http.Header{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(streamRequest))
		r.Header.Set("Content-Type", "application/json")
		h.srv.ServeHTTP(w, r)
	}()
	flushed := func(n int) {
		t.Helper()
		poll(t, fmt.Sprintf("%d flushes", n), func() bool {
			w.mu.Lock()
			defer w.mu.Unlock()
			return len(w.flushes) >= n
		})
	}
	flushed(1)
	release <- struct{}{} // the lone event must go out before the upstream sends anything more
	flushed(2)
	release <- struct{}{}
	<-done
	w.mu.Lock()
	defer w.mu.Unlock()
	if got := strings.Join(w.flushes, " "); got != "10 1" {
		t.Errorf("events per flush: %s, want 10 1 (the burst, the lone event; [DONE] is left for the server's last write)\n%s", got, w.body.String())
	}
	if !strings.HasSuffix(w.body.String(), "data: [DONE]\n\n") {
		t.Errorf("the stream does not end with [DONE]:\n%s", w.body.String())
	}
}

// lengthenEndHold makes a stream's [DONE] wait as long as a test may take for the upstream
// to end its body, so that the timer never flushes it in a test about the write it shares.
func lengthenEndHold(t *testing.T) {
	old := endHoldMax
	endHoldMax = time.Minute
	t.Cleanup(func() { endHoldMax = old })
}

// A stream's [DONE] and the chunk that ends the response body leave in one write to the
// client, where a plain reverse proxy flushes [DONE] and then writes the end on its own.
func TestStreamEndLeavesInOneWrite(t *testing.T) {
	needsServers(t)
	got, abort := make(chan struct{}), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 { // one at a time, as a model writes them
			fmt.Fprint(w, chunk(i))
			w.(http.Flusher).Flush()
			select {
			case <-got:
			case <-abort:
				return
			}
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
		w.(http.Flusher).Flush() // the body's end leaves in a later write
	}))
	defer up.Close()
	defer close(abort) // before up.Close, which waits for the handler
	lengthenEndHold(t)
	_, addr, cl := startCounted(t, strings.ReplaceAll(streamModel, "{{UP}}", up.URL))

	resp, err := http.Post("http://"+addr+"/v1/chat/completions", "application/json", strings.NewReader(streamRequest))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 3; {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if strings.HasPrefix(line, "data: {") {
			got <- struct{}{}
			i++
		}
	}
	rest, err := io.ReadAll(br) // to the end of the chunked body
	if err != nil || !strings.HasSuffix(string(rest), "data: [DONE]\n\n") {
		t.Fatalf("the stream's end %q, %v: want [DONE]", rest, err)
	}
	writes := cl.allWrites()
	last := writes[len(writes)-1]
	if !strings.Contains(last, "data: [DONE]") || !strings.HasSuffix(last, "0\r\n\r\n") {
		t.Errorf("the last write to the client is %q; want [DONE] and the end of the body together\nall writes: %q", last, writes)
	}
	if n := strings.Count(strings.Join(writes, ""), "data: [DONE]"); n != 1 {
		t.Errorf("[DONE] written %d times", n)
	}
}

// An upstream whose events end in a later write than their data line (the blank line comes
// after a pause): each event still leaves herd whole, in one write, and never before its end.
func TestStreamEventEndingInALaterRead(t *testing.T) {
	needsServers(t)
	const n = 3
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range n {
			ev := chunk(i)
			fmt.Fprint(w, ev[:len(ev)-1]) // the data line
			w.(http.Flusher).Flush()
			<-time.After(10 * time.Millisecond) // the upstream's pause, so that herd reads it alone
			fmt.Fprint(w, "\n")                 // the blank line that ends the event
			w.(http.Flusher).Flush()
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	defer up.Close()
	_, addr, cl := startCounted(t, strings.ReplaceAll(streamModel, "{{UP}}", up.URL))

	resp, err := http.Post("http://"+addr+"/v1/chat/completions", "application/json", strings.NewReader(streamRequest))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := range n {
		want.WriteString(strings.Replace(chunk(i), `,"usage":null`, "", 1))
	}
	want.WriteString("data: [DONE]\n\n")
	if string(body) != want.String() {
		t.Errorf("client got\n%s\nwant\n%s", body, want.String())
	}
	for _, w := range cl.allWrites() {
		if strings.Contains(w, "data: {") && !strings.Contains(w, "\n\n") {
			t.Errorf("a write to the client carries an event without its end: %q", w)
		}
	}
}

// A stream that ends without usage is estimated from the text its chunks carry, however a
// chunk writes it: plainly, with spaces around the colon or with escapes (parsed), or not at
// all (a finish chunk, counted as nothing). Both streams carry 28 bytes of text.
func TestStreamEstimateReadsEveryWayTextIsWritten(t *testing.T) {
	needsServers(t)
	ev := func(delta string) string {
		return `data: {"id":"c","choices":[{"index":0,"delta":` + delta + `}],"usage":null}` + "\n\n"
	}
	finish := `data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}` + "\n\n"
	streams := map[string]string{
		"plain": ev(`{"content":"abcdefghijklmnopqrstuvwxyz12"}`) + finish,
		"mixed": ev(`{"content":"abcd"}`) + ev(`{"content" : "efghijklmnopqrstuvwx"}`) + ev(`{"content":"y\"z1"}`) + finish,
	}
	tokens := map[string]int64{}
	for name, stream := range streams {
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, stream+"data: [DONE]\n\n")
		}))
		h := startHerd(t, streamModel, up.URL, nil)
		resp, out := post(t, h.URL+"/v1/chat/completions", streamRequest)
		up.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d: %s", name, resp.StatusCode, out)
		}
		h.settled(t)
		tokens[name] = h.tokens(0)
	}
	if tokens["mixed"] != tokens["plain"] || tokens["plain"] == 0 {
		t.Errorf("tokens counted: %v; want the same for both, not 0", tokens)
	}
}

// An upstream that sends [DONE] and then keeps its body open does not keep [DONE] from the
// client for longer than endHoldMax.
func TestStreamEndIsFlushedWhenTheUpstreamLingers(t *testing.T) {
	needsServers(t)
	linger := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, chunk(0)+"data: [DONE]\n\n")
		w.(http.Flusher).Flush()
		<-linger
	}))
	defer up.Close()
	defer close(linger) // before up.Close, which waits for the handler
	h := startHerd(t, streamModel, up.URL, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL+"/v1/chat/completions", strings.NewReader(streamRequest))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req) // the head leaves with the first event, held too
	if err != nil {
		t.Fatalf("no answer while the upstream kept its body open: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if sc.Text() == "data: [DONE]" {
			return
		}
	}
	t.Fatalf("no [DONE] while the upstream kept its body open: %v", sc.Err())
}

func TestEventWaiting(t *testing.T) {
	for in, want := range map[string]bool{
		"data: a\n\ndata: b\n\n":         true,
		"data: a\n\ndata: b\n":           false, // the next event is incomplete
		"data: a\n\ndata: b":             false,
		"data: a\r\n\r\ndata: b\r\n\r\n": true,
		"data: a\n\n":                    false,
	} {
		br := bufio.NewReaderSize(strings.NewReader(in), 64)
		if _, err := br.ReadSlice('\n'); err != nil { // data: a
			t.Fatal(err)
		}
		if _, err := br.ReadSlice('\n'); err != nil { // the blank line that ends it
			t.Fatal(err)
		}
		if got := eventWaiting(br); got != want {
			t.Errorf("%q: eventWaiting after the first event = %v, want %v", in, got, want)
		}
	}
}

// A stream in flight holds no body buffer once its request is out: the node's body budget
// (max_inflight_request_mb) gets its bytes back while the stream goes on.
func TestStreamReleasesBodiesOnceSent(t *testing.T) {
	needsServers(t)
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, chunk(0))
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	defer up.Close()
	var once sync.Once
	done := func() { once.Do(func() { close(release) }) }
	defer done() // before up.Close, which waits for the handler
	h := startHerd(t, streamModel, up.URL, nil)
	resp, err := http.Post(h.URL+"/v1/chat/completions", "application/json", strings.NewReader(streamRequest))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first event: %q %v", line, err)
	}
	poll(t, "the stream's body buffers released", func() bool { return h.srv.bodyBytes.n.Load() == 0 })
	done()
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
}

func TestBodyBuffersBySize(t *testing.T) {
	for _, tc := range []struct{ size, want int64 }{
		{0, 1 << 10}, {170, 1 << 10}, {1<<10 + 1, 4 << 10}, {4 << 10, 4 << 10}, {4<<10 + 1, 16 << 10}, {-1, 16 << 10},
		{100 << 10, 256 << 10}, {32 << 20, 1 << 20},
	} {
		b := getBuf(tc.size)
		if int64(cap(*b)) < tc.want || len(*b) != 0 {
			t.Errorf("getBuf(%d): len %d cap %d, want an empty buffer of cap %d", tc.size, len(*b), cap(*b), tc.want)
		}
		putBuf(b)
	}
	// A grown buffer goes back to the class its capacity fills: a 20 KB one serves 16 KB asks.
	big := make([]byte, 20<<10)
	putBuf(&big)
	for range 3 { // sync.Pool may drop it; it never hands out less than the class
		if b := getBuf(16 << 10); cap(*b) < 16<<10 || len(*b) != 0 {
			t.Fatalf("getBuf(16 KB) after putting a 20 KB buffer: len %d cap %d", len(*b), cap(*b))
		}
	}
}

// The content length for the token estimate: found by a byte search when the text has no
// escapes, else left to the parser (-1), whose unescaped length the estimate has always used.
func TestPlainFieldLen(t *testing.T) {
	for in, want := range map[string]int{
		`{"choices":[{"delta":{"content":"hello"}}]}`:                       5,
		`{"choices":[{"delta":{"role":"assistant","content":""}}]}`:         0,
		`{"choices":[{"delta":{"content":"a\"b"}}]}`:                        -1,
		`{"choices":[{"delta":{"content":null}}]}`:                          -1,
		`{"choices":[{"delta":{"tool_calls":[{"x":"\"content\":\"zz"}]}}]}`: -1,
		`{"choices":[{"delta":{}}],"usage":{"total_tokens":3}}`:             -1,
		`{"choices":[{"delta":{"content":"unterminated`:                     -1,
	} {
		if got := plainFieldLen([]byte(in), contentField); got != want {
			t.Errorf("%s: %d, want %d", in, got, want)
		}
	}
}

// An upstream whose connection breaks after [DONE] leaves herd writing on its own: the hold's
// timer (here as short as it gets, so that it fires while herd handles the failed read) no
// longer touches the response, and the client has [DONE]. Run with -race.
func TestStreamBreakAfterDoneIsTheRelaysAlone(t *testing.T) {
	needsServers(t)
	old := endHoldMax
	endHoldMax = time.Nanosecond
	t.Cleanup(func() { endHoldMax = old })
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, chunk(0))
		w.(http.Flusher).Flush()
		fmt.Fprint(w, "data: [DONE]\n\n")
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close() // no end of the chunked body: herd's next read fails
		}
	}))
	defer up.Close()
	for range 5 { // a fresh herd each time: the broken stream cools the deployment down
		h := startHerd(t, streamModel, up.URL, nil)
		resp, body := post(t, h.URL+"/v1/chat/completions", streamRequest)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "data: [DONE]") {
			t.Fatalf("status %d, body %q: want the stream with its [DONE]", resp.StatusCode, body)
		}
	}
}
