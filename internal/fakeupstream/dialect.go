package fakeupstream

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"
)

// A dialect is a provider's own wire format (Anthropic, Gemini, Bedrock, ...), served beside
// OpenAI's: how a request names its deployment, what the usage formula reads from it, and how
// answers, streams and errors look. Counting, faults, latency and OnArrival work as for OpenAI
// paths (see the package doc).
type dialect interface {
	// parse reads a request: the deployment it is for (from the path or the body), and the
	// stream flag and text the answer and usage need. ok is false for a body it cannot read.
	parse(r *http.Request, path, body string) (dep string, req request, ok bool)
	// invalid returns the status and message that reject the request before it reaches the
	// "model" (credentials, required fields), or 0.
	invalid(u *Upstream, r *http.Request, req *request) (int, string)
	writeJSON(w http.ResponseWriter, a *answer)
	// stream sends the answer as the provider streams it; cut > 0 aborts the connection after
	// that many content events.
	stream(ctx context.Context, w http.ResponseWriter, a *answer, delay time.Duration, cut int)
	// writeError sends an error in the provider's shape.
	writeError(w http.ResponseWriter, status int, msg string)
}

// dialectRoute is a path prefix (and, when set, suffix) served by a dialect.
type dialectRoute struct {
	prefix, suffix string
	d              dialect
}

// dialects are tried in order; the first match serves the path.
var dialects = []dialectRoute{
	{prefix: "/v1/messages", d: anthropicDialect{}},
	{prefix: "/v1/responses", d: responsesDialect{}},
	{prefix: "/openai/responses", d: responsesDialect{}},
	{prefix: "/model/", suffix: "/converse", d: bedrockDialect{}},
	{prefix: "/model/", suffix: "/converse-stream", d: bedrockDialect{}},
	{prefix: "/model/", suffix: "/invoke", d: bedrockDialect{}},
	{prefix: "/model/", suffix: "/invoke-with-response-stream", d: bedrockDialect{}},
}

func dialectFor(path string) dialect {
	for _, r := range dialects {
		if strings.HasPrefix(path, r.prefix) && strings.HasSuffix(path, r.suffix) {
			return r.d
		}
	}
	return nil
}

// serveDialect answers one request of a provider's own format, in the order the package doc
// gives for OpenAI's.
func (u *Upstream) serveDialect(w http.ResponseWriter, r *http.Request, d dialect) {
	if r.Method != http.MethodPost {
		w.Header()["Allow"] = allowPost
		d.writeError(w, http.StatusMethodNotAllowed, "Method "+r.Method+" not allowed; use POST.")
		return
	}
	body, readErr := readBody(r)
	if readErr != nil && readErr != errBodyTooLarge {
		return // the client gave up before its body was complete
	}
	dep, req, parsed := d.parse(r, r.URL.Path, body)
	st := u.state(dep)
	st.count.Add(1)
	if u.opts.OnArrival != nil {
		a := Arrival{Time: time.Now(), Deployment: strings.Clone(dep), User: strings.Clone(req.user)}
		if parsed && req.hasText {
			a.Tokens = int64(max(1, req.textBytes/4))
			if !req.embeddings {
				a.Tokens += int64(u.opts.StreamChunks)
			}
		}
		u.opts.OnArrival(a)
	}
	st.last.Store(&lastRequest{method: r.Method, path: r.URL.Path, rawQuery: r.URL.RawQuery, header: r.Header, body: body})
	ctx := r.Context()
	defer func() {
		if ctx.Err() != nil {
			st.cancelled.Add(1)
		}
	}()

	f := u.fault(dep)
	if f != nil && f.Hang {
		<-ctx.Done()
		return
	}
	switch {
	case readErr == errBodyTooLarge:
		d.writeError(w, http.StatusRequestEntityTooLarge, msgBodyTooLarge)
		return
	case !parsed:
		d.writeError(w, http.StatusBadRequest, "The request body is not valid JSON.")
		return
	}
	if status, msg := d.invalid(u, r, &req); status != 0 {
		d.writeError(w, status, msg)
		return
	}
	if !u.wait(ctx, f) {
		return
	}
	if u.opts.FailRate > 0 && rand.Float64() < u.opts.FailRate && (f == nil || f.Status == 0) {
		d.writeError(w, u.opts.FailStatus, "fakeupstream: injected failure (FailRate)")
		return
	}
	if f != nil && f.Status != 0 {
		if f.retryAfter != nil {
			w.Header()["Retry-After"] = f.retryAfter
		}
		if f.Body == "" {
			d.writeError(w, f.Status, "fakeupstream: injected fault")
			return
		}
		w.Header()["Content-Type"] = f.contentType
		w.WriteHeader(f.Status)
		_, _ = w.Write([]byte(f.Body))
		return
	}
	a := &answer{st: st, id: u.nextID.Add(1), created: time.Now().Unix(), model: st.model,
		prompt: max(1, req.textBytes/4), usage: f == nil || !f.NoUsage, req: &req}
	if req.stream {
		cut := 0
		if f != nil {
			cut = min(f.StreamCut, len(st.pieces))
		}
		d.stream(ctx, w, a, u.opts.ChunkDelay, cut)
		return
	}
	d.writeJSON(w, a)
}

// startEventStream sends a stream's headers and returns what flushes its events.
func startEventStream(w http.ResponseWriter) *http.ResponseController {
	h := w.Header()
	h["Content-Type"] = eventType
	h["Cache-Control"] = noCache
	w.WriteHeader(http.StatusOK)
	return http.NewResponseController(w)
}

// eventTimer is the timer a stream reuses to wait delay before its events (see sleep); nil
// without a delay. Stop it with stopTimer.
func eventTimer(delay time.Duration) *time.Timer {
	if delay <= 0 {
		return nil
	}
	return time.NewTimer(time.Hour)
}

func stopTimer(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}
