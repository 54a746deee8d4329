package proxy

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/herd-proxy/herd/proxy/provider"
	"github.com/herd-proxy/herd/routing"
	"github.com/herd-proxy/herd/state"
)

// Header names, canonical so they can be assigned to http.Header without re-canonicalising.
const (
	hdrModelID     = "X-Litellm-Model-Id"
	hdrModelGroup  = "X-Litellm-Model-Group"
	hdrModelBase   = "X-Litellm-Model-Api-Base"
	hdrOverhead    = "X-Litellm-Overhead-Duration-Ms"
	hdrNode        = "X-Herd-Node"
	hdrRetries     = "X-Litellm-Attempted-Retries"
	hdrFallbacks   = "X-Litellm-Attempted-Fallbacks"
	hdrContentType = "Content-Type"
)

var (
	jsonHdr        = []string{"application/json"}
	eventStreamHdr = []string{"text/event-stream"}
	noCacheHdr     = []string{"no-cache"}
	noBufferHdr    = []string{"no"}
)

// Body buffers are pooled by size class: request and answer bodies of LLM calls are mostly a
// few KB, and a buffer sized for the body it holds keeps both memory and the body budget
// (max_inflight_request_mb) to what is needed. A body of unknown length starts in the
// default class and grows as it must.
var bufClasses = [...]int{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}

const defaultBufClass = 2 // 16 KB, for a body of unknown length

var bufPools [len(bufClasses)]sync.Pool

// getBuf returns an empty buffer with room for size bytes (size < 0: unknown), up to the
// largest class.
func getBuf(size int64) *[]byte {
	c := defaultBufClass
	if size >= 0 {
		c = len(bufClasses) - 1
		for i, n := range bufClasses {
			if size <= int64(n) {
				c = i
				break
			}
		}
	}
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, bufClasses[c])
	return &b
}

// putBuf returns b to the class its capacity fills.
func putBuf(b *[]byte) {
	n := cap(*b)
	if n > bufClasses[len(bufClasses)-1] || n < bufClasses[0] {
		return // let rare huge bodies go to the GC rather than pinning them
	}
	c := 0
	for i, size := range bufClasses {
		if n >= size {
			c = i
		}
	}
	*b = (*b)[:0]
	bufPools[c].Put(b)
}

// readAll appends r's content to buf, failing with errTooLarge past maxLen bytes. size is the
// length the sender declared (Content-Length; -1 unknown): the buffer never grows past it,
// so a body of known size ends in a buffer of exactly its size. The buffer doubles as it
// fills — never more than twice what has arrived, whatever was declared — where append's
// growth (1.25x for large slices) would copy a 32 MB body about 20 times. hold, if not nil,
// must grant every byte of capacity added, else readAll fails with errBusy.
func readAll(r io.Reader, buf []byte, maxLen, size int64, hold *bodyHold) ([]byte, error) {
	limit := maxLen
	if size >= 0 && size < limit {
		limit = size
	}
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= limit {
				// All that may come is in: read on to the end, which must come now (net/http
				// learns from it that the body is done and starts watching for a departed
				// client).
				var one [1]byte
				n, err := r.Read(one[:])
				switch {
				case n > 0 && size >= 0 && size <= maxLen:
					return buf, errLongerThanDeclared
				case n > 0:
					return buf, errTooLarge
				case err == io.EOF:
					return buf, nil
				case err != nil:
					return buf, err
				}
				continue
			}
			n := min(max(2*int64(cap(buf)), 64<<10), limit)
			if hold != nil && !hold.take(n-int64(cap(buf))) {
				return buf, errBusy
			}
			grown := make([]byte, len(buf), n)
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > maxLen {
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

var (
	errLongerThanDeclared = errors.New("the body is longer than its Content-Length")
	errBusy               = errors.New("node-wide request body budget exhausted")
)

var errTooLarge = errors.New("body too large")

// clientFormat is the API a client spoke: OpenAI's, or one herd reads as chat and answers
// in (provider/messages.go, provider/responses.go).
type clientFormat uint8

const (
	formatOpenAI    clientFormat = iota
	formatMessages               // Anthropic's Messages API, /v1/messages
	formatResponses              // OpenAI's Responses API, /v1/responses
)

// clientStream rewrites chat chunks as the client format's stream events.
type clientStream interface {
	Chunk(dst, data []byte) []byte
	End(dst []byte) []byte
}

// exchange is one LLM request on its way through herd, across its retries and fallbacks.
type exchange struct {
	s      *Server
	c      echo.Context
	ep     provider.Endpoint
	format clientFormat
	// The client's own body and its fields, for a client of another API (format); body and
	// req are then the chat request it was read as.
	clientBody []byte
	clientReq  request
	// native: the current attempt's deployment speaks the client's API (nativeEP), and gets
	// and answers the client's own body.
	native   bool
	nativeEP provider.Endpoint
	start    time.Time
	body     []byte // the client's body, untouched
	req      request
	snap     *snapshot
	model    string // the model as the client named it

	// The current attempt.
	group  *routing.Group
	dep    *deployment
	ticket state.Ticket
	// tmu guards ticket while a call may confirm it (state.Confirmer) from the transport's
	// goroutine, which can outlive a failed round trip.
	tmu sync.Mutex
	// unsettled is the ticket's reserved tokens minus the real usage while the settle is
	// still to come (the answer is written first); the rate-limit headers account for it.
	unsettled int64
	upStart   time.Time
	// translated is the current attempt's time spent translating to and from its provider's
	// format: inside the upstream call's time, but herd's overhead.
	translated time.Duration

	reserve      state.Reservation // computed once: every deployment reserves the same
	reserveReady bool
	retries      int // retries made in the current group
	fallbacks    int // fallback groups tried
	triedBuf     [8]int

	// Buffers from bufPool: the client's body (in) and the upstream body (out, reused across
	// attempts), and the share of the node's body budget they hold (releaseBodies).
	in, out *[]byte
	hold    bodyHold
	// attempts numbers the upstream calls; sent is the number of the last call whose request
	// was completely written (provider.Call.Sent, set from the transport's goroutine, which
	// can report a call that has already failed while the next one runs).
	attempts int64
	sent     atomic.Int64
}

// confirmedTicket is the current attempt's ticket as its call's Confirm left it.
func (x *exchange) confirmedTicket() state.Ticket {
	x.tmu.Lock()
	defer x.tmu.Unlock()
	return x.ticket
}

// llm returns the handler for an OpenAI endpoint: read the few fields herd needs, route,
// admit, call the upstream, pass its answer back, settle usage.
func (s *Server) llm(ep provider.Endpoint) echo.HandlerFunc { return s.llmAs(ep, formatOpenAI) }

// llmAs is llm for a client format read as chat (ep ChatCompletions) and answered in kind.
func (s *Server) llmAs(ep provider.Endpoint, format clientFormat) echo.HandlerFunc {
	serve := s.serveLLM
	if format == formatMessages {
		serve = s.serveMessages
	}
	return func(c echo.Context) error {
		return serve(&exchange{s: s, c: c, ep: ep, format: format, start: time.Now()})
	}
}

// serveMessages is serveLLM for a Messages API client: errors refused before routing come
// in the Messages shape too.
func (s *Server) serveMessages(x *exchange) error {
	err := s.serveLLM(x)
	var ae *apiError
	if !errors.As(err, &ae) || x.c.Response().Committed {
		return err
	}
	writeRaw(x.c.Response(), ae.Status, provider.MessagesError(ae.Status, ae.body()))
	return nil
}

func (s *Server) serveLLM(x *exchange) error {
	c, format := x.c, x.format
	r := c.Request()
	snap := s.snap.Load()

	if r.ContentLength > s.maxBody {
		return s.reject(x.tooLarge())
	}
	bp := getBuf(r.ContentLength)
	x.in, x.hold = bp, bodyHold{s: s}
	defer x.releaseBodies()
	if !x.hold.take(int64(cap(*bp))) {
		return s.shedBody(c)
	}
	body, err := readAll(r.Body, *bp, s.maxBody, r.ContentLength, &x.hold)
	*bp = body
	switch {
	case errors.Is(err, errTooLarge):
		return s.reject(x.tooLarge())
	case errors.Is(err, errBusy):
		return s.shedBody(c)
	case err != nil:
		return s.reject(s.bodyReadError(err))
	}
	x.body = body
	if format != formatOpenAI {
		if x.body, err = toChat(format, body); err != nil {
			return x.reject(err)
		}
		var bad *apiError
		if x.clientReq, bad = parseRequest(body); bad != nil {
			return s.reject(bad)
		}
		x.clientBody = body
	}
	var bad *apiError
	if x.req, bad = parseRequest(x.body); bad != nil {
		return s.reject(bad)
	}
	model := x.req.model
	if p := c.Param("model"); p != "" {
		model = p // /engines/{model}/... and Azure-style /openai/deployments/{model}/...
	}
	if model == "" {
		return s.reject(badRequest("'model' is required: name a model group. Call /v1/models to view available models.", "model"))
	}
	g, err := snap.table.Resolve(model)
	if err != nil {
		return s.reject(badRequest(err.Error(), "model"))
	}
	x.snap, x.model = snap, model
	x.out = getBuf(int64(len(x.body) + len(model) + rewriteRoom)) // what rewrite writes, model name included
	return x.serve(g)
}

// releaseBodies returns the request and upstream body buffers to their pool and their bytes to
// the node's body budget. A stream does it as soon as its request has been sent (the transport
// never reads a sent body again, and no other attempt follows), so a stream in flight holds
// neither; every exchange does it when it ends. The request's fields that view the body go too.
func (x *exchange) releaseBodies() {
	if x.in != nil {
		putBuf(x.in)
		x.in = nil
	}
	if x.out != nil {
		putBuf(x.out)
		x.out = nil
	}
	x.hold.release()
	x.body, x.clientBody, x.req.model, x.clientReq.model, x.model = nil, nil, "", "", ""
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

// callFailed handles a call that got no complete response. The reservation is kept, settled at
// its estimate, when the request reached or may have reached the upstream (a response began, or
// its head was written to a connection: the upstream may count and bill it whether or not
// anyone waits for the answer), and released only when it provably never left (no connection:
// refused, DNS, dial or TLS failure, or the client gone before one). A departed client ends the
// exchange (nil failure); anything else is a failure to retry elsewhere.
func (x *exchange) callFailed(err error, reached bool) *failure {
	kind := provider.KindOf(err)
	t := x.confirmedTicket()
	if reached || provider.Sent(err) {
		x.dep.counter.Settle(t, state.Usage{PromptTokens: t.Reserved.Tokens})
	} else {
		x.dep.counter.Release(t)
	}
	if kind == provider.Canceled {
		_ = x.finish(&apiError{Status: statusClientClosed, Message: "Client closed the request.", Type: "client_closed"})
		return nil
	}
	status := statusOf(err)
	msg := "Upstream deployment " + x.dep.cfg.ID + " of model group " + x.dep.cfg.ModelName
	e := &apiError{Status: status, Message: msg + " is unreachable: " + err.Error(), Type: "api_connection_error"}
	if status == http.StatusGatewayTimeout {
		e = &apiError{Status: status, Message: msg + " timed out.", Type: "timeout"}
	}
	return x.failed(&failure{status: status, apiErr: e})
}

// failed records f against the current deployment's health and cooldown, and returns it.
func (x *exchange) failed(f *failure) *failure {
	now := time.Now()
	x.dep.health.record(f.status, now)
	x.dep.metrics.upstreamFailure(f.status)
	if routing.Cools(f.status) {
		x.dep.cooldown.Fail(now, x.snap.cooldown, f.status, f.retryAfter)
	}
	return f
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
	if x.format == formatMessages {
		writeRaw(x.c.Response(), e.Status, provider.MessagesError(e.Status, e.body()))
		return nil
	}
	writeError(x.c.Response(), e)
	return nil
}

// setHeaders adds LiteLLM's routing, retry and rate-limit headers and herd's node header.
func (x *exchange) setHeaders(overhead time.Duration) {
	h := x.c.Response().Header()
	if x.dep != nil {
		h[hdrModelID] = x.dep.idHdr
		if x.dep.baseHdr != nil {
			h[hdrModelBase] = x.dep.baseHdr
		}
	}
	if x.group != nil {
		x.snap.groupHeaders(h, x.group, x.unsettled)
	}
	h[hdrRetries] = smallInt(x.retries)
	h[hdrFallbacks] = smallInt(x.fallbacks)
	h[hdrNode] = x.s.node
	h[hdrOverhead] = []string{strconv.FormatFloat(float64(overhead.Microseconds())/1000, 'f', 3, 64)}
}

// record updates metrics for a finished request.
func (x *exchange) record(status int, u state.Usage, overhead time.Duration) {
	if x.dep == nil {
		name := ""
		if x.group != nil {
			name = x.group.Name
		}
		x.s.metrics.countUnrouted(name, status)
		return
	}
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

// relayBody handles a complete (non-streaming) upstream answer: a success is passed back byte
// for byte; an error the deployment is to blame for (429, 5xx, ...) or a context-window error
// comes back as a failure to retry elsewhere; any other error is passed to the client.
func (x *exchange) relayBody(resp *http.Response) (*failure, error) {
	rb := getBuf(resp.ContentLength)
	defer putBuf(rb)
	data, err := readAll(resp.Body, *rb, x.s.maxResp, resp.ContentLength, nil)
	*rb = data
	upstream := time.Since(x.upStart)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			err = errResponseTooLarge
		}
		return x.callFailed(err, true), nil
	}
	status := resp.StatusCode
	if status >= 400 {
		x.dep.counter.Settle(x.confirmedTicket(), state.Usage{})
		f := &failure{status: status, body: append([]byte(nil), data...), header: resp.Header,
			contentType: resp.Header.Get(hdrContentType), retryAfterHdr: resp.Header.Get(hdrRetryAfter),
			retryAfterMs: resp.Header.Get(hdrRetryAfterMs)}
		f.retryAfter = parseRetryAfter(f.retryAfterHdr)
		f.contextWindow = status == http.StatusBadRequest && isContextWindowError(data)
		if routing.Cools(status) || f.contextWindow {
			return x.failed(f), nil
		}
		x.dep.health.record(status, time.Now())
		return nil, x.fail(f)
	}
	usage, ok := provider.ParseUsage(data)
	if !ok {
		usage = state.Usage{PromptTokens: x.req.promptTokens, CompletionTokens: provider.EstimateTokens(len(data))}
	}
	if x.format != formatOpenAI && !x.native {
		converted, err := fromChat(x.format, data)
		if err != nil {
			return x.callFailed(&provider.Error{Kind: provider.Unreachable, Err: err, Sent: true}, true), nil
		}
		data = converted
		resp.Header.Del(hdrContentType)
	}
	w := x.c.Response()
	h := w.Header()
	x.unsettled = x.ticket.Reserved.Tokens - usage.Total()
	copyProviderHeaders(h, resp.Header)
	if ct := resp.Header[hdrContentType]; len(ct) > 0 {
		h[hdrContentType] = ct
	} else {
		h[hdrContentType] = jsonHdr
	}
	h["Content-Length"] = []string{strconv.Itoa(len(data))}
	overhead := time.Since(x.start) - upstream + x.translated
	x.setHeaders(overhead)
	w.WriteHeader(status)
	_, _ = w.Write(data)
	// The answer goes out before the usage is settled: with a remote state backend (Redis) a
	// settle is a round trip the client need not wait for.
	w.Flush()
	x.succeeded(usage, upstream, 0)
	x.record(status, usage, overhead)
	return nil, nil
}

// errResponseTooLarge is an upstream body over max_response_size_mb.
var errResponseTooLarge = errors.New("upstream response is larger than general_settings.max_response_size_mb")

// succeeded settles a successful call and credits the deployment.
func (x *exchange) succeeded(u state.Usage, latency, ttft time.Duration) {
	x.dep.counter.Settle(x.confirmedTicket(), u)
	x.dep.counter.ObserveLatency(latency, ttft)
	x.dep.cooldown.Succeed()
	x.dep.health.record(http.StatusOK, time.Now())
}

// fail answers the client with f: herd's own error, or the upstream's error passed through
// (JSON bodies as they are, anything else wrapped in OpenAI's shape).
func (x *exchange) fail(f *failure) error {
	if f.apiErr != nil {
		return x.finish(f.apiErr)
	}
	w := x.c.Response()
	h := w.Header()
	copyProviderHeaders(h, f.header)
	if f.retryAfterHdr != "" {
		h[hdrRetryAfter] = []string{f.retryAfterHdr}
	}
	if f.retryAfterMs != "" {
		h[hdrRetryAfterMs] = []string{f.retryAfterMs}
	}
	if validJSON(f.body) != nil {
		return x.finish(&apiError{Status: f.status, Message: "Upstream returned " + strconv.Itoa(f.status) + ": " + snippet(f.body), Type: "api_error"})
	}
	h[hdrContentType] = jsonHdr
	if f.contentType != "" {
		h.Set(hdrContentType, f.contentType)
	}
	if x.format == formatMessages {
		f.body = provider.MessagesError(f.status, f.body)
		h[hdrContentType] = jsonHdr
	}
	h["Content-Length"] = []string{strconv.Itoa(len(f.body))}
	overhead := time.Since(x.start)
	x.setHeaders(overhead)
	w.WriteHeader(f.status)
	_, _ = w.Write(f.body)
	x.record(f.status, state.Usage{}, overhead)
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

// endpoint is the API a client format is, for deployments that speak it.
func (f clientFormat) endpoint() provider.Endpoint {
	if f == formatMessages {
		return provider.Messages
	}
	return provider.Responses
}

// toChat reads a client format's request as an OpenAI chat request.
func toChat(f clientFormat, body []byte) ([]byte, error) {
	if f == formatMessages {
		return provider.MessagesToChat(body)
	}
	return provider.ResponsesToChat(body)
}

// fromChat writes a chat answer in the client's format.
func fromChat(f clientFormat, body []byte) ([]byte, error) {
	if f == formatMessages {
		return provider.ChatToMessages(body)
	}
	return provider.ChatToResponse(body)
}

// newClientStream is the stream conversion for a client format; nil for OpenAI's.
func newClientStream(f clientFormat) clientStream {
	switch f {
	case formatMessages:
		return provider.NewMessagesStream()
	case formatResponses:
		return provider.NewResponsesStream()
	}
	return nil
}

// reject answers a request refused before routing; a *provider.BadRequest is a 400.
func (x *exchange) reject(err error) error {
	var bad *provider.BadRequest
	if errors.As(err, &bad) {
		return x.s.reject(badRequest(bad.Message, bad.Param))
	}
	return x.s.reject(badRequest(err.Error(), ""))
}
