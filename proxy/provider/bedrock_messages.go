package provider

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream/eventstreamapi"
	"github.com/tidwall/gjson"
)

// Anthropic's models on Bedrock take Messages API requests as they are, through InvokeModel
// (as the Anthropic SDKs' Bedrock clients, Claude Code and LiteLLM send them): the model goes
// in the URL, Bedrock's anthropic_version in the body. InvokeModel answers with Anthropic's
// JSON as it is; InvokeModelWithResponseStream wraps each of Anthropic's stream events in an
// event-stream "chunk" message ({"bytes":"<base64 of the event's JSON>"}), which herd unwraps
// into Anthropic's SSE.

// BedrockAnthropicVersion is the anthropic_version Bedrock's Anthropic models take.
const BedrockAnthropicVersion = "bedrock-2023-05-31"

// serves: a Messages API request goes to an Anthropic model's InvokeModel as it is.
func (b *bedrock) serves(ep Endpoint) bool { return ep == Messages && b.claude }

// messagesRequest is a client's own Messages body for InvokeModel: without model (in the URL)
// and stream (the operation says it), with Bedrock's anthropic_version; the rest untouched.
func (b *bedrock) messagesRequest(body []byte, client http.Header) (out []byte, op string, stream bool, err error) {
	if !b.claude {
		return nil, "", false, &BadRequest{Provider: "bedrock", Message: "bedrock deployments take Messages API requests for Anthropic's models only."}
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, "", false, &BadRequest{Provider: "bedrock", Message: "The request body is not a valid Messages API request: " + err.Error()}
	}
	stream = gjson.ParseBytes(m["stream"]).Bool()
	delete(m, "model")
	delete(m, "stream")
	m["anthropic_version"] = json.RawMessage(`"` + BedrockAnthropicVersion + `"`)
	if _, set := m["anthropic_beta"]; !set {
		// Bedrock takes the client's anthropic-beta header as a list in the body.
		var betas []string
		for _, v := range client.Values("Anthropic-Beta") {
			for b := range strings.SplitSeq(v, ",") {
				if b = strings.TrimSpace(b); b != "" {
					betas = append(betas, b)
				}
			}
		}
		if len(betas) > 0 {
			m["anthropic_beta"], _ = json.Marshal(betas)
		}
	}
	if out, err = json.Marshal(m); err != nil {
		return nil, "", false, err
	}
	op = "/invoke"
	if stream {
		op = "/invoke-with-response-stream"
	}
	return out, op, stream, nil
}

// nativeStream unwraps InvokeModelWithResponseStream's chunks into Anthropic's SSE.
func (b *bedrock) nativeStream(_ *Call, body io.Reader) chunkSource {
	return &bedrockMessagesStream{eventReader: newEventReader(body, b.maxLen)}
}

// bedrockMessagesStream yields each chunk's Anthropic event as "event: <type>\ndata: <json>".
type bedrockMessagesStream struct {
	eventReader
	stopped bool // message_stop seen
}

func (s *bedrockMessagesStream) next(dst []byte) ([]byte, error) {
	for {
		m, err := s.event(s.stopped) // before message_stop, the stream's end is a cut
		if err != nil {
			return dst, err
		}
		if headerString(m, eventstreamapi.EventTypeHeader) != "chunk" {
			continue
		}
		var chunk struct {
			Bytes []byte `json:"bytes"` // base64 in the JSON
		}
		if err := json.Unmarshal(m.Payload, &chunk); err != nil {
			return dst, fmt.Errorf("bedrock stream chunk herd cannot read: %w", err)
		}
		data := chunk.Bytes
		typ := gjson.GetBytes(data, "type")
		if !gjson.ValidBytes(data) || typ.Type != gjson.String || typ.Str == "" {
			return dst, fmt.Errorf("bedrock stream chunk is not an Anthropic stream event: %.200q", data)
		}
		if typ.Str == "message_stop" {
			s.stopped = true
		}
		dst = append(dst, "event: "...)
		dst = append(dst, typ.Str...)
		dst = append(dst, "\ndata: "...)
		if bytes.ContainsAny(data, "\r\n") {
			// An SSE data line holds no line break: JSON's are whitespace.
			var c bytes.Buffer
			_ = json.Compact(&c, data)
			data = c.Bytes()
		}
		dst = append(dst, data...)
		return append(dst, "\n\n"...), nil
	}
}
