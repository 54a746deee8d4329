package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/auth"
	"cloud.google.com/go/auth/credentials"
	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
)

// Vertex AI (vertex_ai/ models): Gemini models through generateContent, as gemini.go
// translates it; Anthropic's models (vertex_ai/claude-*) through rawPredict with Anthropic's
// Messages body (anthropic.go); and text embeddings through predict. Every call carries an
// OAuth access token from Google's auth library, which caches and refreshes it.
// Reference: https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference.
//
// Vertex's other partner models (Llama, Mistral, ...) and tuned-model endpoints other than a
// numeric endpoint ID are not served.

// VertexAnthropicVersion is the anthropic_version Vertex AI requires in an Anthropic body.
const VertexAnthropicVersion = "vertex-2023-10-16"

// vertexScope is the OAuth scope of Vertex AI's calls.
const vertexScope = "https://www.googleapis.com/auth/cloud-platform"

// vertexParams are what a vertex_ai/ deployment needs beyond the common settings.
type vertexParams struct {
	APIBase  string // "" = the location's host
	Project  string // Google Cloud project ID or number
	Location string // e.g. us-central1, or global; "" = config.DefaultVertexLocation
	// Credentials is google-auth credentials JSON or the path of a file holding it; ""
	// detects application default credentials (the gcloud file, the GCE metadata server).
	Credentials string
}

// vertexBase is api_base/v1/projects/{project}/locations/{location}: the root of a
// deployment's calls. An api_base given is the host, possibly with the version.
func vertexBase(p vertexParams) string {
	loc := p.Location
	if loc == "" {
		loc = config.DefaultVertexLocation
	}
	base := strings.TrimSuffix(p.APIBase, "/")
	switch {
	case base == "" && loc == "global":
		base = "https://aiplatform.googleapis.com"
	case base == "":
		base = "https://" + loc + "-aiplatform.googleapis.com"
	}
	if !strings.HasSuffix(base, "/v1") && !strings.HasSuffix(base, "/v1beta1") {
		base += "/v1"
	}
	return base + "/projects/" + url.PathEscape(p.Project) + "/locations/" + url.PathEscape(loc)
}

// modelPath escapes a model name for a URL path, keeping its slashes.
func modelPath(model string) string {
	segs := strings.Split(model, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// googleAuth adds a fresh OAuth access token to each call's header.
type googleAuth struct {
	mu     sync.Mutex
	tokens auth.TokenProvider // nil until detected
	// detect finds application default credentials; it is tried again on the next call
	// while it fails (a metadata server not up yet).
	detect func() (auth.TokenProvider, error)
}

// newGoogleAuth reads explicit credentials now (a mistake in them is a config error); with
// none, application default credentials are detected at the first call.
func newGoogleAuth(cred string) (*googleAuth, error) {
	opts := &credentials.DetectOptions{Scopes: []string{vertexScope}}
	cred = strings.TrimSpace(cred)
	if cred == "" {
		return &googleAuth{detect: func() (auth.TokenProvider, error) { return credentials.DetectDefault(opts) }}, nil
	}
	b := []byte(cred)
	if !strings.HasPrefix(cred, "{") {
		var err error
		if b, err = os.ReadFile(cred); err != nil {
			return nil, fmt.Errorf("vertex_credentials: %w", err)
		}
	}
	// The type is the one the file states: the config names its credentials, and vets the
	// types an admin API client may send (config.vertexCredentials).
	typ := gjson.GetBytes(b, "type").Str
	if typ == "" {
		return nil, errors.New("vertex_credentials: not google-auth credentials JSON (no \"type\")")
	}
	c, err := credentials.NewCredentialsFromJSON(credentials.CredType(typ), b, opts)
	if err != nil {
		return nil, fmt.Errorf("vertex_credentials: %w", err)
	}
	return &googleAuth{tokens: c}, nil
}

func (a *googleAuth) provider() (auth.TokenProvider, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tokens == nil {
		tp, err := a.detect()
		if err != nil {
			return nil, fmt.Errorf("no Google credentials (set vertex_credentials, or run where application default credentials are found): %w", err)
		}
		a.tokens = tp
	}
	return a.tokens, nil
}

// header returns a copy of base with the call's Authorization. A token herd cannot get is an
// upstream failure before anything was sent: the call may go to another deployment.
func (a *googleAuth) header(ctx context.Context, base http.Header) (http.Header, error) {
	tp, err := a.provider()
	if err == nil {
		var tok *auth.Token
		if tok, err = tp.Token(ctx); err == nil {
			h := base.Clone()
			h.Set("Authorization", "Bearer "+tok.Value)
			return h, nil
		}
	}
	kind := Unreachable
	if ctx.Err() != nil {
		kind = Canceled
	}
	return nil, &Error{Kind: kind, Err: fmt.Errorf("google access token: %w", err), Sent: false}
}

// vertex is a vertex_ai/ deployment's translator. A call whose model is one of Anthropic's
// (vertex_ai/claude-*) goes to rawPredict as a Messages body; the others to generateContent.
type vertex struct {
	googleChat
	anthropic *anthropic // the Messages API translation, for Anthropic's models
	auth      *googleAuth
	base      string // vertexBase
	header    http.Header
	claude    bool // the deployment's model is one of Anthropic's: it takes Messages API requests
}

func newVertex(d *config.Deployment, pool *Pool, p vertexParams) (Upstream, error) {
	base := vertexBase(p)
	if _, err := url.Parse(base); err != nil {
		return nil, fmt.Errorf("deployment %s: api_base: %w", d.ID, err)
	}
	ga, err := newGoogleAuth(p.Credentials)
	if err != nil {
		return nil, fmt.Errorf("deployment %s: %w", d.ID, err)
	}
	v := &vertex{
		googleChat: googleChat{provider: "vertex_ai", now: time.Now, newID: randomID, drop: pool.settings.DropParams, maxLen: int(pool.maxResponse())},
		auth:       ga,
		base:       base,
		header:     baseHeader(d),
		claude:     strings.HasPrefix(d.UpstreamModel, "claude"),
	}
	v.anthropic = &anthropic{now: time.Now, drop: v.drop, maxLen: v.maxLen}
	return newTranslated(d, pool, base, v)
}

// isVertexAnthropic reports whether a call's OpenAI body is for one of Anthropic's models.
func isVertexAnthropic(body []byte) bool {
	return strings.HasPrefix(gjson.GetBytes(body, "model").Str, "claude")
}

// vertexModelURL is a Google model's method URL: a numeric model is a tuned model's endpoint.
func vertexModelURL(base, model, method string) (*url.URL, error) {
	if model != "" && strings.Trim(model, "0123456789") == "" {
		return joinURL(base, "/endpoints/"+model+method)
	}
	return joinURL(base, "/publishers/google/models/"+modelPath(model)+method)
}

// serves: a Messages API request goes to an Anthropic model's rawPredict as it is.
func (v *vertex) serves(ep Endpoint) bool { return ep == Messages && v.claude }

func (v *vertex) request(ctx context.Context, c *Call) (*outbound, error) {
	var (
		body   []byte
		u      *url.URL
		stream bool
		err    error
	)
	switch {
	case c.Endpoint == Messages:
		body, u, stream, err = v.messagesRequest(c)
	case isVertexAnthropic(c.Body):
		body, u, stream, err = v.anthropicRequest(c)
	case c.Endpoint == ChatCompletions:
		var req *chatRequest
		if body, req, err = v.chatBody(c.Body); err == nil {
			u, err = vertexModelURL(v.base, req.Model, geminiMethod(req.Stream))
			stream = req.Stream
		}
	case c.Endpoint == Embeddings:
		var er *embeddingsRequest
		if er, err = decodeEmbeddings(v.provider, c.Body, v.drop); err == nil {
			if body, err = json.Marshal(vertexEmbedRequest(er)); err == nil {
				u, err = vertexModelURL(v.base, er.Model, ":predict")
			}
		}
	default:
		err = &BadRequest{Provider: v.provider, Message: "vertex_ai deployments serve chat completions and embeddings only."}
	}
	if err != nil {
		return nil, err
	}
	base := v.header
	if c.Endpoint == Messages {
		base = withClientVersion(base, http.Header{"Anthropic-Beta": c.ClientHeader.Values("Anthropic-Beta")}) // the version is the body's
	}
	h, err := v.auth.header(ctx, base)
	if err != nil {
		return nil, err
	}
	return &outbound{url: u, body: body, header: h, stream: stream}, nil
}

// vertexAnthropicRequest is a Messages body as Vertex takes it: the model is in the URL.
type vertexAnthropicRequest struct {
	*anthropicRequest
	Model            string `json:"model,omitempty"` // hides the Messages body's model
	AnthropicVersion string `json:"anthropic_version"`
}

// messagesRequest is a client's own Messages body for an Anthropic model's rawPredict: the
// model moves to the URL, and Vertex's anthropic_version is set; nothing else changes.
func (v *vertex) messagesRequest(c *Call) (body []byte, u *url.URL, stream bool, err error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(c.Body, &m); err != nil {
		return nil, nil, false, &BadRequest{Provider: v.provider, Message: "The request body is not a valid Messages API request: " + err.Error()}
	}
	model := gjson.GetBytes(m["model"], "@this").Str
	delete(m, "model")
	m["anthropic_version"] = json.RawMessage(`"` + VertexAnthropicVersion + `"`)
	stream = gjson.ParseBytes(m["stream"]).Bool()
	if body, err = json.Marshal(m); err != nil {
		return nil, nil, false, err
	}
	method := ":rawPredict"
	if stream {
		method = ":streamRawPredict"
	}
	u, err = joinURL(v.base, "/publishers/anthropic/models/"+modelPath(model)+method)
	return body, u, stream, err
}

// anthropicRequest builds the rawPredict call of an Anthropic model.
func (v *vertex) anthropicRequest(c *Call) (body []byte, u *url.URL, stream bool, err error) {
	if c.Endpoint != ChatCompletions {
		return nil, nil, false, &BadRequest{Provider: v.provider, Message: "vertex_ai deployments of Anthropic models serve chat completions only (/v1/chat/completions, or /v1/messages)."}
	}
	req, err := decodeChat(v.provider, c.Body, anthropicKnown, anthropicIgnorable, v.drop)
	if err != nil {
		return nil, nil, false, err
	}
	if gjson.GetBytes(c.Body, "logprobs").Bool() && !v.drop {
		return nil, nil, false, unsupported(v.provider, "logprobs", "logprobs")
	}
	ar, err := v.anthropic.convert(req)
	if err != nil {
		return nil, nil, false, err
	}
	if body, err = json.Marshal(vertexAnthropicRequest{anthropicRequest: ar, AnthropicVersion: VertexAnthropicVersion}); err != nil {
		return nil, nil, false, err
	}
	method := ":rawPredict"
	if req.Stream {
		method = ":streamRawPredict"
	}
	u, err = joinURL(v.base, "/publishers/anthropic/models/"+modelPath(req.Model)+method)
	return body, u, req.Stream, err
}

func (v *vertex) response(ep Endpoint, body []byte) ([]byte, error) {
	return v.responseTo(&Call{Endpoint: ep}, body)
}

func (v *vertex) responseTo(c *Call, body []byte) ([]byte, error) {
	if isVertexAnthropic(c.Body) {
		return v.anthropic.response(c.Endpoint, body)
	}
	if c.Endpoint == Embeddings {
		return vertexEmbedResponse(c.Body, body)
	}
	return v.chatResponse(body, gjson.GetBytes(c.Body, "model").Str)
}

type vertexEmbedBody struct {
	Instances  []vertexEmbedInstance `json:"instances"`
	Parameters *struct {
		OutputDimensionality *int64 `json:"outputDimensionality"`
	} `json:"parameters,omitempty"`
}

type vertexEmbedInstance struct {
	Content string `json:"content"`
}

// vertexEmbedRequest is the predict body of a text embedding model: one instance per input.
func vertexEmbedRequest(er *embeddingsRequest) *vertexEmbedBody {
	b := &vertexEmbedBody{}
	for _, in := range er.inputs {
		b.Instances = append(b.Instances, vertexEmbedInstance{Content: in})
	}
	if er.Dimensions != nil {
		b.Parameters = &struct {
			OutputDimensionality *int64 `json:"outputDimensionality"`
		}{er.Dimensions}
	}
	return b
}

// vertexEmbedResponse converts a predict answer; its usage is the token counts Vertex reports
// per input.
func vertexEmbedResponse(request, body []byte) ([]byte, error) {
	var r struct {
		Predictions []struct {
			Embeddings struct {
				Values     []float64 `json:"values"`
				Statistics struct {
					TokenCount float64 `json:"token_count"`
				} `json:"statistics"`
			} `json:"embeddings"`
		} `json:"predictions"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("vertex_ai answered with a body herd cannot read: %w", err)
	}
	vectors := make([][]float64, len(r.Predictions))
	var tokens int64
	for i, p := range r.Predictions {
		vectors[i] = p.Embeddings.Values
		tokens += int64(p.Embeddings.Statistics.TokenCount)
	}
	return embeddingsJSON(request, vectors, tokens)
}

func (v *vertex) stream(c *Call, body io.Reader) chunkSource {
	if isVertexAnthropic(c.Body) {
		return v.anthropic.stream(c, body)
	}
	return v.googleChat.stream(c, body)
}

// errorBody reads Anthropic's errors (an Anthropic model's) and Google's (Vertex's own:
// quota, auth, Gemini models).
func (v *vertex) errorBody(status int, body []byte) []byte {
	if gjson.GetBytes(body, "error.type").Str != "" {
		return v.anthropic.errorBody(status, body)
	}
	return googleErrorBody(v.provider, status, body)
}
