package proxy

import (
	"errors"
	"unsafe"

	"github.com/tidwall/gjson"
)

// request is what herd reads from a client's body: only the fields it needs, found in one
// pass over the top-level object, with the positions needed to rewrite the body in place.
type request struct {
	model        string // the "model" field ("" when absent)
	stream       bool   // "stream": true
	includeUsage bool   // "stream_options": {"include_usage": true}
	maxTokens    int64  // max_tokens or max_completion_tokens, 0 when absent

	modelStart, modelEnd int // raw span of the model value; -1 when absent
	// streamOptions is the raw span of the stream_options value; -1 when absent.
	soStart, soEnd int
	// includeUsage value span inside stream_options; -1 when absent.
	iuStart, iuEnd int
}

var (
	errBadJSON      = errors.New("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)")
	errNotObject    = errors.New("The request body must be a JSON object.")
	errModelType    = errors.New("'model' must be a string.")
	errStreamType   = errors.New("'stream' must be a boolean.")
	errStreamOption = errors.New("'stream_options' must be an object.")
)

// parseRequest reads the fields herd needs from body without decoding the rest.
// body must not be modified while the returned request is in use (model aliases it).
func parseRequest(body []byte) (request, error) {
	r := request{modelStart: -1, modelEnd: -1, soStart: -1, soEnd: -1, iuStart: -1, iuEnd: -1}
	if !gjson.ValidBytes(body) {
		return r, errBadJSON
	}
	// Viewing the body as a string lets gjson slice it without copying; the results are
	// only used while body is alive and unchanged.
	root := gjson.Parse(unsafe.String(unsafe.SliceData(body), len(body)))
	if !root.IsObject() {
		return r, errNotObject
	}
	var err error
	root.ForEach(func(key, v gjson.Result) bool {
		switch key.Str {
		case "model":
			if v.Type != gjson.String {
				err = errModelType
				return false
			}
			r.model = v.Str
			r.modelStart, r.modelEnd = v.Index, v.Index+len(v.Raw)
		case "stream":
			switch v.Type {
			case gjson.True:
				r.stream = true
			case gjson.False, gjson.Null:
			default:
				err = errStreamType
				return false
			}
		case "stream_options":
			switch {
			case v.IsObject():
				r.soStart, r.soEnd = v.Index, v.Index+len(v.Raw)
				if iu := v.Get("include_usage"); iu.Exists() {
					r.includeUsage = iu.Type == gjson.True
					r.iuStart, r.iuEnd = iu.Index, iu.Index+len(iu.Raw)
				}
			case v.Type == gjson.Null:
				r.soStart, r.soEnd = v.Index, v.Index+len(v.Raw)
			default:
				err = errStreamOption
				return false
			}
		case "max_tokens", "max_completion_tokens":
			if n := v.Int(); n > r.maxTokens {
				r.maxTokens = n
			}
		}
		return true
	})
	return r, err
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
