package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/herd-proxy/herd/config"
)

// A translator converts between the OpenAI format the proxy speaks and a provider's own: the
// proxy hands every upstream an OpenAI body and reads OpenAI bodies and streams back, so
// routing, limits, usage, retries and fallbacks work alike for every provider.
type translator interface {
	// request builds the upstream request for c, whose body is an OpenAI request with the
	// upstream model already set. A request the provider cannot serve fails with a *BadRequest.
	request(ctx context.Context, c *Call) (*outbound, error)
	// response turns a complete successful upstream body into the OpenAI body for ep.
	response(ep Endpoint, body []byte) ([]byte, error)
	// stream returns the converter of a successful upstream stream into OpenAI chunks; c is
	// the call as the proxy made it.
	stream(c *Call, body io.Reader) chunkSource
	// errorBody turns an upstream error answer into an OpenAI error body.
	errorBody(status int, body []byte) []byte
}

// A callResponder is a translator whose answers need the request they answer (an upstream
// that reports no usage, estimated from the request): Do calls responseTo in place of response.
type callResponder interface {
	responseTo(c *Call, body []byte) ([]byte, error)
}

// A nativeStreamer is a translator whose provider answers a served API (see serves) with a
// stream in a framing of its own: Do hands it a successful stream of such a call, and
// nativeStream yields the API's own SSE events ("event: <type>\ndata: {...}\n\n"), with no
// OpenAI [DONE] after them.
type nativeStreamer interface {
	nativeStream(c *Call, body io.Reader) chunkSource
}

// outbound is one upstream request a translator built.
type outbound struct {
	url    *url.URL
	body   []byte
	header http.Header // complete; may be shared by calls, never modified after it is returned
	// stream: the upstream answers this request with a stream (the proxy's client asked for
	// one); false when the provider's streaming is emulated from a complete answer.
	stream bool
}

// A chunkSource yields an upstream stream as OpenAI SSE: next appends the next events
// ("data: {...}\n\n") to dst, at least one unless it fails. It returns io.EOF, after
// appending the stream's last events, when the upstream stream ended properly; an
// unexpected end is an error.
type chunkSource interface {
	next(dst []byte) ([]byte, error)
}

// BadRequest is a request a provider cannot serve as asked (a parameter or content it has no
// equivalent for): the client's error, answered with a 400 before anything is sent upstream.
type BadRequest struct {
	Provider string // the deployment's provider, e.g. "anthropic"
	Param    string // the request parameter at fault; "" when none applies
	Message  string
}

func (e *BadRequest) Error() string { return e.Message }

func unsupported(provider, param, what string) *BadRequest {
	return &BadRequest{Provider: provider, Param: param,
		Message: provider + " deployments do not support " + what + "; remove it from the request, or set litellm_settings.drop_params: true to have herd drop unsupported parameters."}
}

// translated is a deployment whose provider speaks its own format.
type translated struct {
	http    *httpUpstream
	t       translator
	maxResp int64
}

func newTranslated(d *config.Deployment, pool *Pool, base string, t translator) (*translated, error) {
	h, err := newHTTPClient(d, pool, base)
	if err != nil {
		return nil, err
	}
	return &translated{http: h, t: t, maxResp: pool.maxResponse()}, nil
}

// StreamUsage is true: every translator reports a stream's usage in a last chunk when the
// OpenAI body asks for it (stream_options.include_usage), as OpenAI does.
func (u *translated) StreamUsage() bool { return true }

// serves: the translator's provider speaks ep's API itself.
func (u *translated) serves(ep Endpoint) bool {
	n, ok := u.t.(interface{ serves(Endpoint) bool })
	return ok && n.serves(ep)
}

func (u *translated) Do(ctx context.Context, c *Call) (*http.Response, error) {
	start := time.Now()
	out, err := u.t.request(ctx, c)
	c.Translated = time.Since(start)
	if err != nil {
		return nil, err
	}
	if u.serves(c.Endpoint) {
		// The client spoke the provider's own API: its request and the answer pass as they are.
		call := *c
		call.Body = out.body
		resp, err := u.http.send(ctx, &call, out.url, out.header)
		if err != nil {
			return nil, err
		}
		if n, ok := u.t.(nativeStreamer); ok && out.stream && resp.StatusCode == http.StatusOK {
			u.streamAs(resp, &chunkReader{src: n.nativeStream(c, resp.Body), rc: resp.Body, native: true})
		}
		return resp, nil
	}
	call := *c
	call.Body = out.body
	call.Stream = out.stream
	resp, err := u.http.send(ctx, &call, out.url, out.header)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode >= 400:
		body, err := u.readAll(resp)
		if err != nil {
			return nil, err
		}
		return u.replace(resp, u.t.errorBody(resp.StatusCode, body), "application/json"), nil
	case out.stream && resp.StatusCode == http.StatusOK:
		u.streamAs(resp, &chunkReader{src: u.t.stream(c, resp.Body), rc: resp.Body})
		return resp, nil
	}
	body, err := u.readAll(resp)
	if err != nil {
		return nil, err
	}
	var converted []byte
	start = time.Now()
	defer func() { c.Translated += time.Since(start) }()
	if r, ok := u.t.(callResponder); ok {
		converted, err = r.responseTo(c, body)
	} else {
		converted, err = u.t.response(c.Endpoint, body)
	}
	if err != nil {
		return nil, &Error{Kind: Unreachable, Err: err, Sent: true}
	}
	if c.Stream {
		// The client asked for a stream the upstream call could not give: the answer is
		// sent as one.
		resp = u.replace(resp, wholeAsStream(converted, c), "text/event-stream")
		return resp, nil
	}
	return u.replace(resp, converted, "application/json"), nil
}

// readAll reads a complete upstream answer, bounded by max_response_size_mb.
func (u *translated) readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, u.maxResp+1))
	if err != nil {
		return nil, err // typed by the timed body
	}
	if int64(len(body)) > u.maxResp {
		return nil, &Error{Kind: Unreachable, Err: ErrResponseTooLarge, Sent: true}
	}
	return body, nil
}

// ErrResponseTooLarge is an upstream answer over general_settings.max_response_size_mb.
var ErrResponseTooLarge = errors.New("upstream response is larger than general_settings.max_response_size_mb")

// streamAs gives resp the SSE body r, which reads resp's own body as it goes.
func (u *translated) streamAs(resp *http.Response, r *chunkReader) {
	resp.Body = r
	resp.ContentLength = -1
	resp.Header.Del("Content-Length")
	resp.Header.Set("Content-Type", "text/event-stream")
}

// replace gives resp a new, complete body; resp's own body has been read and closed.
func (u *translated) replace(resp *http.Response, body []byte, contentType string) *http.Response {
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	resp.Header.Set("Content-Type", contentType)
	return resp
}

// wholeAsStream turns a complete OpenAI chat answer into the stream a client asked for.
func wholeAsStream(body []byte, c *Call) []byte {
	var b []byte
	for _, chunk := range chunksOf(body, includeUsage(c.Body)) {
		b = appendEvent(b, chunk)
	}
	return append(b, doneEvent...)
}

var doneEvent = []byte("data: [DONE]\n\n")

// appendEvent appends one SSE data event.
func appendEvent(dst, data []byte) []byte {
	dst = append(dst, "data: "...)
	dst = append(dst, data...)
	return append(dst, "\n\n"...)
}

// chunkReader reads a chunkSource as an SSE body, ending an OpenAI stream with [DONE]; Close
// closes the upstream body.
type chunkReader struct {
	src    chunkSource
	rc     io.Closer
	buf    []byte
	off    int
	err    error // the source's end (io.EOF) or failure, returned once buf is drained
	done   bool  // [DONE] appended
	native bool  // the source yields a provider API's own events, which end without [DONE]
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for r.off == len(r.buf) {
		if r.err != nil {
			return 0, r.err
		}
		r.buf, r.off = r.buf[:0], 0
		r.buf, r.err = r.src.next(r.buf)
		if r.err == io.EOF && !r.done && !r.native {
			r.buf = append(r.buf, doneEvent...)
			r.done = true
		}
	}
	n := copy(p, r.buf[r.off:])
	r.off += n
	return n, nil
}

func (r *chunkReader) Close() error { return r.rc.Close() }

// newHTTPClient is an HTTP upstream whose URLs its translator builds per call.
func newHTTPClient(d *config.Deployment, pool *Pool, base string) (*httpUpstream, error) {
	parsed, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("deployment %s: api_base: %w", d.ID, err)
	}
	return &httpUpstream{
		timeout:       d.Timeout,
		streamTimeout: d.StreamTimeout,
		streamUsage:   true,
		transport:     pool.transport(parsed),
	}, nil
}

// joinURL appends path to base (no trailing slash) and parses the result.
func joinURL(base, path string) (*url.URL, error) {
	return url.Parse(base + path)
}
