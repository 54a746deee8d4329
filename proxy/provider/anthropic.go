package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
)

// Anthropic's Messages API (https://docs.anthropic.com/en/api/messages), translated to and
// from OpenAI chat completions.

// AnthropicVersion is the anthropic-version header herd sends unless extra_headers sets one.
const AnthropicVersion = "2023-06-01"

// AnthropicDefaultMaxTokens is the max_tokens sent when a request names none: the Messages
// API requires it. LiteLLM sends the same default.
const AnthropicDefaultMaxTokens = 4096

type anthropic struct {
	now    func() time.Time // the created time of answers
	target *url.URL
	header http.Header
	drop   bool
	maxLen int // the longest stream event read
}

func newAnthropic(d *config.Deployment, pool *Pool) (Upstream, error) {
	target, err := url.Parse(anthropicMessagesURL(d.APIBase))
	if err != nil {
		return nil, fmt.Errorf("deployment %s: api_base: %w", d.ID, err)
	}
	h := baseHeader(d)
	if k := d.LiteLLMParams.APIKey.Reveal(); k != "" {
		h.Set("X-Api-Key", k)
	}
	if h.Get("Anthropic-Version") == "" {
		h.Set("Anthropic-Version", AnthropicVersion)
	}
	a := &anthropic{now: time.Now, target: target, header: h, drop: pool.settings.DropParams, maxLen: int(pool.maxResponse())}
	return newTranslated(d, pool, target.String(), a)
}

// withClientVersion is h with the anthropic-version and anthropic-beta a Messages API client
// sent (Claude Code asks for betas it depends on), or h itself when it sent neither.
func withClientVersion(h, client http.Header) http.Header {
	v, beta := client.Values("Anthropic-Version"), client.Values("Anthropic-Beta")
	if len(v) == 0 && len(beta) == 0 {
		return h
	}
	h = h.Clone()
	if len(v) > 0 {
		h["Anthropic-Version"] = v
	}
	if len(beta) > 0 {
		h["Anthropic-Beta"] = beta
	}
	return h
}

// anthropicMessagesURL is the Messages endpoint under api_base, which LiteLLM users write as
// the host (https://api.anthropic.com), with /v1, or as the whole endpoint.
func anthropicMessagesURL(base string) string {
	switch {
	case strings.HasSuffix(base, "/v1/messages"):
		return base
	case strings.HasSuffix(base, "/v1"):
		return base + "/messages"
	}
	return base + "/v1/messages"
}

type anthropicRequest struct {
	Model         string               `json:"model"`
	System        []anthropicBlock     `json:"system,omitempty"`
	Messages      []anthropicMessage   `json:"messages"`
	MaxTokens     int64                `json:"max_tokens"`
	Temperature   *float64             `json:"temperature,omitempty"`
	TopP          *float64             `json:"top_p,omitempty"`
	TopK          *int64               `json:"top_k,omitempty"`
	StopSequences []string             `json:"stop_sequences,omitempty"`
	Stream        bool                 `json:"stream,omitempty"`
	Tools         []anthropicTool      `json:"tools,omitempty"`
	ToolChoice    *anthropicToolChoice `json:"tool_choice,omitempty"`
	Metadata      *anthropicMetadata   `json:"metadata,omitempty"`
	Thinking      *anthropicThinking   `json:"thinking,omitempty"`
}

type anthropicMessage struct {
	Role    string           `json:"role"`
	Content []anthropicBlock `json:"content"`
}

// anthropicBlock is a content block of any type: text, image, tool_use, tool_result,
// thinking, redacted_thinking.
type anthropicBlock struct {
	Type         string           `json:"type"`
	Text         *string          `json:"text,omitempty"`
	Source       *anthropicSource `json:"source,omitempty"`
	ID           string           `json:"id,omitempty"`
	Name         string           `json:"name,omitempty"`
	Input        json.RawMessage  `json:"input,omitempty"`
	ToolUseID    string           `json:"tool_use_id,omitempty"`
	Content      json.RawMessage  `json:"content,omitempty"`
	IsError      bool             `json:"is_error,omitempty"`
	Thinking     *string          `json:"thinking,omitempty"`
	Signature    string           `json:"signature,omitempty"`
	Data         string           `json:"data,omitempty"`
	CacheControl json.RawMessage  `json:"cache_control,omitempty"`
}

type anthropicSource struct {
	Type      string `json:"type"` // base64 or url
	MediaType string `json:"media_type,omitempty"`
	Data      string `json:"data,omitempty"`
	URL       string `json:"url,omitempty"`
}

type anthropicTool struct {
	Name         string          `json:"name"`
	Description  string          `json:"description,omitempty"`
	InputSchema  json.RawMessage `json:"input_schema"`
	CacheControl json.RawMessage `json:"cache_control,omitempty"`
}

type anthropicToolChoice struct {
	Type                   string `json:"type"` // auto, any, tool, none
	Name                   string `json:"name,omitempty"`
	DisableParallelToolUse bool   `json:"disable_parallel_tool_use,omitempty"`
}

type anthropicMetadata struct {
	UserID string `json:"user_id"`
}

type anthropicThinking struct {
	Type         string `json:"type"`
	BudgetTokens int64  `json:"budget_tokens"`
}

// The OpenAI chat parameters the translation carries over, and those it may leave out
// because they change nothing for Anthropic.
var (
	anthropicKnown = []string{"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
		"top_p", "top_k", "stop", "stream", "n", "tools", "tool_choice", "parallel_tool_calls", "user",
		"response_format", "reasoning_effort"}
	anthropicIgnorable = []string{"stream_options", "logprobs", "store", "metadata"}
)

// serves: a Messages API request is sent as it is.
func (a *anthropic) serves(ep Endpoint) bool { return ep == Messages }

func (a *anthropic) request(_ context.Context, c *Call) (*outbound, error) {
	if c.Endpoint == Messages {
		return &outbound{url: a.target, body: c.Body, header: withClientVersion(a.header, c.ClientHeader), stream: c.Stream}, nil
	}
	if c.Endpoint != ChatCompletions {
		return nil, &BadRequest{Provider: "anthropic", Message: "anthropic deployments serve chat completions only (/v1/chat/completions, or /v1/messages)."}
	}
	req, err := decodeChat("anthropic", c.Body, anthropicKnown, anthropicIgnorable, a.drop)
	if err != nil {
		return nil, err
	}
	if gjson.GetBytes(c.Body, "logprobs").Bool() && !a.drop {
		return nil, unsupported("anthropic", "logprobs", "logprobs")
	}
	ar, err := a.convert(req)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(ar)
	if err != nil {
		return nil, err
	}
	return &outbound{url: a.target, body: body, header: a.header, stream: req.Stream}, nil
}

// convert translates an OpenAI chat request into a Messages request.
func (a *anthropic) convert(req *chatRequest) (*anthropicRequest, error) {
	ar := &anthropicRequest{
		Model:         req.Model,
		MaxTokens:     req.maxTokens(AnthropicDefaultMaxTokens),
		Temperature:   req.Temperature,
		TopP:          req.TopP,
		TopK:          req.TopK,
		StopSequences: req.Stop,
		Stream:        req.Stream,
	}
	if req.User != "" {
		ar.Metadata = &anthropicMetadata{UserID: req.User}
	}
	if rf := req.ResponseFormat; rf != nil && rf.Type != "" && rf.Type != "text" && !a.drop {
		return nil, unsupported("anthropic", "response_format", "response_format "+rf.Type+" (structured output)")
	}
	if budget, ok := map[string]int64{"low": 1024, "medium": 2048, "high": 4096}[req.ReasoningEffort]; ok {
		ar.Thinking = &anthropicThinking{Type: "enabled", BudgetTokens: budget}
		ar.MaxTokens = max(ar.MaxTokens, budget+1)
	} else if req.ReasoningEffort != "" && req.ReasoningEffort != "none" && !a.drop {
		return nil, &BadRequest{Provider: "anthropic", Param: "reasoning_effort", Message: "reasoning_effort must be low, medium or high for anthropic deployments."}
	}
	for _, t := range req.Tools {
		if t.Type != "function" {
			return nil, unsupported("anthropic", "tools", "tools of type "+t.Type)
		}
		schema := t.Function.Parameters
		if len(schema) == 0 || gjson.ParseBytes(schema).Type == gjson.Null {
			schema = json.RawMessage(`{"type":"object","properties":{}}`)
		}
		ar.Tools = append(ar.Tools, anthropicTool{Name: t.Function.Name, Description: t.Function.Description, InputSchema: schema, CacheControl: t.CacheControl})
	}
	tc, err := anthropicToolChoiceOf(req.ToolChoice)
	if err != nil {
		return nil, err
	}
	if req.ParallelToolCalls != nil && !*req.ParallelToolCalls && len(ar.Tools) > 0 {
		if tc == nil {
			tc = &anthropicToolChoice{Type: "auto"}
		}
		tc.DisableParallelToolUse = true
	}
	ar.ToolChoice = tc

	system, turns, _, err := walkTurns(req.Messages, turnCodec[anthropicBlock]{
		provider: "anthropic",
		blocks:   anthropicBlocks,
		toolUse: func(tc *toolCall, input json.RawMessage) anthropicBlock {
			return anthropicBlock{Type: "tool_use", ID: tc.ID, Name: tc.Function.Name, Input: input}
		},
		toolResult: func(m *chatMessage) anthropicBlock {
			content, _ := json.Marshal(m.text())
			return anthropicBlock{Type: "tool_result", ToolUseID: m.ToolCallID, Content: content}
		},
	})
	if err != nil {
		return nil, err
	}
	ar.System = system
	for _, t := range turns {
		ar.Messages = append(ar.Messages, anthropicMessage{Role: t.role, Content: t.blocks})
	}
	return ar, nil
}

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }

// anthropicBlocks converts a message's content parts; images only where allowed.
func anthropicBlocks(m *chatMessage, i int, images bool) ([]anthropicBlock, error) {
	parts, err := m.parts()
	if err != nil {
		return nil, &BadRequest{Provider: "anthropic", Param: fmt.Sprintf("messages[%d].content", i), Message: "Message content must be a string or an array of content parts."}
	}
	var out []anthropicBlock
	for _, p := range parts {
		switch p.Type {
		case "text":
			if p.Text == "" {
				continue // the Messages API refuses empty text blocks
			}
			out = append(out, anthropicBlock{Type: "text", Text: &p.Text, CacheControl: p.CacheControl})
		case "image_url":
			if !images || p.ImageURL == nil {
				return nil, &BadRequest{Provider: "anthropic", Param: fmt.Sprintf("messages[%d].content", i), Message: "Images are accepted in user messages only, as image_url parts with a url."}
			}
			src, err := imageSource(p.ImageURL.URL)
			if err != nil {
				return nil, &BadRequest{Provider: "anthropic", Param: fmt.Sprintf("messages[%d].content", i), Message: err.Error()}
			}
			out = append(out, anthropicBlock{Type: "image", Source: src, CacheControl: p.CacheControl})
		default:
			return nil, unsupported("anthropic", fmt.Sprintf("messages[%d].content", i), "content parts of type "+quote(p.Type))
		}
	}
	return out, nil
}

// imageSource reads an image_url: a data URL is sent inline, an http(s) URL by reference.
func imageSource(u string) (*anthropicSource, error) {
	if rest, ok := strings.CutPrefix(u, "data:"); ok {
		meta, data, ok := strings.Cut(rest, ",")
		mediaType, isBase64 := strings.CutSuffix(meta, ";base64")
		if !ok || !isBase64 || mediaType == "" {
			return nil, errors.New("An image data URL must be data:<media type>;base64,<data>.")
		}
		return &anthropicSource{Type: "base64", MediaType: mediaType, Data: data}, nil
	}
	if strings.HasPrefix(u, "https://") || strings.HasPrefix(u, "http://") {
		return &anthropicSource{Type: "url", URL: u}, nil
	}
	return nil, errors.New("An image_url must be an http(s) URL or a base64 data URL.")
}

// anthropicToolChoiceOf maps OpenAI's tool_choice.
func anthropicToolChoiceOf(raw json.RawMessage) (*anthropicToolChoice, error) {
	r := gjson.ParseBytes(raw)
	switch {
	case len(raw) == 0 || r.Type == gjson.Null:
		return nil, nil
	case r.Str == "auto":
		return &anthropicToolChoice{Type: "auto"}, nil
	case r.Str == "required":
		return &anthropicToolChoice{Type: "any"}, nil
	case r.Str == "none":
		return &anthropicToolChoice{Type: "none"}, nil
	case r.IsObject() && r.Get("function.name").Str != "":
		return &anthropicToolChoice{Type: "tool", Name: r.Get("function.name").Str}, nil
	}
	return nil, &BadRequest{Provider: "anthropic", Param: "tool_choice", Message: "tool_choice must be auto, required, none or {\"type\":\"function\",\"function\":{\"name\":...}}."}
}

// anthropicResponse is a Messages API answer.
type anthropicResponse struct {
	ID         string           `json:"id"`
	Model      string           `json:"model"`
	Content    []anthropicBlock `json:"content"`
	StopReason string           `json:"stop_reason"`
	Usage      anthropicUsage   `json:"usage"`
}

type anthropicUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
}

// openAI reports Anthropic usage as LiteLLM does: prompt tokens include the cache's.
func (u *anthropicUsage) openAI() *chatUsage {
	prompt := u.InputTokens + u.CacheCreationInputTokens + u.CacheReadInputTokens
	cu := &chatUsage{
		PromptTokens:             prompt,
		CompletionTokens:         u.OutputTokens,
		TotalTokens:              prompt + u.OutputTokens,
		CacheCreationInputTokens: u.CacheCreationInputTokens,
		CacheReadInputTokens:     u.CacheReadInputTokens,
	}
	cu.PromptTokensDetails = &struct {
		CachedTokens int64 `json:"cached_tokens"`
	}{u.CacheReadInputTokens}
	return cu
}

// anthropicFinish maps a stop_reason to OpenAI's finish_reason.
func anthropicFinish(stop string) *string {
	switch stop {
	case "":
		return nil
	case "max_tokens", "model_context_window_exceeded":
		return strPtr("length")
	case "tool_use":
		return strPtr("tool_calls")
	case "refusal":
		return strPtr("content_filter")
	}
	return strPtr("stop") // end_turn, stop_sequence, pause_turn
}

func (a *anthropic) response(_ Endpoint, body []byte) ([]byte, error) {
	var r anthropicResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("anthropic answered with a body herd cannot read: %w", err)
	}
	msg := &chatAnswer{Role: "assistant"}
	var text, thinking strings.Builder
	for _, b := range r.Content {
		switch b.Type {
		case "text":
			if b.Text != nil {
				text.WriteString(*b.Text)
			}
		case "thinking":
			if b.Thinking != nil {
				thinking.WriteString(*b.Thinking)
			}
		case "tool_use":
			tc := toolCall{ID: b.ID, Type: "function"}
			tc.Function.Name = b.Name
			tc.Function.Arguments = string(b.Input)
			if len(b.Input) == 0 {
				tc.Function.Arguments = "{}"
			}
			msg.ToolCalls = append(msg.ToolCalls, tc)
		}
	}
	msg.setText(text.String(), thinking.String())
	out := chatCompletion{
		ID:      r.ID,
		Object:  "chat.completion",
		Created: a.now().Unix(),
		Model:   r.Model,
		Choices: []chatChoice{{Index: 0, Message: msg, FinishReason: anthropicFinish(r.StopReason)}},
		Usage:   r.Usage.openAI(),
	}
	return json.Marshal(out)
}

// errorBody maps {"type":"error","error":{"type":...,"message":...}} to OpenAI's shape. A
// prompt over the context window gets OpenAI's code, so context_window_fallbacks apply.
func (a *anthropic) errorBody(status int, body []byte) []byte {
	typ, msg := gjson.GetBytes(body, "error.type").Str, gjson.GetBytes(body, "error.message").Str
	if msg == "" {
		return errorJSON(status, openAIErrorType(status), "anthropic returned "+http.StatusText(status)+": "+snippetOf(body), "")
	}
	if typ == "" {
		typ = openAIErrorType(status)
	}
	code := ""
	if status == http.StatusBadRequest && strings.Contains(msg, "prompt is too long") {
		code = "context_length_exceeded"
	}
	return errorJSON(status, typ, msg, code)
}

// snippetOf is a short single-line excerpt of a body for an error message.
func snippetOf(b []byte) string {
	const max = 200
	if len(b) > max {
		b = b[:max]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 {
			return ' '
		}
		return r
	}, string(b))
}

func (a *anthropic) stream(c *Call, body io.Reader) chunkSource {
	return &anthropicStream{sse: newSSEScanner(body, a.maxLen), usage: includeUsage(c.Body), created: a.now().Unix()}
}

// anthropicStream converts Messages stream events into OpenAI chunks.
type anthropicStream struct {
	sse     *sseScanner
	usage   bool // the client asked for the usage chunk
	created int64
	id      string
	model   string
	tokens  anthropicUsage
	tools   map[int]int // content block index -> tool_calls index
	stop    string
}

// anthropicEvent is any event of a Messages stream.
type anthropicEvent struct {
	Type         string            `json:"type"`
	Message      anthropicResponse `json:"message"`
	Index        int               `json:"index"`
	ContentBlock anthropicBlock    `json:"content_block"`
	Delta        struct {
		Type        string `json:"type"`
		Text        string `json:"text"`
		PartialJSON string `json:"partial_json"`
		Thinking    string `json:"thinking"`
		StopReason  string `json:"stop_reason"`
	} `json:"delta"`
	Usage *anthropicUsage `json:"usage"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
}

// StreamError is an error event inside an upstream stream that had begun well.
type StreamError struct {
	Provider, Type, Message string
}

func (e *StreamError) Error() string {
	return e.Provider + " stream error: " + e.Type + ": " + e.Message
}

func (s *anthropicStream) chunk(dst []byte, delta *chatAnswer, finish *string, usage *chatUsage) []byte {
	return appendChunk(dst, s.id, s.model, s.created, 0, delta, finish, usage)
}

func (s *anthropicStream) next(dst []byte) ([]byte, error) {
	for {
		data, err := s.sse.next()
		if err == io.EOF {
			return dst, io.ErrUnexpectedEOF // no message_stop: the stream was cut
		}
		if err != nil {
			return dst, err
		}
		var ev anthropicEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			return dst, fmt.Errorf("anthropic stream event herd cannot read: %w", err)
		}
		switch ev.Type {
		case "message_start":
			s.id, s.model, s.tokens = ev.Message.ID, ev.Message.Model, ev.Message.Usage
			return s.chunk(dst, &chatAnswer{Role: "assistant", Content: strPtr("")}, nil, nil), nil
		case "content_block_start":
			switch b := ev.ContentBlock; b.Type {
			case "tool_use":
				if s.tools == nil {
					s.tools = make(map[int]int)
				}
				n := len(s.tools)
				s.tools[ev.Index] = n
				tc := toolCall{Index: &n, ID: b.ID, Type: "function"}
				tc.Function.Name = b.Name
				return s.chunk(dst, &chatAnswer{ToolCalls: []toolCall{tc}}, nil, nil), nil
			case "text":
				if b.Text != nil && *b.Text != "" {
					return s.chunk(dst, &chatAnswer{Content: b.Text}, nil, nil), nil
				}
			}
		case "content_block_delta":
			switch ev.Delta.Type {
			case "text_delta":
				return s.chunk(dst, &chatAnswer{Content: &ev.Delta.Text}, nil, nil), nil
			case "thinking_delta":
				return s.chunk(dst, &chatAnswer{ReasoningContent: &ev.Delta.Thinking}, nil, nil), nil
			case "input_json_delta":
				n, ok := s.tools[ev.Index]
				if !ok || ev.Delta.PartialJSON == "" {
					continue
				}
				tc := toolCall{Index: &n}
				tc.Function.Arguments = ev.Delta.PartialJSON
				return s.chunk(dst, &chatAnswer{ToolCalls: []toolCall{tc}}, nil, nil), nil
			}
		case "message_delta":
			if u := ev.Usage; u != nil {
				// Counts are cumulative; input counts appear here only in newer API versions.
				s.tokens.OutputTokens = u.OutputTokens
				if u.InputTokens > 0 {
					s.tokens.InputTokens = u.InputTokens
				}
				if u.CacheCreationInputTokens > 0 {
					s.tokens.CacheCreationInputTokens = u.CacheCreationInputTokens
				}
				if u.CacheReadInputTokens > 0 {
					s.tokens.CacheReadInputTokens = u.CacheReadInputTokens
				}
			}
			if ev.Delta.StopReason != "" {
				s.stop = ev.Delta.StopReason
				return s.chunk(dst, &chatAnswer{}, anthropicFinish(s.stop), nil), nil
			}
		case "message_stop":
			if s.usage {
				dst = s.chunk(dst, nil, nil, s.tokens.openAI())
			}
			return dst, io.EOF
		case "error":
			return dst, &StreamError{Provider: "anthropic", Type: ev.Error.Type, Message: ev.Error.Message}
		}
		// ping, content_block_stop and blocks that carry nothing yet: read on.
	}
}
