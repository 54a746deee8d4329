package proxy

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    request
		wantErr *apiError
	}{
		{name: "chat", body: `{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}`,
			want: request{model: "gpt-4"}},
		{name: "stream with usage", body: `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
			want: request{model: "m", stream: true, includeUsage: true}},
		{name: "stream false", body: `{"model":"m","stream":false}`, want: request{model: "m"}},
		{name: "stream null", body: `{"model":"m","stream":null}`, want: request{model: "m"}},
		{name: "max tokens", body: `{"model":"m","max_tokens":100,"max_completion_tokens":300}`,
			want: request{model: "m", maxTokens: 300}},
		{name: "max tokens null", body: `{"model":"m","max_tokens":null}`, want: request{model: "m"}},
		{name: "n", body: `{"model":"m","n":3,"max_tokens":7}`, want: request{model: "m", maxTokens: 7, choices: 3}},
		{name: "best_of over n", body: `{"model":"m","n":2,"best_of":5}`, want: request{model: "m", choices: 5}},
		{name: "n null", body: `{"model":"m","n":null}`, want: request{model: "m"}},
		{name: "escaped model key", body: `{"mod\u0065l":"m"}`, want: request{model: "m"}},
		{name: "brackets in strings", body: `{"model":"m","messages":[{"content":"]]]}}} \" [[[{{{"}]}`, want: request{model: "m"}},
		{name: "deep but allowed", body: `{"model":"m","x":` + strings.Repeat("[", maxDepth-1) + strings.Repeat("]", maxDepth-1) + `}`,
			want: request{model: "m"}},
		{name: "nested model ignored", body: `{"metadata":{"model":"x"},"model":"m"}`, want: request{model: "m"}},
		{name: "no model", body: `{"messages":[]}`, want: request{}},
		{name: "leading space", body: "  \n {\"model\":\"m\"}", want: request{model: "m"}},
		{name: "escaped model", body: `{"model":"a\"b"}`, want: request{model: `a"b`}},
		{name: "bad json", body: `{"model":`, wantErr: errBadJSON},
		{name: "empty", body: ``, wantErr: errBadJSON},
		{name: "array", body: `[1,2]`, wantErr: errNotObject},
		{name: "model number", body: `{"model":4}`, wantErr: errModelType},
		{name: "stream string", body: `{"model":"m","stream":"yes"}`, wantErr: errStreamType},
		{name: "stream_options string", body: `{"model":"m","stream_options":"x"}`, wantErr: errStreamOption},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRequest([]byte(tt.body))
			if err != tt.wantErr {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if tt.want.choices == 0 {
				tt.want.choices = 1
			}
			if got.model != tt.want.model || got.stream != tt.want.stream || got.choices != tt.want.choices ||
				got.includeUsage != tt.want.includeUsage || got.maxTokens != tt.want.maxTokens {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRewrite(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		addUsage bool
		want     string
	}{
		{name: "model only", body: `{"model":"gpt-4","messages":[]}`,
			want: `{"model":"azure-gpt4","messages":[]}`},
		{name: "untouched bytes", body: `{ "messages" : [ {"content":"x"} ] ,"model" : "gpt-4" , "n":1 }`,
			want: `{ "messages" : [ {"content":"x"} ] ,"model" : "azure-gpt4" , "n":1 }`},
		{name: "model absent", body: `{"messages":[]}`,
			want: `{"model":"azure-gpt4","messages":[]}`},
		{name: "model absent empty body", body: `{}`, want: `{"model":"azure-gpt4"}`},
		{name: "add stream_options", body: `{"model":"gpt-4","stream":true}`, addUsage: true,
			want: `{"stream_options":{"include_usage":true},"model":"azure-gpt4","stream":true}`},
		{name: "add both", body: `{"stream":true}`, addUsage: true,
			want: `{"model":"azure-gpt4","stream_options":{"include_usage":true},"stream":true}`},
		{name: "include_usage false", body: `{"model":"gpt-4","stream":true,"stream_options":{"include_usage":false}}`, addUsage: true,
			want: `{"model":"azure-gpt4","stream":true,"stream_options":{"include_usage":true}}`},
		{name: "stream_options other keys", body: `{"stream_options":{"continuous_usage_stats":true},"model":"gpt-4","stream":true}`, addUsage: true,
			want: `{"stream_options":{"include_usage":true,"continuous_usage_stats":true},"model":"azure-gpt4","stream":true}`},
		{name: "stream_options empty", body: `{"model":"gpt-4","stream":true,"stream_options":{ }}`, addUsage: true,
			want: `{"model":"azure-gpt4","stream":true,"stream_options":{"include_usage":true }}`},
		{name: "stream_options null", body: `{"model":"gpt-4","stream":true,"stream_options":null}`, addUsage: true,
			want: `{"model":"azure-gpt4","stream":true,"stream_options":{"include_usage":true}}`},
		{name: "leading whitespace", body: " \n{\"model\":\"gpt-4\"}", want: " \n{\"model\":\"azure-gpt4\"}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := parseRequest([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			got := string(rewrite(nil, []byte(tt.body), &r, `"azure-gpt4"`, tt.addUsage))
			if got != tt.want {
				t.Errorf("rewrite =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// FuzzRequest checks that any body either fails parsing with a client error, or rewrites to
// valid JSON that differs from the input only in model and stream_options.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}`,
		`{"stream":true,"stream_options":null}`, `{}`, `[]`, `"x"`, ` {"model" : "a\u0041"} `,
		`{"model":"m","model":"n"}`, `{"max_tokens":1e400}`,
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, addUsage bool) {
		r, err := parseRequest(body)
		if err != nil {
			return
		}
		out := rewrite(nil, body, &r, `"upstream"`, addUsage)
		if !gjson.ValidBytes(out) {
			t.Fatalf("rewrite of %q produced invalid JSON %q", body, out)
		}
		var in, got map[string]any
		if json.Unmarshal(body, &in) != nil || json.Unmarshal(out, &got) != nil {
			return // duplicate keys or numbers encoding/json refuses; gjson accepts them
		}
		if got["model"] != "upstream" {
			t.Fatalf("model = %v in %q", got["model"], out)
		}
		if addUsage {
			so, _ := got["stream_options"].(map[string]any)
			if so["include_usage"] != true {
				t.Fatalf("include_usage not set in %q", out)
			}
		}
		delete(in, "model")
		delete(got, "model")
		if addUsage {
			if so, ok := in["stream_options"].(map[string]any); ok {
				so["include_usage"] = true
			} else {
				in["stream_options"] = map[string]any{"include_usage": true}
			}
		}
		if !reflect.DeepEqual(in, got) {
			t.Fatalf("rewrite changed more than model/stream_options:\n in: %q\nout: %q", body, out)
		}
	})
}

func TestParseRequestRefuses(t *testing.T) {
	tests := []struct{ name, body, param, substr string }{
		{"too deep", `{"model":"m","x":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`, "", "128 levels"},
		{"too deep, unterminated", `{"model":"x","messages":` + strings.Repeat("[", 100_000), "", "128 levels"},
		{"too deep in a string's wake", `{"a":"\\\\",` + `"b":` + strings.Repeat("[", maxDepth), "", "128 levels"},
		{"bracket after an escaped backslash", `{"a":"\\\\"[}`, "", "could not parse"},
		{"messages twice", `{"messages":[],"model":"m","messages":[]}`, "messages", "more than once"},
		{"escaped duplicate", `{"model":"m","m\u006fdel":"n"}`, "model", "more than once"},
		{"empty key twice", `{"":1,"":2}`, "", "more than once"},
		{"Model", `{"Model":"m"}`, "Model", "only in letter case"},
		{"STREAM_OPTIONS", `{"model":"m","STREAM_OPTIONS":{}}`, "STREAM_OPTIONS", "only in letter case"},
		{"kelvin", `{"model":"m","\u212a":1,"best_of":2,"ma\u212aimum":1,"max_To\u212aens":1}`, "max_To\u212aens", "only in letter case"},
		{"max_tokens float", `{"max_tokens":1.0}`, "max_tokens", "integer from 0 to 10000000"},
		{"max_tokens exp", `{"max_tokens":1e2}`, "max_tokens", "integer"},
		{"max_tokens huge", `{"max_tokens":1e309}`, "max_tokens", "integer"},
		{"max_tokens 20 digits", `{"max_tokens":99999999999999999999}`, "max_tokens", "integer"},
		{"max_tokens negative", `{"max_completion_tokens":-5}`, "max_completion_tokens", "integer"},
		{"max_tokens over cap", `{"max_tokens":10000001}`, "max_tokens", "integer"},
		{"max_tokens string", `{"max_tokens":"5"}`, "max_tokens", "integer"},
		{"n zero", `{"n":0}`, "n", "integer from 1 to 128"},
		{"best_of over", `{"best_of":129}`, "best_of", "integer from 1 to 128"},
		{"model null", `{"model":null}`, "model", "must be a string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseRequest([]byte(tt.body))
			if err == nil {
				t.Fatal("accepted")
			}
			if err.Status != 400 || err.Param != tt.param || !strings.Contains(err.Message, tt.substr) {
				t.Fatalf("got %d %q (param %q), want 400 containing %q, param %q", err.Status, err.Message, err.Param, tt.substr, tt.param)
			}
		})
	}
	for _, ok := range []string{`{"max_tokens":0}`, `{"max_tokens":10000000}`, `{"n":128}`, `{"Metadata":{"Model":1,"model":2,"model":3}}`, `{"temperature":1e-3}`} {
		if _, err := parseRequest([]byte(ok)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

// TestPromptEstimate pins the estimate: string values of messages, prompt and input (4 bytes a
// token) plus 3 tokens a message or element; token ids 1 each; tools by their keys and string
// values; images at a fixed cost; audio and file data not at all.
func TestPromptEstimate(t *testing.T) {
	big := strings.Repeat("A", 100_000)
	tests := []struct {
		name string
		body string
		want int64
	}{
		{"chat", `{"messages":[{"role":"user","content":"abcdefgh"}]}`, (4+8+3)/4 + 3},
		{"two messages", `{"messages":[{"role":"user","content":"abcd"},{"role":"assistant","content":"abcd"}]}`, (4+4+9+4+3)/4 + 6},
		{"content parts", `{"messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"}]}]}`, (4+4+8+3)/4 + 3},
		{"image", `{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,` + big + `"}}]}]}`,
			(4+9+3)/4 + 3 + imageTokensHigh},
		{"image high", `{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png","detail":"high"}}]}]}`,
			(4+9+3)/4 + 3 + imageTokensHigh},
		{"image low", `{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"detail":"low","url":"data:,` + big + `"}}]}]}`,
			(4+9+3)/4 + 3 + imageTokensLow},
		{"image url string", `{"messages":[{"role":"user","content":[{"type":"image_url","image_url":"https://x/a.png"}]}]}`,
			(4+9+3)/4 + 3 + imageTokensHigh},
		{"two images", `{"messages":[{"role":"user","content":[{"image_url":{"url":"a","detail":"low"}},{"image_url":{"url":"b"}}]}]}`,
			(4+3)/4 + 3 + imageTokensLow + imageTokensHigh},
		{"audio", `{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"` + big + `","format":"wav"}}]}]}`,
			(4+11+3)/4 + 3},
		{"tool result", `{"messages":[{"role":"tool","tool_call_id":"c1","content":"abcdefgh"}]}`, (4+2+8+3)/4 + 3},
		{"tool call", `{"messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}]}`,
			(9+1+8+1+9+3)/4 + 3},
		{"repeated nested key counts both", `{"messages":[{"role":"user","content":"ab","content":"abcdefghijkl"}]}`, (4+2+12+3)/4 + 3},
		{"tools", `{"messages":[],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}`,
			(4 + 8 + 4 + 10 + 4 + 8 + 11 + 6 + 3) / 4},
		{"functions", `{"functions":[{"name":"f","parameters":{"properties":{"image_url":{"type":"string"}}}}]}`,
			(4 + 1 + 10 + 10 + 9 + 4 + 6 + 3) / 4},
		{"prompt", `{"prompt":"abcdefgh"}`, 2 + 3},
		{"input array", `{"input":["abcd","efgh"]}`, 2 + 6},
		{"token ids", `{"prompt":[1,2,3]}`, 3 + 9},
		{"token id arrays", `{"input":[[1,2],[3,4]]}`, 4 + 6},
		{"other fields not counted", `{"model":"abcdefgh","user":"abcdefgh","metadata":{"a":"abcdefgh"}}`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := parseRequest([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if r.promptTokens != tt.want {
				t.Errorf("estimate %d, want %d", r.promptTokens, tt.want)
			}
		})
	}
}

func TestSaturatingArithmetic(t *testing.T) {
	for _, tc := range []struct{ a, b, sum int64 }{
		{1, 2, 3}, {math.MaxInt64, 1, math.MaxInt64}, {math.MaxInt64, math.MaxInt64, math.MaxInt64},
		{math.MinInt64, -1, math.MinInt64}, {math.MaxInt64, -5, math.MaxInt64 - 5}, {-5, math.MaxInt64, math.MaxInt64 - 5},
		{math.MinInt64, math.MaxInt64, -1},
	} {
		if got := satAdd(tc.a, tc.b); got != tc.sum {
			t.Errorf("satAdd(%d, %d) = %d, want %d", tc.a, tc.b, got, tc.sum)
		}
	}
	if got := satMul(10_000_000, 128); got != 1_280_000_000 {
		t.Errorf("satMul = %d", got)
	}
	if got := satMul(math.MaxInt64/2, 3); got != math.MaxInt64 {
		t.Errorf("satMul overflow = %d", got)
	}
}

func TestDuplicateLongKeyIsShortened(t *testing.T) {
	k := strings.Repeat("é", 1000)
	_, err := parseRequest([]byte(`{"` + k + `":1,"` + k + `":2}`))
	if err == nil || len(err.Param) > 70 || !strings.HasSuffix(err.Param, "...") || !utf8.ValidString(err.Param) {
		t.Fatalf("err = %v", err)
	}
}
