package provider

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/tidwall/gjson"
)

// OpenAI's Responses API as a client format (POST /v1/responses), for deployments that do
// not serve it themselves: the request is read as a chat request and the chat answer is
// written back as a response object, its stream as Responses events.

type responsesRequest struct {
	Model             string          `json:"model"`
	Input             json.RawMessage `json:"input"` // a string or input items
	Instructions      string          `json:"instructions"`
	MaxOutputTokens   *int64          `json:"max_output_tokens"`
	Temperature       *float64        `json:"temperature"`
	TopP              *float64        `json:"top_p"`
	Stream            bool            `json:"stream"`
	Tools             []responsesTool `json:"tools"`
	ToolChoice        json.RawMessage `json:"tool_choice"`
	ParallelToolCalls *bool           `json:"parallel_tool_calls"`
	User              string          `json:"user"`
	Reasoning         *struct {
		Effort string `json:"effort"`
	} `json:"reasoning"`
	Text *struct {
		Format json.RawMessage `json:"format"`
	} `json:"text"`
}

type responsesTool struct {
	Type        string          `json:"type"`
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Parameters  json.RawMessage `json:"parameters"`
	Strict      *bool           `json:"strict"`
}

// responsesItem is one input item: a message, a function call or a call's output.
type responsesItem struct {
	Type      string          `json:"type"`
	Role      string          `json:"role"`
	Content   json.RawMessage `json:"content"`
	CallID    string          `json:"call_id"`
	Name      string          `json:"name"`
	Arguments string          `json:"arguments"`
	Output    json.RawMessage `json:"output"`
}

var (
	responsesKnown = []string{"model", "input", "instructions", "max_output_tokens", "temperature", "top_p",
		"stream", "tools", "tool_choice", "parallel_tool_calls", "user", "reasoning", "text"}
	// responsesIgnorable change nothing about the answer a chat deployment gives.
	responsesIgnorable = []string{"metadata", "store", "truncation", "include", "service_tier", "stream_options"}
)

// ResponsesToChat turns a Responses API request into an OpenAI chat request, or fails with a
// *BadRequest naming what a chat deployment cannot do (previous_response_id, built-in tools).
func ResponsesToChat(body []byte) ([]byte, error) {
	bad := func(param, msg string) error { return &BadRequest{Provider: "responses", Param: param, Message: msg} }
	var req responsesRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, bad("", "The request body is not a valid Responses API request: "+err.Error())
	}
	var unknown []string
	gjson.ParseBytes(body).ForEach(func(k, v gjson.Result) bool {
		if !slices.Contains(responsesKnown, k.Str) && !slices.Contains(responsesIgnorable, k.Str) && v.Type != gjson.Null {
			unknown = append(unknown, k.Str)
		}
		return true
	})
	if len(unknown) > 0 {
		return nil, bad(unknown[0], "The Responses API parameter(s) "+strings.Join(unknown, ", ")+" need a deployment that serves the Responses API itself (openai/ or azure/); this model group's deployment is answered through chat completions.")
	}
	out := chatOut{Model: req.Model, MaxTokens: req.MaxOutputTokens, Temperature: req.Temperature, TopP: req.TopP,
		Stream: req.Stream, User: req.User, ParallelToolCalls: req.ParallelToolCalls}
	if req.Stream {
		out.StreamOptions = &streamOptions{IncludeUsage: true}
	}
	if req.Reasoning != nil {
		out.ReasoningEffort = req.Reasoning.Effort
	}
	if req.Text != nil && len(req.Text.Format) > 0 {
		f := gjson.ParseBytes(req.Text.Format)
		switch f.Get("type").Str {
		case "", "text":
		case "json_object":
			out.ResponseFormat = json.RawMessage(`{"type":"json_object"}`)
		case "json_schema":
			rf := map[string]any{"type": "json_schema", "json_schema": map[string]any{
				"name": f.Get("name").Str, "schema": json.RawMessage(f.Get("schema").Raw), "strict": f.Get("strict").Bool()}}
			out.ResponseFormat, _ = json.Marshal(rf)
		default:
			return nil, bad("text.format", "text.format type "+quote(f.Get("type").Str)+" is not translated.")
		}
	}
	if req.Instructions != "" {
		content, _ := json.Marshal(req.Instructions)
		out.Messages = append(out.Messages, chatMessage{Role: "system", Content: content})
	}
	switch in := gjson.ParseBytes(req.Input); {
	case in.Type == gjson.String:
		content, _ := json.Marshal(in.Str)
		out.Messages = append(out.Messages, chatMessage{Role: "user", Content: content})
	case in.IsArray():
		var items []responsesItem
		if err := json.Unmarshal(req.Input, &items); err != nil {
			return nil, bad("input", "input must be a string or an array of input items.")
		}
		for i, it := range items {
			msgs, err := chatOfItem(out.Messages, it)
			if err != nil {
				return nil, bad(fmt.Sprintf("input[%d]", i), err.Error())
			}
			out.Messages = msgs
		}
	default:
		return nil, bad("input", "input is required: a string or an array of input items.")
	}
	for _, t := range req.Tools {
		if t.Type != "function" {
			return nil, bad("tools", "Built-in tools ("+t.Type+") need a deployment that serves the Responses API itself (openai/ or azure/).")
		}
		var ct chatTool
		ct.Type = "function"
		ct.Function.Name, ct.Function.Description, ct.Function.Parameters, ct.Function.Strict = t.Name, t.Description, t.Parameters, t.Strict
		out.Tools = append(out.Tools, ct)
	}
	if tc := gjson.ParseBytes(req.ToolChoice); tc.Type == gjson.String {
		out.ToolChoice = json.RawMessage(tc.Raw)
	} else if tc.IsObject() {
		if tc.Get("type").Str != "function" {
			return nil, bad("tool_choice", "tool_choice must be auto, required, none or a function.")
		}
		out.ToolChoice, _ = json.Marshal(map[string]any{"type": "function", "function": map[string]string{"name": tc.Get("name").Str}})
	}
	if len(out.Tools) == 0 {
		out.ParallelToolCalls = nil
	}
	return json.Marshal(out)
}

// chatOfItem appends the chat messages for one input item to msgs.
func chatOfItem(msgs []chatMessage, it responsesItem) ([]chatMessage, error) {
	switch it.Type {
	case "function_call":
		tc := toolCall{ID: it.CallID, Type: "function"}
		tc.Function.Name, tc.Function.Arguments = it.Name, it.Arguments
		// Calls of one turn follow each other: they join the assistant message before them.
		if n := len(msgs); n > 0 && msgs[n-1].Role == "assistant" {
			msgs[n-1].ToolCalls = append(msgs[n-1].ToolCalls, tc)
			return msgs, nil
		}
		return append(msgs, chatMessage{Role: "assistant", Content: json.RawMessage("null"), ToolCalls: []toolCall{tc}}), nil
	case "function_call_output":
		out := gjson.ParseBytes(it.Output)
		text := out.Raw
		if out.Type == gjson.String {
			text = out.Str
		}
		content, _ := json.Marshal(text)
		return append(msgs, chatMessage{Role: "tool", ToolCallID: it.CallID, Content: content}), nil
	case "reasoning":
		return msgs, nil // earlier reasoning is not sent back to a chat model
	case "", "message":
	default:
		return nil, fmt.Errorf("input items of type %s are not translated", quote(it.Type))
	}
	role := it.Role
	if role == "developer" {
		role = "system"
	}
	switch role {
	case "user", "system", "assistant":
	default:
		return nil, fmt.Errorf("unsupported role %s", quote(it.Role))
	}
	c := gjson.ParseBytes(it.Content)
	if c.Type == gjson.String {
		return append(msgs, chatMessage{Role: role, Content: json.RawMessage(c.Raw)}), nil
	}
	var parts []outPart
	var err error
	c.ForEach(func(_, p gjson.Result) bool {
		switch p.Get("type").Str {
		case "input_text", "output_text", "text":
			parts = append(parts, outPart{Type: "text", Text: p.Get("text").Str})
		case "input_image":
			u := p.Get("image_url").Str
			if u == "" {
				err = fmt.Errorf("input_image needs an image_url (file_id is not translated)")
				return false
			}
			parts = append(parts, outPart{Type: "image_url", ImageURL: &outImage{URL: u}})
		case "refusal":
			parts = append(parts, outPart{Type: "text", Text: p.Get("refusal").Str})
		default:
			err = fmt.Errorf("content parts of type %s are not translated", quote(p.Get("type").Str))
			return false
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	var content json.RawMessage
	if len(parts) == 1 && parts[0].Type == "text" || role == "assistant" || role == "system" {
		var b strings.Builder
		for _, p := range parts {
			b.WriteString(p.Text)
		}
		content, _ = json.Marshal(b.String())
	} else {
		content, _ = json.Marshal(parts)
	}
	return append(msgs, chatMessage{Role: role, Content: content}), nil
}

// responseObject is a Responses API response.
type responseObject struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	CreatedAt         int64           `json:"created_at"`
	Status            string          `json:"status"`
	Model             string          `json:"model"`
	Output            []responseItem  `json:"output"`
	Usage             *responsesUsage `json:"usage"`
	IncompleteDetails *struct {
		Reason string `json:"reason"`
	} `json:"incomplete_details"`
	Error             *struct{}       `json:"error"`
	ParallelToolCalls bool            `json:"parallel_tool_calls"`
	ToolChoice        json.RawMessage `json:"tool_choice"`
	Tools             []responsesTool `json:"tools"`
}

type responseItem struct {
	Type      string             `json:"type"` // message, function_call, reasoning
	ID        string             `json:"id"`
	Status    string             `json:"status,omitempty"`
	Role      string             `json:"role,omitempty"`
	Content   []responseTextPart `json:"content,omitempty"`
	CallID    string             `json:"call_id,omitempty"`
	Name      string             `json:"name,omitempty"`
	Arguments *string            `json:"arguments,omitempty"`
	Summary   []responseTextPart `json:"summary,omitempty"`
}

type responseTextPart struct {
	Type        string   `json:"type"` // output_text, summary_text
	Text        string   `json:"text"`
	Annotations []string `json:"annotations,omitempty"`
}

type responsesUsage struct {
	InputTokens        int64 `json:"input_tokens"`
	InputTokensDetails struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokens        int64 `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int64 `json:"total_tokens"`
}

func responsesUsageOf(u *chatUsage) *responsesUsage {
	if u == nil {
		return nil
	}
	r := &responsesUsage{InputTokens: u.PromptTokens, OutputTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens}
	if u.PromptTokensDetails != nil {
		r.InputTokensDetails.CachedTokens = u.PromptTokensDetails.CachedTokens
	}
	if u.CompletionTokensDetails != nil {
		r.OutputTokensDetails.ReasoningTokens = u.CompletionTokensDetails.ReasoningTokens
	}
	return r
}

// responseOf builds the response object for a chat answer's first choice.
func responseOf(c *chatCompletion, ch *chatChoice) responseObject {
	r := responseObject{ID: responsesID(c.ID), Object: "response", CreatedAt: c.Created, Status: "completed", Model: c.Model,
		Output: []responseItem{}, Usage: responsesUsageOf(c.Usage), ToolChoice: json.RawMessage(`"auto"`), Tools: []responsesTool{}, ParallelToolCalls: true}
	if ch == nil || ch.Message == nil {
		return r
	}
	if rc := ch.Message.ReasoningContent; rc != nil && *rc != "" {
		r.Output = append(r.Output, responseItem{Type: "reasoning", ID: "rs_" + c.ID, Summary: []responseTextPart{{Type: "summary_text", Text: *rc}}})
	}
	if t := ch.Message.Content; t != nil && *t != "" {
		r.Output = append(r.Output, responseItem{Type: "message", ID: "msg_" + c.ID, Status: "completed", Role: "assistant",
			Content: []responseTextPart{{Type: "output_text", Text: *t, Annotations: []string{}}}})
	}
	for _, tc := range ch.Message.ToolCalls {
		args := tc.Function.Arguments
		r.Output = append(r.Output, responseItem{Type: "function_call", ID: "fc_" + tc.ID, Status: "completed", CallID: tc.ID, Name: tc.Function.Name, Arguments: &args})
	}
	if ch.FinishReason != nil && *ch.FinishReason == "length" {
		r.Status = "incomplete"
		r.IncompleteDetails = &struct {
			Reason string `json:"reason"`
		}{"max_output_tokens"}
	}
	return r
}

func responsesID(id string) string {
	if strings.HasPrefix(id, "resp_") {
		return id
	}
	return "resp_" + strings.TrimPrefix(id, "chatcmpl-")
}

// ChatToResponse turns an OpenAI chat answer into a Responses API response object.
func ChatToResponse(body []byte) ([]byte, error) {
	var c chatCompletion
	if err := json.Unmarshal(body, &c); err != nil || len(c.Choices) == 0 {
		return nil, fmt.Errorf("the deployment's answer is not a chat completion")
	}
	return json.Marshal(responseOf(&c, &c.Choices[0]))
}

// ResponsesStream turns OpenAI chat chunks into Responses stream events.
type ResponsesStream struct {
	seq     int
	started bool
	c       chatCompletion // the answer so far, assembled from the chunks
	msg     chatAnswer
	finish  string
	// open output items, by kind: text (the message), reasoning, and tool calls by index
	textItem, reasonItem int
	tools                map[int]streamTool // by the chunks' tool call index
	items                int
}

// streamTool is a tool call being streamed: its output item, and its place in msg.ToolCalls.
type streamTool struct{ item, call int }

// NewResponsesStream starts a conversion.
func NewResponsesStream() *ResponsesStream {
	return &ResponsesStream{textItem: -1, reasonItem: -1}
}

func (s *ResponsesStream) event(dst []byte, typ string, fields map[string]any) []byte {
	fields["type"] = typ
	fields["sequence_number"] = s.seq
	s.seq++
	return event(dst, typ, fields)
}

func (s *ResponsesStream) snapshot(status string) responseObject {
	r := responseOf(&s.c, &chatChoice{Message: &s.msg, FinishReason: &s.finish})
	if status != "" {
		r.Status, r.Output, r.Usage = status, []responseItem{}, nil
	}
	return r
}

// Chunk appends the events for one OpenAI chunk's data.
func (s *ResponsesStream) Chunk(dst, data []byte) []byte {
	var c chatCompletion
	if json.Unmarshal(data, &c) != nil {
		return dst
	}
	if !s.started {
		s.started = true
		s.c.ID, s.c.Created, s.c.Model = c.ID, c.Created, c.Model
		dst = s.event(dst, "response.created", map[string]any{"response": s.snapshot("in_progress")})
		dst = s.event(dst, "response.in_progress", map[string]any{"response": s.snapshot("in_progress")})
	}
	if c.Usage != nil {
		s.c.Usage = c.Usage
	}
	for _, ch := range c.Choices {
		if ch.Index != 0 || ch.Delta == nil {
			continue
		}
		d := ch.Delta
		if rc := d.ReasoningContent; rc != nil && *rc != "" {
			if s.reasonItem < 0 {
				s.reasonItem = s.items
				s.items++
				dst = s.event(dst, "response.output_item.added", map[string]any{"output_index": s.reasonItem,
					"item": responseItem{Type: "reasoning", ID: "rs_" + s.c.ID, Summary: []responseTextPart{}}})
			}
			s.msg.ReasoningContent = strPtr(deref(s.msg.ReasoningContent) + *rc)
			dst = s.event(dst, "response.reasoning_summary_text.delta", map[string]any{"item_id": "rs_" + s.c.ID,
				"output_index": s.reasonItem, "summary_index": 0, "delta": *rc})
		}
		if t := d.Content; t != nil && *t != "" {
			if s.textItem < 0 {
				s.textItem = s.items
				s.items++
				dst = s.event(dst, "response.output_item.added", map[string]any{"output_index": s.textItem,
					"item": responseItem{Type: "message", ID: "msg_" + s.c.ID, Status: "in_progress", Role: "assistant", Content: []responseTextPart{}}})
				dst = s.event(dst, "response.content_part.added", map[string]any{"item_id": "msg_" + s.c.ID, "output_index": s.textItem,
					"content_index": 0, "part": responseTextPart{Type: "output_text", Annotations: []string{}}})
			}
			s.msg.Content = strPtr(deref(s.msg.Content) + *t)
			dst = s.event(dst, "response.output_text.delta", map[string]any{"item_id": "msg_" + s.c.ID, "output_index": s.textItem,
				"content_index": 0, "delta": *t})
		}
		for _, tc := range d.ToolCalls {
			idx := 0
			if tc.Index != nil {
				idx = *tc.Index
			}
			if s.tools == nil {
				s.tools = make(map[int]streamTool)
			}
			st, seen := s.tools[idx]
			if !seen {
				st = streamTool{item: s.items, call: len(s.msg.ToolCalls)}
				s.items++
				s.tools[idx] = st
				call := toolCall{ID: tc.ID, Type: "function"}
				call.Function.Name = tc.Function.Name
				s.msg.ToolCalls = append(s.msg.ToolCalls, call)
				empty := ""
				dst = s.event(dst, "response.output_item.added", map[string]any{"output_index": st.item,
					"item": responseItem{Type: "function_call", ID: "fc_" + tc.ID, Status: "in_progress", CallID: tc.ID, Name: tc.Function.Name, Arguments: &empty}})
			}
			if tc.Function.Arguments != "" {
				call := &s.msg.ToolCalls[st.call]
				call.Function.Arguments += tc.Function.Arguments
				dst = s.event(dst, "response.function_call_arguments.delta", map[string]any{"item_id": "fc_" + call.ID,
					"output_index": st.item, "delta": tc.Function.Arguments})
			}
		}
		if ch.FinishReason != nil && *ch.FinishReason != "" {
			s.finish = *ch.FinishReason
		}
	}
	return dst
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// End appends the events that finish each output item and the response.
func (s *ResponsesStream) End(dst []byte) []byte {
	if !s.started {
		dst = s.Chunk(dst, []byte(`{}`))
	}
	final := s.snapshot("")
	for i, item := range final.Output {
		switch item.Type {
		case "message":
			text := item.Content[0].Text
			dst = s.event(dst, "response.output_text.done", map[string]any{"item_id": item.ID, "output_index": i, "content_index": 0, "text": text})
			dst = s.event(dst, "response.content_part.done", map[string]any{"item_id": item.ID, "output_index": i, "content_index": 0, "part": item.Content[0]})
		case "function_call":
			dst = s.event(dst, "response.function_call_arguments.done", map[string]any{"item_id": item.ID, "output_index": i, "arguments": *item.Arguments})
		}
		dst = s.event(dst, "response.output_item.done", map[string]any{"output_index": i, "item": item})
	}
	typ := "response.completed"
	if final.Status == "incomplete" {
		typ = "response.incomplete"
	}
	return s.event(dst, typ, map[string]any{"response": final})
}

// Error appends a Responses stream error event for a stream that broke; body is an OpenAI
// error body.
func (s *ResponsesStream) Error(dst []byte, body []byte) []byte {
	e := gjson.GetBytes(body, "error")
	return s.event(dst, "error", map[string]any{"code": e.Get("code").Str, "message": e.Get("message").Str, "param": nil})
}
