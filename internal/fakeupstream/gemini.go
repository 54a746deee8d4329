package fakeupstream

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// Google's formats: the Gemini API (generativelanguage: /v1beta/models/{model}:method, an API
// key) and Vertex AI (/v1/projects/{p}/locations/{l}/publishers/{publisher}/models/{model}:method,
// a bearer token), both generateContent; Vertex serves Anthropic's models through rawPredict.

// googleOp is what a Google path's method asks for.
type googleOp uint8

const (
	opGenerate googleOp = iota // :generateContent
	opStream                   // :streamGenerateContent (?alt=sse)
	opEmbed                    // :batchEmbedContents (Gemini API), :predict (Vertex)
)

// googleRoutes are added to dialects: each API version's paths, by method.
var googleRoutes = func() []dialectRoute {
	var rs []dialectRoute
	for _, p := range []string{"/v1beta/models/", "/v1/models/"} {
		rs = append(rs,
			dialectRoute{prefix: p, suffix: ":generateContent", d: geminiDialect{op: opGenerate}},
			dialectRoute{prefix: p, suffix: ":streamGenerateContent", d: geminiDialect{op: opStream}},
			dialectRoute{prefix: p, suffix: ":batchEmbedContents", d: geminiDialect{op: opEmbed}})
	}
	for _, p := range []string{"/v1/projects/", "/v1beta1/projects/"} {
		rs = append(rs,
			dialectRoute{prefix: p, suffix: ":generateContent", d: geminiDialect{vertex: true, op: opGenerate}},
			dialectRoute{prefix: p, suffix: ":streamGenerateContent", d: geminiDialect{vertex: true, op: opStream}},
			dialectRoute{prefix: p, suffix: ":predict", d: geminiDialect{vertex: true, op: opEmbed}},
			dialectRoute{prefix: p, suffix: ":rawPredict", d: vertexAnthropicDialect{}},
			dialectRoute{prefix: p, suffix: ":streamRawPredict", d: vertexAnthropicDialect{streams: true}})
	}
	return rs
}()

func init() { dialects = append(dialects, googleRoutes...) }

// googleModel is the model a Google path names (the deployment): the segment after
// /models/ or /endpoints/ up to the method; "" when the path names none.
func googleModel(path string) string {
	rest, _, ok := strings.Cut(path[strings.LastIndexByte(path, '/')+1:], ":")
	if !ok {
		return ""
	}
	dir := path[:strings.LastIndexByte(path, '/')+1]
	if !strings.HasSuffix(dir, "/models/") && !strings.HasSuffix(dir, "/endpoints/") {
		return ""
	}
	return rest
}

// vertexPath reports whether a Vertex path has its projects/{p}/locations/{l} parts.
func vertexPath(path string) bool {
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	return len(segs) >= 6 && segs[1] == "projects" && segs[2] != "" && segs[3] == "locations" && segs[4] != ""
}

// geminiDialect is generateContent and Google's embeddings, for the Gemini API or, with vertex,
// for Vertex AI. N of the usage formula counts the text parts of contents and systemInstruction
// and the "content" string of functionResponse responses (where herd puts a tool's text). The
// Gemini API's embeddings report no usage; Vertex's report token_count per input, summing to
// the formula's prompt_tokens.
type geminiDialect struct {
	vertex bool
	op     googleOp
}

func (d geminiDialect) parse(_ *http.Request, path, body string) (string, request, bool) {
	dep := googleModel(path)
	var req request
	req.model = gjson.Result{Type: gjson.String, Str: dep}
	req.stream = d.op == opStream
	if !gjson.Valid(body) || !gjson.Parse(body).IsObject() {
		return dep, req, false
	}
	root := gjson.Parse(body)
	if d.op == opEmbed {
		req.embeddings = true
		if d.vertex {
			req.input = root.Get("instances")
			req.input.ForEach(func(_, in gjson.Result) bool {
				req.textBytes += len(in.Get("content").Str)
				return true
			})
		} else {
			req.input = root.Get("requests")
			req.input.ForEach(func(_, in gjson.Result) bool {
				req.textBytes += len(geminiText(in.Get("content.parts")))
				return true
			})
		}
		req.hasText = len(req.input.Array()) > 0
		if !req.hasText {
			req.missing = "requests"
			if d.vertex {
				req.missing = "instances"
			}
		}
		return dep, req, true
	}
	req.textBytes = len(geminiText(root.Get("systemInstruction.parts")))
	contents := root.Get("contents")
	contents.ForEach(func(_, c gjson.Result) bool {
		req.textBytes += len(geminiText(c.Get("parts")))
		return true
	})
	req.hasText = len(contents.Array()) > 0
	if !req.hasText {
		req.missing = "contents"
	}
	return dep, req, true
}

// geminiText joins the text of parts: text parts, and functionResponse.response.content.
func geminiText(parts gjson.Result) string {
	var b strings.Builder
	parts.ForEach(func(_, p gjson.Result) bool {
		b.WriteString(p.Get("text").Str)
		b.WriteString(p.Get("functionResponse.response.content").Str)
		return true
	})
	return b.String()
}

func (d geminiDialect) invalid(u *Upstream, r *http.Request, req *request) (int, string) {
	if d.vertex {
		if status, msg := vertexAuth(u, r); status != 0 {
			return status, msg
		}
		if !vertexPath(r.URL.Path) || req.model.Str == "" {
			return http.StatusNotFound, "The requested resource " + r.URL.Path + " was not found."
		}
	} else {
		// Google takes the key in x-goog-api-key or ?key=; a wrong key is a 400, as Google
		// answers it.
		key := r.Header.Get("X-Goog-Api-Key")
		if key == "" {
			key = r.URL.Query().Get("key")
		}
		switch {
		case key == "":
			return http.StatusForbidden, "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API."
		case u.opts.APIKey != "" && key != u.opts.APIKey:
			return http.StatusBadRequest, "API key not valid. Please pass a valid API key."
		case req.model.Str == "":
			return http.StatusNotFound, "The requested resource " + r.URL.Path + " was not found."
		}
	}
	switch {
	case d.op == opStream && r.URL.Query().Get("alt") != "sse":
		return http.StatusBadRequest, "fakeupstream serves streamGenerateContent as SSE only: add ?alt=sse."
	case req.missing != "":
		return http.StatusBadRequest, "* GenerateContentRequest." + req.missing + ": " + req.missing + " is not specified"
	}
	return 0, ""
}

// vertexAuth checks Vertex's bearer token: any token, or APIKey when set.
func vertexAuth(u *Upstream, r *http.Request) (int, string) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" || (u.opts.APIKey != "" && tok != u.opts.APIKey) {
		return http.StatusUnauthorized, "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential."
	}
	return 0, ""
}

// appendUsageMetadata appends Google's usage: the prompt alone until the answer is complete.
func (a *answer) appendUsageMetadata(b []byte, complete bool) []byte {
	b = append(b, `"usageMetadata":{"promptTokenCount":`...)
	b = strconv.AppendInt(b, int64(a.prompt), 10)
	c := 0
	if complete {
		c = len(a.st.pieces)
		b = append(b, `,"candidatesTokenCount":`...)
		b = strconv.AppendInt(b, int64(c), 10)
	}
	b = append(b, `,"totalTokenCount":`...)
	b = strconv.AppendInt(b, int64(a.prompt+c), 10)
	return append(b, '}')
}

// appendCandidate appends a GenerateContentResponse with one candidate of text (a JSON string).
func (a *answer) appendCandidate(b []byte, text, finish string, complete bool) []byte {
	b = append(b, `{"candidates":[{"content":{"role":"model","parts":[{"text":`...)
	b = append(b, text...)
	b = append(b, `}]}`...)
	if finish != "" {
		b = append(b, `,"finishReason":"`...)
		b = append(b, finish...)
		b = append(b, '"')
	}
	b = append(b, `,"index":0}],`...)
	if a.usage {
		b = a.appendUsageMetadata(b, complete)
		b = append(b, ',')
	}
	b = append(b, `"modelVersion":`...)
	b = append(b, a.model...)
	b = append(b, `,"responseId":"fake`...)
	b = strconv.AppendUint(b, a.id, 10)
	return append(b, `"}`...)
}

func (d geminiDialect) writeJSON(w http.ResponseWriter, a *answer) {
	if d.op == opEmbed {
		d.writeEmbeddings(w, a)
		return
	}
	buf := getBuf()
	defer putBuf(buf)
	buf.b = a.appendCandidate(buf.b, a.st.content, "STOP", true)
	writeBody(w, http.StatusOK, jsonType, buf.b)
}

// writeEmbeddings answers batchEmbedContents ({"embeddings":[{"values":[...]}]}, no usage) or
// Vertex's predict ({"predictions":[{"embeddings":{"values":[...],"statistics":{...}}}]}).
func (d geminiDialect) writeEmbeddings(w http.ResponseWriter, a *answer) {
	buf := getBuf()
	defer putBuf(buf)
	b := buf.b
	if d.vertex {
		b = append(b, `{"predictions":[`...)
	} else {
		b = append(b, `{"embeddings":[`...)
	}
	items := a.req.input.Array()
	rest := a.prompt // the first input's token_count takes what the others' leave
	for i := 1; i < len(items); i++ {
		rest -= len(items[i].Get("content").Str) / 4
	}
	for i, in := range items {
		if i > 0 {
			b = append(b, ',')
		}
		if !d.vertex {
			b = append(b, `{"values":`...)
			b = appendEmbedding(b, gjson.Result{Type: gjson.String, Str: geminiText(in.Get("content.parts"))}, false)
			b = append(b, '}')
			continue
		}
		b = append(b, `{"embeddings":{"values":`...)
		b = appendEmbedding(b, in.Get("content"), false)
		if a.usage {
			tokens := len(in.Get("content").Str) / 4
			if i == 0 {
				tokens = rest
			}
			b = append(b, `,"statistics":{"truncated":false,"token_count":`...)
			b = strconv.AppendInt(b, int64(tokens), 10)
			b = append(b, '}')
		}
		b = append(b, `}}`...)
	}
	b = append(b, `]}`...)
	buf.b = b
	writeBody(w, http.StatusOK, jsonType, b)
}

// stream sends streamGenerateContent?alt=sse: a response per content piece (the usage so far
// holding the prompt only), then one with finishReason STOP and the whole usage. Google marks
// no end: the body ends.
func (d geminiDialect) stream(ctx context.Context, w http.ResponseWriter, a *answer, delay time.Duration, cut int) {
	rc := startEventStream(w)
	buf := getBuf()
	defer putBuf(buf)
	send := func(text, finish string, complete bool) bool {
		b := append(buf.b[:0], "data: "...)
		b = a.appendCandidate(b, text, finish, complete)
		b = append(b, "\r\n\r\n"...)
		buf.b = b
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	timer := eventTimer(delay)
	defer stopTimer(timer)
	for i, piece := range a.st.pieces {
		if !sleep(ctx, timer, delay) || !send(piece, "", false) {
			return
		}
		if i+1 == cut {
			panic(http.ErrAbortHandler)
		}
	}
	if sleep(ctx, timer, delay) {
		send(`""`, "STOP", true)
	}
}

// writeError sends Google's {"error":{"code":...,"message":...,"status":...}}.
func (geminiDialect) writeError(w http.ResponseWriter, status int, msg string) {
	writeGoogleError(w, status, msg)
}

func writeGoogleError(w http.ResponseWriter, status int, msg string) {
	buf := getBuf()
	defer putBuf(buf)
	b := append(buf.b, `{"error":{"code":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"message":`...)
	b = gjson.AppendJSONString(b, msg)
	b = append(b, `,"status":"`...)
	b = append(b, googleStatus(status)...)
	b = append(b, `"}}`...)
	buf.b = b
	writeBody(w, status, jsonType, b)
}

// googleStatus is the canonical status Google names for an HTTP status.
func googleStatus(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return "INVALID_ARGUMENT"
	case http.StatusUnauthorized:
		return "UNAUTHENTICATED"
	case http.StatusForbidden:
		return "PERMISSION_DENIED"
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return "NOT_FOUND"
	case http.StatusConflict:
		return "ABORTED"
	case http.StatusTooManyRequests:
		return "RESOURCE_EXHAUSTED"
	case 499:
		return "CANCELLED"
	case http.StatusNotImplemented:
		return "UNIMPLEMENTED"
	case http.StatusServiceUnavailable:
		return "UNAVAILABLE"
	case http.StatusGatewayTimeout:
		return "DEADLINE_EXCEEDED"
	case http.StatusInternalServerError:
		return "INTERNAL"
	}
	return "UNKNOWN"
}

// vertexAnthropicDialect is Anthropic's Messages API behind Vertex AI: POST
// .../publishers/anthropic/models/{model}:rawPredict (:streamRawPredict for a stream, which the
// body's "stream" must ask for too). The deployment is the model from the path; the body has
// anthropic_version (vertex-2023-10-16) and max_tokens. Answers and the request's own errors
// (400) are Anthropic's; Vertex's (credentials, faults) are Google's.
type vertexAnthropicDialect struct{ streams bool } // :streamRawPredict

// vertexAnthropicVersion is the anthropic_version Vertex requires.
const vertexAnthropicVersion = "vertex-2023-10-16"

func (d vertexAnthropicDialect) parse(_ *http.Request, path, body string) (string, request, bool) {
	dep := googleModel(path)
	var req request
	if !gjson.Valid(body) || !gjson.Parse(body).IsObject() {
		return dep, req, false
	}
	anthropicRequest(body, &req)
	req.model = gjson.Result{Type: gjson.String, Str: dep}
	switch v := gjson.Get(body, "anthropic_version").Str; {
	case req.missing != "":
	case v != vertexAnthropicVersion:
		req.missing = "anthropic_version"
	case req.stream != d.streams:
		req.missing = "stream" // the method and the body disagree
	}
	return dep, req, true
}

func (d vertexAnthropicDialect) invalid(u *Upstream, r *http.Request, req *request) (int, string) {
	if status, msg := vertexAuth(u, r); status != 0 {
		return status, msg
	}
	switch {
	case !vertexPath(r.URL.Path) || req.model.Str == "":
		return http.StatusNotFound, "The requested resource " + r.URL.Path + " was not found."
	case req.missing == "anthropic_version":
		return http.StatusBadRequest, "anthropic_version: Input should be '" + vertexAnthropicVersion + "'"
	case req.missing == "stream":
		return http.StatusBadRequest, "stream: must be true for streamRawPredict and false for rawPredict"
	case req.missing != "":
		return http.StatusBadRequest, req.missing + ": Field required"
	}
	return 0, ""
}

func (vertexAnthropicDialect) writeJSON(w http.ResponseWriter, a *answer) {
	anthropicDialect{}.writeJSON(w, a)
}

func (vertexAnthropicDialect) stream(ctx context.Context, w http.ResponseWriter, a *answer, delay time.Duration, cut int) {
	anthropicDialect{}.stream(ctx, w, a, delay, cut)
}

func (vertexAnthropicDialect) writeError(w http.ResponseWriter, status int, msg string) {
	if status == http.StatusBadRequest {
		anthropicDialect{}.writeError(w, status, msg)
		return
	}
	writeGoogleError(w, status, msg)
}
