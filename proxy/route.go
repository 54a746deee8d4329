package proxy

import (
	"bytes"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/herd-proxy/herd/proxy/provider"
	"github.com/herd-proxy/herd/routing"
	"github.com/herd-proxy/herd/state"
)

// failure is an attempt that did not answer the client and may be retried elsewhere: herd's own
// error (unreachable, timeout) or the upstream's error answer, kept to pass on if it is the last.
type failure struct {
	status        int
	apiErr        *apiError   // herd's own error; nil when the upstream answered
	body          []byte      // the upstream's error body
	header        http.Header // the upstream's response headers, passed on as llm_provider-*
	contentType   string
	retryAfterHdr string // the upstream's Retry-After and retry-after-ms, passed on as they are
	retryAfterMs  string
	retryAfter    time.Duration // the upstream's Retry-After, parsed
	contextWindow bool          // a 400 saying the prompt is too long for the model
}

// serve routes the request: deployments of the group, with num_retries retries on another
// deployment, then fallback groups (context_window_fallbacks for context-window errors), until
// one answers. With no capacity anywhere the client gets LiteLLM's 429 and a Retry-After.
func (x *exchange) serve(first *routing.Group) error {
	t := x.snap.table
	var (
		last    *failure
		wait    = time.Duration(-1) // the soonest any tried group has room again
		g       = first
		list    = t.Fallbacks(first.Name, false)
		next    int
		ctxMode bool
	)
	for {
		done, f, w, err := x.tryGroup(g)
		if done {
			return err
		}
		if f != nil {
			last = f
		}
		if w > 0 && (wait < 0 || w < wait) {
			wait = w
		}
		if f != nil && f.contextWindow && !ctxMode {
			ctxMode, list, next = true, t.Fallbacks(first.Name, true), 0
		}
		for g = nil; g == nil && next < len(list) && x.fallbacks < x.snap.maxFallbacks; next++ {
			g = t.Group(list[next]) // an unknown name was warned about at load; skip it
		}
		if g == nil {
			break
		}
		x.fallbacks++
	}
	if last != nil {
		return x.fail(last)
	}
	return x.finish(x.noCapacity(wait))
}

// tryGroup tries g's deployments: a pick, then up to num_retries retries preferring deployments
// not yet tried. done means the client has been answered. Otherwise it returns the last failure
// (nil when no call was made) and, when the group ran out of capacity, how long until it has room.
func (x *exchange) tryGroup(g *routing.Group) (done bool, last *failure, wait time.Duration, err error) {
	t, snap := x.snap.table, x.snap
	r := routing.Request{Reservation: x.reservation(g), Stream: x.req.stream, Tried: x.triedBuf[:0]}
	x.group, x.retries = g, 0
	for picks := 0; picks <= 2*len(g.Members)+snap.numRetries; picks++ {
		now := time.Now()
		i, ok := t.Pick(g, snap.counters, now, &r)
		if !ok {
			return false, last, t.RetryAfter(g, snap.counters, now, r.Reservation), nil
		}
		d := &snap.deps[i]
		ticket, err := d.counter.Admit(t.Limits(i), r.Reservation)
		if err != nil {
			r.Tried = append(r.Tried, i) // a concurrent request took the last slot: pick again
			continue
		}
		if last != nil && snap.retryAfter > 0 {
			if !x.pause(snap.retryAfter) {
				d.counter.Release(ticket)
				x.dep = d
				return true, nil, 0, x.finish(&apiError{Status: statusClientClosed, Message: "Client closed the request.", Type: "client_closed"})
			}
		}
		x.dep, x.ticket = d, ticket
		f, err := x.attempt()
		if f == nil {
			return true, nil, 0, err
		}
		last = f
		r.Tried = append(r.Tried, i)
		if f.contextWindow || x.retries >= snap.numRetries {
			return false, last, -1, nil
		}
		x.retries++
	}
	return false, last, -1, nil
}

// pause waits d before a retry (router_settings.retry_after); false if the client left.
func (x *exchange) pause(d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-x.c.Request().Context().Done():
		return false
	}
}

// attempt makes one upstream call on x.dep. A nil failure means the client has been answered.
func (x *exchange) attempt() (*failure, error) {
	dep := x.dep
	ep, body, req := x.ep, x.body, &x.req
	// A client of another API whose deployment speaks that API gets it untranslated.
	x.native = x.format != formatOpenAI && provider.Serves(dep.up, x.format.endpoint())
	if x.native {
		ep, body, req = x.format.endpoint(), x.clientBody, &x.clientReq
		x.nativeEP = ep
	}
	addUsage := !x.native && x.req.stream && !x.req.includeUsage && dep.up.StreamUsage()
	if need := len(body) + len(dep.modelJSON) + rewriteRoom; cap(*x.out) < need {
		// Sized once, where append would grow a large body's copy step by step.
		*x.out = make([]byte, 0, need)
	}
	*x.out = rewrite((*x.out)[:0], body, req, dep.modelJSON, addUsage)
	call := provider.Call{Endpoint: ep, Body: *x.out, Stream: x.req.stream}
	x.attempts++
	if x.req.stream {
		n := x.attempts
		call.Sent = func() { x.sent.Store(n) }
	}
	if x.native {
		call.ClientHeader = x.c.Request().Header
	}
	if cf, ok := dep.counter.(state.Confirmer); ok {
		// The reservation is counted as the request leaves, not only when it was admitted:
		// strict limits check the rights (and start their cooldown) there, and the gossip
		// counters move it to the bucket the upstream will count it in.
		call.Confirm = func() error {
			x.tmu.Lock()
			defer x.tmu.Unlock()
			return cf.Confirm(&x.ticket)
		}
	}

	dep.metrics.inFlight.Inc()
	defer dep.metrics.inFlight.Dec()
	x.upStart = time.Now()
	resp, err := dep.up.Do(x.c.Request().Context(), &call)
	x.translated = call.Translated
	var bad *provider.BadRequest
	if errors.As(err, &bad) {
		// The deployment's provider has no equivalent for something the client asked: the
		// client's error, and nothing reached the upstream.
		dep.counter.Release(x.confirmedTicket())
		return nil, x.finish(badRequest(bad.Message, bad.Param))
	}
	if err != nil {
		return x.callFailed(err, false), nil
	}
	defer resp.Body.Close()
	if x.req.stream && resp.StatusCode == http.StatusOK && isEventStream(resp.Header) {
		if x.sent.Load() == x.attempts {
			// The stream is this exchange's answer: no attempt follows, and this one's
			// request is out. Its buffers serve other requests while the stream lasts.
			x.releaseBodies()
		}
		return nil, x.relayStream(resp, addUsage)
	}
	return x.relayBody(resp)
}

// rewriteRoom is more than rewrite adds to a body besides the model name
// (`"model":`, `"stream_options":{"include_usage":true}` and separators).
const rewriteRoom = 64

// reservation is what every deployment of g reserves for this request: one request, and for
// a group with tpm limits the estimated prompt tokens plus max_tokens (or the configured
// default) for each of the n (or best_of) completions asked for. The parser bounds every term;
// the arithmetic saturates anyway, so no configured default can wrap it.
func (x *exchange) reservation(g *routing.Group) state.Reservation {
	if !g.TPMLimited {
		return state.Reservation{Requests: 1}
	}
	if !x.reserveReady {
		n := x.req.maxTokens
		if n == 0 {
			n = x.snap.defaultMaxTokens
		}
		x.reserve = state.Reservation{Requests: 1, Tokens: satAdd(x.req.promptTokens, satMul(n, x.req.choices))}
		x.reserveReady = true
	}
	return x.reserve
}

// satAdd is a+b, stopping at math.MaxInt64 or math.MinInt64 instead of wrapping.
func satAdd(a, b int64) int64 {
	s := a + b
	if (a >= 0) == (b >= 0) && (s >= 0) != (a >= 0) { // same signs in, the other out: wrapped
		if a >= 0 {
			return math.MaxInt64
		}
		return math.MinInt64
	}
	return s
}

// satMul is a*b for non-negative a and b, stopping at math.MaxInt64.
func satMul(a, b int64) int64 {
	if a != 0 && b > math.MaxInt64/a {
		return math.MaxInt64
	}
	return a * b
}

// noCapacity is LiteLLM's 429 when no deployment of the group has room, with a Retry-After
// (LiteLLM omits it) of the soonest moment one will, capped (see setRetryAfter).
func (x *exchange) noCapacity(wait time.Duration) *apiError {
	n := strconv.FormatInt(setRetryAfter(x.c.Response().Header(), wait), 10)
	return &apiError{
		Status:  http.StatusTooManyRequests,
		Message: "No deployments available for selected model, Try again in " + n + " seconds. Passed model=" + x.model,
		Type:    "rate_limit_error",
	}
}

const (
	hdrRetryAfter   = "Retry-After"
	hdrRetryAfterMs = "Retry-After-Ms"
)

// maxClientRetryAfter caps the wait herd itself asks a client for. The OpenAI SDKs obey a
// server's wait only below a minute (Node: < 60 s, Python: <= 60 s) and otherwise retry after
// their own backoff of a second or less — at once, into another 429, and give up. A window
// that has just filled is free again only after a minute, so a client told 59 s may still
// meet a full group; it is then told the (short) rest, which beats never waiting at all.
const maxClientRetryAfter = 59 * time.Second

// setRetryAfter asks the client to retry after d (d <= 0: unknown, a second): Retry-After in
// whole seconds, rounded up, and retry-after-ms, which the OpenAI SDKs read first, in
// milliseconds, rounded up — both for the same wait, at most maxClientRetryAfter. It returns
// the seconds sent.
func setRetryAfter(h http.Header, d time.Duration) int64 {
	if d <= 0 {
		d = time.Second
	}
	d = min(d, maxClientRetryAfter)
	secs := int64((d + time.Second - 1) / time.Second)
	ms := int64((d + time.Millisecond - 1) / time.Millisecond)
	h[hdrRetryAfter] = []string{strconv.FormatInt(secs, 10)}
	h[hdrRetryAfterMs] = []string{strconv.FormatInt(ms, 10)}
	return secs
}

// Header values for the sheds' fixed one-second wait, shared read-only.
var (
	oneSecondHdr   = []string{"1"}
	oneSecondMsHdr = []string{"1000"}
)

// retryInASecond is setRetryAfter(h, time.Second) without allocating: sheds happen under load.
func retryInASecond(h http.Header) {
	h[hdrRetryAfter] = oneSecondHdr
	h[hdrRetryAfterMs] = oneSecondMsHdr
}

// parseRetryAfter reads a Retry-After header in seconds (the HTTP-date form is rare from LLM APIs).
// A value too large for a Duration saturates rather than wrapping negative; the cooldown
// caps it (router_settings.max_cooldown_time).
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseFloat(v, 64); err == nil && n > 0 {
		if n >= float64(math.MaxInt64)/float64(time.Second) {
			return math.MaxInt64
		}
		return time.Duration(n * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}

// isContextWindowError recognises OpenAI's and Azure's "prompt too long" 400, and Anthropic's
// (a Messages API request passed through; translations map theirs to OpenAI's code).
func isContextWindowError(body []byte) bool {
	return bytes.Contains(body, []byte("context_length_exceeded")) ||
		bytes.Contains(body, []byte("maximum context length")) ||
		bytes.Contains(body, []byte("prompt is too long"))
}

// smallInts are header values for retry and fallback counts, shared read-only.
var smallInts = func() [][]string {
	v := make([][]string, 16)
	for i := range v {
		v[i] = []string{strconv.Itoa(i)}
	}
	return v
}()

func smallInt(n int) []string {
	if n < len(smallInts) {
		return smallInts[n]
	}
	return []string{strconv.Itoa(n)}
}
