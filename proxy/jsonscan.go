package proxy

import (
	"encoding/binary"
	"math/bits"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// This file is herd's one pass over a request body: it validates the JSON, bounds its nesting,
// finds the top-level members, and estimates the prompt's tokens, all in a loop with its own
// small stack and no recursion, before any other JSON code sees the body. Recursive parsers
// (gjson's validator among them) overflow the goroutine stack, a fatal error no recover can
// catch, on a body of a few million '['; this loop needs the same few hundred bytes of stack
// for any body, and time linear in its length.

// maxDepth is how deeply a request body's arrays and objects may nest; deeper is a 400.
// Legitimate requests need far less: a chat message's content part is 5 levels deep, and a
// tool's JSON schema adds 2 levels per nested object on top of the 5 its parameters sit
// at, so 128 allows a schema about 60 objects deep (OpenAI's structured outputs allow 10).
const maxDepth = 128

// Image parts are estimated at a fixed cost, not by the bytes of their URL or data: OpenAI's
// (gpt-4o's) cost of one image at detail "low", and its largest at "high" or "auto" (a
// 2048x768 image: 8 tiles of 170 tokens plus 85). The settle replaces the estimate with the
// upstream's real usage.
const (
	imageTokensLow  = 85
	imageTokensHigh = 1445
)

// field is the top-level member whose value the scan is in, as far as the estimate cares.
type field uint8

const (
	fieldOther    field = iota // not estimated
	fieldMessages              // messages: every string value, 3 tokens per message
	fieldText                  // prompt, input: every string value and token id, 3 per element
	fieldTools                 // tools, functions: every key and string value
)

// partKind is what a key inside messages, prompt or input says about the value it names.
type partKind uint8

const (
	partText   partKind = iota // counted as text
	partImage                  // image_url: one image
	partBinary                 // input_audio, file, audio, file_data: not estimated (settled from usage)
	partDetail                 // detail: "low" makes an image cheap
)

// scan is the state of one pass. The zero value with body set validates; with parse set it
// also fills req from the top-level members of an object body. (req is held by value: a
// pointer would make the request escape to the heap with the strings the scan keeps.)
type scan struct {
	body  []byte
	parse bool
	req   request

	depth int                   // containers open around the current position
	objs  [maxDepth / 64]uint64 // bit d set when the container at depth d+1 is an object
	top   bool                  // the body is an object and parse is set: depth 1 holds members

	// The top-level member being read.
	key      string // its key, unescaped (a view into body when it has no escapes)
	valStart int
	field    field
	keys     keySet

	// The estimate of the member values read so far.
	text    int64 // bytes of counted strings, 4 per token id
	parts   int64 // messages and prompt/input elements, 3 tokens each
	images  int64 // tokens of image parts
	valKind partKind
	mute    int // depth of the binary part being skipped; 0 none
	muteKnd partKind
	imgLow  bool
}

// validJSON reports whether b is one JSON value nested at most maxDepth deep: nil,
// errBadJSON or errTooDeep. It is gjson.ValidBytes without the recursion.
func validJSON(b []byte) *apiError {
	s := scan{body: b}
	return s.run()
}

func (s *scan) run() *apiError {
	b := s.body
	i := skipWS(b, 0)
	s.top = s.parse && i < len(b) && b[i] == '{'
	const (
		stValue = iota // a value starts at i
		stAfter        // a value ended at i
		stKey          // an object key starts at i
	)
	st := stValue
	for {
		switch st {
		case stValue:
			if i >= len(b) {
				return errBadJSON
			}
			c := b[i]
			if s.parse {
				s.valueStart(i, c)
			}
			switch c {
			case '{', '[':
				if s.depth == maxDepth {
					return errTooDeep
				}
				d := s.depth
				if c == '{' {
					s.objs[d>>6] |= 1 << (d & 63)
				} else {
					s.objs[d>>6] &^= 1 << (d & 63)
				}
				s.depth++
				i = skipWS(b, i+1)
				if i < len(b) && b[i] == c+2 { // '}' and ']' follow '{' and '[' by 2
					i++
					s.depth--
					st = stAfter
				} else if c == '{' {
					st = stKey
				}
				continue
			case '"':
				end, ok := scanString(b, i+1)
				if !ok {
					return errBadJSON
				}
				if s.parse {
					s.stringValue(i, end)
				}
				i = end
			case 't':
				if !hasAt(b, i, "true") {
					return errBadJSON
				}
				i += 4
			case 'f':
				if !hasAt(b, i, "false") {
					return errBadJSON
				}
				i += 5
			case 'n':
				if !hasAt(b, i, "null") {
					return errBadJSON
				}
				i += 4
			default:
				end, ok := scanNumber(b, i)
				if !ok {
					return errBadJSON
				}
				if s.field == fieldText && s.mute == 0 {
					s.text += 4 // a token id
				}
				i = end
			}
			st = stAfter
		case stAfter:
			if s.parse {
				if err := s.valueEnd(i); err != nil {
					return err
				}
			}
			i = skipWS(b, i)
			if s.depth == 0 {
				if i != len(b) {
					return errBadJSON
				}
				return nil
			}
			if i >= len(b) {
				return errBadJSON
			}
			d := s.depth - 1
			obj := s.objs[d>>6]>>(d&63)&1 != 0
			switch c := b[i]; {
			case c == ',':
				i = skipWS(b, i+1)
				if obj {
					st = stKey
				} else {
					st = stValue
				}
			case obj && c == '}', !obj && c == ']':
				i++
				s.depth--
			default:
				return errBadJSON
			}
		case stKey:
			if i >= len(b) || b[i] != '"' {
				return errBadJSON
			}
			end, ok := scanString(b, i+1)
			if !ok {
				return errBadJSON
			}
			if s.parse {
				if err := s.keyAt(i, end); err != nil {
					return err
				}
			}
			i = skipWS(b, end)
			if i >= len(b) || b[i] != ':' {
				return errBadJSON
			}
			i = skipWS(b, i+1)
			st = stValue
		}
	}
}

// keyAt handles the object key at b[start:end] (quotes included).
func (s *scan) keyAt(start, end int) *apiError {
	raw := s.body[start+1 : end-1]
	if s.top && s.depth == 1 {
		if !utf8.Valid(raw) {
			// Decoders replace invalid bytes with U+FFFD, each their own way, so two keys
			// that differ here could be one key upstream: the duplicate check would not hold.
			return errKeyNotUTF8
		}
		key := unsafe.String(unsafe.SliceData(raw), len(raw))
		if hasByte(raw, '\\') {
			key = unquote(s.body[start:end])
		}
		return s.topKey(key)
	}
	switch s.field {
	case fieldTools:
		s.text += int64(len(raw))
	case fieldMessages, fieldText:
		s.valKind = partKindOf(raw)
	}
	return nil
}

// partKindOf classifies a key inside messages, prompt or input. Keys are compared as sent: an
// escaped spelling of image_url is counted as text, which only raises its sender's estimate.
func partKindOf(raw []byte) partKind {
	switch unsafe.String(unsafe.SliceData(raw), len(raw)) {
	case "image_url":
		return partImage
	case "input_audio", "file", "audio", "file_data":
		return partBinary
	case "detail":
		return partDetail
	}
	return partText
}

// valueStart is called as a value begins at b[i] (first byte c), inside s.depth containers.
func (s *scan) valueStart(i int, c byte) {
	kind := s.valKind
	s.valKind = partText
	if s.top && s.depth == 1 {
		s.valStart = i
		return
	}
	if s.mute != 0 || s.field == fieldOther || s.field == fieldTools {
		if s.mute != 0 && kind == partDetail {
			s.valKind = partDetail // for stringValue
		}
		return
	}
	if s.depth == 2 {
		s.parts++ // a message, or an element of prompt/input
	}
	if kind == partImage || kind == partBinary {
		s.mute, s.muteKnd, s.imgLow = s.depth, kind, false
	}
}

// stringValue counts the string value at b[start:end] (quotes included).
func (s *scan) stringValue(start, end int) {
	if s.top && s.depth == 1 {
		if s.field == fieldText {
			s.parts++ // "prompt": "..."
			s.text += int64(end - start - 2)
		}
		return
	}
	switch {
	case s.mute != 0:
		if s.valKind == partDetail && string(s.body[start:end]) == `"low"` {
			s.imgLow = true
		}
		s.valKind = partText
	case s.field != fieldOther:
		s.text += int64(end - start - 2)
	}
}

// valueEnd is called as a value ends at b[i], inside s.depth containers.
func (s *scan) valueEnd(i int) *apiError {
	if s.mute != 0 && s.mute == s.depth {
		if s.muteKnd == partImage {
			if s.imgLow {
				s.images += imageTokensLow
			} else {
				s.images += imageTokensHigh
			}
		}
		s.mute = 0
	}
	if s.top && s.depth == 1 {
		err := s.req.member(s.key, s.body, s.valStart, i)
		s.field = fieldOther
		return err
	}
	return nil
}

// topKey checks a top-level key: no key twice, none that differs from one herd reads only in
// letter case; and notes which field its value is for the estimate.
func (s *scan) topKey(key string) *apiError {
	if !s.keys.add(key) {
		k := shortKey(key)
		return badRequest("The request body has the key '"+k+"' more than once: the JSON is ambiguous, and herd and the upstream could read different values.", k)
	}
	s.key = key
	switch key {
	case "messages":
		s.field = fieldMessages
	case "prompt", "input":
		s.field = fieldText
	case "tools", "functions":
		s.field = fieldTools
	case "model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "best_of":
	default:
		if known := caseVariant(key); known != "" {
			return badRequest("The request body has the key '"+key+"', which differs from '"+known+"' only in letter case: OpenAI's keys are case-sensitive, some upstreams' are not, so herd refuses the ambiguity. Send '"+known+"'.", key)
		}
	}
	return nil
}

// shortKey is key as an error names it: at most 64 bytes (a key can be as long as the body).
func shortKey(key string) string {
	if len(key) <= 64 {
		return key
	}
	cut := 64
	for cut > 0 && !utf8.RuneStart(key[cut]) {
		cut--
	}
	return key[:cut] + "..."
}

// readKeys are the top-level keys herd reads.
var readKeys = [...]string{"model", "messages", "prompt", "input", "tools", "functions",
	"stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "best_of"}

// caseVariant returns the key of readKeys that key equals under Unicode case folding, if key
// has upper-case or non-ASCII letters; "" otherwise. (Lower-case ASCII keys are the common case
// and need no folding.)
func caseVariant(key string) string {
	fold := false
	for i := 0; i < len(key); i++ {
		if c := key[i]; c-'A' < 26 || c >= 0x80 {
			fold = true
			break
		}
	}
	if !fold {
		return ""
	}
	for _, k := range readKeys {
		if strings.EqualFold(key, k) {
			return k
		}
	}
	return ""
}

// keySet holds the top-level keys seen so far: up to 32 in an array with a one-word filter,
// more in a map (allocated only for such odd bodies, so the check stays linear).
type keySet struct {
	filter uint64
	n      int
	small  [32]string
	big    map[string]struct{}
}

// add adds k and reports whether it was new.
func (ks *keySet) add(k string) bool {
	if ks.big != nil {
		if _, dup := ks.big[k]; dup {
			return false
		}
		ks.big[k] = struct{}{}
		return true
	}
	bit := uint64(1) << ((uint(len(k)) * 7) & 63)
	if len(k) > 0 {
		bit = uint64(1) << ((uint(len(k))*7 + uint(k[0]) + uint(k[len(k)-1])) & 63)
	}
	if ks.filter&bit != 0 {
		for _, o := range ks.small[:ks.n] {
			if o == k {
				return false
			}
		}
	}
	if ks.n == len(ks.small) {
		ks.big = make(map[string]struct{}, 2*len(ks.small))
		for _, o := range ks.small {
			ks.big[o] = struct{}{}
		}
		ks.big[k] = struct{}{}
		return true
	}
	ks.filter |= bit
	ks.small[ks.n] = k
	ks.n++
	return true
}

// skipWS returns the index of the first non-whitespace byte of b at or after i.
func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

func hasAt(b []byte, i int, lit string) bool {
	return len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit
}

func hasByte(b []byte, c byte) bool {
	for _, x := range b {
		if x == c {
			return true
		}
	}
	return false
}

// SWAR constants: a byte repeated in every lane of a word, and each lane's top bit.
const (
	lanes    = 0x0101010101010101
	laneTops = 0x8080808080808080
)

// special flags, in the top bit of each of w's 8 byte lanes, the bytes a string scan must stop
// at: '"', '\\' and control characters. A lane's top bit is set in x-lanes&^x when the lane is
// 0, and in others only above a lane that is (a borrow), so the lowest flag is exact.
func special(w uint64) uint64 {
	q := w ^ (lanes * '"')
	bs := w ^ (lanes * '\\')
	return ((q-lanes)&^q | (bs-lanes)&^bs | (w-lanes*0x20)&^w) & laneTops
}

// scanString validates the string whose opening quote is at b[i-1] and returns the index just
// past its closing quote. It looks at 8 bytes at a time and jumps to the first it must stop at.
func scanString(b []byte, i int) (end int, ok bool) {
	for {
		if len(b)-i >= 8 {
			m := special(binary.LittleEndian.Uint64(b[i:]))
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) >> 3
		}
		if i >= len(b) {
			return i, false
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c == '\\':
			if i+1 >= len(b) {
				return i, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if len(b)-i < 6 || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return i, false
				}
				i += 6
			default:
				return i, false
			}
		case c < 0x20:
			return i, false
		default:
			i++ // only in the last 7 bytes of the body
		}
	}
}

func isHex(c byte) bool {
	return c-'0' < 10 || (c|0x20)-'a' < 6
}

// scanNumber validates the number starting at b[i]: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(b []byte, i int) (end int, ok bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i]-'1' < 9:
		i = digits(b, i+1)
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return j, false
		}
		i = j
	}
	if i < len(b) && b[i]|0x20 == 'e' {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return j, false
		}
		i = j
	}
	return i, true
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i]-'0' < 10 {
		i++
	}
	return i
}
