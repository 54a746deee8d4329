package fakeupstream

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// responsesDialect is OpenAI's Responses API: POST /v1/responses (or /openai/responses for
// Azure, which needs an api-version), the deployment in the body's "model", the key as for
// chat. N of the usage formula is the text of "instructions" and "input" (a string, or the
// text of its messages' content).
type responsesDialect struct{}

func (responsesDialect) parse(_ *http.Request, _, body string) (string, request, bool) {
	var req request
	if !gjson.Valid(body) || !gjson.Parse(body).IsObject() {
		return "", req, false
	}
	root := gjson.Parse(body)
	req.model = root.Get("model")
	req.stream = root.Get("stream").Type == gjson.True
	n := len(root.Get("instructions").Str)
	in := root.Get("input")
	switch {
	case in.Type == gjson.String:
		n += len(in.Str)
		req.hasText = true
	case in.IsArray():
		in.ForEach(func(_, item gjson.Result) bool {
			c := item.Get("content")
			if c.Type == gjson.String {
				n += len(c.Str)
			}
			c.ForEach(func(_, p gjson.Result) bool {
				n += len(p.Get("text").Str)
				return true
			})
			n += len(item.Get("output").Str)
			req.hasText = true
			return true
		})
	}
	req.textBytes = n
	return req.model.Str, req, true
}

func (responsesDialect) invalid(u *Upstream, r *http.Request, req *request) (int, string) {
	azure := strings.HasPrefix(r.URL.Path, "/openai/")
	switch {
	case azure && !hasAPIVersion(r.URL.RawQuery):
		return http.StatusBadRequest, msgAPIVersion
	case u.checkKey(r, azure) != "":
		return http.StatusUnauthorized, u.checkKey(r, azure)
	case req.model.Str == "":
		return http.StatusBadRequest, msgNoModel
	case !req.hasText:
		return http.StatusBadRequest, "Missing required parameter: 'input'."
	}
	return 0, ""
}

// response renders the response object; status and text vary between stream events.
func (responsesDialect) response(b []byte, a *answer, status string, done bool) []byte {
	id := strconv.FormatUint(a.id, 10)
	b = append(b, `{"id":"resp_fake`...)
	b = append(b, id...)
	b = append(b, `","object":"response","created_at":`...)
	b = strconv.AppendInt(b, a.created, 10)
	b = append(b, `,"status":"`...)
	b = append(b, status...)
	b = append(b, `","model":`...)
	b = append(b, a.model...)
	b = append(b, `,"output":[`...)
	if done {
		b = append(b, `{"type":"message","id":"msg_fake`...)
		b = append(b, id...)
		b = append(b, `","status":"completed","role":"assistant","content":[{"type":"output_text","text":`...)
		b = append(b, a.st.content...)
		b = append(b, `,"annotations":[]}]}`...)
	}
	b = append(b, `],"usage":`...)
	if !done || !a.usage {
		return append(b, `null}`...)
	}
	c := len(a.st.pieces)
	b = append(b, `{"input_tokens":`...)
	b = strconv.AppendInt(b, int64(a.prompt), 10)
	b = append(b, `,"input_tokens_details":{"cached_tokens":0},"output_tokens":`...)
	b = strconv.AppendInt(b, int64(c), 10)
	b = append(b, `,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":`...)
	b = strconv.AppendInt(b, int64(a.prompt+c), 10)
	return append(b, `}}`...)
}

func (d responsesDialect) writeJSON(w http.ResponseWriter, a *answer) {
	buf := getBuf()
	defer putBuf(buf)
	buf.b = d.response(buf.b, a, "completed", true)
	writeBody(w, http.StatusOK, jsonType, buf.b)
}

func (d responsesDialect) stream(ctx context.Context, w http.ResponseWriter, a *answer, delay time.Duration, cut int) {
	rc := startEventStream(w)
	buf := getBuf()
	defer putBuf(buf)
	seq := 0
	send := func(typ string, fill func([]byte) []byte) bool {
		b := append(buf.b[:0], "event: "...)
		b = append(b, typ...)
		b = append(b, "\ndata: {\"type\":\""...)
		b = append(b, typ...)
		b = append(b, `","sequence_number":`...)
		b = strconv.AppendInt(b, int64(seq), 10)
		seq++
		b = append(fill(append(b, ',')), "}\n\n"...)
		buf.b = b
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	item := `"item_id":"msg_fake` + strconv.FormatUint(a.id, 10) + `","output_index":0,"content_index":0`
	if !send("response.created", func(b []byte) []byte { return d.response(append(b, `"response":`...), a, "in_progress", false) }) {
		return
	}
	timer := eventTimer(delay)
	defer stopTimer(timer)
	for i, piece := range a.st.pieces {
		if !sleep(ctx, timer, delay) {
			return
		}
		if !send("response.output_text.delta", func(b []byte) []byte {
			return append(append(append(b, item...), `,"delta":`...), piece...)
		}) {
			return
		}
		if i+1 == cut {
			panic(http.ErrAbortHandler)
		}
	}
	if !sleep(ctx, timer, delay) {
		return
	}
	_ = send("response.output_text.done", func(b []byte) []byte {
		return append(append(append(b, item...), `,"text":`...), a.st.content...)
	}) && send("response.completed", func(b []byte) []byte { return d.response(append(b, `"response":`...), a, "completed", true) })
}

func (responsesDialect) writeError(w http.ResponseWriter, status int, msg string) {
	writeError(w, status, msg)
}
