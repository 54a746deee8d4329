package fakeupstream

import "github.com/tidwall/gjson"

// request is what the fake reads from a body: one pass over the top-level keys with gjson,
// never a full decode.
type request struct {
	model        gjson.Result
	stream       bool
	includeUsage bool
	base64       bool         // embeddings: encoding_format "base64"
	input        gjson.Result // embeddings: the input, walked again to answer
	hasText      bool         // messages / prompt / input present and usable
	textBytes    int          // N of the usage formula
	missing      string       // dialects: the first required field the request lacks
	user         string       // dialects: the end-user ID the request names (Arrival.User)
	embeddings   bool         // dialects: an embeddings call (no completion tokens)
	messages     bool         // dialects: Anthropic's Messages body behind another API (Bedrock's InvokeModel)
	body         string       // dialects whose credentials sign the body (Bedrock's SigV4)
}

// parseRequest reports false when body is not a JSON object.
func parseRequest(body string, ep endpoint) (request, bool) {
	var req request
	if !gjson.Valid(body) {
		return req, false
	}
	root := gjson.Parse(body)
	if !root.IsObject() {
		return req, false
	}
	root.ForEach(func(key, v gjson.Result) bool {
		switch key.Str {
		case "model":
			if v.Type == gjson.String {
				req.model = v
			}
		case "stream":
			req.stream = v.Type == gjson.True
		case "stream_options":
			req.includeUsage = v.Get("include_usage").Type == gjson.True
		case "messages":
			if ep == epChat && v.IsArray() {
				req.textBytes, req.hasText = messageBytes(v)
			}
		case "prompt":
			if ep == epCompletions {
				req.textBytes, req.hasText = inputBytes(v)
			}
		case "input":
			if ep == epEmbeddings {
				req.input = v
				req.textBytes, req.hasText = inputBytes(v)
			}
		case "encoding_format":
			req.base64 = v.Str == "base64"
		}
		return true
	})
	return req, true
}

// messageBytes sums the bytes of every message's content: a string, or the "text" of its parts.
func messageBytes(msgs gjson.Result) (n int, ok bool) {
	msgs.ForEach(func(_, m gjson.Result) bool {
		ok = true
		c := m.Get("content")
		switch {
		case c.Type == gjson.String:
			n += len(c.Str)
		case c.IsArray():
			c.ForEach(func(_, part gjson.Result) bool {
				if t := part.Get("text"); t.Type == gjson.String {
					n += len(t.Str)
				}
				return true
			})
		}
		return true
	})
	return n, ok
}

// inputBytes sums a prompt or embeddings input: a string, token IDs (4 bytes each), or an array
// of either. An empty array is not usable.
func inputBytes(v gjson.Result) (n int, ok bool) {
	switch {
	case v.Type == gjson.String:
		return len(v.Str), true
	case v.Type == gjson.Number:
		return 4, true
	case !v.IsArray():
		return 0, false
	}
	v.ForEach(func(_, item gjson.Result) bool {
		m, itemOK := inputBytes(item)
		n += m
		ok = ok || itemOK
		return true
	})
	return n, ok
}

// forEachInput calls fn for each embeddings input item: a string or token array is one item,
// an array of strings or token arrays is one item per element.
func forEachInput(v gjson.Result, fn func(item gjson.Result)) {
	if !v.IsArray() {
		fn(v)
		return
	}
	first := true
	v.ForEach(func(_, item gjson.Result) bool {
		if first && item.Type == gjson.Number {
			fn(v)
			return false
		}
		first = false
		fn(item)
		return true
	})
}
