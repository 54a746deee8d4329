package proxy

import (
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestRecordedStreams relays recorded upstream SSE streams (testdata/sse/*.sse) and compares
// what the client receives, and the usage herd counts, with golden files. Each recording is
// relayed twice: for a client that asked for usage and for one that did not.
func TestRecordedStreams(t *testing.T) {
	needsServers(t)
	files, _ := filepath.Glob("../testdata/sse/*.sse")
	if len(files) == 0 {
		t.Fatal("no recordings")
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".sse")
		recording, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, asks := range []bool{false, true} {
			variant := "client"
			if asks {
				variant = "client_usage"
			}
			t.Run(name+"/"+variant, func(t *testing.T) {
				up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "text/event-stream")
					_, _ = w.Write(recording)
				}))
				defer up.Close()
				h := startHerd(t, `
model_list:
  - model_name: m
    litellm_params: {model: openai/up, api_base: "{{UP}}"}
`, up.URL, nil)
				path, body := "/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"Say hello to the world"}]}`
				if strings.Contains(name, "vllm") {
					path, body = "/completions", `{"model":"m","stream":true,"prompt":"Count from one to four"}`
				}
				if asks {
					body = strings.Replace(body, `"stream":true`, `"stream":true,"stream_options":{"include_usage":true}`, 1)
				}
				resp, out := post(t, h.URL+path, body)
				if resp.StatusCode != 200 {
					t.Fatalf("status %d: %s", resp.StatusCode, out)
				}
				got := out + "\n--- usage counted: " + jsonInt(h.tokens(0)) + "\n"
				golden := strings.TrimSuffix(file, ".sse") + "." + variant + ".golden"
				if *update {
					if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run with -update to create)", err)
				}
				if got != string(want) {
					t.Errorf("relayed stream differs from %s:\n--- got\n%s\n--- want\n%s", golden, got, want)
				}
			})
		}
	}
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestNullUsageSpan(t *testing.T) {
	for in, want := range map[string]string{
		`{"usage":null}`:                      `{}`,
		`{ "usage" : null }`:                  `{  }`,
		`{"usage":null,"id":"a"}`:             `{"id":"a"}`,
		`{"usage" :null , "id":"a"}`:          `{"id":"a"}`,
		`{"id":"a","usage":null}`:             `{"id":"a"}`,
		`{"id":"a" , "usage":	null	}`:         `{"id":"a" 	}`,
		`{"id":"a","usage":null,"b":[1]}`:     `{"id":"a","b":[1]}`,
		`{"a":{"usage":null},"usage":null}`:   `{"a":{"usage":null}}`,
		`{"a":"\"usage\":null","usage":null}`: `{"a":"\"usage\":null"}`,
		// Left alone: no top-level null usage, or one not written plainly.
		`{"a":{"usage":null}}`:         `{"a":{"usage":null}}`,
		`{"usage":{"total_tokens":1}}`: `{"usage":{"total_tokens":1}}`,
		`{"us\u0061ge":null}`:          `{"us\u0061ge":null}`,
		`{"usage":nul}`:                `{"usage":nul}`,
	} {
		got := in
		r := gjson.Get(in, "usage")
		if from, to, ok := nullUsageSpan([]byte(in), r.Index); ok {
			got = in[:from] + in[to:]
		}
		if got != want {
			t.Errorf("%s -> %s, want %s", in, got, want)
		}
	}
}

// nullUsageAt finds the top-level "usage":null without parsing the chunk: where it finds one,
// gjson must find the same member, and it must find every one written plainly.
func TestNullUsageAt(t *testing.T) {
	for in, found := range map[string]bool{
		`{"id":"a","choices":[],"usage":null}`:                      true,
		`{"usage":null,"id":"a"}`:                                   true,
		`{"a":{"usage":null},"usage":null}`:                         true,
		`{"a":"\"usage\":null","usage":null}`:                       true,
		`{"a":"x\\","usage":null}`:                                  true,
		`{"choices":[{"delta":{"content":"\"usage\":null"}}]}`:      false,
		`{"a":{"usage":null}}`:                                      false,
		`{"a":[{"usage":null}]}`:                                    false,
		`{"usage":{"total_tokens":1}}`:                              false,
		`{"usage" : null}`:                                          false, // not plain: left to gjson
		`{"choices":[{"delta":{"content":"{\"usage\":null}"}}]}`:    false,
		`{"id":"[{","usage":null,"choices":[{"delta":{}}],"x":"}"}`: true,
	} {
		at := nullUsageAt([]byte(in))
		if (at > 0) != found {
			t.Errorf("%s: found at %d, want found=%v", in, at, found)
			continue
		}
		if r := gjson.Get(in, "usage"); found && (r.Type != gjson.Null || r.Index != at) {
			t.Errorf("%s: at %d, gjson's usage is %s at %d", in, at, r.Raw, r.Index)
		}
	}
}

func FuzzNullUsageAt(f *testing.F) {
	for _, s := range []string{`{"id":"a","usage":null}`, `{"a":{"usage":null},"usage":null}`, `{"a":"\"usage\":null"}`, `{"usage":{}}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		at := nullUsageAt([]byte(in))
		if at == 0 || !gjson.Valid(in) {
			return
		}
		usages := 0
		gjson.Parse(in).ForEach(func(k, _ gjson.Result) bool {
			if k.Str == "usage" {
				usages++
			}
			return true
		})
		if usages > 1 {
			return // a duplicate key: gjson reads the first, an upstream that sends one is broken
		}
		if r := gjson.Get(in, "usage"); r.Type != gjson.Null || r.Index != at {
			t.Fatalf("%q: nullUsageAt %d, gjson's usage %q at %d", in, at, r.Raw, r.Index)
		}
	})
}
