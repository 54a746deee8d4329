package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/proxy/provider"
	"github.com/herd-proxy/herd/state"
)

// readerPool holds the stream readers. Their buffer is sized for SSE lines, which are far
// shorter (a chunk is a few hundred bytes), and for a few events that arrive together; a
// longer line is assembled apart (relayStream's long), so a stream holds more only while it
// has one.
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, streamReaderSize) }}

const streamReaderSize = 4 << 10

var (
	usageKey      = []byte(`"usage"`)
	nullUsage     = []byte(`"usage":null`)
	nullUsageLast = []byte(`"usage":null}`)
)

// relayStream passes an SSE stream through event by event. An event is flushed to the client
// as soon as it is complete, unless another complete event is already waiting in the reader:
// events that arrived together leave in one write, and a lone event leaves at once. It reads
// usage from the stream, and when herd asked for usage (addedUsage) that the client did not,
// drops the usage-only chunk and the "usage":null asking for it puts in every other. Without
// usage from the upstream, tokens are estimated.
func (x *exchange) relayStream(resp *http.Response, addedUsage bool) error {
	w := x.c.Response()
	h := w.Header()
	copyProviderHeaders(h, resp.Header)
	h[hdrContentType] = eventStreamHdr
	h["Cache-Control"] = noCacheHdr
	h["X-Accel-Buffering"] = noBufferHdr // tell nginx-style proxies in front of herd not to buffer
	overhead := time.Since(x.start) - time.Since(x.upStart) + x.translated
	x.setHeaders(overhead)
	// The head leaves with the first event, in one write, as from a plain reverse proxy: a
	// client can do nothing with a stream's head before its first event.
	w.WriteHeader(http.StatusOK)
	// Events are written to net/http's writer itself, past echo's wrapper, and flushed through
	// one controller made here.
	out := w.Writer
	flusher := http.NewResponseController(out)

	br := readerPool.Get().(*bufio.Reader)
	br.Reset(resp.Body)
	defer func() { br.Reset(nil); readerPool.Put(br) }()

	// A client of another API either gets the deployment's stream as it is (native: the
	// deployment speaks that API, and usage is read from its events) or chunks rewritten as
	// that API's events (conv).
	var conv clientStream
	if !x.native {
		conv = newClientStream(x.format)
	}
	var converted []byte // conv's events for the current chunk
	var (
		usage        state.Usage
		gotUsage     bool
		contentBytes int
		skipping     bool   // inside an event herd drops
		long         []byte // a line longer than the reader's buffer, assembled
		status       = http.StatusOK
		contentKey   = contentField
		contentPath  = "choices.0.delta.content"
		ttft         time.Duration
		done         bool     // the current event is [DONE]
		hold         *endHold // [DONE], written and not yet flushed
	)
	if x.ep == provider.Completions {
		contentKey, contentPath = textField, "choices.0.text"
	}
	native, nativeEP := x.native, x.nativeEP // read for every event: kept in locals, not loaded through x
	for {
		line, err := br.ReadSlice('\n')
		if hold != nil {
			// Whatever follows [DONE] (more events, a failed read) is handled as usual, by the
			// relay alone: the timer may not flush while it writes.
			hold.release()
			hold = nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, line...)
			if int64(len(long)) > x.s.maxResp {
				status = x.streamBroke(errTooLarge)
				break
			}
			continue
		}
		if len(long) > 0 {
			// line is processed before the next read, so reusing long's array is safe.
			long = append(long, line...)
			line, long = long, long[:0]
		}
		if len(line) > 0 {
			forward := true
			switch data := ssePayload(line); {
			case isBlankLine(line):
				forward = !skipping
				skipping = false
			case skipping:
				forward = false
			case data != nil:
				done = string(data) == "[DONE]"
				if ttft == 0 {
					ttft = time.Since(x.upStart)
				}
				cutFrom, cutTo := 0, 0
				if native {
					if bytes.Contains(data, usageKey) && provider.StreamEventUsage(nativeEP, data, &usage) {
						gotUsage = true
					}
					break
				}
				// data is not kept past this iteration, so gjson may view it without a copy.
				text := unsafe.String(unsafe.SliceData(data), len(data))
				if at := nullUsageAt(data); at > 0 {
					// Every chunk but the last carries "usage":null once include_usage is on,
					// because herd asked for usage: found without parsing the chunk.
					if addedUsage {
						cutFrom, cutTo, _ = nullUsageSpan(data, at)
					}
				} else if bytes.Contains(data, usageKey) {
					r := gjson.Get(text, "usage")
					switch {
					case r.IsObject():
						if u, ok := provider.ParseUsage(data); ok {
							usage, gotUsage = u, true
							skipping = addedUsage && emptyChoices(data)
							forward = !skipping
						}
					case addedUsage && r.Type == gjson.Null && r.Raw == "null":
						cutFrom, cutTo, _ = nullUsageSpan(data, r.Index)
					}
				}
				if !gotUsage {
					if n := plainFieldLen(data, contentKey); n >= 0 {
						contentBytes += n
					} else if bytes.Contains(data, contentKey[:len(contentKey)-2]) {
						// The member is there but not written plainly (escapes, spaces): parse.
						// Without it (a finish or tool chunk) there is no text to count.
						contentBytes += len(gjson.Get(text, contentPath).Str)
					}
				}
				if cutTo > 0 {
					// Edited in place: the bytes are the reader's, already consumed, and
					// never read again. data is a slice of line, so its offset in line is
					// the difference of their capacities.
					off := cap(line) - cap(data)
					line = append(line[:off+cutFrom], line[off+cutTo:]...)
				}
				if conv != nil && !done {
					// The client reads another API's events: each chunk becomes those.
					converted = conv.Chunk(converted[:0], data)
					if _, werr := out.Write(converted); werr != nil {
						status = statusClientClosed // the loop ends below
					}
					if !eventWaiting(br) {
						_ = flusher.Flush()
					}
				}
			}
			if status == statusClientClosed {
				break
			}
			if conv != nil {
				forward = false
			}
			if forward {
				end := isBlankLine(line)
				if !end && br.Buffered() > 0 {
					// The blank line that ends an event has almost always come with it: it
					// leaves in the same write. line's array is the reader's (or long's), and
					// the byte after it is that '\n' or, after a cut, a byte already consumed.
					if next, _ := br.Peek(1); next[0] == '\n' {
						line = append(line, '\n')
						_, _ = br.Discard(1)
						end = true
					}
				}
				if _, werr := out.Write(line); werr != nil {
					status = statusClientClosed
					break
				}
				if end && !eventWaiting(br) {
					if done {
						hold = holdEnd(flusher, endHoldMax)
					} else {
						_ = flusher.Flush()
					}
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			status = x.streamBroke(err)
			break
		}
	}
	if hold != nil {
		hold.release()
	}
	if conv != nil && status == http.StatusOK {
		_, _ = w.Write(conv.End(converted[:0]))
	}
	// No flush: what is left (the stream's last event) leaves when the handler returns, in one
	// write with the terminating chunk net/http adds then; the settling below takes microseconds.
	if !gotUsage {
		usage = state.Usage{PromptTokens: x.req.promptTokens, CompletionTokens: provider.EstimateTokens(contentBytes)}
	}
	if status == http.StatusOK {
		x.succeeded(usage, time.Since(x.upStart), ttft)
	} else {
		x.dep.counter.Settle(x.confirmedTicket(), usage)
		if status != statusClientClosed {
			x.failed(&failure{status: status})
		}
	}
	x.record(status, usage, overhead)
	return nil
}

// endHoldMax bounds how long a stream's [DONE] waits for the upstream to end its body: an
// upstream ends it at once, and [DONE] then leaves with the terminating chunk, in one write.
// A variable only so that tests can lengthen it.
var endHoldMax = 5 * time.Millisecond

// endHold keeps a stream's [DONE] unflushed, so that it leaves with the terminating chunk
// net/http writes when the handler returns (one write to the client, not two), and flushes it
// from a timer if the upstream is slow to end its body. While it holds, only the timer may
// touch the response; release ends that.
type endHold struct {
	mu    sync.Mutex
	w     *http.ResponseController
	held  bool
	timer *time.Timer
}

func holdEnd(w *http.ResponseController, d time.Duration) *endHold {
	h := &endHold{w: w, held: true}
	h.timer = time.AfterFunc(d, h.flush)
	return h
}

func (h *endHold) flush() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held {
		h.held = false
		_ = h.w.Flush()
	}
}

// release hands the response back to the relay, the event flushed or not.
func (h *endHold) release() {
	h.timer.Stop()
	h.mu.Lock() // waits out a flush under way
	h.held = false
	h.mu.Unlock()
}

// streamBroke ends a stream whose upstream failed mid-way: headers are gone, so the client
// gets an OpenAI-shaped error as a last SSE event. It returns the status to record.
func (x *exchange) streamBroke(err error) int {
	if provider.KindOf(err) == provider.Canceled {
		return statusClientClosed
	}
	e := &apiError{Status: http.StatusBadGateway, Message: "Upstream stream broke: " + err.Error(), Type: "api_error"}
	switch {
	case errors.Is(err, errTooLarge):
		e.Message = "Upstream stream event is larger than general_settings.max_response_size_mb."
	case provider.KindOf(err) == provider.Timeout:
		e = &apiError{Status: http.StatusGatewayTimeout, Message: "Upstream stream timed out (stream_timeout).", Type: "timeout"}
	}
	body, _ := e.MarshalJSON()
	w := x.c.Response()
	switch x.format {
	case formatMessages:
		_, _ = w.Write(provider.NewMessagesStream().Error(nil, e.Status, body))
		return e.Status
	case formatResponses:
		_, _ = w.Write(provider.NewResponsesStream().Error(nil, body))
		return e.Status
	}
	_, _ = w.Write([]byte("\n\ndata: "))
	_, _ = w.Write(body)
	_, _ = w.Write([]byte("\n\n"))
	return e.Status
}

var (
	contentField = []byte(`"content":"`) // a chat chunk's text: choices[i].delta.content
	textField    = []byte(`"text":"`)    // a completion chunk's: choices[i].text
)

// plainFieldLen is the length of the first string value of the member key (`"name":"`,
// written plainly) in data, or -1 when it has escapes (or none is found) and the caller must
// parse: the text a chunk carries, for the token estimate of a stream that ends without usage.
// The key with its quotes cannot occur unescaped inside a string, so one byte search finds it
// without parsing the chunk.
func plainFieldLen(data, key []byte) int {
	i := bytes.Index(data, key)
	if i < 0 {
		return -1
	}
	v := data[i+len(key):]
	if j := bytes.IndexAny(v, `"\`); j >= 0 && v[j] == '"' {
		return j
	}
	return -1
}

// eventWaiting reports whether br holds a complete SSE event already (one ending in a blank
// line): the flush of the event before it can wait for it without delaying anything.
func eventWaiting(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, []byte("\n\n")) || bytes.Contains(b, []byte("\n\r\n"))
}

// nullUsageAt returns the offset of the value of data's top-level "usage":null member, written
// plainly, or 0. In valid JSON that byte sequence is a key and its value (inside a string its
// quotes would be escaped), and the member is top-level when what follows it closes exactly one
// more bracket than it opens: a scan of the rest of the chunk, a few bytes where usage comes
// last, as in OpenAI's chunks.
func nullUsageAt(data []byte) int {
	if bytes.HasSuffix(data, nullUsageLast) {
		// Where OpenAI puts it, last: the brace after it closes the chunk, so it is top-level.
		return len(data) - len("null}")
	}
	for off := 0; ; {
		i := bytes.Index(data[off:], nullUsage)
		if i < 0 {
			return 0
		}
		end := off + i + len(nullUsage)
		if netDepth(data[end:]) == -1 {
			return end - len("null")
		}
		off = end
	}
}

// netDepth is the brackets data opens minus those it closes, outside strings; data must start
// outside a string.
func netDepth(data []byte) int {
	depth, inString := 0, false
	for j := 0; j < len(data); j++ {
		c := data[j]
		if inString {
			switch c {
			case '\\':
				j++
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
		case '}', ']':
			depth--
		}
	}
	return depth
}

// nullUsageSpan finds what to cut from a chunk to remove its top-level "usage":null member,
// whose value starts at offset at (gjson's Index): the member, and the comma that joins it to
// a neighbour — the one before it, or for the first member the one after, with the spaces up
// to the next member. What is left is valid JSON with every other byte as it was. ok is false,
// and the chunk is best left alone, when the member is not written plainly as "usage".
func nullUsageSpan(data []byte, at int) (from, to int, ok bool) {
	const key = `"usage"`
	if at <= 0 || !hasAt(data, at, "null") {
		return 0, 0, false
	}
	to = at + 4
	i := skipWSBack(data, at-1)
	if i < 0 || data[i] != ':' {
		return 0, 0, false
	}
	i = skipWSBack(data, i-1)
	if i+1 < len(key) || string(data[i+1-len(key):i+1]) != key {
		return 0, 0, false
	}
	from = i + 1 - len(key)
	j := skipWSBack(data, from-1)
	switch {
	case j >= 0 && data[j] == ',':
		return j, to, true
	case j >= 0 && data[j] == '{':
		if k := skipWS(data, to); k < len(data) && data[k] == ',' {
			to = skipWS(data, k+1)
		}
		return from, to, true
	}
	return 0, 0, false
}

// skipWSBack returns the index of the last non-whitespace byte of b at or before i, or -1.
func skipWSBack(b []byte, i int) int {
	for ; i >= 0; i-- {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
		default:
			return i
		}
	}
	return i
}

// ssePayload returns the value of a "data:" line without its line ending, or nil.
func ssePayload(line []byte) []byte {
	if !bytes.HasPrefix(line, []byte("data:")) {
		return nil
	}
	p := bytes.TrimRight(line[5:], "\r\n")
	if len(p) > 0 && p[0] == ' ' {
		p = p[1:]
	}
	return p
}

func isBlankLine(line []byte) bool {
	return len(line) == 1 && line[0] == '\n' || len(line) == 2 && line[0] == '\r' && line[1] == '\n'
}

// emptyChoices reports whether a chunk's choices are an empty array: the usage-only chunk.
func emptyChoices(data []byte) bool {
	c := gjson.GetBytes(data, "choices")
	return c.IsArray() && len(bytes.TrimSpace([]byte(c.Raw))) == 2
}
