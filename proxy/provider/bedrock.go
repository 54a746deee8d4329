package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/smithy-go/encoding/httpbinding"
	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
)

// Amazon Bedrock's Converse and ConverseStream APIs
// (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html) for chat,
// and InvokeModel for Titan and Cohere embeddings, translated to and from OpenAI's formats.
// Requests are signed with SigV4 per call (bedrock_sign.go); streams come in AWS's binary
// event-stream encoding (bedrock_stream.go).

type bedrock struct {
	now    func() time.Time // the created time of answers
	newID  func() string    // answer ids: Converse gives none
	base   string           // the runtime endpoint, without a trailing slash
	model  string           // the model ID, inference profile or ARN (the proxy sets it in every body)
	header [2]http.Header   // [0] for a JSON answer, [1] for an event stream; copied to sign
	signer *sigv4           // nil: the header carries a bearer token
	drop   bool
	maxLen int  // the longest stream message read
	claude bool // one of Anthropic's models: it takes Messages API requests (bedrock_messages.go)
}

func newBedrock(d *config.Deployment, pool *Pool) (Upstream, error) {
	lp := &d.LiteLLMParams
	auth := bedrockAuth{
		Region:           d.Region,
		BearerToken:      lp.APIKey.Reveal(),
		AccessKeyID:      lp.AWSAccessKeyID.Reveal(),
		SecretAccessKey:  lp.AWSSecretAccessKey.Reveal(),
		SessionToken:     lp.AWSSessionToken.Reveal(),
		Profile:          lp.AWSProfileName,
		RoleARN:          lp.AWSRoleName,
		SessionName:      lp.AWSSessionName,
		WebIdentityToken: lp.AWSWebIdentityToken.Reveal(),
	}
	b, err := newBedrockTranslator(d.APIBase, d.UpstreamModel, baseHeader(d), auth, pool.settings.DropParams, int(pool.maxResponse()))
	if err != nil {
		return nil, fmt.Errorf("deployment %s: %w", d.ID, err)
	}
	return newTranslated(d, pool, b.base, b)
}

// newBedrockTranslator serves model at the runtime endpoint base with header (extra headers,
// Content-Type) and auth.
func newBedrockTranslator(base, model string, header http.Header, auth bedrockAuth, drop bool, maxLen int) (*bedrock, error) {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("bedrock endpoint %q: not an absolute URL", base)
	}
	// A default port would be signed without it (the SDK drops it) but sent with it.
	if p := u.Port(); (p == "443" && u.Scheme == "https") || (p == "80" && u.Scheme == "http") {
		u.Host = u.Hostname()
	}
	b := &bedrock{now: time.Now, newID: randomID, base: strings.TrimSuffix(u.String(), "/"), model: model, drop: drop, maxLen: maxLen,
		claude: bedrockFamily(model) == "anthropic"}
	for i, accept := range []string{"application/json", "application/vnd.amazon.eventstream"} {
		h := header.Clone()
		h.Set("Accept", accept)
		if auth.BearerToken != "" {
			h.Set("Authorization", "Bearer "+auth.BearerToken)
		}
		b.header[i] = h
	}
	if auth.BearerToken == "" {
		b.signer = &sigv4{creds: awsCredentials(auth), signer: v4.NewSigner(), service: "bedrock", region: auth.Region, now: time.Now}
	}
	return b, nil
}

func (b *bedrock) request(ctx context.Context, c *Call) (*outbound, error) {
	var (
		body   []byte
		op     string
		stream bool
		err    error
	)
	// The proxy sets the body's model to the deployment's; the URL names it.
	model := gjson.GetBytes(c.Body, "model").Str
	if model == "" {
		model = b.model
	}
	switch c.Endpoint {
	case ChatCompletions:
		var req *chatRequest
		if req, err = decodeChat("bedrock", c.Body, bedrockKnown, bedrockIgnorable, b.drop); err != nil {
			return nil, err
		}
		if gjson.GetBytes(c.Body, "logprobs").Bool() && !b.drop {
			return nil, unsupported("bedrock", "logprobs", "logprobs")
		}
		cr, err := b.convert(req, model)
		if err != nil {
			return nil, err
		}
		if body, err = json.Marshal(cr); err != nil {
			return nil, err
		}
		op, stream = "/converse", req.Stream
		if stream {
			op = "/converse-stream"
		}
	case Embeddings:
		if body, err = b.embedRequest(c.Body, model); err != nil {
			return nil, err
		}
		op = "/invoke"
	case Messages:
		if body, op, stream, err = b.messagesRequest(c.Body, c.ClientHeader); err != nil {
			return nil, err
		}
	default:
		return nil, &BadRequest{Provider: "bedrock", Message: "bedrock deployments serve chat completions and embeddings only."}
	}
	// IDs hold ':' and ARNs '/': one escaped path segment, as the AWS SDKs send it (and sign it
	// escaped once more).
	u, err := joinURL(b.base, "/model/"+httpbinding.EscapePath(model, true)+op)
	if err != nil {
		return nil, err
	}
	h := b.header[0]
	if stream {
		h = b.header[1]
	}
	if b.signer != nil {
		h = h.Clone()
		if err := b.signer.sign(ctx, http.MethodPost, u, h, body); err != nil {
			return nil, credentialsError(ctx, err)
		}
	}
	return &outbound{url: u, body: body, header: h, stream: stream}, nil
}

// The OpenAI chat parameters the translation carries over, and those it may leave out
// because they change nothing for Bedrock.
var (
	bedrockKnown = []string{"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
		"top_p", "top_k", "stop", "stream", "n", "tools", "tool_choice", "parallel_tool_calls",
		"response_format", "reasoning_effort"}
	bedrockIgnorable = []string{"stream_options", "user", "logprobs", "store", "metadata"}
)

// converseRequest is a Converse (and ConverseStream) body; the model is in the URL.
type converseRequest struct {
	Messages                     []converseMessage   `json:"messages"`
	System                       []converseBlock     `json:"system,omitempty"`
	InferenceConfig              *converseInference  `json:"inferenceConfig,omitempty"`
	ToolConfig                   *converseToolConfig `json:"toolConfig,omitempty"`
	AdditionalModelRequestFields map[string]any      `json:"additionalModelRequestFields,omitempty"`
}

type converseMessage struct {
	Role    string          `json:"role"`
	Content []converseBlock `json:"content"`
}

// converseBlock is a content block: exactly one member is set.
type converseBlock struct {
	Text             *string             `json:"text,omitempty"`
	Image            *converseImage      `json:"image,omitempty"`
	ToolUse          *converseToolUse    `json:"toolUse,omitempty"`
	ToolResult       *converseToolResult `json:"toolResult,omitempty"`
	ReasoningContent *converseReasoning  `json:"reasoningContent,omitempty"`
	CachePoint       *converseCachePoint `json:"cachePoint,omitempty"`
}

type converseImage struct {
	Format string `json:"format"` // png, jpeg, gif, webp
	Source struct {
		Bytes string `json:"bytes"` // base64
	} `json:"source"`
}

type converseToolUse struct {
	ToolUseID string          `json:"toolUseId"`
	Name      string          `json:"name"`
	Input     json.RawMessage `json:"input"`
}

type converseToolResult struct {
	ToolUseID string          `json:"toolUseId"`
	Content   []converseBlock `json:"content"`
}

type converseReasoning struct {
	ReasoningText *struct {
		Text      string `json:"text"`
		Signature string `json:"signature,omitempty"`
	} `json:"reasoningText,omitempty"`
	RedactedContent string `json:"redactedContent,omitempty"`
}

type converseCachePoint struct {
	Type string `json:"type"` // default
}

type converseInference struct {
	MaxTokens     *int64   `json:"maxTokens,omitempty"`
	Temperature   *float64 `json:"temperature,omitempty"`
	TopP          *float64 `json:"topP,omitempty"`
	StopSequences []string `json:"stopSequences,omitempty"`
}

type converseToolConfig struct {
	Tools      []converseTool      `json:"tools"`
	ToolChoice *converseToolChoice `json:"toolChoice,omitempty"`
}

type converseTool struct {
	ToolSpec struct {
		Name        string `json:"name"`
		Description string `json:"description,omitempty"`
		InputSchema struct {
			JSON json.RawMessage `json:"json"`
		} `json:"inputSchema"`
	} `json:"toolSpec"`
}

// converseToolChoice is {"auto":{}}, {"any":{}} or {"tool":{"name":...}}.
type converseToolChoice struct {
	Auto *struct{} `json:"auto,omitempty"`
	Any  *struct{} `json:"any,omitempty"`
	Tool *struct {
		Name string `json:"name"`
	} `json:"tool,omitempty"`
}

// bedrockFamily is the model's maker as its ID names it (anthropic, amazon, meta, ...),
// through a cross-region prefix (us., eu., global., ...) or an inference profile ARN; "" for
// an ID that names none (an application inference profile, a provisioned model).
func bedrockFamily(model string) string {
	if i := strings.LastIndexByte(model, '/'); i >= 0 {
		model = model[i+1:]
	}
	for _, f := range []string{"anthropic.", "amazon.", "meta.", "mistral.", "cohere.", "ai21.", "deepseek.", "openai.", "qwen.", "writer."} {
		if strings.HasPrefix(model, f) || strings.Contains(model, "."+f) {
			return strings.TrimSuffix(f, ".")
		}
	}
	return ""
}

// convert translates an OpenAI chat request for model into a Converse request.
func (b *bedrock) convert(req *chatRequest, model string) (*converseRequest, error) {
	family := bedrockFamily(model)
	cr := &converseRequest{}
	inf := converseInference{Temperature: req.Temperature, TopP: req.TopP}
	if n := req.maxTokens(0); n > 0 {
		inf.MaxTokens = &n
	}
	for _, s := range req.Stop {
		if s != "" { // Converse refuses empty stop sequences
			inf.StopSequences = append(inf.StopSequences, s)
		}
	}
	extra := map[string]any{}
	if req.TopK != nil {
		switch {
		case family == "anthropic":
			extra["top_k"] = *req.TopK
		case strings.Contains(model, "amazon.nova"):
			extra["inferenceConfig"] = map[string]any{"topK": *req.TopK}
		case !b.drop:
			return nil, unsupported("bedrock", "top_k", "top_k for this model (herd passes it to Anthropic and Amazon Nova models)")
		}
	}
	if budget, ok := map[string]int64{"low": 1024, "medium": 2048, "high": 4096}[req.ReasoningEffort]; ok && family == "anthropic" {
		// As LiteLLM: Claude's extended thinking, with room for an answer past the budget.
		extra["thinking"] = anthropicThinking{Type: "enabled", BudgetTokens: budget}
		n := budget + AnthropicDefaultMaxTokens
		if inf.MaxTokens != nil {
			n = max(*inf.MaxTokens, budget+1)
		}
		inf.MaxTokens = &n
	} else if req.ReasoningEffort != "" && req.ReasoningEffort != "none" && !b.drop {
		return nil, &BadRequest{Provider: "bedrock", Param: "reasoning_effort", Message: "reasoning_effort must be low, medium or high, for Anthropic models only, on bedrock deployments."}
	}
	if inf.MaxTokens != nil || inf.Temperature != nil || inf.TopP != nil || len(inf.StopSequences) > 0 {
		cr.InferenceConfig = &inf
	}
	if len(extra) > 0 {
		cr.AdditionalModelRequestFields = extra
	}
	if rf := req.ResponseFormat; rf != nil && rf.Type != "" && rf.Type != "text" && !b.drop {
		return nil, unsupported("bedrock", "response_format", "response_format "+rf.Type+" (structured output)")
	}
	tc, err := b.toolConfig(req)
	if err != nil {
		return nil, err
	}
	cr.ToolConfig = tc

	system, turns, hasToolBlocks, err := walkTurns(req.Messages, turnCodec[converseBlock]{
		provider: "bedrock",
		blocks:   converseBlocks,
		toolUse: func(tc *toolCall, input json.RawMessage) converseBlock {
			return converseBlock{ToolUse: &converseToolUse{ToolUseID: tc.ID, Name: tc.Function.Name, Input: input}}
		},
		toolResult: func(m *chatMessage) converseBlock {
			text := m.text()
			return converseBlock{ToolResult: &converseToolResult{ToolUseID: m.ToolCallID, Content: []converseBlock{{Text: &text}}}}
		},
	})
	if err != nil {
		return nil, err
	}
	cr.System = system
	for _, t := range turns {
		cr.Messages = append(cr.Messages, converseMessage{Role: t.role, Content: t.blocks})
	}
	if hasToolBlocks && cr.ToolConfig == nil {
		return nil, &BadRequest{Provider: "bedrock", Param: "tools", Message: "bedrock deployments need 'tools' in a request whose messages hold tool calls or tool results (Converse refuses them without a tool configuration)."}
	}
	return cr, nil
}

// toolConfig maps tools and tool_choice. Converse has no "none": as LiteLLM, it is refused
// unless drop_params, which drops tool_choice (the tools stay: earlier tool calls need them).
func (b *bedrock) toolConfig(req *chatRequest) (*converseToolConfig, error) {
	tc := &converseToolConfig{}
	for _, t := range req.Tools {
		if t.Type != "function" {
			return nil, unsupported("bedrock", "tools", "tools of type "+t.Type)
		}
		var ct converseTool
		ct.ToolSpec.Name, ct.ToolSpec.Description = t.Function.Name, t.Function.Description
		ct.ToolSpec.InputSchema.JSON = t.Function.Parameters
		if len(t.Function.Parameters) == 0 || gjson.ParseBytes(t.Function.Parameters).Type == gjson.Null {
			ct.ToolSpec.InputSchema.JSON = json.RawMessage(`{"type":"object","properties":{}}`)
		}
		tc.Tools = append(tc.Tools, ct)
	}
	if req.ParallelToolCalls != nil && !*req.ParallelToolCalls && len(tc.Tools) > 0 && !b.drop {
		return nil, unsupported("bedrock", "parallel_tool_calls", "parallel_tool_calls: false (Converse has no such setting)")
	}
	r := gjson.ParseBytes(req.ToolChoice)
	switch {
	case len(req.ToolChoice) == 0 || r.Type == gjson.Null:
	case r.Str == "auto":
		tc.ToolChoice = &converseToolChoice{Auto: &struct{}{}}
	case r.Str == "required":
		tc.ToolChoice = &converseToolChoice{Any: &struct{}{}}
	case r.Str == "none":
		if !b.drop {
			return nil, unsupported("bedrock", "tool_choice", `tool_choice "none" (Converse cannot forbid tool use; remove the tools instead)`)
		}
	case r.IsObject() && r.Get("function.name").Str != "":
		tc.ToolChoice = &converseToolChoice{Tool: &struct {
			Name string `json:"name"`
		}{r.Get("function.name").Str}}
	default:
		return nil, &BadRequest{Provider: "bedrock", Param: "tool_choice", Message: "tool_choice must be auto, required or {\"type\":\"function\",\"function\":{\"name\":...}} for bedrock deployments."}
	}
	if len(tc.Tools) == 0 {
		return nil, nil // a tool_choice without tools has nothing to choose from
	}
	return tc, nil
}

// converseBlocks converts a message's content parts; images only where allowed. A part
// marked with cache_control is followed by a cache point, as LiteLLM sends it.
func converseBlocks(m *chatMessage, i int, images bool) ([]converseBlock, error) {
	param := fmt.Sprintf("messages[%d].content", i)
	parts, err := m.parts()
	if err != nil {
		return nil, &BadRequest{Provider: "bedrock", Param: param, Message: "Message content must be a string or an array of content parts."}
	}
	var out []converseBlock
	for _, p := range parts {
		switch p.Type {
		case "text":
			if p.Text == "" {
				continue // Converse refuses blank text blocks
			}
			out = append(out, converseBlock{Text: &p.Text})
		case "image_url":
			if !images || p.ImageURL == nil {
				return nil, &BadRequest{Provider: "bedrock", Param: param, Message: "Images are accepted in user messages only, as image_url parts with a url."}
			}
			img, err := converseImageOf(p.ImageURL.URL)
			if err != nil {
				return nil, &BadRequest{Provider: "bedrock", Param: param, Message: err.Error()}
			}
			out = append(out, converseBlock{Image: img})
		default:
			return nil, unsupported("bedrock", param, "content parts of type "+quote(p.Type))
		}
		if len(p.CacheControl) > 0 && gjson.ParseBytes(p.CacheControl).Type != gjson.Null {
			out = append(out, converseBlock{CachePoint: &converseCachePoint{Type: "default"}})
		}
	}
	return out, nil
}

// converseImageOf reads an image_url. Converse takes image bytes only; herd does not fetch
// URLs for the client (a proxy that fetches what it is told to is an open door into the
// network it runs in), so an http(s) URL is refused.
func converseImageOf(u string) (*converseImage, error) {
	rest, ok := strings.CutPrefix(u, "data:")
	if !ok {
		if strings.HasPrefix(u, "https://") || strings.HasPrefix(u, "http://") {
			return nil, fmt.Errorf("bedrock deployments take images inline only, and herd does not fetch image URLs: send the image as a base64 data URL (data:image/png;base64,...) instead of %s", snippetOf([]byte(u)))
		}
		return nil, fmt.Errorf("An image_url must be a base64 data URL (data:image/png;base64,...) for bedrock deployments.")
	}
	meta, data, ok := strings.Cut(rest, ",")
	mediaType, isBase64 := strings.CutSuffix(meta, ";base64")
	if !ok || !isBase64 {
		return nil, fmt.Errorf("An image data URL must be data:<media type>;base64,<data>.")
	}
	format, known := map[string]string{"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif", "image/webp": "webp"}[mediaType]
	if !known {
		return nil, fmt.Errorf("bedrock deployments take png, jpeg, gif and webp images, not %s.", quote(mediaType))
	}
	img := &converseImage{Format: format}
	img.Source.Bytes = data
	return img, nil
}

// converseResponse is a Converse answer.
type converseResponse struct {
	Output struct {
		Message *converseMessage `json:"message"`
	} `json:"output"`
	StopReason string        `json:"stopReason"`
	Usage      converseUsage `json:"usage"`
}

type converseUsage struct {
	InputTokens           int64 `json:"inputTokens"`
	OutputTokens          int64 `json:"outputTokens"`
	TotalTokens           int64 `json:"totalTokens"`
	CacheReadInputTokens  int64 `json:"cacheReadInputTokens"`
	CacheWriteInputTokens int64 `json:"cacheWriteInputTokens"`
}

// openAI reports usage as LiteLLM does for Bedrock: prompt tokens include the cache's.
func (u *converseUsage) openAI() *chatUsage {
	a := anthropicUsage{InputTokens: u.InputTokens, OutputTokens: u.OutputTokens,
		CacheCreationInputTokens: u.CacheWriteInputTokens, CacheReadInputTokens: u.CacheReadInputTokens}
	return a.openAI()
}

// bedrockFinish maps a stopReason to OpenAI's finish_reason.
func bedrockFinish(stop string) *string {
	switch stop {
	case "":
		return nil
	case "max_tokens", "model_context_window_exceeded":
		return strPtr("length")
	case "tool_use":
		return strPtr("tool_calls")
	case "guardrail_intervened", "content_filtered":
		return strPtr("content_filter")
	}
	return strPtr("stop") // end_turn, stop_sequence
}

func (b *bedrock) response(ep Endpoint, body []byte) ([]byte, error) {
	return b.responseTo(&Call{Endpoint: ep}, body)
}

func (b *bedrock) responseTo(c *Call, body []byte) ([]byte, error) {
	if c.Endpoint == Embeddings {
		return bedrockEmbedResponse(c.Body, body)
	}
	var r converseResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("bedrock answered with a body herd cannot read: %w", err)
	}
	msg := &chatAnswer{Role: "assistant"}
	var text, reasoning strings.Builder
	if m := r.Output.Message; m != nil {
		for _, blk := range m.Content {
			switch {
			case blk.Text != nil:
				text.WriteString(*blk.Text)
			case blk.ReasoningContent != nil && blk.ReasoningContent.ReasoningText != nil:
				reasoning.WriteString(blk.ReasoningContent.ReasoningText.Text)
			case blk.ToolUse != nil:
				tc := toolCall{ID: blk.ToolUse.ToolUseID, Type: "function"}
				tc.Function.Name = blk.ToolUse.Name
				tc.Function.Arguments = compactJSON(blk.ToolUse.Input)
				msg.ToolCalls = append(msg.ToolCalls, tc)
			}
		}
	}
	msg.setText(text.String(), reasoning.String())
	out := chatCompletion{
		ID:      "chatcmpl-" + b.newID(),
		Object:  "chat.completion",
		Created: b.now().Unix(),
		Model:   b.model,
		Choices: []chatChoice{{Index: 0, Message: msg, FinishReason: bedrockFinish(r.StopReason)}},
		Usage:   r.Usage.openAI(),
	}
	return json.Marshal(out)
}

// compactJSON is a tool call's input as OpenAI's arguments string; "{}" when absent.
func compactJSON(raw json.RawMessage) string {
	if len(raw) == 0 || gjson.ParseBytes(raw).Type == gjson.Null {
		return "{}"
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

// errorBody maps Bedrock's {"message":"..."} to OpenAI's shape; the status tells the kind
// (the x-amzn-ErrorType header names it too: ThrottlingException 429, ValidationException
// 400, AccessDeniedException 403, ModelTimeoutException 408, ModelErrorException 424,
// ServiceUnavailableException 503, ...). A prompt over the context window gets OpenAI's code,
// so context_window_fallbacks apply.
func (b *bedrock) errorBody(status int, body []byte) []byte {
	msg := gjson.GetBytes(body, "message").Str
	if msg == "" {
		msg = gjson.GetBytes(body, "Message").Str
	}
	typ := openAIErrorType(status)
	switch status {
	case http.StatusRequestTimeout:
		typ = "timeout"
	case http.StatusFailedDependency: // ModelErrorException: the model failed, not the request
		typ = "api_error"
	}
	if msg == "" {
		return errorJSON(status, typ, "bedrock returned "+http.StatusText(status)+": "+snippetOf(body), "")
	}
	code := ""
	if status == http.StatusBadRequest && bedrockContextError(msg) {
		code = "context_length_exceeded"
	}
	return errorJSON(status, typ, msg, code)
}

// bedrockContextError tells a prompt over the model's context window by the wording Bedrock
// and its models use ("Input is too long for requested model.", Claude's "prompt is too
// long: ...", "too many input tokens", ...), as LiteLLM does.
func bedrockContextError(msg string) bool {
	m := strings.ToLower(msg)
	for _, s := range []string{"input is too long", "prompt is too long", "too many input tokens", "too many tokens",
		"exceed context limit", "exceeds the context window", "context window", "expected maxlength"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}
