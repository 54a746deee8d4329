package proxy

import (
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/proxy/provider"
	"github.com/herd-proxy/herd/state"
)

// Header names, canonical so they can be assigned to http.Header without re-canonicalising.
const (
	hdrModelID     = "X-Litellm-Model-Id"
	hdrModelGroup  = "X-Litellm-Model-Group"
	hdrModelBase   = "X-Litellm-Model-Api-Base"
	hdrOverhead    = "X-Litellm-Overhead-Duration-Ms"
	hdrNode        = "X-Herd-Node"
	hdrContentType = "Content-Type"
)

var (
	jsonHdr        = []string{"application/json"}
	eventStreamHdr = []string{"text/event-stream"}
	noCacheHdr     = []string{"no-cache"}
	noBufferHdr    = []string{"no"}
)

// bufPool recycles request and response body buffers; bodies of LLM calls are mostly small.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) > 1<<20 {
		return // let rare huge bodies go to the GC rather than pinning them
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}

// readAll appends r's content to buf, failing with errTooLarge past max bytes.
func readAll(r io.Reader, buf []byte, max int64) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > max {
			return buf, errTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

var errTooLarge = errors.New("body too large")

// exchange is one LLM request on its way through herd.
type exchange struct {
	s       *Server
	c       echo.Context
	ep      provider.Endpoint
	start   time.Time
	body    []byte // the client's body, untouched
	req     request
	dep     *deployment
	ticket  state.Ticket
	upStart time.Time
}

// llm returns the handler for an OpenAI endpoint: read the few fields herd needs, route,
// admit, call the upstream, pass its answer back, settle usage.
func (s *Server) llm(ep provider.Endpoint) echo.HandlerFunc {
	return func(c echo.Context) error {
		x := exchange{s: s, c: c, ep: ep, start: time.Now()}
		r := c.Request()
		snap := s.snap.Load()

		if r.ContentLength > s.maxBody {
			return s.reject(x.tooLarge())
		}
		bp := getBuf()
		defer putBuf(bp)
		body, err := readAll(r.Body, *bp, s.maxBody)
		*bp = body
		switch {
		case errors.Is(err, errTooLarge):
			return s.reject(x.tooLarge())
		case err != nil:
			return s.reject(badRequest("Could not read the request body: "+err.Error(), ""))
		}
		x.body = body
		if x.req, err = parseRequest(body); err != nil {
			return s.reject(badRequest(err.Error(), ""))
		}
		model := x.req.model
		if p := c.Param("model"); p != "" {
			model = p // /engines/{model}/... and Azure-style /openai/deployments/{model}/...
		}
		if model == "" {
			return s.reject(badRequest("'model' is required: name a model group. Call /v1/models to view available models.", "model"))
		}
		dec, err := snap.table.Route(model)
		if err != nil {
			return s.reject(badRequest(err.Error(), "model"))
		}
		x.dep = &snap.deps[dec.Deployment]
		return x.serve()
	}
}

func (x *exchange) tooLarge() *apiError {
	return &apiError{
		Status:  http.StatusRequestEntityTooLarge,
		Message: "Request body is too large: the limit is " + strconv.FormatInt(x.s.maxBody>>20, 10) + " MB (general_settings.max_request_size_mb).",
		Type:    "invalid_request_error",
	}
}

// reject answers a request that failed before a deployment was chosen.
func (s *Server) reject(e *apiError) error {
	s.metrics.countUnrouted("", e.Status)
	return e
}

func (x *exchange) serve() error {
	s, dep, m := x.s, x.dep, x.dep.metrics
	m.inFlight.Inc()
	defer m.inFlight.Dec()

	var err error
	x.ticket, err = s.state.Admit(dep.cfg.ID, state.Reservation{Requests: 1, Tokens: x.reserveTokens()})
	if err != nil {
		var nc *state.NoCapacityError
		if errors.As(err, &nc) {
			return x.finish(x.noCapacity(nc))
		}
		return x.finish(&apiError{Status: http.StatusServiceUnavailable, Message: "Usage could not be recorded: " + err.Error(), Type: "service_unavailable"})
	}

	ob := getBuf()
	defer putBuf(ob)
	addUsage := x.req.stream && !x.req.includeUsage && dep.up.StreamUsage()
	*ob = rewrite(*ob, x.body, &x.req, dep.modelJSON, addUsage)
	call := provider.Call{Endpoint: x.ep, Body: *ob, Stream: x.req.stream}

	x.upStart = time.Now()
	resp, err := dep.up.Do(x.c.Request().Context(), &call)
	if err != nil {
		return x.finish(x.upstreamFailed(err, false))
	}
	defer resp.Body.Close()
	if x.req.stream && resp.StatusCode == http.StatusOK && isEventStream(resp.Header) {
		return x.relayStream(resp, addUsage)
	}
	return x.relayBody(resp)
}

// reserveTokens is the tpm reserved before the call: the prompt estimate plus max_tokens (or
// the configured default). It is only computed for deployments that have a tpm limit.
func (x *exchange) reserveTokens() int64 {
	if x.dep.cfg.Limits.TPM == 0 {
		return 0
	}
	n := x.req.maxTokens
	if n == 0 {
		n = x.s.defaultMaxTokens
	}
	return provider.EstimatePromptTokens(x.body) + n
}

func (x *exchange) noCapacity(nc *state.NoCapacityError) *apiError {
	secs := int64(math.Ceil(nc.RetryAfter.Seconds()))
	if secs < 1 {
		secs = 1
	}
	x.c.Response().Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	return &apiError{
		Status:  http.StatusTooManyRequests,
		Message: "No deployments available for selected model, Try again in " + strconv.FormatInt(secs, 10) + " seconds. Passed model=" + x.dep.cfg.ModelName,
		Type:    "rate_limit_error",
	}
}

// upstreamFailed handles a call that got no complete response. The reservation is kept when
// the request reached, or may have reached, the upstream (a response began, or a timeout), and
// released when it never did.
func (x *exchange) upstreamFailed(err error, reached bool) *apiError {
	kind := provider.KindOf(err)
	if reached || kind == provider.Timeout {
		x.s.state.Settle(x.ticket, state.Usage{PromptTokens: x.ticket.Reserved.Tokens})
	} else {
		x.s.state.Release(x.ticket)
	}
	if kind == provider.Canceled {
		return &apiError{Status: statusClientClosed, Message: "Client closed the request.", Type: "client_closed"}
	}
	status := statusOf(err)
	x.dep.health.record(status, time.Now())
	msg := "Upstream deployment " + x.dep.cfg.ID + " of model group " + x.dep.cfg.ModelName
	if status == http.StatusGatewayTimeout {
		return &apiError{Status: status, Message: msg + " timed out.", Type: "timeout"}
	}
	return &apiError{Status: status, Message: msg + " is unreachable: " + err.Error(), Type: "api_connection_error"}
}

// statusOf maps an upstream call failure to the status the client gets.
func statusOf(err error) int {
	if provider.KindOf(err) == provider.Timeout {
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// statusClientClosed is nginx's convention for a client that left before the answer.
const statusClientClosed = 499

// finish answers with e (headers not yet written) and records the request.
func (x *exchange) finish(e *apiError) error {
	x.setHeaders(time.Since(x.start))
	x.record(e.Status, state.Usage{}, time.Since(x.start))
	if e.Status == statusClientClosed {
		return nil // nobody is listening
	}
	writeError(x.c.Response(), e)
	return nil
}

// setHeaders adds LiteLLM's routing headers and herd's node header.
func (x *exchange) setHeaders(overhead time.Duration) {
	h := x.c.Response().Header()
	h[hdrModelID] = x.dep.idHdr
	h[hdrModelGroup] = x.dep.groupHdr
	if x.dep.baseHdr != nil {
		h[hdrModelBase] = x.dep.baseHdr
	}
	h[hdrNode] = x.s.node
	h[hdrOverhead] = []string{strconv.FormatFloat(float64(overhead.Microseconds())/1000, 'f', 3, 64)}
}

// record updates metrics for a finished request.
func (x *exchange) record(status int, u state.Usage, overhead time.Duration) {
	m := x.dep.metrics
	m.count(status)
	m.duration.Observe(time.Since(x.start).Seconds())
	m.overhead.Observe(overhead.Seconds())
	if u.PromptTokens > 0 {
		m.promptTokens.Add(float64(u.PromptTokens))
	}
	if u.CompletionTokens > 0 {
		m.completionTokens.Add(float64(u.CompletionTokens))
	}
}

// relayBody passes a complete (non-streaming) upstream answer back: success bodies byte for
// byte; error statuses with their body when it is JSON, wrapped in OpenAI's shape when not.
func (x *exchange) relayBody(resp *http.Response) error {
	rb := getBuf()
	defer putBuf(rb)
	data, err := readAll(resp.Body, *rb, x.s.maxResp)
	*rb = data
	upstream := time.Since(x.upStart)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			x.s.state.Settle(x.ticket, state.Usage{PromptTokens: x.ticket.Reserved.Tokens})
			return x.finish(&apiError{Status: http.StatusBadGateway, Message: "Upstream response is larger than general_settings.max_response_size_mb.", Type: "api_error"})
		}
		return x.finish(x.upstreamFailed(err, true))
	}
	status := resp.StatusCode
	var usage state.Usage
	if status < 300 {
		var ok bool
		if usage, ok = provider.ParseUsage(data); !ok {
			usage = state.Usage{PromptTokens: provider.EstimatePromptTokens(x.body), CompletionTokens: provider.EstimateTokens(len(data))}
		}
	}
	x.s.state.Settle(x.ticket, usage)
	x.dep.health.record(status, time.Now())

	w := x.c.Response()
	h := w.Header()
	if status >= 400 && !gjson.ValidBytes(data) {
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			h.Set("Retry-After", ra)
		}
		return x.finish(&apiError{Status: status, Message: "Upstream returned " + strconv.Itoa(status) + ": " + snippet(data), Type: "api_error"})
	}
	if ct := resp.Header[hdrContentType]; len(ct) > 0 {
		h[hdrContentType] = ct
	} else {
		h[hdrContentType] = jsonHdr
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		h.Set("Retry-After", ra)
	}
	h["Content-Length"] = []string{strconv.Itoa(len(data))}
	overhead := time.Since(x.start) - upstream
	x.setHeaders(overhead)
	w.WriteHeader(status)
	_, _ = w.Write(data)
	x.record(status, usage, overhead)
	return nil
}

// snippet is a short, single-line excerpt of a non-JSON upstream body for an error message.
func snippet(b []byte) string {
	const max = 200
	if len(b) > max {
		b = b[:max]
	}
	out := make([]rune, 0, len(b))
	for _, r := range string(b) {
		if r < 0x20 {
			r = ' '
		}
		out = append(out, r)
	}
	return string(out)
}

func isEventStream(h http.Header) bool {
	ct := h.Get(hdrContentType)
	return len(ct) >= 17 && ct[:17] == "text/event-stream"
}
