package fakeupstream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/tidwall/gjson"
)

// The credentials the Bedrock dialect verifies SigV4 signatures with: a request signed with
// another access key is refused as AWS refuses an unknown one.
const (
	BedrockAccessKeyID     = "AKIDFAKEUPSTREAM"
	BedrockSecretAccessKey = "fakeupstream/bedrock/secret"
)

// bedrockDialect is Amazon Bedrock's Converse API: POST /model/{modelId}/converse, or
// /converse-stream for an answer in AWS's event-stream encoding; and InvokeModel
// (/model/{modelId}/invoke) for embeddings in Titan's body ({"inputText"}) or Cohere's
// ({"texts"}), or for Anthropic's models (bedrockClaude) Anthropic's Messages body, at /invoke
// and /invoke-with-response-stream. The deployment is the model ID from the path (escaped there: IDs hold ':', ARNs
// '/'). A request must be signed with SigV4 by BedrockAccessKeyID (the signature is checked),
// or carry a Bedrock API key ("Authorization: Bearer <APIKey>"; any key when APIKey is empty).
// N of the usage formula counts the text of system blocks, text blocks and tool results, or
// the texts to embed; Titan reports it as inputTextTokenCount, Cohere reports no usage.
type bedrockDialect struct{}

func (bedrockDialect) parse(_ *http.Request, path, body string) (string, request, bool) {
	req := request{body: body}
	rest, _ := strings.CutPrefix(path, "/model/")
	// An ARN's '/' is in the unescaped path too: the operation is the last segment.
	i := strings.LastIndexByte(rest, '/')
	dep, op := rest, ""
	if i >= 0 {
		dep, op = rest[:i], rest[i+1:]
	}
	switch op {
	case "converse-stream", "invoke-with-response-stream":
		req.stream = true
	case "invoke":
		req.embeddings = !bedrockClaude(dep)
	}
	if !gjson.Valid(body) || !gjson.Parse(body).IsObject() {
		return dep, req, false
	}
	root := gjson.Parse(body)
	if strings.HasPrefix(op, "invoke") && bedrockClaude(dep) {
		bedrockMessages(dep, root, &req)
		return dep, req, true
	}
	if req.embeddings {
		if req.input = root.Get("inputText"); req.input.Type != gjson.String {
			req.input = root.Get("texts")
		}
		forEachText(req.input, func(t string) { req.textBytes += len(t) })
		req.hasText = req.input.Type == gjson.String || len(req.input.Array()) > 0
		if !req.hasText {
			req.missing = "inputText"
		}
		return dep, req, true
	}
	n := bedrockText(root.Get("system"))
	msgs := root.Get("messages")
	msgs.ForEach(func(_, m gjson.Result) bool {
		n += bedrockText(m.Get("content"))
		return true
	})
	req.textBytes, req.hasText = n, msgs.IsArray() && len(msgs.Array()) > 0
	if !req.hasText {
		req.missing = "messages"
	}
	return dep, req, true
}

// bedrockClaude: the model ID is one of Anthropic's (through a cross-region prefix or an ARN),
// whose InvokeModel takes Anthropic's Messages body.
func bedrockClaude(model string) bool { return strings.Contains(model, "anthropic.claude") }

// bedrockAnthropicVersion is the anthropic_version Bedrock's Anthropic models require.
const bedrockAnthropicVersion = "bedrock-2023-05-31"

// bedrockMessages reads InvokeModel's Messages body for an Anthropic model: Anthropic's, with
// anthropic_version bedrock-2023-05-31 and neither model (in the path) nor stream (the
// operation says it), which Bedrock refuses as extraneous keys.
func bedrockMessages(dep string, root gjson.Result, req *request) {
	req.messages = true
	stream := req.stream
	anthropicRequest(root.Raw, req)
	req.stream = stream
	req.model = gjson.Result{Type: gjson.String, Str: dep}
	switch {
	case req.missing != "":
		req.missing = "required key [" + req.missing + "] not found"
	case root.Get("anthropic_version").Str != bedrockAnthropicVersion:
		req.missing = "anthropic_version: must be " + bedrockAnthropicVersion
	case root.Get("model").Exists():
		req.missing = "extraneous key [model] is not permitted"
	case root.Get("stream").Exists():
		req.missing = "extraneous key [stream] is not permitted"
	}
}

// bedrockText sums the text of content blocks: text, and tool results' text.
func bedrockText(blocks gjson.Result) int {
	n := 0
	blocks.ForEach(func(_, b gjson.Result) bool {
		n += len(b.Get("text").Str)
		if r := b.Get("toolResult.content"); r.IsArray() {
			n += bedrockText(r)
		}
		return true
	})
	return n
}

func (bedrockDialect) invalid(u *Upstream, r *http.Request, req *request) (int, string) {
	if status, msg := bedrockAuth(u, r, req.body); status != 0 {
		return status, msg
	}
	switch {
	case req.messages && req.missing != "":
		return http.StatusBadRequest, "Malformed input request: #: " + req.missing + ", please reformat your input and try again."
	case req.missing != "":
		return http.StatusBadRequest, "The model returned the following errors: " + req.missing + " is required"
	}
	return 0, ""
}

// bedrockAuth checks a request's credentials as Bedrock does, with the fake's known keys.
func bedrockAuth(u *Upstream, r *http.Request, body string) (int, string) {
	auth := r.Header.Get("Authorization")
	if key, ok := strings.CutPrefix(auth, "Bearer "); ok {
		if u.opts.APIKey != "" && key != u.opts.APIKey {
			return http.StatusForbidden, "Authentication failed: Please make sure your API Key is valid."
		}
		return 0, ""
	}
	if auth == "" {
		return http.StatusForbidden, "Missing Authentication Token"
	}
	if !strings.HasPrefix(auth, "AWS4-HMAC-SHA256 Credential="+BedrockAccessKeyID+"/") {
		return http.StatusForbidden, "The security token included in the request is invalid."
	}
	if want, ok := bedrockSignature(r, auth, body); !ok || want != auth {
		return http.StatusForbidden, "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."
	}
	return 0, ""
}

// bedrockSignature signs the request again, from the headers it says it signed, and returns
// the Authorization header the fake's credentials give it.
func bedrockSignature(r *http.Request, auth, body string) (string, bool) {
	// AWS4-HMAC-SHA256 Credential=AKID/20251203/us-east-1/bedrock/aws4_request, SignedHeaders=a;b, Signature=...
	cred, rest, _ := strings.Cut(strings.TrimPrefix(auth, "AWS4-HMAC-SHA256 Credential="), ", SignedHeaders=")
	signedList, _, _ := strings.Cut(rest, ", Signature=")
	scope := strings.Split(cred, "/")
	at, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if len(scope) != 5 || err != nil {
		return "", false
	}
	u := &url.URL{Scheme: "http", Host: r.Host, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
	req := &http.Request{Method: r.Method, URL: u, Host: r.Host, Header: http.Header{}}
	for _, name := range strings.Split(signedList, ";") {
		switch name {
		case "host":
		case "content-length":
			req.ContentLength = int64(len(body))
		default:
			req.Header[http.CanonicalHeaderKey(name)] = r.Header.Values(name)
		}
	}
	sum := sha256.Sum256([]byte(body))
	creds := aws.Credentials{AccessKeyID: BedrockAccessKeyID, SecretAccessKey: BedrockSecretAccessKey}
	if err := v4.NewSigner().SignHTTP(r.Context(), creds, req, hex.EncodeToString(sum[:]), scope[3], scope[2], at); err != nil {
		return "", false
	}
	return req.Header.Get("Authorization"), true
}

// forEachText calls f with a string, or with each string of an array.
func forEachText(v gjson.Result, f func(string)) {
	if v.Type == gjson.String {
		f(v.Str)
		return
	}
	v.ForEach(func(_, t gjson.Result) bool {
		f(t.Str)
		return true
	})
}

func (bedrockDialect) writeJSON(w http.ResponseWriter, a *answer) {
	if a.req.messages {
		anthropicDialect{}.writeJSON(w, a)
		return
	}
	if a.req.embeddings {
		writeBedrockEmbeddings(w, a)
		return
	}
	buf := getBuf()
	defer putBuf(buf)
	b := append(buf.b, `{"output":{"message":{"role":"assistant","content":[{"text":`...)
	b = append(b, a.st.content...)
	b = append(b, `}]}},"stopReason":"end_turn"`...)
	if a.usage {
		b = appendBedrockUsage(append(b, ','), a)
	}
	b = append(b, `,"metrics":{"latencyMs":1}}`...)
	buf.b = b
	writeBody(w, http.StatusOK, jsonType, b)
}

func appendBedrockUsage(b []byte, a *answer) []byte {
	c := len(a.st.pieces)
	b = append(b, `"usage":{"inputTokens":`...)
	b = strconv.AppendInt(b, int64(a.prompt), 10)
	b = append(b, `,"outputTokens":`...)
	b = strconv.AppendInt(b, int64(c), 10)
	b = append(b, `,"totalTokens":`...)
	b = strconv.AppendInt(b, int64(a.prompt+c), 10)
	return append(b, '}')
}

// writeBedrockEmbeddings answers Titan ({"embedding":[...],"inputTextTokenCount":n}) or Cohere
// ({"embeddings":[[...],...],"texts":[...]}, no usage).
func writeBedrockEmbeddings(w http.ResponseWriter, a *answer) {
	buf := getBuf()
	defer putBuf(buf)
	b := buf.b
	if in := a.req.input; in.Type == gjson.String {
		b = append(b, `{"embedding":`...)
		b = appendEmbedding(b, in, false)
		if a.usage {
			b = append(b, `,"inputTextTokenCount":`...)
			b = strconv.AppendInt(b, int64(a.prompt), 10)
		}
	} else {
		b = append(b, `{"embeddings":[`...)
		for i, t := range in.Array() {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendEmbedding(b, t, false)
		}
		b = append(b, `],"id":"fake`...)
		b = strconv.AppendUint(b, a.id, 10)
		b = append(b, `","response_type":"embeddings_floats","texts":`...)
		b = append(b, in.Raw...)
	}
	b = append(b, '}')
	buf.b = b
	writeBody(w, http.StatusOK, jsonType, b)
}

var eventStreamType = []string{"application/vnd.amazon.eventstream"}

func (bedrockDialect) stream(ctx context.Context, w http.ResponseWriter, a *answer, delay time.Duration, cut int) {
	w.Header()["Content-Type"] = eventStreamType
	w.WriteHeader(http.StatusOK)
	send := bedrockSender(w)
	if a.req.messages {
		// InvokeModelWithResponseStream: each of Anthropic's events in a chunk, base64.
		var chunk []byte
		anthropicEvents(ctx, a, delay, cut, func(_ string, data ...string) bool {
			chunk = append(chunk[:0], `{"bytes":"`...)
			chunk = base64.StdEncoding.AppendEncode(chunk, []byte(strings.Join(data, "")))
			chunk = append(chunk, `"}`...)
			return send("chunk", string(chunk))
		})
		return
	}
	if !send("messageStart", `{"role":"assistant"}`) {
		return
	}
	timer := eventTimer(delay)
	defer stopTimer(timer)
	for i, piece := range a.st.pieces {
		if !sleep(ctx, timer, delay) {
			return
		}
		if !send("contentBlockDelta", `{"contentBlockIndex":0,"delta":{"text":`, piece, `}}`) {
			return
		}
		if i+1 == cut {
			panic(http.ErrAbortHandler)
		}
	}
	if !sleep(ctx, timer, delay) {
		return
	}
	if !send("contentBlockStop", `{"contentBlockIndex":0}`) || !send("messageStop", `{"stopReason":"end_turn"}`) || !a.usage {
		return
	}
	usage := appendBedrockUsage(nil, a)
	_ = send("metadata", `{`, string(usage), `,"metrics":{"latencyMs":1}}`)
}

// bedrockSender returns what sends one event-stream event, its JSON payload in parts, and
// flushes it; false when the client is gone.
func bedrockSender(w http.ResponseWriter) func(event string, payload ...string) bool {
	rc := http.NewResponseController(w)
	enc := eventstream.NewEncoder()
	var msg bytes.Buffer
	return func(event string, payload ...string) bool {
		m := eventstream.Message{Payload: []byte(strings.Join(payload, ""))}
		m.Headers.Set(":message-type", eventstream.StringValue("event"))
		m.Headers.Set(":event-type", eventstream.StringValue(event))
		m.Headers.Set(":content-type", eventstream.StringValue("application/json"))
		msg.Reset()
		if enc.Encode(&msg, m) != nil {
			return false
		}
		if _, err := w.Write(msg.Bytes()); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
}

// writeError sends {"message":...} with the exception's name in x-amzn-ErrorType.
func (bedrockDialect) writeError(w http.ResponseWriter, status int, msg string) {
	w.Header()["X-Amzn-Errortype"] = []string{bedrockErrorType(status) + ":http://internal.amazon.com/coral/com.amazon.bedrock/"}
	buf := getBuf()
	defer putBuf(buf)
	b := append(buf.b, `{"message":`...)
	b = gjson.AppendJSONString(b, msg)
	b = append(b, '}')
	buf.b = b
	writeBody(w, status, jsonType, b)
}

func bedrockErrorType(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusMethodNotAllowed:
		return "ValidationException"
	case http.StatusForbidden:
		return "AccessDeniedException"
	case http.StatusNotFound:
		return "ResourceNotFoundException"
	case http.StatusRequestTimeout:
		return "ModelTimeoutException"
	case http.StatusFailedDependency:
		return "ModelErrorException"
	case http.StatusTooManyRequests:
		return "ThrottlingException"
	case http.StatusServiceUnavailable:
		return "ServiceUnavailableException"
	}
	return "InternalServerException"
}
