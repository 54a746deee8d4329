package proxy

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/proxy/provider"
)

func TestValidJSON(t *testing.T) {
	valid := []string{
		`{}`, `[]`, `0`, `-0.5e+10`, `"a"`, ` true `, `null`, `false`, `{"a":[1,{"b":null}],"c":"\u00e9\n\"\\\/"}`,
		`[` + strings.Repeat(`"x",`, 100) + `1]`, "\t\r\n[ 1 , 2 ]\n", `"` + strings.Repeat("ab\\\"cdefgh", 20) + `"`,
		strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth),
	}
	invalid := []string{
		``, ` `, `{`, `}`, `[1,]`, `{"a":1,}`, `{"a"}`, `{"a":}`, `{a:1}`, `[1 2]`, `01`, `1.`, `.5`, `-`, `1e`, `1e+`,
		`+1`, `tru`, `nul`, `"a`, `"\x"`, `"\u12g4"`, "\"\x01\"", `"abc\`, `[1]]`, `{}{}`, `{"a":1}}`, `[}`, `{]`,
		`"` + strings.Repeat("abcdefgh", 5) + "\x1f" + `"`, "\xef\xbb\xbf{}",
	}
	for _, s := range valid {
		if err := validJSON([]byte(s)); err != nil || !json.Valid([]byte(s)) {
			t.Errorf("%q: validJSON %v, json.Valid %v; want both valid", s, err, json.Valid([]byte(s)))
		}
	}
	for _, s := range invalid {
		if err := validJSON([]byte(s)); err != errBadJSON || json.Valid([]byte(s)) {
			t.Errorf("%q: validJSON %v, json.Valid %v; want both invalid", s, err, json.Valid([]byte(s)))
		}
	}
	deep := strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1)
	if err := validJSON([]byte(deep)); err != errTooDeep {
		t.Errorf("depth %d: %v, want errTooDeep", maxDepth+1, err)
	}
}

// depthOf is the nesting depth of valid JSON b, read with encoding/json's (non-recursive) decoder.
func depthOf(b []byte) int {
	d := json.NewDecoder(bytes.NewReader(b))
	depth, deepest := 0, 0
	for {
		tok, err := d.Token()
		if err != nil {
			return deepest
		}
		if delim, ok := tok.(json.Delim); ok {
			if delim == '{' || delim == '[' {
				depth++
				deepest = max(deepest, depth)
			} else {
				depth--
			}
		}
	}
}

// FuzzValidJSON checks validJSON against encoding/json: the same verdict on every input, except
// that nesting beyond maxDepth is errTooDeep.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{"a":[1,2,{"b":"c\"]"}]}`, `[[[[]]]]`, `"\u0041\\"`, `-1.5e-3`, `{"a":tru}`, `[1,]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := validJSON(b)
		switch {
		case !json.Valid(b):
			if err == nil {
				t.Fatalf("%q: valid, encoding/json says not", b)
			}
		case depthOf(b) > maxDepth:
			if err != errTooDeep {
				t.Fatalf("%q: %v, want errTooDeep", b, err)
			}
		case err != nil:
			t.Fatalf("%q: %v, encoding/json says valid", b, err)
		}
	})
}

// topKeys returns the top-level keys of object b in order, decoded by encoding/json.
func topKeys(b []byte) ([]string, bool) {
	d := json.NewDecoder(bytes.NewReader(b))
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return nil, false
	}
	var keys []string
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return nil, false
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if d.Decode(&skip) != nil {
			return nil, false
		}
	}
	return keys, true
}

// FuzzParseKeys checks parseRequest's reading of top-level keys against encoding/json's: a
// body it accepts has no key twice nor a case variant of a key herd reads, and its model is
// the one encoding/json decodes.
func FuzzParseKeys(f *testing.F) {
	for _, s := range []string{`{"model":"m","messages":[]}`, `{"mod\u0065l":"m"}`, `{"model":"a\"b","Model":1}`, `{"a":1,"a":2}`, `{"n":3,"max_tokens":5}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		keys, ok := topKeys(b)
		if !ok {
			t.Fatalf("%q accepted; encoding/json cannot read its keys", b)
		}
		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k] {
				t.Fatalf("%q accepted with %q twice", b, k)
			}
			seen[k] = true
			if v := caseVariant(k); v != "" {
				t.Fatalf("%q accepted with %q, a case variant of %q", b, k, v)
			}
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(b, &m) != nil {
			return // invalid UTF-8 and the like, which encoding/json refuses
		}
		var model string
		if raw, ok := m["model"]; ok && json.Unmarshal(raw, &model) != nil {
			t.Fatalf("%q accepted with a model encoding/json cannot decode", b)
		}
		if model != r.model && !strings.ContainsRune(model, '\uFFFD') {
			t.Fatalf("%q: model %q, encoding/json reads %q", b, r.model, model)
		}
		if r.maxTokens < 0 || r.maxTokens > maxTokensLimit || r.choices < 1 || r.choices > maxChoices || r.promptTokens < 0 {
			t.Fatalf("%q: out of bounds: %+v", b, r)
		}
	})
}

// chat2K is a typical chat body of about 2 KB: a system prompt, a few turns, max_tokens.
var chat2K = func() []byte {
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	sentence := "Load balancers spread requests across several upstream deployments so that no single one is overwhelmed. "
	body := map[string]any{
		"model": "gpt-4o", "max_tokens": 512, "temperature": 0.7, "stream": false,
		"messages": []msg{
			{"system", "You are a helpful assistant that answers questions about networking concisely."},
			{"user", strings.Repeat(sentence, 8)},
			{"assistant", strings.Repeat(sentence, 8)},
			{"user", "Can you say more about \"sticky\" sessions?\nAnd health checks?"},
		},
	}
	b, _ := json.Marshal(body)
	return b
}()

// BenchmarkValidate compares the validation of a 2 KB chat body: herd's non-recursive scan
// (with its depth bound) and gjson's recursive validator, which herd used before.
func BenchmarkValidate(b *testing.B) {
	b.Logf("body: %d bytes", len(chat2K))
	b.Run("scan", func(b *testing.B) {
		b.SetBytes(int64(len(chat2K)))
		for b.Loop() {
			if validJSON(chat2K) != nil {
				b.Fatal("invalid")
			}
		}
	})
	b.Run("gjson", func(b *testing.B) {
		b.SetBytes(int64(len(chat2K)))
		for b.Loop() {
			if !gjson.ValidBytes(chat2K) {
				b.Fatal("invalid")
			}
		}
	})
}

// BenchmarkParseEstimate compares reading a 2 KB chat body for routing and reservation: now
// one scan (validation, fields, duplicate keys, estimate); before, gjson's validation, a walk
// of the top-level members and provider.EstimatePromptTokens' lookups.
func BenchmarkParseEstimate(b *testing.B) {
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(chat2K)))
		for b.Loop() {
			if _, err := parseRequest(chat2K); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("gjson", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(chat2K)))
		for b.Loop() {
			if !gjson.ValidBytes(chat2K) {
				b.Fatal("invalid")
			}
			var n int64
			gjson.ParseBytes(chat2K).ForEach(func(k, v gjson.Result) bool {
				if k.Str == "max_tokens" {
					n = v.Int()
				}
				return true
			})
			n += provider.EstimatePromptTokens(chat2K)
			_ = n
		}
	})
}
