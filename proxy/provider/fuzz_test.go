package provider

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzTranslations feeds arbitrary bytes to every translation a client or an upstream can
// reach: each provider's request translation (client bodies), its answer, stream and error
// decoders (upstream bodies), and the Messages and Responses client formats both ways. None
// may panic, and a stream must end (EOF or an error) within its input. The golden cases'
// inputs are the seeds. Run it with
//
//	go test -run '^$' -fuzz '^FuzzTranslations$' -fuzztime 10m ./proxy/provider/
func FuzzTranslations(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*/*/in.*")
	more, _ := filepath.Glob("testdata/*/*/in.*")
	for _, p := range append(seeds, more...) {
		if b, err := os.ReadFile(p); err == nil && len(b) < 64<<10 {
			f.Add(b)
		}
	}
	names := make([]string, 0, len(goldenTranslators))
	for name := range goldenTranslators {
		names = append(names, name)
	}
	slices.Sort(names)
	var trs []translator
	for _, name := range names {
		trs = append(trs, goldenTranslators[name](&testing.T{}, false))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, tr := range trs {
			for _, ep := range []Endpoint{ChatCompletions, Embeddings} {
				c := &Call{Endpoint: ep, Body: b, Stream: bytes.Contains(b, []byte(`"stream":true`))}
				_, _ = tr.request(t.Context(), c)
				if r, ok := tr.(callResponder); ok {
					_, _ = r.responseTo(c, b)
				} else {
					_, _ = tr.response(ep, b)
				}
			}
			_ = tr.errorBody(400, b)
			r := &chunkReader{src: tr.stream(&Call{Endpoint: ChatCompletions, Body: []byte(`{"stream_options":{"include_usage":true}}`)}, bytes.NewReader(b)), rc: io.NopCloser(nil)}
			if n, _ := io.Copy(io.Discard, io.LimitReader(r, 64<<20)); n == 64<<20 {
				t.Fatalf("%T: a stream of %d bytes converted into more than 64 MB", tr, len(b))
			}
		}
		_, _ = MessagesToChat(b)
		_, _ = ResponsesToChat(b)
		_, _ = ChatToMessages(b)
		_, _ = ChatToResponse(b)
		_ = MessagesError(429, b)
		m, rs := NewMessagesStream(), NewResponsesStream()
		for _, line := range bytes.Split(b, []byte("\n")) {
			m.Chunk(nil, line)
			rs.Chunk(nil, line)
		}
		m.End(nil)
		rs.End(nil)
	})
}
