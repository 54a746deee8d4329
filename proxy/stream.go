package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/proxy/provider"
	"github.com/herd-proxy/herd/state"
)

var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 32<<10) }}

var usageKey = []byte(`"usage"`)

// relayStream passes an SSE stream through event by event, flushing each as it arrives. It
// reads usage from the stream, and drops the usage-only chunk herd asked for (addedUsage) when
// the client did not ask for it itself. Without usage from the upstream, tokens are estimated.
func (x *exchange) relayStream(resp *http.Response, addedUsage bool) error {
	w := x.c.Response()
	h := w.Header()
	h[hdrContentType] = eventStreamHdr
	h["Cache-Control"] = noCacheHdr
	h["X-Accel-Buffering"] = noBufferHdr // tell nginx-style proxies in front of herd not to buffer
	overhead := time.Since(x.start) - time.Since(x.upStart)
	x.setHeaders(overhead)
	w.WriteHeader(http.StatusOK)
	w.Flush()

	br := readerPool.Get().(*bufio.Reader)
	br.Reset(resp.Body)
	defer func() { br.Reset(nil); readerPool.Put(br) }()

	var (
		usage        state.Usage
		gotUsage     bool
		contentBytes int
		skipping     bool   // inside an event herd drops
		long         []byte // a line longer than the reader's buffer, assembled
		status       = http.StatusOK
		contentPath  = "choices.0.delta.content"
		ttft         time.Duration
	)
	if x.ep == provider.Completions {
		contentPath = "choices.0.text"
	}
	for {
		line, err := br.ReadSlice('\n')
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
				if ttft == 0 {
					ttft = time.Since(x.upStart)
				}
				if bytes.Contains(data, usageKey) {
					if u, ok := provider.ParseUsage(data); ok {
						usage, gotUsage = u, true
						skipping = addedUsage && emptyChoices(data)
						forward = !skipping
					}
				}
				if !gotUsage {
					contentBytes += len(gjson.GetBytes(data, contentPath).Str)
				}
			}
			if forward {
				if _, werr := w.Write(line); werr != nil {
					status = statusClientClosed
					break
				}
				if isBlankLine(line) {
					w.Flush()
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
	w.Flush()
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
	_, _ = w.Write([]byte("\n\ndata: "))
	_, _ = w.Write(body)
	_, _ = w.Write([]byte("\n\n"))
	return e.Status
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
