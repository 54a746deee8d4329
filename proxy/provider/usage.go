package provider

import (
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/state"
)

// ParseUsage reads the "usage" object of an OpenAI-shaped JSON body or stream chunk.
// ok is false when the body carries no usage object (absent or null).
func ParseUsage(body []byte) (u state.Usage, ok bool) {
	// Viewing body as a string avoids GetBytes' copy; r does not outlive this call.
	r := gjson.Get(unsafe.String(unsafe.SliceData(body), len(body)), "usage")
	if !r.IsObject() {
		return state.Usage{}, false
	}
	prompt := r.Get("prompt_tokens").Int()
	completion := r.Get("completion_tokens").Int()
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
