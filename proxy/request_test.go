package proxy

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/tidwall/gjson"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    request
		wantErr error
	}{
		{name: "chat", body: `{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}`,
			want: request{model: "gpt-4"}},
		{name: "stream with usage", body: `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
			want: request{model: "m", stream: true, includeUsage: true}},
		{name: "stream false", body: `{"model":"m","stream":false}`, want: request{model: "m"}},
		{name: "stream null", body: `{"model":"m","stream":null}`, want: request{model: "m"}},
		{name: "max tokens", body: `{"model":"m","max_tokens":100,"max_completion_tokens":300}`,
			want: request{model: "m", maxTokens: 300}},
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
			if got.model != tt.want.model || got.stream != tt.want.stream ||
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
