package provider

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state"
)

// A Messages API request to a Bedrock deployment of an Anthropic model goes to InvokeModel as
// the client wrote it: model in the URL, stream in the operation, Bedrock's anthropic_version
// added, the rest untouched; signed as every Bedrock call.
func TestBedrockTakesMessagesForClaude(t *testing.T) {
	b := testBedrock(t, false, credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""), goldenNow)
	if !b.serves(Messages) || b.serves(Responses) || b.serves(ChatCompletions) {
		t.Error("an Anthropic deployment does not take the Messages API (or takes another)")
	}
	const rest = `"max_tokens":10,"system":[{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"d"}}]}],"thinking":{"type":"enabled","budget_tokens":1024}`
	for _, stream := range []bool{false, true} {
		body := `{"model":"` + bedrockGoldenModel + `",` + rest + `}`
		if stream {
			body = `{"model":"` + bedrockGoldenModel + `","stream":true,` + rest + `}`
		}
		client := http.Header{"Anthropic-Beta": {"interleaved-thinking-2025-05-14, token-efficient-tools-2025-02-19"}}
		out, err := b.request(t.Context(), &Call{Endpoint: Messages, Body: []byte(body), Stream: stream, ClientHeader: client})
		if err != nil {
			t.Fatal(err)
		}
		if got := gjson.GetBytes(out.body, "anthropic_beta").Raw; got != `["interleaved-thinking-2025-05-14","token-efficient-tools-2025-02-19"]` {
			t.Errorf("stream %v: anthropic_beta = %s, want the client's anthropic-beta header as a list", stream, got)
		}
		op, accept := "/invoke", "application/json"
		if stream {
			op, accept = "/invoke-with-response-stream", "application/vnd.amazon.eventstream"
		}
		if got := out.url.String(); got != "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0"+op || out.stream != stream {
			t.Errorf("stream %v: %s stream=%v", stream, got, out.stream)
		}
		if gjson.GetBytes(out.body, "model").Exists() || gjson.GetBytes(out.body, "stream").Exists() ||
			gjson.GetBytes(out.body, "anthropic_version").Str != BedrockAnthropicVersion {
			t.Errorf("stream %v: body %s", stream, out.body)
		}
		for _, k := range []string{"max_tokens", "system", "messages", "thinking"} {
			if got, want := gjson.GetBytes(out.body, k).Raw, gjson.Get(body, k).Raw; got != want {
				t.Errorf("stream %v: %s = %s, want %s", stream, k, got, want)
			}
		}
		if auth := out.header.Get("Authorization"); !strings.HasPrefix(auth, "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/") ||
			!strings.Contains(auth, "Signature=") || out.header.Get("Accept") != accept {
			t.Errorf("stream %v: header %v", stream, out.header)
		}
	}
	// A cross-region inference profile names its maker after the region.
	for model, claude := range map[string]bool{
		"us.anthropic.claude-sonnet-4-20250514-v1:0":                                                         true,
		"arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.anthropic.claude-3-haiku-20240307-v1:0": true,
		"amazon.nova-pro-v1:0":               false,
		"us.meta.llama3-3-70b-instruct-v1:0": false,
	} {
		nb, err := newBedrockTranslator("https://bedrock-runtime.us-east-1.amazonaws.com", model, http.Header{}, bedrockAuth{Region: "us-east-1", BearerToken: "k"}, false, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if nb.serves(Messages) != claude {
			t.Errorf("%s: serves Messages = %v", model, !claude)
		}
		if !claude {
			_, err := nb.request(t.Context(), &Call{Endpoint: Messages, Body: []byte(`{"model":"` + model + `","max_tokens":1,"messages":[]}`)})
			var bad *BadRequest
			if !errors.As(err, &bad) {
				t.Errorf("%s: a Messages request gave %v, want a BadRequest", model, err)
			}
		}
	}
}

// anthropicChunks is an InvokeModelWithResponseStream answer: each event a chunk with the
// base64 of one Anthropic stream event; "!" starts an exception's payload instead.
func anthropicChunks(t *testing.T, events ...string) []byte {
	t.Helper()
	var out bytes.Buffer
	enc := eventstream.NewEncoder()
	for _, ev := range events {
		var m eventstream.Message
		if msg, ok := strings.CutPrefix(ev, "!"); ok {
			m.Headers.Set(":message-type", eventstream.StringValue("exception"))
			m.Headers.Set(":exception-type", eventstream.StringValue("modelStreamErrorException"))
			m.Payload = []byte(msg)
		} else {
			m.Headers.Set(":message-type", eventstream.StringValue("event"))
			m.Headers.Set(":event-type", eventstream.StringValue("chunk"))
			m.Payload = []byte(`{"bytes":"` + base64.StdEncoding.EncodeToString([]byte(ev)) + `","p":"abcdefghijkl"}`)
		}
		m.Headers.Set(":content-type", eventstream.StringValue("application/json"))
		if err := enc.Encode(&out, m); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

var bedrockClaudeEvents = []string{
	`{"type":"message_start","message":{"id":"msg_bdrk_1","type":"message","role":"assistant","model":"claude-3-5-sonnet-20240620","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}`,
	`{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`,
	`{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}`,
	`{"type":"content_block_stop","index":0}`,
	`{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}`,
	`{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":12,"outputTokenCount":2,"invocationLatency":300,"firstByteLatency":100}}`,
}

// The chunks' events come out as Anthropic's SSE, however the bytes arrive, with no [DONE].
func TestBedrockMessagesStream(t *testing.T) {
	b := testBedrock(t, false, credentials.NewStaticCredentialsProvider("A", "S", ""), goldenNow)
	src := anthropicChunks(t, bedrockClaudeEvents...)
	r := &chunkReader{src: b.nativeStream(&Call{Endpoint: Messages}, iotest.OneByteReader(bytes.NewReader(src))), rc: io.NopCloser(nil), native: true}
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, ev := range bedrockClaudeEvents {
		want.WriteString("event: " + gjson.Get(ev, "type").Str + "\ndata: " + ev + "\n\n")
	}
	if string(got) != want.String() {
		t.Errorf("got\n%s\nwant\n%s", got, want.String())
	}
	var usage state.Usage
	for _, ev := range bedrockClaudeEvents {
		StreamEventUsage(Messages, []byte(ev), &usage)
	}
	if usage.PromptTokens != 12 || usage.CompletionTokens != 2 {
		t.Errorf("usage %+v", usage)
	}

	// An exception mid-stream fails the stream after the events before it.
	src = anthropicChunks(t, bedrockClaudeEvents[0], bedrockClaudeEvents[1], `!{"message":"The model stream failed."}`)
	r = &chunkReader{src: b.nativeStream(&Call{Endpoint: Messages}, bytes.NewReader(src)), rc: io.NopCloser(nil), native: true}
	got, err = io.ReadAll(r)
	var se *StreamError
	if !errors.As(err, &se) || se.Type != "modelStreamErrorException" || se.Message != "The model stream failed." ||
		strings.Count(string(got), "event: ") != 2 {
		t.Errorf("exception: %v\n%s", err, got)
	}
	// A stream that ends before message_stop was cut.
	src = anthropicChunks(t, bedrockClaudeEvents[:3]...)
	r = &chunkReader{src: b.nativeStream(&Call{Endpoint: Messages}, bytes.NewReader(src)), rc: io.NopCloser(nil), native: true}
	if _, err = io.ReadAll(r); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut stream: %v", err)
	}
	// A message over the bound is refused before it is read.
	b.maxLen = 64
	r = &chunkReader{src: b.nativeStream(&Call{Endpoint: Messages}, bytes.NewReader(anthropicChunks(t, bedrockClaudeEvents...))), rc: io.NopCloser(nil), native: true}
	if _, err = io.ReadAll(r); !errors.Is(err, errStreamMessageTooLarge) {
		t.Errorf("large message: %v", err)
	}
}

// Through the translated upstream: InvokeModel's JSON passes as it is, the stream becomes SSE.
func TestBedrockMessagesUpstream(t *testing.T) {
	const answer = `{"id":"msg_bdrk_1","type":"message","role":"assistant","model":"claude-3-5-sonnet-20240620","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":2}}`
	stream := anthropicChunks(t, bedrockClaudeEvents...)
	var gotPath, gotBody string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotPath, gotBody = r.URL.EscapedPath(), string(b)
		if strings.HasSuffix(r.URL.Path, "/invoke-with-response-stream") {
			w.Header().Set("Content-Type", "application/vnd.amazon.eventstream")
			w.Write(stream)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, answer)
	}))
	defer srv.Close()
	d := &config.Deployment{ID: "b", Provider: "bedrock", UpstreamModel: "us." + bedrockGoldenModel, APIBase: srv.URL, Region: "us-east-1",
		Timeout: 5 * time.Second, StreamTimeout: 5 * time.Second}
	d.LiteLLMParams.APIKey = config.Secret("bedrock-api-key")
	up, err := New(d, NewPool(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !Serves(up, Messages) {
		t.Fatal("the deployment does not take Messages")
	}
	body := `{"model":"us.` + bedrockGoldenModel + `","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`
	resp, err := up.Do(context.Background(), &Call{Endpoint: Messages, Body: []byte(body)})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != answer || gotPath != "/model/us.anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke" || strings.Contains(gotBody, `"model"`) {
		t.Errorf("answer %s from %s with %s", got, gotPath, gotBody)
	}

	sb := strings.Replace(body, `"max_tokens"`, `"stream":true,"max_tokens"`, 1)
	resp, err = up.Do(context.Background(), &Call{Endpoint: Messages, Body: []byte(sb), Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.Header.Get("Content-Type") != "text/event-stream" || resp.ContentLength != -1 ||
		!strings.HasPrefix(string(got), "event: message_start\ndata: {") || !strings.HasSuffix(string(got), "\n\n") || strings.Contains(string(got), "[DONE]") {
		t.Errorf("stream: %v %s\n%s", err, resp.Header, got)
	}
	if !strings.HasSuffix(gotPath, "/invoke-with-response-stream") || strings.Contains(gotBody, `"stream"`) {
		t.Errorf("stream call %s with %s", gotPath, gotBody)
	}
}
