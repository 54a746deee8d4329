package fakeupstream

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/tidwall/gjson"
)

// anthropicDialect is Anthropic's Messages API: POST /v1/messages, the deployment in the
// body's "model", the key in x-api-key, anthropic-version required, max_tokens required.
// N of the usage formula counts the system prompt's text too.
type anthropicDialect struct{}

func (anthropicDialect) parse(_ *http.Request, _, body string) (string, request, bool) {
	var req request
	if !gjson.Valid(body) || !gjson.Parse(body).IsObject() {
		return "", req, false
	}
	return anthropicRequest(body, &req), req, true
}

// anthropicRequest reads a Messages body into req and returns its model; Vertex AI's
// Anthropic models take the same body without the model.
func anthropicRequest(body string, req *request) string {
	root := gjson.Parse(body)
	req.stream = root.Get("stream").Type == gjson.True
	req.model = root.Get("model")
	req.user = root.Get("metadata.user_id").Str
	n, ok := anthropicText(root.Get("system"))
	msgs := root.Get("messages")
	msgs.ForEach(func(_, m gjson.Result) bool {
		k, _ := anthropicText(m.Get("content"))
		n += k
		ok = true
		return true
	})
	req.textBytes, req.hasText = n, ok && msgs.IsArray()
	switch {
	case !req.hasText:
		req.missing = "messages"
	case !root.Get("max_tokens").Exists():
		req.missing = "max_tokens"
	}
	return req.model.Str
}

// anthropicText sums the text of a string or of content blocks (text, and tool results).
func anthropicText(v gjson.Result) (n int, ok bool) {
	switch {
	case v.Type == gjson.String:
		return len(v.Str), true
	case v.IsArray():
		v.ForEach(func(_, b gjson.Result) bool {
			switch b.Get("type").Str {
			case "text":
				n += len(b.Get("text").Str)
			case "tool_result":
				k, _ := anthropicText(b.Get("content"))
				n += k
			}
			return true
		})
		return n, true
	}
	return 0, false
}

func (anthropicDialect) invalid(u *Upstream, r *http.Request, req *request) (int, string) {
	if u.opts.APIKey != "" && r.Header.Get("X-Api-Key") != u.opts.APIKey {
		return http.StatusUnauthorized, "invalid x-api-key"
	}
	if r.Header.Get("Anthropic-Version") == "" {
		return http.StatusBadRequest, "anthropic-version: header is required"
	}
	switch {
	case req.model.Str == "":
		return http.StatusBadRequest, "model: Field required"
	case req.missing != "":
		return http.StatusBadRequest, req.missing + ": Field required"
	}
	return 0, ""
}

func (anthropicDialect) writeJSON(w http.ResponseWriter, a *answer) {
	buf := getBuf()
	defer putBuf(buf)
	b := append(buf.b, `{"id":"msg_fake`...)
	b = strconv.AppendUint(b, a.id, 10)
	b = append(b, `","type":"message","role":"assistant","model":`...)
	b = append(b, a.model...)
	b = append(b, `,"content":[{"type":"text","text":`...)
	b = append(b, a.st.content...)
	b = append(b, `}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":`...)
	b = strconv.AppendInt(b, int64(a.prompt), 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, int64(len(a.st.pieces)), 10)
	b = append(b, `}}`...)
	buf.b = b
	writeBody(w, http.StatusOK, jsonType, b)
}

func (anthropicDialect) stream(ctx context.Context, w http.ResponseWriter, a *answer, delay time.Duration, cut int) {
	rc := startEventStream(w)
	buf := getBuf()
	defer putBuf(buf)
	anthropicEvents(ctx, a, delay, cut, func(event string, data ...string) bool {
		b := append(buf.b[:0], "event: "...)
		b = append(b, event...)
		b = append(b, "\ndata: "...)
		for _, d := range data {
			b = append(b, d...)
		}
		b = append(b, "\n\n"...)
		buf.b = b
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	})
}

// anthropicEvents sends a Messages stream's events with send, each as its type and its JSON
// in parts, until send fails; cut > 0 aborts the connection after that many content events.
func anthropicEvents(ctx context.Context, a *answer, delay time.Duration, cut int, send func(event string, data ...string) bool) {
	id := "msg_fake" + strconv.FormatUint(a.id, 10)
	prompt := strconv.Itoa(a.prompt)
	if !send("message_start", `{"type":"message_start","message":{"id":"`, id, `","type":"message","role":"assistant","content":[],"model":`, a.model,
		`,"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":`, prompt, `,"output_tokens":1}}}`) ||
		!send("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`) ||
		!send("ping", `{"type":"ping"}`) {
		return
	}
	timer := eventTimer(delay)
	defer stopTimer(timer)
	for i, piece := range a.st.pieces {
		if !sleep(ctx, timer, delay) {
			return
		}
		if !send("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":`, piece, `}}`) {
			return
		}
		if i+1 == cut {
			panic(http.ErrAbortHandler)
		}
	}
	if !sleep(ctx, timer, delay) {
		return
	}
	_ = send("content_block_stop", `{"type":"content_block_stop","index":0}`) &&
		send("message_delta", `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":`,
			strconv.Itoa(len(a.st.pieces)), `}}`) &&
		send("message_stop", `{"type":"message_stop"}`)
}

// writeError sends {"type":"error","error":{"type":...,"message":...}}.
func (anthropicDialect) writeError(w http.ResponseWriter, status int, msg string) {
	buf := getBuf()
	defer putBuf(buf)
	b := append(buf.b, `{"type":"error","error":{"type":"`...)
	b = append(b, anthropicErrorType(status)...)
	b = append(b, `","message":`...)
	b = gjson.AppendJSONString(b, msg)
	b = append(b, `}}`...)
	buf.b = b
	writeBody(w, status, jsonType, b)
}

func anthropicErrorType(status int) string {
	switch status {
	case http.StatusBadRequest:
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
	case 529:
		return "overloaded_error"
	}
	return "api_error"
}
