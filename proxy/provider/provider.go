// Package provider speaks each upstream's wire format: OpenAI and OpenAI-compatible, Azure and
// mock as they are; Anthropic, Gemini, Vertex AI and Bedrock translated to and from OpenAI's
// (translate.go). It builds upstream requests, reads usage from JSON and SSE, and types
// upstream failures.
package provider

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/herd-proxy/herd/config"
)

// Endpoint is an OpenAI operation herd proxies.
type Endpoint uint8

// The endpoints herd serves.
const (
	ChatCompletions Endpoint = iota
	Completions
	Embeddings
	// Responses is OpenAI's Responses API, passed through to deployments that serve it
	// (openai/, and azure/ from api-version 2025-03-01-preview); others get it as chat.
	Responses
	// Messages is Anthropic's Messages API, passed through to anthropic/ deployments; others
	// get it as chat.
	Messages
	numEndpoints
)

// Path is the endpoint's path below an OpenAI base URL.
func (e Endpoint) Path() string {
	switch e {
	case ChatCompletions:
		return "/chat/completions"
	case Completions:
		return "/completions"
	case Embeddings:
		return "/embeddings"
	case Responses:
		return "/responses"
	case Messages:
		return "/messages"
	}
	return ""
}

// Serves reports whether u takes requests of ep in ep's own format. Every upstream serves the
// OpenAI endpoints (translating where its provider speaks another API); Responses and
// Messages only where the provider's API is that one.
func Serves(u Upstream, ep Endpoint) bool {
	if ep < Responses {
		return true
	}
	n, ok := u.(interface{ serves(Endpoint) bool })
	return ok && n.serves(ep)
}

// Streams reports whether the endpoint can answer with an SSE stream.
func (e Endpoint) Streams() bool { return e != Embeddings }

// Call is one upstream call.
type Call struct {
	Endpoint Endpoint
	Body     []byte // the request body as sent upstream; must not change until the response is read
	Stream   bool   // the client asked for an SSE stream
	// Confirm, if not nil, is called just before the request leaves for the upstream (when
	// the transport first reads the body: its head has been flushed, no byte of its body has
	// left). An error aborts the call, which then fails as unreachable.
	Confirm func() error
	// Sent, if not nil, is called once the whole request, head and body, has been written to
	// the upstream's connection, from the transport's goroutine. A call whose response has
	// come back after that never reads Body again (net/http replays a body only before any
	// response), so its owner may reuse Body from then on. Upstreams that never write the
	// request to a connection (mock) do not call it.
	Sent func()
	// ClientHeader, on a call of the client's own API (Messages, Responses) to a provider
	// that speaks it, is the client's request header: the provider's version and beta
	// headers in it are forwarded (anthropic-version, anthropic-beta). nil otherwise.
	ClientHeader http.Header
	// Translated is set by Do: the time spent translating the request, and a complete
	// answer, to and from the provider's format; herd's own time, not the upstream's.
	Translated time.Duration
}

// Upstream sends calls to one deployment.
type Upstream interface {
	// Do sends c upstream. A response, whatever its status, comes back with a nil error; its
	// Body must be closed. Failures to get a response are *Error. The body enforces the
	// deployment's timeouts while it is read.
	Do(ctx context.Context, c *Call) (*http.Response, error)
	// StreamUsage reports whether the upstream understands stream_options.include_usage.
	StreamUsage() bool
}

// New returns the upstream for deployment d; HTTP upstreams share pooled transports from pool.
func New(d *config.Deployment, pool *Pool) (Upstream, error) {
	switch d.Provider {
	case "mock":
		return newMock(d), nil
	case "openai":
		return newHTTP(d, pool, openAIURL, openAIHeader(d))
	case "azure":
		return newHTTP(d, pool, azureURL, azureHeader(d))
	case "anthropic":
		return newAnthropic(d, pool)
	case "bedrock":
		return newBedrock(d, pool)
	case "gemini":
		return newGemini(d, pool, geminiParams{APIBase: d.APIBase, APIKey: d.LiteLLMParams.APIKey.Reveal()})
	case "vertex_ai":
		return newVertex(d, pool, vertexParams{APIBase: d.APIBase, Project: d.Project, Location: d.Location,
			Credentials: d.LiteLLMParams.VertexCredentials.Reveal()})
	}
	return nil, fmt.Errorf("deployment %s: unsupported provider %q", d.ID, d.Provider)
}

func openAIURL(d *config.Deployment, e Endpoint) string { return d.APIBase + e.Path() }

// azureURL builds {api_base}/openai/deployments/{deployment}/{op}?api-version=V. An api_base
// that already ends in /openai (as some Azure SDK examples write it) is accepted too.
func azureURL(d *config.Deployment, e Endpoint) string {
	base := strings.TrimSuffix(d.APIBase, "/openai")
	if e == Responses {
		return base + "/openai/responses?api-version=" + d.APIVersion // the model is in the body
	}
	return base + "/openai/deployments/" + d.UpstreamModel + e.Path() + "?api-version=" + d.APIVersion
}

func openAIHeader(d *config.Deployment) http.Header {
	h := baseHeader(d)
	if k := d.LiteLLMParams.APIKey.Reveal(); k != "" {
		h.Set("Authorization", "Bearer "+k)
	}
	if o := d.LiteLLMParams.Organization; o != "" {
		h.Set("OpenAI-Organization", o)
	}
	return h
}

func azureHeader(d *config.Deployment) http.Header {
	h := baseHeader(d)
	if k := d.LiteLLMParams.APIKey.Reveal(); k != "" {
		h.Set("api-key", k)
	}
	return h
}

func baseHeader(d *config.Deployment) http.Header {
	h := http.Header{}
	for k, v := range d.LiteLLMParams.ExtraHeaders {
		h.Set(k, v)
	}
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json, text/event-stream")
	h.Set("User-Agent", "herd")
	return h
}

// ErrorKind classifies why an upstream call got no response.
type ErrorKind uint8

// Error kinds.
const (
	Unreachable ErrorKind = iota + 1 // no connection, or it broke before a response: 502
	Timeout                          // the deployment's timeout passed: 504
	Canceled                         // the client went away; nobody is left to answer
)

func (k ErrorKind) String() string {
	switch k {
	case Unreachable:
		return "unreachable"
	case Timeout:
		return "timeout"
	case Canceled:
		return "canceled"
	}
	return "unknown"
}

// Error is an upstream call that produced no (complete) response.
type Error struct {
	Kind ErrorKind
	Err  error
	// Sent: the request's whole head had been handed to a connection, so the upstream may have
	// received it and may count or bill it. False means it provably never left: no connection
	// (refused, DNS, dial or TLS failure, the caller gone first) or a head cut short, which no
	// server takes for a request.
	Sent bool
}

func (e *Error) Error() string { return "upstream " + e.Kind.String() + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// Sent reports whether the call that failed with err may have reached the upstream: true for
// anything but an *Error whose request provably never left.
func Sent(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Sent
	}
	return true
}

// KindOf returns err's ErrorKind, or 0 when err is not an *Error.
func KindOf(err error) ErrorKind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}
