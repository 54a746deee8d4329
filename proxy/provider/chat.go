package provider

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"
)

// The OpenAI chat format, as far as translations read and write it.

// chatRequest is an OpenAI chat completions request.
type chatRequest struct {
	Model               string          `json:"model"`
	Messages            []chatMessage   `json:"messages"`
	MaxTokens           *int64          `json:"max_tokens"`
	MaxCompletionTokens *int64          `json:"max_completion_tokens"`
	Temperature         *float64        `json:"temperature"`
	TopP                *float64        `json:"top_p"`
	TopK                *int64          `json:"top_k"` // not OpenAI's; LiteLLM passes it to providers that have it
	Stop                stopList        `json:"stop"`
	Stream              bool            `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	N                   *int64          `json:"n"`
	Tools               []chatTool      `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	ParallelToolCalls   *bool           `json:"parallel_tool_calls"`
	User                string          `json:"user"`
	ResponseFormat      *responseFormat `json:"response_format"`
	Seed                *int64          `json:"seed"`
	PresencePenalty     *float64        `json:"presence_penalty"`
	FrequencyPenalty    *float64        `json:"frequency_penalty"`
	ReasoningEffort     string          `json:"reasoning_effort"`

	keys []string // the top-level keys the client sent
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type responseFormat struct {
	Type       string `json:"type"` // text, json_object, json_schema
	JSONSchema *struct {
		Name   string          `json:"name"`
		Schema json.RawMessage `json:"schema"`
		Strict *bool           `json:"strict"`
	} `json:"json_schema"`
}

// stopList is "stop": a string or an array of strings.
type stopList []string

func (s *stopList) UnmarshalJSON(b []byte) error {
	switch r := gjson.ParseBytes(b); {
	case r.Type == gjson.String:
		*s = stopList{r.Str}
	case r.Type == gjson.Null:
		*s = nil
	default:
		var list []string
		if err := json.Unmarshal(b, &list); err != nil {
			return err
		}
		*s = list
	}
	return nil
}

type chatMessage struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"` // a string, an array of parts, or null
	Name       string          `json:"name,omitempty"`
	ToolCalls  []toolCall      `json:"tool_calls,omitempty"`
	ToolCallID string          `json:"tool_call_id,omitempty"`
}

// contentPart is one part of a message's content array.
type contentPart struct {
	Type     string `json:"type"` // text, image_url (input_audio and file are not translated)
	Text     string `json:"text"`
	ImageURL *struct {
		URL    string `json:"url"`
		Detail string `json:"detail"`
	} `json:"image_url"`
	// CacheControl is Anthropic's prompt-caching marker, which LiteLLM accepts on OpenAI
	// content parts and passes on.
	CacheControl json.RawMessage `json:"cache_control"`
}

type toolCall struct {
	Index    *int   `json:"index,omitempty"` // stream chunks only
	ID       string `json:"id,omitempty"`
	Type     string `json:"type,omitempty"`
	Function struct {
		Name      string `json:"name,omitempty"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type chatTool struct {
	Type     string `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description,omitempty"`
		Parameters  json.RawMessage `json:"parameters,omitempty"`
		Strict      *bool           `json:"strict,omitempty"`
	} `json:"function"`
	CacheControl json.RawMessage `json:"cache_control,omitempty"`
}

// parts returns a message's content as parts: a string is one text part.
func (m *chatMessage) parts() ([]contentPart, error) {
	switch r := gjson.ParseBytes(m.Content); {
	case len(m.Content) == 0 || r.Type == gjson.Null:
		return nil, nil
	case r.Type == gjson.String:
		return []contentPart{{Type: "text", Text: r.Str}}, nil
	}
	var ps []contentPart
	if err := json.Unmarshal(m.Content, &ps); err != nil {
		return nil, err
	}
	return ps, nil
}

// text is a message's content as plain text: a string, or its text parts joined.
func (m *chatMessage) text() string {
	ps, _ := m.parts()
	var b strings.Builder
	for _, p := range ps {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String()
}

// decodeChat reads an OpenAI chat request. Keys outside known (the parameters the provider
// translates) and ignorable (parameters that change nothing for it) fail with a *BadRequest,
// unless drop is set (litellm_settings.drop_params), which drops them as LiteLLM does.
func decodeChat(provider string, body []byte, known, ignorable []string, drop bool) (*chatRequest, error) {
	return decodeChatChoices(provider, body, known, ignorable, drop, false)
}

// decodeChatChoices is decodeChat for a provider that may also take n > 1 (choices: it can
// answer with several choices).
func decodeChatChoices(provider string, body []byte, known, ignorable []string, drop, choices bool) (*chatRequest, error) {
	var req chatRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, &BadRequest{Provider: provider, Message: "The request body is not a valid chat completions request: " + err.Error()}
	}
	var bad []string
	gjson.ParseBytes(body).ForEach(func(k, v gjson.Result) bool {
		req.keys = append(req.keys, k.Str)
		if slices.Contains(known, k.Str) || slices.Contains(ignorable, k.Str) || v.Type == gjson.Null {
			return true
		}
		bad = append(bad, k.Str)
		return true
	})
	if len(bad) > 0 && !drop {
		slices.Sort(bad)
		return nil, unsupported(provider, bad[0], "the parameter(s) "+strings.Join(bad, ", "))
	}
	if req.N != nil && *req.N > 1 && !drop && !choices {
		return nil, unsupported(provider, "n", "n > 1 (several choices in one call)")
	}
	if len(req.Messages) == 0 {
		return nil, &BadRequest{Provider: provider, Param: "messages", Message: "'messages' must be a non-empty array."}
	}
	return &req, nil
}

// toolCallInput is the arguments of tool call tc (in messages[i]) as the JSON object that
// Messages-style APIs take as a tool use's input: "{}" for none; anything but an object is the
// client's error.
func toolCallInput(provider string, i int, tc *toolCall) (json.RawMessage, error) {
	args := tc.Function.Arguments
	switch {
	case strings.TrimSpace(args) == "":
		return json.RawMessage(`{}`), nil
	case !gjson.Valid(args) || !gjson.Parse(args).IsObject():
		return nil, &BadRequest{Provider: provider, Param: fmt.Sprintf("messages[%d].tool_calls", i), Message: "Tool call arguments must be a JSON object for " + provider + " deployments."}
	}
	return json.RawMessage(args), nil
}

// maxTokens is the request's max_completion_tokens or max_tokens, else def.
func (r *chatRequest) maxTokens(def int64) int64 {
	switch {
	case r.MaxCompletionTokens != nil && *r.MaxCompletionTokens > 0:
		return *r.MaxCompletionTokens
	case r.MaxTokens != nil && *r.MaxTokens > 0:
		return *r.MaxTokens
	}
	return def
}

func (r *chatRequest) includeUsage() bool {
	return r.StreamOptions != nil && r.StreamOptions.IncludeUsage
}

// includeUsage reads stream_options.include_usage from an OpenAI body.
func includeUsage(body []byte) bool {
	return gjson.GetBytes(body, "stream_options.include_usage").Bool()
}

// chatCompletion is an OpenAI chat completions answer.
type chatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []chatChoice `json:"choices"`
	Usage   *chatUsage   `json:"usage,omitempty"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      *chatAnswer `json:"message,omitempty"`
	Delta        *chatAnswer `json:"delta,omitempty"`
	FinishReason *string     `json:"finish_reason"`
	Logprobs     *struct{}   `json:"logprobs"`
}

// chatAnswer is a choice's message, or a stream chunk's delta.
type chatAnswer struct {
	Role             string     `json:"role,omitempty"`
	Content          *string    `json:"content,omitempty"`
	ReasoningContent *string    `json:"reasoning_content,omitempty"`
	ToolCalls        []toolCall `json:"tool_calls,omitempty"`
}

// setText sets an answer's content and reasoning: content is absent only beside tool calls,
// as OpenAI answers.
func (a *chatAnswer) setText(text, reasoning string) {
	if text != "" || len(a.ToolCalls) == 0 {
		a.Content = strPtr(text)
	}
	if reasoning != "" {
		a.ReasoningContent = strPtr(reasoning)
	}
}

type chatUsage struct {
	PromptTokens        int64 `json:"prompt_tokens"`
	CompletionTokens    int64 `json:"completion_tokens"`
	TotalTokens         int64 `json:"total_tokens"`
	PromptTokensDetails *struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"prompt_tokens_details,omitempty"`
	CompletionTokensDetails *struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"completion_tokens_details,omitempty"`
	// Anthropic's prompt-cache counts, as LiteLLM reports them.
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens,omitempty"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens,omitempty"`
}

func strPtr(s string) *string { return &s }

// chunksOf splits a complete OpenAI chat answer into the stream chunks that carry it: a
// role-and-content chunk per choice, a finish chunk, and the usage chunk when asked for.
func chunksOf(body []byte, withUsage bool) [][]byte {
	var c chatCompletion
	if json.Unmarshal(body, &c) != nil {
		return nil
	}
	chunk := func(choices []chatChoice, u *chatUsage) []byte {
		b, _ := json.Marshal(chatCompletion{ID: c.ID, Object: "chat.completion.chunk", Created: c.Created, Model: c.Model, Choices: choices, Usage: u})
		return b
	}
	var out [][]byte
	for _, ch := range c.Choices {
		if ch.Message == nil {
			continue
		}
		d := *ch.Message
		for i := range d.ToolCalls {
			d.ToolCalls[i].Index = &i
		}
		out = append(out, chunk([]chatChoice{{Index: ch.Index, Delta: &d}}, nil))
		out = append(out, chunk([]chatChoice{{Index: ch.Index, Delta: &chatAnswer{}, FinishReason: ch.FinishReason}}, nil))
	}
	if withUsage && c.Usage != nil {
		out = append(out, chunk([]chatChoice{}, c.Usage))
	}
	return out
}

// errorJSON is an OpenAI error body. code, when "", is the status.
func errorJSON(status int, typ, msg, code string) []byte {
	if code == "" {
		code = strconv.Itoa(status)
	}
	type body struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	}
	b, _ := json.Marshal(struct {
		Error body `json:"error"`
	}{body{Message: msg, Type: typ, Code: code}})
	return b
}

// openAIErrorType is the OpenAI error type for an HTTP status.
func openAIErrorType(status int) string {
	switch {
	case status == 400:
		return "invalid_request_error"
	case status == 401:
		return "authentication_error"
	case status == 403:
		return "permission_denied_error"
	case status == 404:
		return "not_found_error"
	case status == 429:
		return "rate_limit_error"
	case status >= 500:
		return "api_error"
	}
	return "invalid_request_error"
}

// turnCodec is what a provider with user and assistant turns (Anthropic's Messages API,
// Bedrock's Converse) makes of chat messages, in its own content blocks B.
type turnCodec[B any] struct {
	provider   string
	blocks     func(m *chatMessage, i int, images bool) ([]B, error) // a message's content; images only in user turns
	toolUse    func(tc *toolCall, input json.RawMessage) B           // an assistant's tool call
	toolResult func(m *chatMessage) B                                // a tool message's answer
}

// turn is one user or assistant turn of such a provider.
type turn[B any] struct {
	role   string
	blocks []B
}

// walkTurns splits chat messages into system blocks and turns. Those APIs alternate user and
// assistant turns, so consecutive messages of one role (several tool results, say) become one
// turn; tool results are the user's. tools reports whether any tool call or result was seen.
func walkTurns[B any](msgs []chatMessage, c turnCodec[B]) (system []B, turns []turn[B], tools bool, err error) {
	for i := range msgs {
		m := &msgs[i]
		var (
			role   string
			blocks []B
		)
		switch m.Role {
		case "system", "developer":
			sys, err := c.blocks(m, i, false)
			if err != nil {
				return nil, nil, false, err
			}
			system = append(system, sys...)
			continue
		case "user":
			role = "user"
			if blocks, err = c.blocks(m, i, true); err != nil {
				return nil, nil, false, err
			}
		case "assistant":
			role = "assistant"
			if blocks, err = c.blocks(m, i, false); err != nil {
				return nil, nil, false, err
			}
			for _, tc := range m.ToolCalls {
				input, err := toolCallInput(c.provider, i, &tc)
				if err != nil {
					return nil, nil, false, err
				}
				blocks = append(blocks, c.toolUse(&tc, input))
				tools = true
			}
		case "tool":
			role = "user"
			blocks = []B{c.toolResult(m)}
			tools = true
		default:
			return nil, nil, false, &BadRequest{Provider: c.provider, Param: fmt.Sprintf("messages[%d].role", i), Message: "Unsupported message role " + quote(m.Role) + " for " + c.provider + " deployments."}
		}
		if len(blocks) == 0 {
			continue
		}
		if n := len(turns); n > 0 && turns[n-1].role == role {
			turns[n-1].blocks = append(turns[n-1].blocks, blocks...)
			continue
		}
		turns = append(turns, turn[B]{role: role, blocks: blocks})
	}
	if len(turns) == 0 {
		return nil, nil, false, &BadRequest{Provider: c.provider, Param: "messages", Message: c.provider + " deployments need at least one user or assistant message besides system messages."}
	}
	return system, turns, tools, nil
}

// appendChunk appends the stream event of one chat.completion.chunk: choice index's delta and
// finish reason, or, with a nil delta, the usage chunk's empty choices.
func appendChunk(dst []byte, id, model string, created int64, index int, delta *chatAnswer, finish *string, usage *chatUsage) []byte {
	c := chatCompletion{ID: id, Object: "chat.completion.chunk", Created: created, Model: model, Choices: []chatChoice{}, Usage: usage}
	if delta != nil {
		c.Choices = []chatChoice{{Index: index, Delta: delta, FinishReason: finish}}
	}
	b, _ := json.Marshal(c)
	return appendEvent(dst, b)
}
