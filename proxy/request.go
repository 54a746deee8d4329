package proxy

import (
	"strconv"
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/proxy/provider"
)

// request is what herd reads from a client's body: only the fields it needs, found in one
// pass over the body (jsonscan.go), with the positions needed to rewrite the body in place.
type request struct {
	model        string // the "model" field ("" when absent)
	stream       bool   // "stream": true
	includeUsage bool   // "stream_options": {"include_usage": true}
	maxTokens    int64  // max_tokens or max_completion_tokens (the larger), 0 when absent
	choices      int64  // completions asked for: n or best_of (the larger), 1 when absent
	promptTokens int64  // the prompt's estimated tokens (see scan)

	modelStart, modelEnd int // raw span of the model value; -1 when absent
	// streamOptions is the raw span of the stream_options value; -1 when absent.
	soStart, soEnd int
	// includeUsage value span inside stream_options; -1 when absent.
	iuStart, iuEnd int
}

// Bounds on the numbers herd reserves tpm for. maxTokensLimit is far above any model's output
// (and context) length, and keeps max_tokens x n x tokens per window far from int64's range.
// maxChoices is OpenAI's own bound on n.
const (
	maxTokensLimit = 10_000_000
	maxChoices     = 128
)

var (
	errBadJSON      = badRequest("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)", "")
	errTooDeep      = badRequest("The request body nests arrays and objects more than "+strconv.Itoa(maxDepth)+" levels deep.", "")
	errNotObject    = badRequest("The request body must be a JSON object.", "")
	errModelType    = badRequest("'model' must be a string.", "model")
	errStreamType   = badRequest("'stream' must be a boolean.", "stream")
	errStreamOption = badRequest("'stream_options' must be an object.", "stream_options")
	errKeyNotUTF8   = badRequest("The request body has a top-level key that is not valid UTF-8.", "")
)

// parseRequest reads the fields herd needs from body without decoding the rest.
// body must not be modified while the returned request is in use (model aliases it).
func parseRequest(body []byte) (request, *apiError) {
	s := scan{body: body, parse: true,
		req: request{modelStart: -1, modelEnd: -1, soStart: -1, soEnd: -1, iuStart: -1, iuEnd: -1, choices: 1}}
	if err := s.run(); err != nil {
		return s.req, err
	}
	if !s.top {
		return s.req, errNotObject
	}
	s.req.promptTokens = provider.EstimateTokens(int(s.text)) + 3*s.parts + s.images
	return s.req, nil
}

// member reads the top-level member key whose value is body[start:end], already validated.
func (r *request) member(key string, body []byte, start, end int) *apiError {
	raw := body[start:end]
	// Viewing the value as a string lets gjson slice it without copying; the results are
	// only used while body is alive and unchanged.
	v := unsafe.String(unsafe.SliceData(raw), len(raw))
	switch key {
	case "model":
		if raw[0] != '"' {
			return errModelType
		}
		r.model = v[1 : len(v)-1]
		if hasByte(raw, '\\') {
			r.model = unquote(raw)
		}
		r.modelStart, r.modelEnd = start, end
	case "stream":
		switch v {
		case "true":
			r.stream = true
		case "false", "null":
		default:
			return errStreamType
		}
	case "stream_options":
		switch raw[0] {
		case '{':
			r.soStart, r.soEnd = start, end
			if iu := gjson.Get(v, "include_usage"); iu.Exists() {
				r.includeUsage = iu.Type == gjson.True
				r.iuStart, r.iuEnd = start+iu.Index, start+iu.Index+len(iu.Raw)
			}
		case 'n':
			r.soStart, r.soEnd = start, end
		default:
			return errStreamOption
		}
	case "max_tokens", "max_completion_tokens":
		n, ok := intValue(v, 0, maxTokensLimit)
		if !ok {
			return badRequest("'"+key+"' must be an integer from 0 to "+strconv.Itoa(maxTokensLimit)+" (or null).", key)
		}
		r.maxTokens = max(r.maxTokens, n)
	case "n", "best_of":
		n, ok := intValue(v, 1, maxChoices)
		if !ok {
			return badRequest("'"+key+"' must be an integer from 1 to "+strconv.Itoa(maxChoices)+" (or null).", key)
		}
		r.choices = max(r.choices, n)
	}
	return nil
}

// intValue reads a JSON value that must be null (which reads 0) or an integer written without
// fraction or exponent, as OpenAI requires, within [lo, hi].
func intValue(v string, lo, hi int64) (int64, bool) {
	if v == "null" {
		return 0, true
	}
	if len(v) > 18 {
		return 0, false // beyond hi, and beyond what fits an int64 unchecked
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c-'0' >= 10 {
			return 0, false // a sign, fraction or exponent
		}
		n = n*10 + int64(c-'0')
	}
	return n, len(v) > 0 && n >= lo && n <= hi
}

// unquote decodes the JSON string raw (quotes included, already validated).
func unquote(raw []byte) string {
	return gjson.ParseBytes(raw).Str
}

// edit replaces body[start:end] with text.
type edit struct {
	start, end int
	text       string
}

// rewrite writes body to dst with the upstream model name set and, when addUsage is true,
// stream_options.include_usage set to true. Everything else passes through byte for byte.
func rewrite(dst, body []byte, r *request, modelJSON string, addUsage bool) []byte {
	var (
		edits [3]edit
		n     int
		head  string // inserted right after the opening brace
	)
	if r.modelStart >= 0 {
		edits[n] = edit{r.modelStart, r.modelEnd, modelJSON}
		n++
	} else {
		head = `"model":` + modelJSON
	}
	if addUsage {
		switch {
		case r.iuStart >= 0:
			edits[n] = edit{r.iuStart, r.iuEnd, "true"}
			n++
		case r.soStart >= 0 && body[r.soStart] == '{':
			at := r.soStart + 1
			sep := ","
			if isEmptyObject(body[r.soStart:r.soEnd]) {
				sep = ""
			}
			edits[n] = edit{at, at, `"include_usage":true` + sep}
			n++
		case r.soStart >= 0: // null
			edits[n] = edit{r.soStart, r.soEnd, `{"include_usage":true}`}
			n++
		default:
			if head != "" {
				head += ","
			}
			head += `"stream_options":{"include_usage":true}`
		}
	}
	// Edits never overlap; apply them in body order.
	es := edits[:n]
	if n == 2 && es[0].start > es[1].start {
		es[0], es[1] = es[1], es[0]
	}
	open := indexByte(body, '{')
	pos := 0
	if head != "" {
		dst = append(dst, body[:open+1]...)
		dst = append(dst, head...)
		if !isEmptyObject(body[open:]) {
			dst = append(dst, ',')
		}
		pos = open + 1
	}
	for _, e := range es {
		dst = append(dst, body[pos:e.start]...)
		dst = append(dst, e.text...)
		pos = e.end
	}
	return append(dst, body[pos:]...)
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// isEmptyObject reports whether obj (starting at '{') holds no members.
func isEmptyObject(obj []byte) bool {
	for _, c := range obj[1:] {
		switch c {
		case ' ', '\t', '\r', '\n':
		case '}':
			return true
		default:
			return false
		}
	}
	return false
}
