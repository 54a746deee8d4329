package provider

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
)

// Google's generateContent API, as the Gemini API (Google AI Studio, gemini/ models, an API
// key) and Vertex AI (vertex_ai/ models, OAuth; vertex.go) both serve it, translated to and
// from OpenAI chat completions; and the Gemini API's batchEmbedContents for embeddings.
// References: https://ai.google.dev/api/generate-content and
// https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference.
//
// What the translation approximates or leaves out:
//   - An image given by http(s) or gs:// URL is sent by reference (fileData, its MIME type
//     guessed from the file extension, else image/jpeg): herd never fetches URLs for a client.
//     The Gemini API reads only some URLs (its Files API, YouTube); LiteLLM downloads the
//     others and sends them inline.
//   - Tool and response schemas are cut down to the OpenAPI subset Google accepts (geminiSchema).
//   - Tool call ids are herd's (call_<random>) unless Google gives one; a thought signature
//     rides in the id after "__thought__", as LiteLLM does, so that the next turn can send it back.
//   - parallel_tool_calls false cannot be asked of Google: refused with several tools, unless
//     drop_params.
//   - logprobs, audio and file content parts are refused (or dropped with drop_params).
//   - A stream ends when Google closes it; one that closes before every choice has a
//     finishReason was cut (io.ErrUnexpectedEOF).
//   - The Gemini API reports no usage for embeddings: herd estimates it from the input (about
//     4 bytes a token, EstimateTokens).

// GeminiDefaultAPIBase is the Gemini API's host, used when a gemini/ deployment sets no api_base.
const GeminiDefaultAPIBase = "https://generativelanguage.googleapis.com"

// geminiParams are what a gemini/ deployment needs beyond the common settings.
type geminiParams struct {
	APIBase string // "" = GeminiDefaultAPIBase
	APIKey  string
}

// gemini is a gemini/ deployment's translator: the Gemini API, authenticated by API key.
type gemini struct {
	googleChat
	base   string // api_base up to and including the API version, e.g. .../v1beta
	header http.Header
}

func newGemini(d *config.Deployment, pool *Pool, p geminiParams) (Upstream, error) {
	base := geminiBase(p.APIBase)
	if _, err := url.Parse(base); err != nil {
		return nil, fmt.Errorf("deployment %s: api_base: %w", d.ID, err)
	}
	h := baseHeader(d)
	if p.APIKey != "" {
		// A header, never the ?key= query parameter: URLs get logged.
		h.Set("X-Goog-Api-Key", p.APIKey)
	}
	g := &gemini{
		googleChat: googleChat{provider: "gemini", now: time.Now, newID: randomID, drop: pool.settings.DropParams, maxLen: int(pool.maxResponse())},
		base:       base,
		header:     h,
	}
	return newTranslated(d, pool, base, g)
}

// geminiBase is the versioned API root under api_base, which LiteLLM users write as the host
// or with the version.
func geminiBase(base string) string {
	base = strings.TrimSuffix(base, "/")
	if base == "" {
		base = GeminiDefaultAPIBase
	}
	for _, v := range []string{"/v1beta", "/v1", "/v1alpha"} {
		if strings.HasSuffix(base, v) {
			return base
		}
	}
	return base + "/v1beta"
}

func (g *gemini) request(_ context.Context, c *Call) (*outbound, error) {
	switch c.Endpoint {
	case ChatCompletions:
		body, req, err := g.chatBody(c.Body)
		if err != nil {
			return nil, err
		}
		u, err := joinURL(g.base, "/models/"+modelPath(req.Model)+geminiMethod(req.Stream))
		if err != nil {
			return nil, err
		}
		return &outbound{url: u, body: body, header: g.header, stream: req.Stream}, nil
	case Embeddings:
		er, err := decodeEmbeddings(g.provider, c.Body, g.drop)
		if err != nil {
			return nil, err
		}
		body, err := json.Marshal(geminiEmbedRequest(er))
		if err != nil {
			return nil, err
		}
		u, err := joinURL(g.base, "/models/"+modelPath(er.Model)+":batchEmbedContents")
		if err != nil {
			return nil, err
		}
		return &outbound{url: u, body: body, header: g.header}, nil
	}
	return nil, &BadRequest{Provider: g.provider, Message: "gemini deployments serve chat completions and embeddings only."}
}

// geminiMethod is the path end of a generateContent call: a stream is asked for as SSE.
func geminiMethod(stream bool) string {
	if stream {
		return ":streamGenerateContent?alt=sse"
	}
	return ":generateContent"
}

func (g *gemini) response(ep Endpoint, body []byte) ([]byte, error) {
	return g.responseTo(&Call{Endpoint: ep}, body)
}

func (g *gemini) responseTo(c *Call, body []byte) ([]byte, error) {
	if c.Endpoint == Embeddings {
		return geminiEmbedResponse(c.Body, body)
	}
	return g.chatResponse(body, gjson.GetBytes(c.Body, "model").Str)
}

// googleChat converts chat completions to and from generateContent, for the Gemini API and
// Vertex AI alike.
type googleChat struct {
	provider string           // "gemini" or "vertex_ai", as errors name it
	now      func() time.Time // the created time of answers
	newID    func() string    // ids Google does not give (answers, tool calls)
	drop     bool             // drop_params
	maxLen   int              // the longest stream event read
}

// randomID is 24 random hex digits.
func randomID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

type geminiRequest struct {
	Contents          []geminiContent   `json:"contents"`
	SystemInstruction *geminiContent    `json:"systemInstruction,omitempty"`
	Tools             []geminiTool      `json:"tools,omitempty"`
	ToolConfig        *geminiToolConfig `json:"toolConfig,omitempty"`
	GenerationConfig  *geminiGenConfig  `json:"generationConfig,omitempty"`
}

type geminiContent struct {
	Role  string       `json:"role,omitempty"` // user or model
	Parts []geminiPart `json:"parts"`
}

// geminiPart is a part of any kind: text (a thought when Thought), inlineData, fileData,
// functionCall, functionResponse.
type geminiPart struct {
	Text             *string                 `json:"text,omitempty"`
	Thought          bool                    `json:"thought,omitempty"`
	ThoughtSignature string                  `json:"thoughtSignature,omitempty"`
	InlineData       *geminiBlob             `json:"inlineData,omitempty"`
	FileData         *geminiFileData         `json:"fileData,omitempty"`
	FunctionCall     *geminiFunctionCall     `json:"functionCall,omitempty"`
	FunctionResponse *geminiFunctionResponse `json:"functionResponse,omitempty"`
}

type geminiBlob struct {
	MimeType string `json:"mimeType"`
	Data     string `json:"data"`
}

type geminiFileData struct {
	MimeType string `json:"mimeType,omitempty"`
	FileURI  string `json:"fileUri"`
}

type geminiFunctionCall struct {
	ID   string          `json:"id,omitempty"` // answers only: herd does not send ids back
	Name string          `json:"name"`
	Args json.RawMessage `json:"args,omitempty"`
}

type geminiFunctionResponse struct {
	Name     string          `json:"name"`
	Response json.RawMessage `json:"response"`
}

type geminiTool struct {
	FunctionDeclarations []geminiFunctionDecl `json:"functionDeclarations"`
}

type geminiFunctionDecl struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
}

type geminiToolConfig struct {
	FunctionCallingConfig struct {
		Mode                 string   `json:"mode"` // AUTO, ANY, NONE
		AllowedFunctionNames []string `json:"allowedFunctionNames,omitempty"`
	} `json:"functionCallingConfig"`
}

type geminiGenConfig struct {
	MaxOutputTokens  *int64                `json:"maxOutputTokens,omitempty"`
	Temperature      *float64              `json:"temperature,omitempty"`
	TopP             *float64              `json:"topP,omitempty"`
	TopK             *int64                `json:"topK,omitempty"`
	StopSequences    []string              `json:"stopSequences,omitempty"`
	CandidateCount   *int64                `json:"candidateCount,omitempty"`
	ResponseMimeType string                `json:"responseMimeType,omitempty"`
	ResponseSchema   json.RawMessage       `json:"responseSchema,omitempty"`
	Seed             *int64                `json:"seed,omitempty"`
	PresencePenalty  *float64              `json:"presencePenalty,omitempty"`
	FrequencyPenalty *float64              `json:"frequencyPenalty,omitempty"`
	ThinkingConfig   *geminiThinkingConfig `json:"thinkingConfig,omitempty"`
}

type geminiThinkingConfig struct {
	IncludeThoughts bool   `json:"includeThoughts"`
	ThinkingBudget  *int64 `json:"thinkingBudget,omitempty"` // Gemini 2.5 and earlier
	ThinkingLevel   string `json:"thinkingLevel,omitempty"`  // Gemini 3
}

// The OpenAI chat parameters the translation carries over, and those it may leave out
// because they change nothing for Google.
var (
	geminiKnown = []string{"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
		"top_p", "top_k", "stop", "stream", "n", "tools", "tool_choice", "parallel_tool_calls",
		"response_format", "seed", "presence_penalty", "frequency_penalty", "reasoning_effort"}
	geminiIgnorable = []string{"stream_options", "user", "logprobs", "store", "metadata"}
)

// thoughtSeparator sets a thought signature apart in a tool call id (LiteLLM's convention).
const thoughtSeparator = "__thought__"

// skipThoughtSignature is the value Google documents for a Gemini 3 function call whose
// signature was lost (a history that did not come from Gemini, or a client that rewrote ids).
const skipThoughtSignature = "skip_thought_signature_validator"

// chatBody builds the generateContent body for an OpenAI chat body.
func (g *googleChat) chatBody(body []byte) ([]byte, *chatRequest, error) {
	req, err := decodeChatChoices(g.provider, body, geminiKnown, geminiIgnorable, g.drop, true)
	if err != nil {
		return nil, nil, err
	}
	if gjson.GetBytes(body, "logprobs").Bool() && !g.drop {
		return nil, nil, unsupported(g.provider, "logprobs", "logprobs")
	}
	gr, err := g.convert(req)
	if err != nil {
		return nil, nil, err
	}
	out, err := json.Marshal(gr)
	return out, req, err
}

// convert translates an OpenAI chat request into a generateContent request.
func (g *googleChat) convert(req *chatRequest) (*geminiRequest, error) {
	gr := &geminiRequest{}
	gc := &geminiGenConfig{
		Temperature:      req.Temperature,
		TopP:             req.TopP,
		TopK:             req.TopK,
		StopSequences:    req.Stop,
		Seed:             req.Seed,
		PresencePenalty:  req.PresencePenalty,
		FrequencyPenalty: req.FrequencyPenalty,
	}
	if n := req.maxTokens(0); n > 0 {
		gc.MaxOutputTokens = &n
	}
	if req.N != nil && *req.N > 1 {
		gc.CandidateCount = req.N
	}
	if err := g.responseFormat(req.ResponseFormat, gc); err != nil {
		return nil, err
	}
	tc, err := g.thinking(req.ReasoningEffort, req.Model)
	if err != nil {
		return nil, err
	}
	gc.ThinkingConfig = tc
	if b, _ := json.Marshal(gc); string(b) != "{}" {
		gr.GenerationConfig = gc
	}

	var decls []geminiFunctionDecl
	for i, t := range req.Tools {
		if t.Type != "function" {
			return nil, unsupported(g.provider, "tools", "tools of type "+quote(t.Type))
		}
		d := geminiFunctionDecl{Name: t.Function.Name, Description: t.Function.Description}
		if p := gjson.ParseBytes(t.Function.Parameters); p.IsObject() {
			schema, err := geminiSchema(p, false)
			if err != nil {
				return nil, &BadRequest{Provider: g.provider, Param: fmt.Sprintf("tools[%d].function.parameters", i), Message: "The tool's parameters schema cannot be sent to Google: " + err.Error()}
			}
			// An object without properties is a function without arguments: Google refuses
			// an OBJECT schema with no properties.
			if s := gjson.ParseBytes(schema); s.Get("type").Str != "OBJECT" || len(s.Get("properties").Map()) > 0 {
				d.Parameters = schema
			}
		}
		decls = append(decls, d)
	}
	if len(decls) > 0 {
		gr.Tools = []geminiTool{{FunctionDeclarations: decls}}
	}
	if gr.ToolConfig, err = g.toolChoice(req.ToolChoice); err != nil {
		return nil, err
	}
	if req.ParallelToolCalls != nil && !*req.ParallelToolCalls && len(decls) > 1 && !g.drop {
		return nil, unsupported(g.provider, "parallel_tool_calls", "parallel_tool_calls: false with several tools (Google has no such switch)")
	}

	gemini3 := strings.Contains(req.Model, "gemini-3")
	lastKind := ""
	for i := range req.Messages {
		m := &req.Messages[i]
		var (
			role  string
			parts []geminiPart
		)
		kind := m.Role // what consecutive messages must share to become one turn
		switch m.Role {
		case "system", "developer":
			ps, err := g.parts(m, i, false)
			if err != nil {
				return nil, err
			}
			if len(ps) > 0 {
				if gr.SystemInstruction == nil {
					gr.SystemInstruction = &geminiContent{}
				}
				gr.SystemInstruction.Parts = append(gr.SystemInstruction.Parts, ps...)
			}
			continue
		case "user":
			role = "user"
			if parts, err = g.parts(m, i, true); err != nil {
				return nil, err
			}
		case "assistant":
			role = "model"
			if parts, err = g.parts(m, i, false); err != nil {
				return nil, err
			}
			for _, tc := range m.ToolCalls {
				args := strings.TrimSpace(tc.Function.Arguments)
				if args == "" {
					args = "{}"
				} else if !gjson.Valid(args) || !gjson.Parse(args).IsObject() {
					return nil, &BadRequest{Provider: g.provider, Param: fmt.Sprintf("messages[%d].tool_calls", i), Message: "Tool call arguments must be a JSON object for " + g.provider + " deployments."}
				}
				_, sig, _ := strings.Cut(tc.ID, thoughtSeparator)
				if sig == "" && gemini3 {
					sig = skipThoughtSignature
				}
				parts = append(parts, geminiPart{FunctionCall: &geminiFunctionCall{Name: tc.Function.Name, Args: json.RawMessage(args)}, ThoughtSignature: sig})
			}
		case "tool", "function":
			role, kind = "user", "tool"
			name := m.Name
			if m.Role == "tool" {
				if name = toolCallName(req.Messages[:i], m.ToolCallID); name == "" {
					return nil, &BadRequest{Provider: g.provider, Param: fmt.Sprintf("messages[%d].tool_call_id", i), Message: "The tool message's tool_call_id " + quote(m.ToolCallID) + " matches no tool call of an earlier assistant message; " + g.provider + " identifies tool results by function name."}
				}
			}
			parts = []geminiPart{{FunctionResponse: &geminiFunctionResponse{Name: name, Response: toolResult(m.text())}}}
		default:
			return nil, &BadRequest{Provider: g.provider, Param: fmt.Sprintf("messages[%d].role", i), Message: "Unsupported message role " + quote(m.Role) + " for " + g.provider + " deployments."}
		}
		if len(parts) == 0 {
			continue // Google refuses a turn without parts
		}
		// Consecutive messages of one kind become one turn: several tool results answer one
		// model turn's calls together. Tool results and a user's words stay apart, as LiteLLM
		// sends them.
		if n := len(gr.Contents); n > 0 && kind == lastKind {
			gr.Contents[n-1].Parts = append(gr.Contents[n-1].Parts, parts...)
			continue
		}
		gr.Contents = append(gr.Contents, geminiContent{Role: role, Parts: parts})
		lastKind = kind
	}
	if len(gr.Contents) == 0 {
		return nil, &BadRequest{Provider: g.provider, Param: "messages", Message: g.provider + " deployments need at least one user or assistant message besides system messages."}
	}
	return gr, nil
}

// toolCallName is the function name of the tool call id among the assistant messages before
// a tool message, the latest first.
func toolCallName(before []chatMessage, id string) string {
	for i := len(before) - 1; i >= 0; i-- {
		for _, tc := range before[i].ToolCalls {
			if tc.ID == id {
				return tc.Function.Name
			}
		}
	}
	return ""
}

// toolResult is a tool message's content as a functionResponse's response, which must be an
// object: a JSON object as it is, anything else as {"content": text}, as LiteLLM sends it.
func toolResult(text string) json.RawMessage {
	if t := strings.TrimSpace(text); gjson.Valid(t) && gjson.Parse(t).IsObject() {
		return json.RawMessage(t)
	}
	b, _ := json.Marshal(map[string]string{"content": text})
	return b
}

// parts converts a message's content parts; images only where allowed.
func (g *googleChat) parts(m *chatMessage, i int, images bool) ([]geminiPart, error) {
	cps, err := m.parts()
	if err != nil {
		return nil, &BadRequest{Provider: g.provider, Param: fmt.Sprintf("messages[%d].content", i), Message: "Message content must be a string or an array of content parts."}
	}
	var out []geminiPart
	for _, p := range cps {
		switch p.Type {
		case "text":
			if p.Text == "" {
				continue // Google refuses empty text parts
			}
			out = append(out, geminiPart{Text: &p.Text})
		case "image_url":
			if !images || p.ImageURL == nil {
				return nil, &BadRequest{Provider: g.provider, Param: fmt.Sprintf("messages[%d].content", i), Message: "Images are accepted in user messages only, as image_url parts with a url."}
			}
			part, err := geminiImage(p.ImageURL.URL)
			if err != nil {
				return nil, &BadRequest{Provider: g.provider, Param: fmt.Sprintf("messages[%d].content", i), Message: err.Error()}
			}
			out = append(out, part)
		default:
			if g.drop {
				continue
			}
			return nil, unsupported(g.provider, fmt.Sprintf("messages[%d].content", i), "content parts of type "+quote(p.Type))
		}
	}
	return out, nil
}

// geminiImage reads an image_url: a data URL is sent inline, any other URL by reference.
func geminiImage(u string) (geminiPart, error) {
	if strings.HasPrefix(u, "data:") {
		src, err := imageSource(u)
		if err != nil {
			return geminiPart{}, err
		}
		return geminiPart{InlineData: &geminiBlob{MimeType: src.MediaType, Data: src.Data}}, nil
	}
	parsed, err := url.Parse(u)
	if err != nil || (parsed.Scheme != "https" && parsed.Scheme != "http" && parsed.Scheme != "gs") || parsed.Host == "" {
		return geminiPart{}, errors.New("An image_url must be an http(s) or gs:// URL, or a base64 data URL.")
	}
	return geminiPart{FileData: &geminiFileData{MimeType: mimeByExtension(parsed.Path), FileURI: u}}, nil
}

// mimeByExtension guesses a referenced file's MIME type, as Google needs one; image/jpeg
// when the extension says nothing.
func mimeByExtension(p string) string {
	switch strings.ToLower(path.Ext(p)) {
	case ".png":
		return "image/png"
	case ".gif":
		return "image/gif"
	case ".webp":
		return "image/webp"
	case ".heic":
		return "image/heic"
	case ".heif":
		return "image/heif"
	case ".pdf":
		return "application/pdf"
	case ".mp4":
		return "video/mp4"
	case ".mp3":
		return "audio/mpeg"
	case ".wav":
		return "audio/wav"
	}
	return "image/jpeg"
}

// toolChoice maps OpenAI's tool_choice to functionCallingConfig.
func (g *googleChat) toolChoice(raw json.RawMessage) (*geminiToolConfig, error) {
	tc := &geminiToolConfig{}
	switch r := gjson.ParseBytes(raw); {
	case len(raw) == 0 || r.Type == gjson.Null:
		return nil, nil
	case r.Str == "auto":
		tc.FunctionCallingConfig.Mode = "AUTO"
	case r.Str == "required":
		tc.FunctionCallingConfig.Mode = "ANY"
	case r.Str == "none":
		tc.FunctionCallingConfig.Mode = "NONE"
	case r.IsObject() && r.Get("function.name").Str != "":
		tc.FunctionCallingConfig.Mode = "ANY"
		tc.FunctionCallingConfig.AllowedFunctionNames = []string{r.Get("function.name").Str}
	default:
		return nil, &BadRequest{Provider: g.provider, Param: "tool_choice", Message: "tool_choice must be auto, required, none or {\"type\":\"function\",\"function\":{\"name\":...}}."}
	}
	return tc, nil
}

// responseFormat asks for JSON output, with a schema for json_schema.
func (g *googleChat) responseFormat(rf *responseFormat, gc *geminiGenConfig) error {
	if rf == nil {
		return nil
	}
	switch rf.Type {
	case "", "text":
	case "json_object":
		gc.ResponseMimeType = "application/json"
	case "json_schema":
		gc.ResponseMimeType = "application/json"
		if rf.JSONSchema != nil && gjson.ParseBytes(rf.JSONSchema.Schema).IsObject() {
			schema, err := geminiSchema(gjson.ParseBytes(rf.JSONSchema.Schema), true)
			if err != nil {
				return &BadRequest{Provider: g.provider, Param: "response_format", Message: "The response schema cannot be sent to Google: " + err.Error()}
			}
			gc.ResponseSchema = schema
		}
	default:
		if !g.drop {
			return &BadRequest{Provider: g.provider, Param: "response_format", Message: "response_format type must be text, json_object or json_schema."}
		}
	}
	return nil
}

// Thinking budgets for reasoning_effort, LiteLLM's defaults: Gemini 2.5 and earlier take a
// token budget, Gemini 3 a level.
var geminiBudgets = map[string]int64{"minimal": 128, "low": 1024, "medium": 2048, "high": 4096}

// thinking maps reasoning_effort to a thinkingConfig, as LiteLLM does.
func (g *googleChat) thinking(effort, model string) (*geminiThinkingConfig, error) {
	if effort == "" {
		return nil, nil
	}
	model = strings.ToLower(model)
	off := effort == "none" || effort == "disable"
	if _, ok := geminiBudgets[effort]; !ok && !off {
		if g.drop {
			return nil, nil
		}
		return nil, &BadRequest{Provider: g.provider, Param: "reasoning_effort", Message: "reasoning_effort must be none, minimal, low, medium or high for " + g.provider + " deployments."}
	}
	if strings.Contains(model, "gemini-3") {
		// Gemini 3 cannot turn thinking off; its flash models have a minimal level.
		flash := strings.Contains(model, "flash")
		level := map[string]string{"minimal": "low", "low": "low", "medium": "high", "high": "high", "none": "low", "disable": "low"}[effort]
		if flash && (effort == "minimal" || off) {
			level = "minimal"
		} else if flash && effort == "medium" {
			level = "medium"
		}
		return &geminiThinkingConfig{IncludeThoughts: !off, ThinkingLevel: level}, nil
	}
	if off {
		zero := int64(0)
		return &geminiThinkingConfig{ThinkingBudget: &zero}, nil
	}
	budget := geminiBudgets[effort]
	if effort == "minimal" {
		// The smallest budget each 2.5 model takes.
		switch {
		case strings.Contains(model, "gemini-2.5-flash-lite"):
			budget = 512
		case strings.Contains(model, "gemini-2.5-flash"):
			budget = 1
		}
	}
	return &geminiThinkingConfig{IncludeThoughts: true, ThinkingBudget: &budget}, nil
}

// geminiResponse is a generateContent answer, or one event of a stream of them.
type geminiResponse struct {
	Candidates     []geminiCandidate `json:"candidates"`
	PromptFeedback *struct {
		BlockReason string `json:"blockReason"`
	} `json:"promptFeedback"`
	UsageMetadata *geminiUsage `json:"usageMetadata"`
	ModelVersion  string       `json:"modelVersion"`
	ResponseID    string       `json:"responseId"`
	Error         *googleError `json:"error"` // an error event of a stream
}

type geminiCandidate struct {
	Content      *geminiContent `json:"content"`
	FinishReason string         `json:"finishReason"`
	Index        int            `json:"index"`
}

type geminiUsage struct {
	PromptTokenCount        int64 `json:"promptTokenCount"`
	CandidatesTokenCount    int64 `json:"candidatesTokenCount"`
	ThoughtsTokenCount      int64 `json:"thoughtsTokenCount"`
	ToolUsePromptTokenCount int64 `json:"toolUsePromptTokenCount"`
	CachedContentTokenCount int64 `json:"cachedContentTokenCount"`
	TotalTokenCount         int64 `json:"totalTokenCount"`
}

// openAI reports Google's usage as LiteLLM does: the prompt includes cached and tool-use
// prompt tokens, the completion includes thoughts.
func (u *geminiUsage) openAI() *chatUsage {
	prompt := u.PromptTokenCount + u.ToolUsePromptTokenCount
	completion := u.CandidatesTokenCount + u.ThoughtsTokenCount
	cu := &chatUsage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
	cu.PromptTokensDetails = &struct {
		CachedTokens int64 `json:"cached_tokens"`
	}{u.CachedContentTokenCount}
	cu.CompletionTokensDetails = &struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	}{u.ThoughtsTokenCount}
	return cu
}

// geminiFinish maps a finishReason; calls: the choice called functions. "" is no finish yet.
func geminiFinish(reason string, calls bool) *string {
	switch reason {
	case "":
		return nil
	case "MAX_TOKENS":
		return strPtr("length")
	case "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT":
		return strPtr("content_filter")
	}
	if calls {
		return strPtr("tool_calls")
	}
	return strPtr("stop") // STOP, OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL, ...
}

// delta is what a candidate's parts say: its text, thoughts and function calls.
func (g *googleChat) delta(c *geminiContent, firstCall int) *chatAnswer {
	d := &chatAnswer{}
	if c == nil {
		return d
	}
	var text, thought strings.Builder
	for _, p := range c.Parts {
		switch {
		case p.FunctionCall != nil:
			n := firstCall + len(d.ToolCalls)
			id := p.FunctionCall.ID
			if id == "" {
				id = "call_" + g.newID()
			}
			if p.ThoughtSignature != "" {
				id += thoughtSeparator + p.ThoughtSignature
			}
			tc := toolCall{Index: &n, ID: id, Type: "function"}
			tc.Function.Name = p.FunctionCall.Name
			tc.Function.Arguments = "{}"
			var args bytes.Buffer
			if json.Compact(&args, p.FunctionCall.Args) == nil && args.Len() > 0 {
				tc.Function.Arguments = args.String()
			}
			d.ToolCalls = append(d.ToolCalls, tc)
		case p.Text != nil && p.Thought:
			thought.WriteString(*p.Text)
		case p.Text != nil:
			text.WriteString(*p.Text)
		}
	}
	if text.Len() > 0 {
		d.Content = strPtr(text.String())
	}
	if thought.Len() > 0 {
		d.ReasoningContent = strPtr(thought.String())
	}
	return d
}

// chatID is an answer's id: Google's responseId when it gives one.
func (g *googleChat) chatID(responseID string) string {
	if responseID == "" {
		responseID = g.newID()
	}
	return "chatcmpl-" + responseID
}

// chatResponse converts a generateContent answer; model names it when Google does not.
func (g *googleChat) chatResponse(body []byte, model string) ([]byte, error) {
	var r geminiResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%s answered with a body herd cannot read: %w", g.provider, err)
	}
	if r.ModelVersion != "" {
		model = r.ModelVersion
	}
	out := chatCompletion{ID: g.chatID(r.ResponseID), Object: "chat.completion", Created: g.now().Unix(), Model: model, Choices: []chatChoice{}}
	for _, c := range r.Candidates {
		msg := g.delta(c.Content, 0)
		msg.Role = "assistant"
		for i := range msg.ToolCalls {
			msg.ToolCalls[i].Index = nil
		}
		if msg.Content == nil && len(msg.ToolCalls) == 0 {
			msg.Content = strPtr("")
		}
		finish := geminiFinish(c.FinishReason, len(msg.ToolCalls) > 0)
		if finish == nil {
			finish = strPtr("stop")
		}
		out.Choices = append(out.Choices, chatChoice{Index: c.Index, Message: msg, FinishReason: finish})
	}
	if len(r.Candidates) == 0 {
		if r.PromptFeedback == nil || r.PromptFeedback.BlockReason == "" {
			return nil, fmt.Errorf("%s answered with no candidates and no block reason", g.provider)
		}
		// The prompt itself was blocked: an empty, filtered answer, as LiteLLM gives.
		out.Choices = []chatChoice{{Index: 0, Message: &chatAnswer{Role: "assistant", Content: strPtr("")}, FinishReason: strPtr("content_filter")}}
	}
	if r.UsageMetadata != nil {
		out.Usage = r.UsageMetadata.openAI()
	}
	return json.Marshal(out)
}

// googleError is the error object of Google's APIs.
type googleError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Status  string `json:"status"` // e.g. RESOURCE_EXHAUSTED
}

// googleErrorOf reads {"error":{...}}, also wrapped in an array as streamGenerateContent
// without alt=sse answers it.
func googleErrorOf(body []byte) *googleError {
	r := gjson.ParseBytes(body)
	if r.IsArray() {
		r = r.Get("0")
	}
	e := r.Get("error")
	if !e.IsObject() {
		return nil
	}
	return &googleError{Code: int(e.Get("code").Int()), Message: e.Get("message").Str, Status: e.Get("status").Str}
}

// googleErrorBody maps Google's error to OpenAI's shape. A prompt over the context window
// gets OpenAI's code, so context_window_fallbacks apply.
func googleErrorBody(provider string, status int, body []byte) []byte {
	e := googleErrorOf(body)
	if e == nil || e.Message == "" {
		return errorJSON(status, openAIErrorType(status), provider+" returned "+http.StatusText(status)+": "+snippetOf(body), "")
	}
	code := ""
	if status == http.StatusBadRequest && contextExceeded(e.Message) {
		code = "context_length_exceeded"
	}
	return errorJSON(status, openAIErrorType(status), e.Message, code)
}

// contextExceeded recognises Google's prompt-too-long messages: "The input token count (N)
// exceeds the maximum number of tokens allowed (M)." and Vertex's "... input token count is N
// but model only supports up to M".
func contextExceeded(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "exceeds the maximum number of tokens") ||
		(strings.Contains(m, "input token count") && strings.Contains(m, "only supports up to"))
}

func (g *googleChat) errorBody(status int, body []byte) []byte {
	return googleErrorBody(g.provider, status, body)
}

func (g *googleChat) stream(c *Call, body io.Reader) chunkSource {
	return &geminiStream{
		g:       g,
		sse:     newSSEScanner(body, g.maxLen),
		usage:   includeUsage(c.Body),
		created: g.now().Unix(),
		model:   gjson.GetBytes(c.Body, "model").Str,
		choices: make(map[int]*geminiChoice),
	}
}

// geminiStream converts streamGenerateContent events (each a GenerateContentResponse, whose
// text is new and whose usage is the total so far) into OpenAI chunks. Google marks no end
// of stream: it ends when every choice has had its finishReason and the body ends.
type geminiStream struct {
	g       *googleChat
	sse     *sseScanner
	usage   bool // the client asked for the usage chunk
	created int64
	id      string
	model   string
	choices map[int]*geminiChoice
	tokens  *geminiUsage
}

// geminiChoice is a streamed choice so far.
type geminiChoice struct {
	calls    int // tool calls sent
	finished bool
}

func (s *geminiStream) chunk(dst []byte, index int, delta *chatAnswer, finish *string, usage *chatUsage) []byte {
	return appendChunk(dst, s.id, s.model, s.created, index, delta, finish, usage)
}

// choice returns the state of candidate i, sending its role chunk when it is new.
func (s *geminiStream) choice(dst []byte, i int) ([]byte, *geminiChoice) {
	if ch, ok := s.choices[i]; ok {
		return dst, ch
	}
	ch := &geminiChoice{}
	s.choices[i] = ch
	return s.chunk(dst, i, &chatAnswer{Role: "assistant", Content: strPtr("")}, nil, nil), ch
}

func (s *geminiStream) next(dst []byte) ([]byte, error) {
	start := len(dst)
	for {
		data, err := s.sse.next()
		if err == io.EOF {
			if !s.complete() {
				return dst, io.ErrUnexpectedEOF // no finishReason: the stream was cut
			}
			if s.usage && s.tokens != nil {
				dst = s.chunk(dst, 0, nil, nil, s.tokens.openAI())
			}
			return dst, io.EOF
		}
		if err != nil {
			return dst, err
		}
		var ev geminiResponse
		if err := json.Unmarshal(data, &ev); err != nil {
			if e := googleErrorOf(data); e != nil {
				return dst, &StreamError{Provider: s.g.provider, Type: e.Status, Message: e.Message}
			}
			return dst, fmt.Errorf("%s stream event herd cannot read: %w", s.g.provider, err)
		}
		if ev.Error != nil {
			return dst, &StreamError{Provider: s.g.provider, Type: ev.Error.Status, Message: ev.Error.Message}
		}
		if s.id == "" {
			s.id = s.g.chatID(ev.ResponseID)
		}
		if ev.ModelVersion != "" {
			s.model = ev.ModelVersion
		}
		if ev.UsageMetadata != nil {
			s.tokens = ev.UsageMetadata
		}
		for _, c := range ev.Candidates {
			var ch *geminiChoice
			dst, ch = s.choice(dst, c.Index)
			d := s.g.delta(c.Content, ch.calls)
			ch.calls += len(d.ToolCalls)
			if d.Content != nil || d.ReasoningContent != nil || len(d.ToolCalls) > 0 {
				dst = s.chunk(dst, c.Index, d, nil, nil)
			}
			if f := geminiFinish(c.FinishReason, ch.calls > 0); f != nil && !ch.finished {
				ch.finished = true
				dst = s.chunk(dst, c.Index, &chatAnswer{}, f, nil)
			}
		}
		if len(ev.Candidates) == 0 && ev.PromptFeedback != nil && ev.PromptFeedback.BlockReason != "" {
			var ch *geminiChoice
			dst, ch = s.choice(dst, 0)
			if !ch.finished {
				ch.finished = true
				dst = s.chunk(dst, 0, &chatAnswer{}, strPtr("content_filter"), nil)
			}
		}
		if len(dst) > start {
			return dst, nil
		}
		// An event with usage only: read on.
	}
}

// complete reports whether every choice seen has finished, and there was one.
func (s *geminiStream) complete() bool {
	if len(s.choices) == 0 {
		return false
	}
	for _, ch := range s.choices {
		if !ch.finished {
			return false
		}
	}
	return true
}

// embeddingsRequest is an OpenAI embeddings request, as far as Google's embeddings take it.
type embeddingsRequest struct {
	Model          string `json:"model"`
	Dimensions     *int64 `json:"dimensions"`
	EncodingFormat string `json:"encoding_format"` // float (default) or base64
	inputs         []string
}

var (
	embeddingsKnown     = []string{"model", "input", "dimensions", "encoding_format"}
	embeddingsIgnorable = []string{"user"}
)

// decodeEmbeddings reads an OpenAI embeddings request whose input is text (token ids have
// no equivalent at Google).
func decodeEmbeddings(provider string, body []byte, drop bool) (*embeddingsRequest, error) {
	var er embeddingsRequest
	if err := json.Unmarshal(body, &er); err != nil {
		return nil, &BadRequest{Provider: provider, Message: "The request body is not a valid embeddings request: " + err.Error()}
	}
	var bad []string
	gjson.ParseBytes(body).ForEach(func(k, v gjson.Result) bool {
		if !slices.Contains(embeddingsKnown, k.Str) && !slices.Contains(embeddingsIgnorable, k.Str) && v.Type != gjson.Null {
			bad = append(bad, k.Str)
		}
		return true
	})
	if len(bad) > 0 && !drop {
		slices.Sort(bad)
		return nil, unsupported(provider, bad[0], "the parameter(s) "+strings.Join(bad, ", "))
	}
	if f := er.EncodingFormat; f != "" && f != "float" && f != "base64" {
		return nil, &BadRequest{Provider: provider, Param: "encoding_format", Message: "encoding_format must be float or base64."}
	}
	in := gjson.GetBytes(body, "input")
	switch {
	case in.Type == gjson.String:
		er.inputs = []string{in.Str}
	case in.IsArray():
		ok := true
		in.ForEach(func(_, v gjson.Result) bool {
			ok = v.Type == gjson.String
			er.inputs = append(er.inputs, v.Str)
			return ok
		})
		if !ok {
			return nil, &BadRequest{Provider: provider, Param: "input", Message: provider + " deployments embed text only: input must be a string or an array of strings, not token ids."}
		}
	}
	if len(er.inputs) == 0 {
		return nil, &BadRequest{Provider: provider, Param: "input", Message: "'input' must be a non-empty string or array of strings."}
	}
	return &er, nil
}

type geminiEmbedBatch struct {
	Requests []geminiEmbedOne `json:"requests"`
}

type geminiEmbedOne struct {
	Model                string        `json:"model"`
	Content              geminiContent `json:"content"`
	OutputDimensionality *int64        `json:"outputDimensionality,omitempty"`
}

// geminiEmbedRequest is the batchEmbedContents body: one request per input.
func geminiEmbedRequest(er *embeddingsRequest) *geminiEmbedBatch {
	b := &geminiEmbedBatch{}
	for i := range er.inputs {
		b.Requests = append(b.Requests, geminiEmbedOne{
			Model:                "models/" + er.Model,
			Content:              geminiContent{Parts: []geminiPart{{Text: &er.inputs[i]}}},
			OutputDimensionality: er.Dimensions,
		})
	}
	return b
}

// geminiEmbedResponse converts a batchEmbedContents answer; its usage, which the Gemini API
// does not report, is estimated from the request's input.
func geminiEmbedResponse(request, body []byte) ([]byte, error) {
	var r struct {
		Embeddings []struct {
			Values []float64 `json:"values"`
		} `json:"embeddings"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("gemini answered with a body herd cannot read: %w", err)
	}
	vectors := make([][]float64, len(r.Embeddings))
	for i, e := range r.Embeddings {
		vectors[i] = e.Values
	}
	var n int
	in := gjson.GetBytes(request, "input")
	if in.Type == gjson.String {
		n = len(in.Str)
	} else {
		in.ForEach(func(_, v gjson.Result) bool { n += len(v.Str); return true })
	}
	return embeddingsJSON(request, vectors, EstimateTokens(n))
}

// embeddingsJSON is an OpenAI embeddings answer, base64 when the request asked for it.
func embeddingsJSON(request []byte, vectors [][]float64, tokens int64) ([]byte, error) {
	type item struct {
		Object    string `json:"object"`
		Index     int    `json:"index"`
		Embedding any    `json:"embedding"`
	}
	base64Format := gjson.GetBytes(request, "encoding_format").Str == "base64"
	type usage struct {
		PromptTokens int64 `json:"prompt_tokens"`
		TotalTokens  int64 `json:"total_tokens"`
	}
	out := struct {
		Object string `json:"object"`
		Data   []item `json:"data"`
		Model  string `json:"model"`
		Usage  usage  `json:"usage"`
	}{Object: "list", Data: []item{}, Model: gjson.GetBytes(request, "model").Str, Usage: usage{tokens, tokens}}
	for i, v := range vectors {
		var e any = v
		if base64Format {
			// OpenAI's base64: the vector's float32s, little-endian.
			b := make([]byte, 4*len(v))
			for j, f := range v {
				binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(float32(f)))
			}
			e = base64.StdEncoding.EncodeToString(b)
		}
		out.Data = append(out.Data, item{Object: "embedding", Index: i, Embedding: e})
	}
	return json.Marshal(out)
}
