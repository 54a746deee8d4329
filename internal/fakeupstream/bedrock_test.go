package fakeupstream_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// bedrockCall posts body to the operation op of the model anthropic.claude-v2:1 (or of the
// escaped model ID op names as "model/op"), signed with secret (or with the given
// Authorization when auth is not "").
func bedrockCall(t *testing.T, base, op, body, secret, auth string) *http.Response {
	t.Helper()
	if !strings.Contains(op, "/") {
		// The model ID "anthropic.claude-v2:1" escaped as the SDKs send it.
		op = "anthropic.claude-v2%3A1/" + op
	}
	req, err := http.NewRequest("POST", base+"/model/"+op, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	switch {
	case auth != "":
		req.Header.Set("Authorization", auth)
	case secret != "":
		sum := sha256.Sum256([]byte(body))
		creds := aws.Credentials{AccessKeyID: fakeupstream.BedrockAccessKeyID, SecretAccessKey: secret}
		if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hex.EncodeToString(sum[:]), "bedrock", "us-east-1", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestBedrockDialect(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	u, base := fakeupstream.Start(t, fakeupstream.Options{APIKey: "bedrock-key"})
	const dep = "anthropic.claude-v2:1"
	// N = 4 (system) + 8 + 4 (tool result) = 16: 4 input tokens; 5 output tokens.
	ok := `{"system":[{"text":"abcd"}],"messages":[{"role":"user","content":[{"text":"abcdefgh"},{"toolResult":{"toolUseId":"t","content":[{"text":"wxyz"}]}}]}]}`

	t.Run("auth", func(t *testing.T) {
		for _, tt := range []struct {
			name, secret, auth string
			status             int
			errType            string
		}{
			{"signed", fakeupstream.BedrockSecretAccessKey, "", 200, ""},
			{"wrong secret", "not-the-secret", "", 403, "AccessDeniedException"},
			{"unknown key", "", "AWS4-HMAC-SHA256 Credential=AKIDOTHER/20251203/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00", 403, "AccessDeniedException"},
			{"unsigned", "", "", 403, "AccessDeniedException"},
			{"api key", "", "Bearer bedrock-key", 200, ""},
			{"wrong api key", "", "Bearer other", 403, "AccessDeniedException"},
		} {
			resp := bedrockCall(t, base, "converse", ok, tt.secret, tt.auth)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			errType, _, _ := strings.Cut(resp.Header.Get("X-Amzn-Errortype"), ":")
			if resp.StatusCode != tt.status || errType != tt.errType {
				t.Errorf("%s: %d %s %s, want %d %s", tt.name, resp.StatusCode, errType, b, tt.status, tt.errType)
			}
			if tt.status == 200 && (gjson.GetBytes(b, "output.message.content.0.text").Str != "Hello from "+dep+"." ||
				gjson.GetBytes(b, "usage.inputTokens").Int() != 4 || gjson.GetBytes(b, "usage.outputTokens").Int() != 5 ||
				gjson.GetBytes(b, "usage.totalTokens").Int() != 9 || gjson.GetBytes(b, "stopReason").Str != "end_turn") {
				t.Errorf("%s: answer %s", tt.name, b)
			}
		}
	})

	t.Run("validation", func(t *testing.T) {
		resp := bedrockCall(t, base, "converse", `{"messages":[]}`, fakeupstream.BedrockSecretAccessKey, "")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.HasPrefix(resp.Header.Get("X-Amzn-Errortype"), "ValidationException:") || gjson.GetBytes(b, "message").Str == "" {
			t.Errorf("no messages: %d %v %s", resp.StatusCode, resp.Header, b)
		}
	})

	t.Run("stream", func(t *testing.T) {
		resp := bedrockCall(t, base, "converse-stream", ok, fakeupstream.BedrockSecretAccessKey, "")
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/vnd.amazon.eventstream" {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		var events []string
		var text strings.Builder
		var usage gjson.Result
		dec := eventstream.NewDecoder()
		r := bufio.NewReader(resp.Body)
		for {
			m, err := dec.Decode(r, nil)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			ev := m.Headers.Get(":event-type").String()
			events = append(events, ev)
			text.WriteString(gjson.GetBytes(m.Payload, "delta.text").Str)
			if ev == "metadata" {
				usage = gjson.GetBytes(m.Payload, "usage")
			}
		}
		want := "messageStart contentBlockDelta contentBlockDelta contentBlockDelta contentBlockDelta contentBlockDelta contentBlockStop messageStop metadata"
		if strings.Join(events, " ") != want || text.String() != "Hello from "+dep+"." ||
			usage.Get("inputTokens").Int() != 4 || usage.Get("outputTokens").Int() != 5 {
			t.Errorf("events %v, text %q, usage %s", events, text.String(), usage.Raw)
		}
	})

	t.Run("fault", func(t *testing.T) {
		u.SetFault(dep, fakeupstream.Fault{Status: 429})
		defer u.SetFault(dep, fakeupstream.Fault{})
		resp := bedrockCall(t, base, "converse", ok, fakeupstream.BedrockSecretAccessKey, "")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 429 || !strings.HasPrefix(resp.Header.Get("X-Amzn-Errortype"), "ThrottlingException:") || gjson.GetBytes(b, "message").Str == "" {
			t.Errorf("429 fault: %d %v %s", resp.StatusCode, resp.Header, b)
		}
	})

	t.Run("embeddings", func(t *testing.T) {
		// Titan: N = 8, 2 tokens.
		resp := bedrockCall(t, base, "amazon.titan-embed-text-v2%3A0/invoke", `{"inputText":"abcdefgh"}`, fakeupstream.BedrockSecretAccessKey, "")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(gjson.GetBytes(b, "embedding").Array()) != 8 || gjson.GetBytes(b, "inputTextTokenCount").Int() != 2 {
			t.Errorf("titan: %d %s", resp.StatusCode, b)
		}
		resp = bedrockCall(t, base, "cohere.embed-english-v3/invoke", `{"texts":["a","b","a"],"input_type":"search_query"}`, fakeupstream.BedrockSecretAccessKey, "")
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		vs := gjson.GetBytes(b, "embeddings").Array()
		if resp.StatusCode != 200 || len(vs) != 3 || vs[0].Raw != vs[2].Raw || vs[0].Raw == vs[1].Raw || gjson.GetBytes(b, "texts.1").Str != "b" {
			t.Errorf("cohere: %d %s", resp.StatusCode, b)
		}
	})

	t.Run("messages", func(t *testing.T) {
		// InvokeModel of an Anthropic model takes Anthropic's body: N = 4 + 8 + 4 = 16 again.
		msgs := `{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"system":"abcd","messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"},{"type":"tool_result","tool_use_id":"t","content":"wxyz"}]}]}`
		resp := bedrockCall(t, base, "invoke", msgs, fakeupstream.BedrockSecretAccessKey, "")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || gjson.GetBytes(b, "type").Str != "message" || gjson.GetBytes(b, "model").Str != dep ||
			gjson.GetBytes(b, "content.0.text").Str != "Hello from "+dep+"." ||
			gjson.GetBytes(b, "usage.input_tokens").Int() != 4 || gjson.GetBytes(b, "usage.output_tokens").Int() != 5 {
			t.Errorf("invoke: %d %s", resp.StatusCode, b)
		}
		for _, bad := range []string{
			strings.Replace(msgs, `"bedrock-2023-05-31"`, `"2023-06-01"`, 1),
			strings.Replace(msgs, `{"anthropic_version"`, `{"model":"claude","anthropic_version"`, 1),
			strings.Replace(msgs, `{"anthropic_version"`, `{"stream":true,"anthropic_version"`, 1),
			strings.Replace(msgs, `"max_tokens":10,`, ``, 1),
		} {
			resp := bedrockCall(t, base, "invoke", bad, fakeupstream.BedrockSecretAccessKey, "")
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 400 || !strings.HasPrefix(resp.Header.Get("X-Amzn-Errortype"), "ValidationException:") {
				t.Errorf("%s: %d %s", bad, resp.StatusCode, b)
			}
		}

		resp = bedrockCall(t, base, "invoke-with-response-stream", msgs, fakeupstream.BedrockSecretAccessKey, "")
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/vnd.amazon.eventstream" {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		var types []string
		var text strings.Builder
		var in, out int64
		dec := eventstream.NewDecoder()
		r := bufio.NewReader(resp.Body)
		for {
			m, err := dec.Decode(r, nil)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			raw, err := base64.StdEncoding.DecodeString(gjson.GetBytes(m.Payload, "bytes").Str)
			if err != nil || m.Headers.Get(":event-type").String() != "chunk" {
				t.Fatalf("%v %v %s", err, m.Headers, m.Payload)
			}
			ev := gjson.ParseBytes(raw)
			types = append(types, ev.Get("type").Str)
			text.WriteString(ev.Get("delta.text").Str)
			in += ev.Get("message.usage.input_tokens").Int()
			if ev.Get("type").Str == "message_delta" {
				out = ev.Get("usage.output_tokens").Int()
			}
		}
		want := "message_start content_block_start ping content_block_delta content_block_delta content_block_delta content_block_delta content_block_delta content_block_stop message_delta message_stop"
		if strings.Join(types, " ") != want || text.String() != "Hello from "+dep+"." || in != 4 || out != 5 {
			t.Errorf("events %v, text %q, usage %d + %d", types, text.String(), in, out)
		}
	})

	if n := u.Count(dep); n != 15 {
		t.Errorf("count = %d, want 15 (every request is counted, by its unescaped model ID)", n)
	}
}
