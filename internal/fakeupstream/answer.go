package fakeupstream

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tidwall/gjson"
)

// answer renders one successful response straight into a pooled buffer.
type answer struct {
	st      *depState
	id      uint64
	created int64
	model   string   // JSON string literal
	prompt  int      // prompt_tokens
	usage   bool     // false under Fault.NoUsage
	req     *request // dialects: the request answered (embeddings read its input)
}

// head appends the fields every chat/completions body and chunk starts with, up to "choices":[.
func (a *answer) head(b []byte, ep endpoint, chunk bool) []byte {
	if ep == epChat {
		b = append(b, `{"id":"chatcmpl-fake`...)
	} else {
		b = append(b, `{"id":"cmpl-fake`...)
	}
	b = strconv.AppendUint(b, a.id, 10)
	switch {
	case ep != epChat:
		b = append(b, `","object":"text_completion","created":`...)
	case chunk:
		b = append(b, `","object":"chat.completion.chunk","created":`...)
	default:
		b = append(b, `","object":"chat.completion","created":`...)
	}
	b = strconv.AppendInt(b, a.created, 10)
	b = append(b, `,"model":`...)
	b = append(b, a.model...)
	return append(b, `,"system_fingerprint":"fp_fakeupstream","choices":[`...)
}

func (a *answer) appendUsage(b []byte) []byte {
	c := len(a.st.pieces)
	b = append(b, `"usage":{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(a.prompt), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(c), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(a.prompt+c), 10)
	return append(b, '}')
}

func (a *answer) writeJSON(w http.ResponseWriter, ep endpoint) {
	buf := getBuf()
	defer putBuf(buf)
	b := a.head(buf.b, ep, false)
	if ep == epChat {
		b = append(b, `{"index":0,"message":{"role":"assistant","content":`...)
		b = append(b, a.st.content...)
		b = append(b, `,"refusal":null},"logprobs":null,"finish_reason":"stop"}]`...)
	} else {
		b = append(b, `{"index":0,"text":`...)
		b = append(b, a.st.content...)
		b = append(b, `,"logprobs":null,"finish_reason":"stop"}]`...)
	}
	if a.usage {
		b = a.appendUsage(append(b, ','))
	}
	b = append(b, '}')
	buf.b = b
	writeBody(w, http.StatusOK, jsonType, b)
}

// stream sends the answer as server-sent events, flushed one by one. cut > 0 aborts the
// connection after that many content events, as an upstream dying mid-stream would.
func (a *answer) stream(ctx context.Context, w http.ResponseWriter, ep endpoint, includeUsage bool, delay time.Duration, cut int) {
	rc := startEventStream(w)

	includeUsage = includeUsage && a.usage
	// Every event shares "data: " + head; only the tail after "choices":[ changes.
	buf := getBuf()
	defer putBuf(buf)
	b := a.head(append(buf.b, "data: "...), ep, true)
	defer func() { buf.b = b }() // keep the grown slice for the next user
	headLen := len(b)
	send := func(tail func([]byte) []byte) bool {
		b = tail(b[:headLen])
		if includeUsage {
			b = append(b, `,"usage":null`...)
		}
		b = append(b, "}\n\n"...)
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}

	timer := eventTimer(delay)
	defer stopTimer(timer)
	if ep == epChat && !send(appendRoleChoice) {
		return
	}
	if cut > len(a.st.pieces) {
		cut = len(a.st.pieces)
	}
	for i, piece := range a.st.pieces {
		if !sleep(ctx, timer, delay) {
			return
		}
		ok := send(func(b []byte) []byte {
			if ep == epChat {
				b = append(b, `{"index":0,"delta":{"content":`...)
				b = append(b, piece...)
				return append(b, `},"logprobs":null,"finish_reason":null}]`...)
			}
			b = append(b, `{"index":0,"text":`...)
			b = append(b, piece...)
			return append(b, `,"logprobs":null,"finish_reason":null}]`...)
		})
		if !ok {
			return
		}
		if i+1 == cut {
			panic(http.ErrAbortHandler)
		}
	}
	if !sleep(ctx, timer, delay) {
		return
	}
	finish := appendCompletionFinish
	if ep == epChat {
		finish = appendChatFinish
	}
	if !send(finish) {
		return
	}
	if includeUsage {
		b = a.appendUsage(append(b[:headLen], "],"...))
		b = append(b, "}\n\n"...)
		if _, err := w.Write(b); err != nil {
			return
		}
	}
	if _, err := w.Write(doneEvent); err == nil {
		_ = rc.Flush()
	}
}

var doneEvent = []byte("data: [DONE]\n\n")

func appendRoleChoice(b []byte) []byte {
	return append(b, `{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]`...)
}

func appendChatFinish(b []byte) []byte {
	return append(b, `{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]`...)
}

func appendCompletionFinish(b []byte) []byte {
	return append(b, `{"index":0,"text":"","logprobs":null,"finish_reason":"stop"}]`...)
}

func (a *answer) writeEmbeddings(w http.ResponseWriter, req *request) {
	buf := getBuf()
	defer putBuf(buf)
	b := append(buf.b, `{"object":"list","data":[`...)
	i := 0
	forEachInput(req.input, func(item gjson.Result) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"object":"embedding","index":`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, `,"embedding":`...)
		b = appendEmbedding(b, item, req.base64)
		b = append(b, '}')
		i++
	})
	b = append(b, `],"model":`...)
	b = append(b, a.model...)
	if a.usage {
		b = append(b, `,"usage":{"prompt_tokens":`...)
		b = strconv.AppendInt(b, int64(a.prompt), 10)
		b = append(b, `,"total_tokens":`...)
		b = strconv.AppendInt(b, int64(a.prompt), 10)
		b = append(b, '}')
	}
	b = append(b, '}')
	buf.b = b
	writeBody(w, http.StatusOK, jsonType, b)
}

// embeddingDims is the length of every embedding vector.
const embeddingDims = 8

// appendEmbedding appends a vector in [-1, 1) derived from the input, so equal inputs get
// equal vectors and different inputs (almost surely) different ones.
func appendEmbedding(b []byte, item gjson.Result, asBase64 bool) []byte {
	text := item.Raw
	if item.Type == gjson.String {
		text = item.Str
	}
	x := uint64(14695981039346656037) // FNV-1a
	for i := 0; i < len(text); i++ {
		x = (x ^ uint64(text[i])) * 1099511628211
	}
	var vec [embeddingDims]float32
	for i := range vec {
		x = splitmix64(x)
		vec[i] = float32(int64(x>>40)-1<<23) / (1 << 23) // 24 bits: exact in a float32
	}
	if asBase64 {
		var raw [embeddingDims * 4]byte
		for i, v := range vec {
			binary.LittleEndian.PutUint32(raw[i*4:], math.Float32bits(v))
		}
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, raw[:])
		return append(b, '"')
	}
	b = append(b, '[')
	for i, v := range vec {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendFloat(b, float64(v), 'g', -1, 32)
	}
	return append(b, ']')
}

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// writeError sends an OpenAI-shaped error:
// {"error":{"message":"...","type":"...","param":null,"code":"<status>"}}.
func writeError(w http.ResponseWriter, status int, msg string) {
	buf := getBuf()
	defer putBuf(buf)
	b := append(buf.b, `{"error":{"message":`...)
	b = gjson.AppendJSONString(b, msg)
	b = append(b, `,"type":"`...)
	b = append(b, errorType(status)...)
	b = append(b, `","param":null,"code":"`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `"}}`...)
	buf.b = b
	writeBody(w, status, jsonType, b)
}

func errorType(status int) string {
	switch {
	case status == http.StatusTooManyRequests:
		return "requests" // what OpenAI sends for request-rate limits
	case status >= 500:
		return "server_error"
	default:
		return "invalid_request_error"
	}
}

func writeFault(w http.ResponseWriter, f *fault) {
	if f.retryAfter != nil {
		w.Header()["Retry-After"] = f.retryAfter
	}
	if f.Body == "" {
		writeError(w, f.Status, "fakeupstream: injected fault")
		return
	}
	w.Header()["Content-Type"] = f.contentType
	w.WriteHeader(f.Status)
	_, _ = w.Write([]byte(f.Body))
}

// writeBody leaves Content-Length to net/http, which sets it for bodies that fit its buffer.
func writeBody(w http.ResponseWriter, status int, contentType []string, b []byte) {
	w.Header()["Content-Type"] = contentType
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// buffer is pooled by pointer so that returning it to the pool does not allocate.
type buffer struct{ b []byte }

var bufPool = sync.Pool{New: func() any { return &buffer{b: make([]byte, 0, 4096)} }}

func getBuf() *buffer {
	buf := bufPool.Get().(*buffer)
	buf.b = buf.b[:0]
	return buf
}

func putBuf(buf *buffer) {
	if cap(buf.b) > 64<<10 {
		return // let a rare huge answer go to the GC rather than pin it
	}
	bufPool.Put(buf)
}
