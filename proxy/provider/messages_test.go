package provider

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestMessagesGolden runs testdata/messages/<case>: a Messages API request (in.request.json)
// becomes a chat request (want.chat.json) or is refused (want.bad.txt); a chat answer
// (in.chat.json) becomes a Messages answer (want.response.json); a chat stream (in.stream)
// becomes Messages events (want.stream); an OpenAI error (in.error.<status>.json) becomes a
// Messages error.
func TestMessagesGolden(t *testing.T) {
	cases, err := os.ReadDir("testdata/messages")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		dir := filepath.Join("testdata/messages", c.Name())
		t.Run(c.Name(), func(t *testing.T) {
			read := func(name string) []byte {
				b, _ := os.ReadFile(filepath.Join(dir, name))
				return b
			}
			if in := read("in.request.json"); in != nil {
				out, err := MessagesToChat(in)
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
				out, err := ChatToMessages(in)
				if err != nil {
					t.Fatal(err)
				}
				golden(t, dir, "want.response.json", indentJSON(t, out))
			}
			if in := read("in.stream"); in != nil {
				s := NewMessagesStream()
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
