package provider

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// clientStream is a client format's stream conversion (MessagesStream, ResponsesStream).
type clientStream interface {
	Chunk(dst, data []byte) []byte
	End(dst []byte) []byte
}

// TestClientFormatsGolden runs testdata/{messages,responses}/<case>: a client's request
// (in.request.json) becomes a chat request (want.chat.json) or is refused (want.bad.txt); a
// chat answer (in.chat.json) becomes the client format's answer (want.response.json); a chat
// stream (in.stream) becomes its events (want.stream); an OpenAI error (in.error.429.json)
// becomes its error (Messages only).
func TestClientFormatsGolden(t *testing.T) {
	formats := []struct {
		dir       string
		toChat    func([]byte) ([]byte, error)
		fromChat  func([]byte) ([]byte, error)
		newStream func() clientStream
	}{
		{"testdata/messages", MessagesToChat, ChatToMessages, func() clientStream { return NewMessagesStream() }},
		{"testdata/responses", ResponsesToChat, ChatToResponse, func() clientStream { return NewResponsesStream() }},
	}
	for _, f := range formats {
		cases, err := os.ReadDir(f.dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			dir := filepath.Join(f.dir, c.Name())
			t.Run(dir, func(t *testing.T) {
				read := func(name string) []byte {
					b, _ := os.ReadFile(filepath.Join(dir, name))
					return b
				}
				if in := read("in.request.json"); in != nil {
					out, err := f.toChat(in)
					var bad *BadRequest
					switch {
					case errors.As(err, &bad):
						golden(t, dir, "want.bad.txt", []byte("400 param="+bad.Param+"\n"+bad.Message+"\n"))
					case err != nil:
						t.Fatal(err)
					default:
						golden(t, dir, "want.chat.json", indentJSON(t, out))
					}
				}
				if in := read("in.chat.json"); in != nil {
					out, err := f.fromChat(in)
					if err != nil {
						t.Fatal(err)
					}
					golden(t, dir, "want.response.json", indentJSON(t, out))
				}
				if in := read("in.stream"); in != nil {
					s := f.newStream()
					var out []byte
					for _, line := range bytes.Split(in, []byte("\n")) {
						data, ok := bytes.CutPrefix(line, []byte("data: "))
						if !ok || string(data) == "[DONE]" {
							continue
						}
						out = s.Chunk(out, data)
					}
					golden(t, dir, "want.stream", s.End(out))
				}
				if in := read("in.error.429.json"); in != nil {
					golden(t, dir, "want.error.429.json", indentJSON(t, MessagesError(429, in)))
				}
			})
		}
	}
}
