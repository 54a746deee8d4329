package provider

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream/eventstreamapi"
)

// ConverseStream answers in AWS's event-stream encoding (application/vnd.amazon.eventstream):
// binary messages, each with headers (:message-type, :event-type or :exception-type) and a
// JSON payload. Events come as messageStart, then per content block contentBlockStart (tool
// use only), contentBlockDelta..., contentBlockStop, then messageStop and metadata (usage).

func (b *bedrock) stream(c *Call, body io.Reader) chunkSource {
	return &bedrockStream{
		eventReader: newEventReader(body, b.maxLen),
		usage:       includeUsage(c.Body),
		id:          "chatcmpl-" + b.newID(),
		model:       b.model,
		created:     b.now().Unix(),
	}
}

// eventReader reads an event stream's messages, each bounded by max_response_size_mb.
type eventReader struct {
	r       *bufio.Reader
	dec     *eventstream.Decoder
	payload []byte
	max     int // the longest message accepted
}

func newEventReader(body io.Reader, max int) eventReader {
	return eventReader{r: bufio.NewReaderSize(body, 16<<10), dec: eventstream.NewDecoder(), max: max}
}

// bedrockStream converts ConverseStream events into OpenAI chunks.
type bedrockStream struct {
	eventReader
	usage   bool // the client asked for the usage chunk
	id      string
	model   string
	created int64
	tools   map[int]int // content block index -> tool_calls index
	stopped bool        // messageStop seen
}

// bedrockEvent is the payload of any ConverseStream event.
type bedrockEvent struct {
	ContentBlockIndex int `json:"contentBlockIndex"`
	Start             struct {
		ToolUse *struct {
			ToolUseID string `json:"toolUseId"`
			Name      string `json:"name"`
		} `json:"toolUse"`
	} `json:"start"`
	Delta struct {
		Text    *string `json:"text"`
		ToolUse *struct {
			Input string `json:"input"`
		} `json:"toolUse"`
		ReasoningContent *struct {
			Text *string `json:"text"`
		} `json:"reasoningContent"`
	} `json:"delta"`
	StopReason string         `json:"stopReason"`
	Usage      *converseUsage `json:"usage"`
}

// errStreamMessageTooLarge is an event-stream message longer than max_response_size_mb.
var errStreamMessageTooLarge = errors.New("upstream stream message is larger than general_settings.max_response_size_mb")

// message reads the next event-stream message; io.EOF at a clean end between messages.
func (s *eventReader) message() (eventstream.Message, error) {
	// The decoder allocates what a message's prelude claims: check it against the bound first.
	prelude, err := s.r.Peek(4)
	switch {
	case err == io.EOF && len(prelude) == 0:
		return eventstream.Message{}, io.EOF
	case err == io.EOF:
		return eventstream.Message{}, io.ErrUnexpectedEOF
	case err != nil:
		return eventstream.Message{}, err
	}
	if n := binary.BigEndian.Uint32(prelude); int64(n) > int64(s.max) {
		return eventstream.Message{}, errStreamMessageTooLarge
	}
	m, err := s.dec.Decode(s.r, s.payload[:0])
	if err == io.EOF {
		err = io.ErrUnexpectedEOF // cut inside a message
	}
	s.payload = m.Payload
	return m, err
}

// event reads the next event message. The stream's end is io.EOF when it may end there
// (ended), else io.ErrUnexpectedEOF: it was cut; an exception or error message is its failure.
func (s *eventReader) event(ended bool) (eventstream.Message, error) {
	for {
		m, err := s.message()
		switch {
		case err == io.EOF && ended:
			return m, io.EOF
		case err == io.EOF:
			return m, io.ErrUnexpectedEOF
		case err != nil:
			return m, fmt.Errorf("bedrock stream: %w", err)
		}
		switch headerString(m, eventstreamapi.MessageTypeHeader) {
		case eventstreamapi.EventMessageType:
			return m, nil
		case eventstreamapi.ExceptionMessageType:
			var ev struct {
				Message string `json:"message"`
			}
			_ = json.Unmarshal(m.Payload, &ev)
			return m, &StreamError{Provider: "bedrock", Type: headerString(m, eventstreamapi.ExceptionTypeHeader), Message: ev.Message}
		case eventstreamapi.ErrorMessageType:
			return m, &StreamError{Provider: "bedrock", Type: headerString(m, eventstreamapi.ErrorCodeHeader), Message: headerString(m, eventstreamapi.ErrorMessageHeader)}
		}
	}
}

// headerString is a string header's value, or "".
func headerString(m eventstream.Message, name string) string {
	v, _ := m.Headers.Get(name).(eventstream.StringValue)
	return string(v)
}

func (s *bedrockStream) chunk(dst []byte, delta *chatAnswer, finish *string, usage *chatUsage) []byte {
	return appendChunk(dst, s.id, s.model, s.created, 0, delta, finish, usage)
}

func (s *bedrockStream) next(dst []byte) ([]byte, error) {
	for {
		m, err := s.event(s.stopped) // after messageStop, metadata is optional
		if err != nil {
			return dst, err
		}
		var ev bedrockEvent
		if err := json.Unmarshal(m.Payload, &ev); err != nil {
			return dst, fmt.Errorf("bedrock stream event herd cannot read: %w", err)
		}
		switch headerString(m, eventstreamapi.EventTypeHeader) {
		case "messageStart":
			return s.chunk(dst, &chatAnswer{Role: "assistant", Content: strPtr("")}, nil, nil), nil
		case "contentBlockStart":
			if t := ev.Start.ToolUse; t != nil {
				if s.tools == nil {
					s.tools = make(map[int]int)
				}
				n := len(s.tools)
				s.tools[ev.ContentBlockIndex] = n
				tc := toolCall{Index: &n, ID: t.ToolUseID, Type: "function"}
				tc.Function.Name = t.Name
				return s.chunk(dst, &chatAnswer{ToolCalls: []toolCall{tc}}, nil, nil), nil
			}
		case "contentBlockDelta":
			d := ev.Delta
			switch {
			case d.Text != nil:
				return s.chunk(dst, &chatAnswer{Content: d.Text}, nil, nil), nil
			case d.ReasoningContent != nil && d.ReasoningContent.Text != nil:
				return s.chunk(dst, &chatAnswer{ReasoningContent: d.ReasoningContent.Text}, nil, nil), nil
			case d.ToolUse != nil && d.ToolUse.Input != "":
				n, ok := s.tools[ev.ContentBlockIndex]
				if !ok {
					continue
				}
				tc := toolCall{Index: &n}
				tc.Function.Arguments = d.ToolUse.Input
				return s.chunk(dst, &chatAnswer{ToolCalls: []toolCall{tc}}, nil, nil), nil
			}
		case "messageStop":
			s.stopped = true
			return s.chunk(dst, &chatAnswer{}, bedrockFinish(ev.StopReason), nil), nil
		case "metadata":
			// The last event: the usage of the whole answer.
			if s.usage && ev.Usage != nil {
				dst = s.chunk(dst, nil, nil, ev.Usage.openAI())
			}
			return dst, io.EOF
		}
		// contentBlockStop, signatures and redacted reasoning, events herd does not know: read on.
	}
}
