package provider

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/rawconn"
)

// Pool holds one pooled transport per upstream host, shared by every deployment on that host.
type Pool struct {
	mu         sync.Mutex
	transports map[string]*http.Transport
	tls        *tls.Config // nil = Go's defaults
	guard      DialGuard   // nil = connect anywhere (see WithDialGuard)
	settings   Settings
	raw        bool // connections read and write with raw system calls (WithRawSockets)
}

// Settings are the node-wide settings translating providers honour.
type Settings struct {
	MaxResponse int64 // general_settings.max_response_size_mb in bytes; 0 = 32 MB
	DropParams  bool  // litellm_settings.drop_params: drop parameters a provider lacks instead of refusing them
}

// WithSettings sets what p's translating upstreams honour, and returns p.
func (p *Pool) WithSettings(s Settings) *Pool {
	p.settings = s
	return p
}

func (p *Pool) maxResponse() int64 {
	if p.settings.MaxResponse > 0 {
		return p.settings.MaxResponse
	}
	return 32 << 20
}

// WithRawSockets makes the connections of every transport p creates read and write with raw
// system calls (internal/rawconn), and returns p. Call before the first use.
func (p *Pool) WithRawSockets(on bool) *Pool {
	p.raw = on
	return p
}

// NewPool returns an empty pool whose transports use tlsConfig for https upstreams (nil: Go's
// defaults, verified against the system roots).
func NewPool(tlsConfig *tls.Config) *Pool {
	return &Pool{transports: make(map[string]*http.Transport), tls: tlsConfig}
}

// transport returns the transport for u's scheme and host, creating it on first use.
func (p *Pool) transport(u *url.URL) *http.Transport {
	key := u.Scheme + "://" + u.Host
	p.mu.Lock()
	defer p.mu.Unlock()
	if t, ok := p.transports[key]; ok {
		return t
	}
	dialer := &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
	}
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          0, // no global cap: the per-host cap below is what matters
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Bodies are passed through and parsed for usage; gzip would cost CPU both ways.
		DisableCompression: true,
	}
	if p.tls != nil {
		t.TLSClientConfig = p.tls.Clone() // each transport sets its own ALPN protocols on it
	}
	guardTransport(t, u, p.guard, dialer)
	if p.raw {
		t.DialContext = rawconn.Dial(t.DialContext) // under TLS, when there is TLS
	}
	p.transports[key] = t
	return t
}

// CloseIdle closes idle upstream connections (on shutdown).
func (p *Pool) CloseIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.transports {
		t.CloseIdleConnections()
	}
}

// httpUpstream is an OpenAI-compatible or Azure deployment reached over HTTP.
type httpUpstream struct {
	// transport sends each call itself: redirects from an LLM API are not expected and go to
	// the client as they are, so an http.Client around it would add only its per-call work.
	transport     *http.Transport
	urls          [numEndpoints]*url.URL
	header        http.Header // shared, never modified after construction
	timeout       time.Duration
	streamTimeout time.Duration
	streamUsage   bool
	responses     bool // serves the Responses API
}

func newHTTP(d *config.Deployment, pool *Pool, urlFor func(*config.Deployment, Endpoint) string, h http.Header) (*httpUpstream, error) {
	u := &httpUpstream{
		header:        h,
		timeout:       d.Timeout,
		streamTimeout: d.StreamTimeout,
		// Azure added stream_options in 2024-09-01-preview; asking an older version fails the call.
		streamUsage: d.Provider != "azure" || d.APIVersion >= "2024-09-01",
		responses:   servesResponses(d),
	}
	for e := Endpoint(0); e < numEndpoints; e++ {
		parsed, err := url.Parse(urlFor(d, e))
		if err != nil {
			return nil, err
		}
		u.urls[e] = parsed
	}
	u.transport = pool.transport(u.urls[0])
	return u, nil
}

func (u *httpUpstream) StreamUsage() bool { return u.streamUsage }

func (u *httpUpstream) serves(ep Endpoint) bool { return ep == Responses && u.responses }

// servesResponses: OpenAI (openai/ or a bare model name, as LiteLLM passes those through), and
// Azure from api-version 2025-03-01-preview; not the OpenAI-compatible families (groq/,
// hosted_vllm/, ...), many of whose servers answer chat only.
func servesResponses(d *config.Deployment) bool {
	if d.Provider == "azure" {
		return d.APIVersion >= "2025-03-01"
	}
	prefix, _, found := strings.Cut(d.LiteLLMParams.Model, "/")
	return d.Provider == "openai" && (!found || prefix == "openai")
}

// errStreamIdle is the cancel cause when a stream stays silent longer than stream_timeout.
var errStreamIdle = errors.New("stream_timeout passed with no data from upstream")

func (u *httpUpstream) Do(ctx context.Context, c *Call) (*http.Response, error) {
	return u.send(ctx, c, u.urls[c.Endpoint], u.header)
}

// send posts c to target with header (never modified: it may be shared), enforcing the
// deployment's timeouts on the call and on the body it returns.
func (u *httpUpstream) send(ctx context.Context, c *Call, target *url.URL, header http.Header) (*http.Response, error) {
	var cancel context.CancelCauseFunc
	// The body is made before the call so that a stream's idle watch lives in it: a read
	// touches one object, not two.
	body := &timedBody{}
	if c.Stream {
		// stream_timeout bounds the wait for headers and each silence between events.
		ctx, cancel = context.WithCancelCause(ctx)
		body.idle.watch(u.streamTimeout, cancel)
	} else {
		var cancelTimeout context.CancelFunc
		ctx, cancelTimeout = context.WithTimeoutCause(ctx, u.timeout, context.DeadlineExceeded)
		cancel = func(error) { cancelTimeout() }
	}
	req := &http.Request{
		Method:        http.MethodPost,
		URL:           target,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        header,
		Body:          callBody(c),
		ContentLength: int64(len(c.Body)),
		GetBody: func() (io.ReadCloser, error) {
			return callBody(c), nil
		},
		Host: target.Host,
	}
	sent := newHeadSent()
	if c.Sent != nil {
		sent.trace.WroteRequest = func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				c.Sent()
			}
		}
	}
	resp, err := u.transport.RoundTrip(req.WithContext(httptrace.WithClientTrace(ctx, &sent.trace)))
	if err != nil {
		body.idle.stop()
		// The transport closes the connection before a failed round trip returns, so a head
		// whose bytes went out was marked before this reads it.
		e := classify(ctx, err, sent.Load()) // before cancel, which would make every failure look canceled
		cancel(nil)
		return nil, e
	}
	body.rc, body.ctx, body.cancel = resp.Body, ctx, cancel
	resp.Body = body
	body.idle.heard()
	return resp, nil
}

// callBody is c's body for the transport. With c.Confirm, the first read confirms the call.
// net/http flushes the request head to the connection before it reads a body it cannot see
// into (anything but a bytes or strings reader), so the head has left by then, but a refusal
// there means no byte of the body has: the upstream never gets a whole request. The price is
// a write of its own for the head.
func callBody(c *Call) io.ReadCloser {
	if c.Confirm == nil {
		return io.NopCloser(bytes.NewReader(c.Body))
	}
	return &confirmingBody{r: bytes.NewReader(c.Body), confirm: c.Confirm}
}

type confirmingBody struct {
	r       *bytes.Reader
	confirm func() error
	done    bool
}

func (b *confirmingBody) Read(p []byte) (int, error) {
	if !b.done {
		if err := b.confirm(); err != nil {
			return 0, err
		}
		b.done = true
	}
	return b.r.Read(p)
}

func (b *confirmingBody) Close() error { return nil }

// headSent records, through net/http's client trace, that the transport wrote a request's
// whole head (request line and headers) to a connection. Bytes leave a connection only after
// that (its write buffer is flushed with the body), unless the head outgrows the buffer; and a
// head cut short is no request to the server. So a call that failed before the mark provably
// never reached the upstream, and one that failed after it may have.
type headSent struct {
	atomic.Bool
	trace httptrace.ClientTrace
}

func newHeadSent() *headSent {
	h := &headSent{}
	h.trace.WroteHeaders = func() { h.Store(true) }
	return h
}

// classify turns a transport error into an *Error, telling timeouts from a departed client;
// sent is whether the request may have reached the upstream.
func classify(ctx context.Context, err error, sent bool) *Error {
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errStreamIdle), errors.Is(cause, context.DeadlineExceeded):
		return &Error{Kind: Timeout, Err: cause, Sent: sent}
	case errors.Is(cause, context.Canceled):
		return &Error{Kind: Canceled, Err: err, Sent: sent}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &Error{Kind: Timeout, Err: err, Sent: sent}
	}
	return &Error{Kind: Unreachable, Err: err, Sent: sent}
}

// clockBase is what idle watches measure time from: one shared, often-read value, where a
// start time of each watch's own would be one more line of memory to load per read.
var clockBase = time.Now()

// idleWatch cancels a streaming call once stream_timeout passes with nothing from the
// upstream. A read that returns bytes only notes the time (heard); the timer, when it fires,
// re-arms itself for what is left of the timeout since then, so a stream's reads cost no
// timer operation each. The zero idleWatch watches nothing (a call that does not stream).
type idleWatch struct {
	last    atomic.Int64 // when the upstream was last heard from: nanoseconds since clockBase
	stopped atomic.Bool
	timeout time.Duration
	cancel  context.CancelCauseFunc
	timer   *time.Timer // nil: not watching
}

// watch starts w: after timeout of silence it calls cancel.
func (w *idleWatch) watch(timeout time.Duration, cancel context.CancelCauseFunc) {
	w.timeout, w.cancel = timeout, cancel
	w.last.Store(int64(time.Since(clockBase)))
	// Armed only once w.timer is set, which fire reads.
	w.timer = time.AfterFunc(time.Duration(math.MaxInt64), w.fire)
	w.timer.Reset(timeout)
}

func (w *idleWatch) heard() {
	if w.timer != nil {
		w.last.Store(int64(time.Since(clockBase)))
	}
}

func (w *idleWatch) fire() {
	quiet := time.Since(clockBase) - time.Duration(w.last.Load())
	if quiet < w.timeout {
		if !w.stopped.Load() {
			w.timer.Reset(w.timeout - quiet)
		}
		return
	}
	w.cancel(errStreamIdle)
}

func (w *idleWatch) stop() {
	if w.timer != nil {
		w.stopped.Store(true)
		w.timer.Stop()
	}
}

// timedBody keeps the call's context alive while the body is read, notes every read that
// brings bytes for a stream's idle watch, types read failures, and releases the context on
// Close. What every read touches comes first.
type timedBody struct {
	rc     io.ReadCloser
	idle   idleWatch // watching only for a stream
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.idle.heard()
	}
	if err != nil && err != io.EOF {
		return n, classify(b.ctx, err, true) // a response came: the request had arrived
	}
	return n, err
}

func (b *timedBody) Close() error {
	b.idle.stop()
	err := b.rc.Close()
	b.cancel(nil)
	return err
}
