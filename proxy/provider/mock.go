package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
)

// DefaultMockResponse is what a mock deployment answers when it sets no mock_response.
const DefaultMockResponse = "This is a mock response from herd."

// mock answers locally, as LiteLLM does for a deployment with mock_response: no network call,
// OpenAI-shaped bodies and streams, and usage estimated from the request and the answer.
type mock struct {
	model   []byte // JSON string
	content []byte // JSON string of the answer
	words   [][]byte
	tokens  int64
	seq     atomic.Uint64
}

func newMock(d *config.Deployment) *mock {
	text := DefaultMockResponse
	if d.LiteLLMParams.MockResponse != nil {
		text = *d.LiteLLMParams.MockResponse
	}
	m := &mock{model: jsonString(d.UpstreamModel), content: jsonString(text), tokens: EstimateTokens(len(text))}
	for _, w := range strings.SplitAfter(text, " ") {
		m.words = append(m.words, jsonString(w))
	}
	return m
}

func (m *mock) StreamUsage() bool { return true }

func jsonString(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}

func (m *mock) Do(ctx context.Context, c *Call) (*http.Response, error) {
	if err := ctx.Err(); err != nil {
		return nil, &Error{Kind: Canceled, Err: err}
	}
	if c.Confirm != nil {
		if err := c.Confirm(); err != nil {
			return nil, &Error{Kind: Unreachable, Err: err}
		}
	}
	prompt := EstimatePromptTokens(c.Body)
	id := strconv.FormatUint(m.seq.Add(1), 10)
	created := strconv.FormatInt(time.Now().Unix(), 10)
	var b bytes.Buffer
	contentType := "application/json"
	switch {
	case c.Endpoint == Embeddings:
		m.embeddings(&b, c.Body, prompt)
	case c.Stream:
		contentType = "text/event-stream"
		m.stream(&b, c, id, created, prompt)
	default:
		m.completion(&b, c.Endpoint, id, created, prompt)
	}
	return &http.Response{
		StatusCode:    http.StatusOK,
		Status:        "200 OK",
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {contentType}},
		Body:          io.NopCloser(&b),
		ContentLength: int64(b.Len()),
	}, nil
}

func (m *mock) usage(b *bytes.Buffer, prompt, completion int64) {
	b.WriteString(`"usage":{"prompt_tokens":`)
	b.WriteString(strconv.FormatInt(prompt, 10))
	b.WriteString(`,"completion_tokens":`)
	b.WriteString(strconv.FormatInt(completion, 10))
	b.WriteString(`,"total_tokens":`)
	b.WriteString(strconv.FormatInt(prompt+completion, 10))
	b.WriteString(`}`)
}

func (m *mock) head(b *bytes.Buffer, object, id, created string) {
	b.WriteString(`{"id":"chatcmpl-mock-`)
	b.WriteString(id)
	b.WriteString(`","object":"`)
	b.WriteString(object)
	b.WriteString(`","created":`)
	b.WriteString(created)
	b.WriteString(`,"model":`)
	b.Write(m.model)
	b.WriteString(`,"choices":[`)
}

func (m *mock) completion(b *bytes.Buffer, e Endpoint, id, created string, prompt int64) {
	if e == Completions {
		m.head(b, "text_completion", id, created)
		b.WriteString(`{"index":0,"text":`)
	} else {
		m.head(b, "chat.completion", id, created)
		b.WriteString(`{"index":0,"message":{"role":"assistant","content":`)
	}
	b.Write(m.content)
	if e != Completions {
		b.WriteString(`}`)
	}
	b.WriteString(`,"finish_reason":"stop"}],`)
	m.usage(b, prompt, m.tokens)
	b.WriteString("}\n")
}

func (m *mock) stream(b *bytes.Buffer, c *Call, id, created string, prompt int64) {
	object, open, tail := "chat.completion.chunk", `{"index":0,"delta":{"content":`, `},"finish_reason":null}]}`
	if c.Endpoint == Completions {
		object, open, tail = "text_completion", `{"index":0,"text":`, `,"finish_reason":null}]}`
	}
	for _, w := range m.words {
		b.WriteString("data: ")
		m.head(b, object, id, created)
		b.WriteString(open)
		b.Write(w)
		b.WriteString(tail)
		b.WriteString("\n\n")
	}
	b.WriteString("data: ")
	m.head(b, object, id, created)
	b.WriteString(`{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\n")
	if gjson.GetBytes(c.Body, "stream_options.include_usage").Bool() {
		b.WriteString("data: ")
		m.head(b, object, id, created)
		b.WriteString(`],`)
		m.usage(b, prompt, m.tokens)
		b.WriteString("}\n\n")
	}
	b.WriteString("data: [DONE]\n\n")
}

func (m *mock) embeddings(b *bytes.Buffer, body []byte, prompt int64) {
	n := 1
	if in := gjson.GetBytes(body, "input"); in.IsArray() {
		n = len(in.Array())
	}
	b.WriteString(`{"object":"list","data":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"object":"embedding","index":`)
		b.WriteString(strconv.Itoa(i))
		b.WriteString(`,"embedding":[0.0023064255,-0.009327292,-0.0028842222,0.021237593]}`)
	}
	b.WriteString(`],"model":`)
	b.Write(m.model)
	b.WriteString(`,"usage":{"prompt_tokens":`)
	b.WriteString(strconv.FormatInt(prompt, 10))
	b.WriteString(`,"total_tokens":`)
	b.WriteString(strconv.FormatInt(prompt, 10))
	b.WriteString("}}\n")
}
