package provider

import (
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/state"
)

// ParseUsage reads the "usage" object of an OpenAI-shaped JSON body or stream chunk (or of a
// Responses or Messages API answer, whose counts are input_tokens and output_tokens).
// ok is false when the body carries no usage object (absent or null).
func ParseUsage(body []byte) (u state.Usage, ok bool) {
	// Viewing body as a string avoids GetBytes' copy; r does not outlive this call.
	r := gjson.Get(unsafe.String(unsafe.SliceData(body), len(body)), "usage")
	if !r.IsObject() {
		return state.Usage{}, false
	}
	prompt := r.Get("prompt_tokens").Int()
	completion := r.Get("completion_tokens").Int()
	if !r.Get("prompt_tokens").Exists() {
		// The Responses and Messages APIs' names; Anthropic counts the prompt cache apart.
		prompt = r.Get("input_tokens").Int() + r.Get("cache_creation_input_tokens").Int() + r.Get("cache_read_input_tokens").Int()
		completion = r.Get("output_tokens").Int()
	}
	if total := r.Get("total_tokens").Int(); total > prompt+completion {
		// Embeddings report only prompt and total; some servers add reasoning to total only.
		completion = total - prompt
	}
	return state.Usage{PromptTokens: prompt, CompletionTokens: completion}, true
}

// EstimateTokens approximates the tokens in n bytes of English text (about 4 bytes a token),
// used when an upstream reports no usage and to reserve tpm before a call.
func EstimateTokens(n int) int64 {
	if n <= 0 {
		return 0
	}
	return int64(n+3) / 4
}

// EstimatePromptTokens approximates the prompt tokens of a request body: the text of
// messages (chat), prompt (completions) or input (embeddings), plus a few tokens per message
// for the chat template.
func EstimatePromptTokens(body []byte) int64 {
	var bytes, parts int
	count := func(r gjson.Result) {
		switch {
		case r.Type == gjson.String:
			bytes += len(r.Str)
			parts++
		case r.IsArray():
			r.ForEach(func(_, v gjson.Result) bool {
				switch {
				case v.Type == gjson.String:
					bytes += len(v.Str)
				case v.IsObject():
					// A multimodal content part or a chat message.
					if t := v.Get("text"); t.Type == gjson.String {
						bytes += len(t.Str)
					}
					if c := v.Get("content"); c.Exists() {
						if c.Type == gjson.String {
							bytes += len(c.Str)
						} else if c.IsArray() {
							c.ForEach(func(_, p gjson.Result) bool {
								bytes += len(p.Get("text").Str)
								return true
							})
						}
					}
				default:
					// Token-id arrays: count each id as one token's worth of text.
					bytes += 4
				}
				parts++
				return true
			})
		}
	}
	// Viewing body as a string keeps gjson from copying the values found (a large body's
	// messages would be copied whole); the results do not outlive this call.
	for _, r := range gjson.GetMany(unsafe.String(unsafe.SliceData(body), len(body)), "messages", "prompt", "input") {
		count(r)
	}
	return EstimateTokens(bytes) + int64(3*parts)
}

// StreamEventUsage reads the usage a Responses or Messages API stream event carries into u:
// Anthropic's message_start holds the prompt's counts and message_delta the output so far;
// the Responses API's response.completed (or .incomplete) holds them all. final reports
// that the stream's whole usage is now in u.
func StreamEventUsage(ep Endpoint, data []byte, u *state.Usage) (final bool) {
	d := unsafe.String(unsafe.SliceData(data), len(data))
	switch ep {
	case Messages:
		switch gjson.Get(d, "type").Str {
		case "message_start":
			r := gjson.Get(d, "message.usage")
			u.PromptTokens = r.Get("input_tokens").Int() + r.Get("cache_creation_input_tokens").Int() + r.Get("cache_read_input_tokens").Int()
			u.CompletionTokens = r.Get("output_tokens").Int()
		case "message_delta":
			r := gjson.Get(d, "usage")
			u.CompletionTokens = r.Get("output_tokens").Int()
			if in := r.Get("input_tokens"); in.Exists() {
				u.PromptTokens = in.Int() + r.Get("cache_creation_input_tokens").Int() + r.Get("cache_read_input_tokens").Int()
			}
			return true
		}
	case Responses:
		switch gjson.Get(d, "type").Str {
		case "response.completed", "response.incomplete", "response.failed":
			if r := gjson.Get(d, "response.usage"); r.IsObject() {
				u.PromptTokens, u.CompletionTokens = r.Get("input_tokens").Int(), r.Get("output_tokens").Int()
				return true
			}
		}
	}
	return false
}
