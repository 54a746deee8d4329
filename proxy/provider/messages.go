package provider

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/tidwall/gjson"
)

// Anthropic's Messages API as a client format (POST /v1/messages): herd reads the request as
// an OpenAI chat request, routes it like any other, and answers in the Messages format, so
// Anthropic SDK and Claude Code users can point at herd whatever the deployments behind it.

// messagesRequest is a Messages API request, as far as it translates to chat.
type messagesRequest struct {
	Model         string               `json:"model"`
	System        json.RawMessage      `json:"system"` // a string or text blocks
	Messages      []messagesTurn       `json:"messages"`
	MaxTokens     *int64               `json:"max_tokens"`
	Temperature   *float64             `json:"temperature"`
	TopP          *float64             `json:"top_p"`
	TopK          *int64               `json:"top_k"`
	StopSequences []string             `json:"stop_sequences"`
	Stream        bool                 `json:"stream"`
	Tools         []anthropicTool      `json:"tools"`
	ToolChoice    *anthropicToolChoice `json:"tool_choice"`
	Metadata      *anthropicMetadata   `json:"metadata"`
	Thinking      *anthropicThinking   `json:"thinking"`
}

type messagesTurn struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"` // a string or blocks
}

var messagesKnown = []string{"model", "system", "messages", "max_tokens", "temperature", "top_p", "top_k",
	"stop_sequences", "stream", "tools", "tool_choice", "metadata", "thinking", "service_tier"}

// MessagesToChat turns a Messages API request into an OpenAI chat request. The answer to it is
// turned back with ChatToMessages (or a MessagesStream). A request that has no chat equivalent
// fails with a *BadRequest.
func MessagesToChat(body []byte) ([]byte, error) {
	bad := func(param, msg string) error { return &BadRequest{Provider: "messages", Param: param, Message: msg} }
	var req messagesRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, bad("", "The request body is not a valid Messages API request: "+err.Error())
	}
	var unknown []string
	gjson.ParseBytes(body).ForEach(func(k, _ gjson.Result) bool {
		if !slices.Contains(messagesKnown, k.Str) {
			unknown = append(unknown, k.Str)
		}
		return true
	})
	if len(unknown) > 0 {
		return nil, bad(unknown[0], "herd does not translate the Messages API parameter(s) "+strings.Join(unknown, ", ")+".")
	}
	if req.MaxTokens == nil {
		return nil, bad("max_tokens", "max_tokens: Field required")
	}
	if len(req.Messages) == 0 {
		return nil, bad("messages", "messages: Field required")
	}
	out := chatOut{Model: req.Model, MaxTokens: req.MaxTokens, Temperature: req.Temperature, TopP: req.TopP,
		TopK: req.TopK, Stop: req.StopSequences, Stream: req.Stream}
	if req.Stream {
		// The Messages stream reports usage; ask for it.
		out.StreamOptions = &streamOptions{IncludeUsage: true}
	}
	if req.Metadata != nil {
		out.User = req.Metadata.UserID
	}
	if t := req.Thinking; t != nil && t.Type == "enabled" {
		switch {
		case t.BudgetTokens < 2048:
			out.ReasoningEffort = "low"
		case t.BudgetTokens < 4096:
			out.ReasoningEffort = "medium"
		default:
			out.ReasoningEffort = "high"
		}
	}
	if sys, err := systemParts(req.System); err != nil {
		return nil, bad("system", err.Error())
	} else if len(sys) > 0 {
		content, _ := json.Marshal(sys)
		out.Messages = append(out.Messages, chatMessage{Role: "system", Content: content})
	}
	for i, turn := range req.Messages {
		msgs, err := chatMessagesOf(turn)
		if err != nil {
			return nil, bad(fmt.Sprintf("messages.%d.content", i), err.Error())
		}
		out.Messages = append(out.Messages, msgs...)
	}
	for _, t := range req.Tools {
		var ct chatTool
		ct.Type = "function"
		ct.Function.Name, ct.Function.Description, ct.Function.Parameters = t.Name, t.Description, t.InputSchema
		ct.CacheControl = t.CacheControl
		out.Tools = append(out.Tools, ct)
	}
	if tc := req.ToolChoice; tc != nil {
		switch tc.Type {
		case "auto":
			out.ToolChoice = json.RawMessage(`"auto"`)
		case "any":
			out.ToolChoice = json.RawMessage(`"required"`)
		case "none":
			out.ToolChoice = json.RawMessage(`"none"`)
		case "tool":
			out.ToolChoice, _ = json.Marshal(map[string]any{"type": "function", "function": map[string]string{"name": tc.Name}})
		default:
			return nil, bad("tool_choice", "tool_choice.type must be auto, any, tool or none.")
		}
		if tc.DisableParallelToolUse && len(out.Tools) > 0 {
			f := false
			out.ParallelToolCalls = &f
		}
	}
	return json.Marshal(out)
}

// chatOut is the chat request MessagesToChat writes: only what was given.
type chatOut struct {
	Model             string          `json:"model"`
	Messages          []chatMessage   `json:"messages"`
	MaxTokens         *int64          `json:"max_tokens,omitempty"`
	Temperature       *float64        `json:"temperature,omitempty"`
	TopP              *float64        `json:"top_p,omitempty"`
	TopK              *int64          `json:"top_k,omitempty"`
	Stop              []string        `json:"stop,omitempty"`
	Stream            bool            `json:"stream,omitempty"`
	StreamOptions     *streamOptions  `json:"stream_options,omitempty"`
	Tools             []chatTool      `json:"tools,omitempty"`
	ToolChoice        json.RawMessage `json:"tool_choice,omitempty"`
	ParallelToolCalls *bool           `json:"parallel_tool_calls,omitempty"`
	User              string          `json:"user,omitempty"`
	ReasoningEffort   string          `json:"reasoning_effort,omitempty"`
	ResponseFormat    json.RawMessage `json:"response_format,omitempty"`
}

// outPart is a chat content part as MessagesToChat writes it.
type outPart struct {
	Type         string          `json:"type"`
	Text         string          `json:"text,omitempty"`
	ImageURL     *outImage       `json:"image_url,omitempty"`
	CacheControl json.RawMessage `json:"cache_control,omitempty"`
}

type outImage struct {
	URL string `json:"url"`
}

// blocksOf reads Messages content: a string is one text block.
func blocksOf(raw json.RawMessage) ([]anthropicBlock, error) {
	switch r := gjson.ParseBytes(raw); {
	case len(raw) == 0 || r.Type == gjson.Null:
		return nil, nil
	case r.Type == gjson.String:
		return []anthropicBlock{{Type: "text", Text: &r.Str}}, nil
	}
	var bs []anthropicBlock
	if err := json.Unmarshal(raw, &bs); err != nil {
		return nil, fmt.Errorf("content must be a string or an array of content blocks")
	}
	return bs, nil
}

func systemParts(raw json.RawMessage) ([]outPart, error) {
	blocks, err := blocksOf(raw)
	if err != nil {
		return nil, err
	}
	var out []outPart
	for _, b := range blocks {
		if b.Type != "text" || b.Text == nil {
			return nil, fmt.Errorf("system blocks must be text blocks")
		}
		out = append(out, outPart{Type: "text", Text: *b.Text, CacheControl: b.CacheControl})
	}
	return out, nil
}

// chatMessagesOf turns one Messages turn into chat messages: tool results become tool
// messages (before the turn's other content, as they answer the previous turn's calls).
func chatMessagesOf(turn messagesTurn) ([]chatMessage, error) {
	blocks, err := blocksOf(turn.Content)
	if err != nil {
		return nil, err
	}
	var (
		out   []chatMessage
		parts []outPart
		calls []toolCall
	)
	for _, b := range blocks {
		switch b.Type {
		case "text":
			if b.Text != nil {
				parts = append(parts, outPart{Type: "text", Text: *b.Text, CacheControl: b.CacheControl})
			}
		case "image":
			if turn.Role != "user" || b.Source == nil {
				return nil, fmt.Errorf("image blocks belong in user turns and need a source")
			}
			switch b.Source.Type {
			case "base64":
				parts = append(parts, outPart{Type: "image_url", ImageURL: &outImage{URL: "data:" + b.Source.MediaType + ";base64," + b.Source.Data}})
			case "url":
				parts = append(parts, outPart{Type: "image_url", ImageURL: &outImage{URL: b.Source.URL}})
			default:
				return nil, fmt.Errorf("image source type %s is not translated", quote(b.Source.Type))
			}
		case "tool_use":
			tc := toolCall{ID: b.ID, Type: "function"}
			tc.Function.Name = b.Name
			tc.Function.Arguments = string(b.Input)
			if len(b.Input) == 0 {
				tc.Function.Arguments = "{}"
			}
			calls = append(calls, tc)
		case "tool_result":
			inner, err := blocksOf(b.Content)
			if err != nil {
				return nil, err
			}
			var text strings.Builder
			for _, ib := range inner {
				if ib.Type == "text" && ib.Text != nil {
					text.WriteString(*ib.Text)
				}
			}
			content, _ := json.Marshal(text.String())
			out = append(out, chatMessage{Role: "tool", ToolCallID: b.ToolUseID, Content: content})
		case "thinking", "redacted_thinking":
			// Earlier reasoning is not sent back to a chat model.
		default:
			return nil, fmt.Errorf("content blocks of type %s are not translated", quote(b.Type))
		}
	}
	if len(parts) > 0 || len(calls) > 0 {
		m := chatMessage{Role: turn.Role, ToolCalls: calls}
		switch {
		case len(parts) == 1 && parts[0].Type == "text" && parts[0].CacheControl == nil:
			m.Content, _ = json.Marshal(parts[0].Text)
		case len(parts) > 0:
			m.Content, _ = json.Marshal(parts)
		default:
			m.Content = json.RawMessage("null")
		}
		out = append(out, m)
	}
	return out, nil
}

// messagesResponse is a Messages API answer.
type messagesResponse struct {
	ID           string           `json:"id"`
	Type         string           `json:"type"`
	Role         string           `json:"role"`
	Model        string           `json:"model"`
	Content      []anthropicBlock `json:"content"`
	StopReason   *string          `json:"stop_reason"`
	StopSequence *string          `json:"stop_sequence"`
	Usage        messagesUsage    `json:"usage"`
}

type messagesUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
}

func messagesUsageOf(u *chatUsage) messagesUsage {
	if u == nil {
		return messagesUsage{}
	}
	cached := u.CacheReadInputTokens
	if cached == 0 && u.PromptTokensDetails != nil {
		cached = u.PromptTokensDetails.CachedTokens
	}
	return messagesUsage{
		InputTokens:              max(0, u.PromptTokens-cached-u.CacheCreationInputTokens),
		OutputTokens:             u.CompletionTokens,
		CacheCreationInputTokens: u.CacheCreationInputTokens,
		CacheReadInputTokens:     cached,
	}
}

// messagesStop maps a finish_reason to a stop_reason.
func messagesStop(finish string) *string {
	switch finish {
	case "":
		return nil
	case "length":
		return strPtr("max_tokens")
	case "tool_calls", "function_call":
		return strPtr("tool_use")
	case "content_filter":
		return strPtr("refusal")
	}
	return strPtr("end_turn")
}

// ChatToMessages turns an OpenAI chat answer into a Messages API answer.
func ChatToMessages(body []byte) ([]byte, error) {
	var c chatCompletion
	if err := json.Unmarshal(body, &c); err != nil || len(c.Choices) == 0 || c.Choices[0].Message == nil {
		return nil, fmt.Errorf("the deployment's answer is not a chat completion")
	}
	ch := c.Choices[0]
	r := messagesResponse{ID: messagesID(c.ID), Type: "message", Role: "assistant", Model: c.Model,
		Content: []anthropicBlock{}, Usage: messagesUsageOf(c.Usage)}
	if rc := ch.Message.ReasoningContent; rc != nil && *rc != "" {
		r.Content = append(r.Content, anthropicBlock{Type: "thinking", Thinking: rc, Signature: ""})
	}
	if t := ch.Message.Content; t != nil && *t != "" {
		r.Content = append(r.Content, anthropicBlock{Type: "text", Text: t})
	}
	for _, tc := range ch.Message.ToolCalls {
		input := json.RawMessage(tc.Function.Arguments)
		if !gjson.Valid(tc.Function.Arguments) || tc.Function.Arguments == "" {
			input = json.RawMessage(`{}`)
		}
		r.Content = append(r.Content, anthropicBlock{Type: "tool_use", ID: tc.ID, Name: tc.Function.Name, Input: input})
	}
	if ch.FinishReason != nil {
		r.StopReason = messagesStop(*ch.FinishReason)
	}
	return json.Marshal(r)
}

// messagesID gives an answer a msg_ id, as Anthropic clients expect.
func messagesID(id string) string {
	if strings.HasPrefix(id, "msg_") {
		return id
	}
	return "msg_" + strings.TrimPrefix(id, "chatcmpl-")
}

// MessagesError turns an OpenAI error body (herd's or a deployment's) into a Messages API
// error: {"type":"error","error":{"type":...,"message":...}}.
func MessagesError(status int, body []byte) []byte {
	msg := gjson.GetBytes(body, "error.message").Str // OpenAI's, Anthropic's and Google's shape
	if msg == "" {
		msg = gjson.GetBytes(body, "message").Str // Bedrock's
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	b, _ := json.Marshal(map[string]any{"type": "error", "error": map[string]string{"type": messagesErrorType(status), "message": msg}})
	return b
}

func messagesErrorType(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return "invalid_request_error"
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusServiceUnavailable, 529:
		return "overloaded_error"
	}
	return "api_error"
}

// MessagesStream turns OpenAI chat chunks into Messages stream events.
type MessagesStream struct {
	started bool
	id      string
	model   string
	block   int    // index of the open content block; -1 none
	kind    string // its type: text, thinking, tool_use
	tools   map[int]int
	stop    string
	usage   *chatUsage
	blocks  int
}

// NewMessagesStream starts a conversion.
func NewMessagesStream() *MessagesStream { return &MessagesStream{block: -1} }

func event(dst []byte, name string, v any) []byte {
	b, _ := json.Marshal(v)
	dst = append(dst, "event: "...)
	dst = append(dst, name...)
	dst = append(dst, "\ndata: "...)
	dst = append(dst, b...)
	return append(dst, "\n\n"...)
}

func (s *MessagesStream) start(dst []byte) []byte {
	if s.started {
		return dst
	}
	s.started = true
	return event(dst, "message_start", map[string]any{"type": "message_start", "message": messagesResponse{
		ID: messagesID(s.id), Type: "message", Role: "assistant", Model: s.model, Content: []anthropicBlock{}}})
}

// open starts a content block of kind, closing the one open.
func (s *MessagesStream) open(dst []byte, kind string, block anthropicBlock) []byte {
	dst = s.close(dst)
	s.block, s.kind = s.blocks, kind
	s.blocks++
	return event(dst, "content_block_start", map[string]any{"type": "content_block_start", "index": s.block, "content_block": block})
}

func (s *MessagesStream) close(dst []byte) []byte {
	if s.block < 0 {
		return dst
	}
	dst = event(dst, "content_block_stop", map[string]any{"type": "content_block_stop", "index": s.block})
	s.block, s.kind = -1, ""
	return dst
}

func (s *MessagesStream) delta(dst []byte, d map[string]any) []byte {
	return event(dst, "content_block_delta", map[string]any{"type": "content_block_delta", "index": s.block, "delta": d})
}

// Chunk appends the events for one OpenAI chunk's data.
func (s *MessagesStream) Chunk(dst, data []byte) []byte {
	var c chatCompletion
	if json.Unmarshal(data, &c) != nil {
		return dst
	}
	if s.id == "" {
		s.id, s.model = c.ID, c.Model
	}
	dst = s.start(dst)
	if c.Usage != nil {
		s.usage = c.Usage
	}
	for _, ch := range c.Choices {
		if ch.Index != 0 || ch.Delta == nil {
			continue
		}
		d := ch.Delta
		if rc := d.ReasoningContent; rc != nil && *rc != "" {
			if s.kind != "thinking" {
				dst = s.open(dst, "thinking", anthropicBlock{Type: "thinking", Thinking: strPtr("")})
			}
			dst = s.delta(dst, map[string]any{"type": "thinking_delta", "thinking": *rc})
		}
		if t := d.Content; t != nil && *t != "" {
			if s.kind != "text" {
				dst = s.open(dst, "text", anthropicBlock{Type: "text", Text: strPtr("")})
			}
			dst = s.delta(dst, map[string]any{"type": "text_delta", "text": *t})
		}
		for _, tc := range d.ToolCalls {
			idx := 0
			if tc.Index != nil {
				idx = *tc.Index
			}
			if s.tools == nil {
				s.tools = make(map[int]int)
			}
			if _, seen := s.tools[idx]; !seen || tc.ID != "" {
				dst = s.open(dst, "tool_use", anthropicBlock{Type: "tool_use", ID: tc.ID, Name: tc.Function.Name, Input: json.RawMessage(`{}`)})
				s.tools[idx] = s.block
			}
			if tc.Function.Arguments != "" && s.tools[idx] == s.block {
				dst = s.delta(dst, map[string]any{"type": "input_json_delta", "partial_json": tc.Function.Arguments})
			}
		}
		if ch.FinishReason != nil && *ch.FinishReason != "" {
			s.stop = *ch.FinishReason
		}
	}
	return dst
}

// End appends the events that close the message: the open block, the stop reason and usage.
func (s *MessagesStream) End(dst []byte) []byte {
	dst = s.start(dst)
	dst = s.close(dst)
	u := messagesUsageOf(s.usage)
	dst = event(dst, "message_delta", map[string]any{"type": "message_delta",
		"delta": map[string]any{"stop_reason": messagesStop(s.stop), "stop_sequence": nil}, "usage": u})
	return event(dst, "message_stop", map[string]any{"type": "message_stop"})
}

// Error appends a Messages stream error event for a stream that broke; body is an OpenAI
// error body.
func (s *MessagesStream) Error(dst []byte, status int, body []byte) []byte {
	var e map[string]any
	_ = json.Unmarshal(MessagesError(status, body), &e)
	return event(dst, "error", e)
}
