package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/translate")

// goldenTranslators builds, per provider directory under testdata/translate, the translator
// the golden cases run against, with a fixed clock.
var goldenTranslators = map[string]func(t *testing.T, drop bool) translator{}

var goldenNow = func() time.Time { return time.Unix(1764720000, 0) }

// TestTranslateGolden runs every case directory testdata/translate/<provider>/<case>. Each
// holds inputs (in.*) and the expected outputs (want.*), compared byte for byte after
// indenting JSON; -update rewrites the outputs:
//
//	in.request.json          an OpenAI request (endpoint: chat, or in.endpoint's "completions"/"embeddings")
//	want.request.json        the upstream body it becomes (want.url: its URL, want.header: chosen headers)
//	want.bad.txt             or: the 400 it is refused with (status line and message)
//	in.response.json         an upstream answer   -> want.response.json, the OpenAI answer
//	in.stream                an upstream stream   -> want.stream, the OpenAI SSE (with usage when
//	                         in.request.json asks for it, or there is none)
//	in.error.<status>.json   an upstream error    -> want.error.<status>.json
//
// A file named drop marks a case run with litellm_settings.drop_params.
func TestTranslateGolden(t *testing.T) {
	provs, err := os.ReadDir("testdata/translate")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range provs {
		build := goldenTranslators[p.Name()]
		if build == nil {
			t.Errorf("testdata/translate/%s: no translator registered in goldenTranslators", p.Name())
			continue
		}
		cases, _ := os.ReadDir(filepath.Join("testdata/translate", p.Name()))
		for _, c := range cases {
			dir := filepath.Join("testdata/translate", p.Name(), c.Name())
			t.Run(p.Name()+"/"+c.Name(), func(t *testing.T) {
				_, err := os.Stat(filepath.Join(dir, "drop"))
				runGolden(t, dir, build(t, err == nil))
			})
		}
	}
}

func runGolden(t *testing.T, dir string, tr translator) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return b
	}
	ran := false
	call := &Call{Endpoint: ChatCompletions, Body: read("in.request.json")}
	switch strings.TrimSpace(string(read("in.endpoint"))) {
	case "completions":
		call.Endpoint = Completions
	case "embeddings":
		call.Endpoint = Embeddings
	}
	call.Stream = bytes.Contains(call.Body, []byte(`"stream":true`))
	if call.Body != nil {
		ran = true
		out, err := tr.request(context.Background(), call)
		var bad *BadRequest
		switch {
		case errors.As(err, &bad):
			golden(t, dir, "want.bad.txt", []byte("400 param="+bad.Param+"\n"+bad.Message+"\n"))
		case err != nil:
			t.Fatalf("request: %v", err)
		default:
			golden(t, dir, "want.request.json", indentJSON(t, out.body))
			golden(t, dir, "want.url", []byte(out.url.String()+" stream="+strconv.FormatBool(out.stream)+"\n"))
			var hs []string
			for k, v := range out.header {
				if k == "Authorization" || k == "X-Amz-Date" || k == "X-Amz-Security-Token" {
					v = []string{"(set)"} // a signature or token: present, but not stable
				}
				hs = append(hs, k+": "+strings.Join(v, ", "))
			}
			slices.Sort(hs)
			golden(t, dir, "want.header", []byte(strings.Join(hs, "\n")+"\n"))
		}
	}
	if in := read("in.response.json"); in != nil {
		ran = true
		var out []byte
		var err error
		if r, ok := tr.(callResponder); ok {
			out, err = r.responseTo(call, in)
		} else {
			out, err = tr.response(call.Endpoint, in)
		}
		if err != nil {
			t.Fatalf("response: %v", err)
		}
		golden(t, dir, "want.response.json", indentJSON(t, out))
	}
	if in := read("in.stream"); in != nil {
		ran = true
		c := call
		if c.Body == nil {
			c = &Call{Endpoint: ChatCompletions, Body: []byte(`{"stream":true,"stream_options":{"include_usage":true}}`), Stream: true}
		}
		r := &chunkReader{src: tr.stream(c, bytes.NewReader(in)), rc: io.NopCloser(nil)}
		out, err := io.ReadAll(r)
		if err != nil {
			out = append(out, "\n(read error: "+err.Error()+")\n"...)
		}
		golden(t, dir, "want.stream", out)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		m := errorFile.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		ran = true
		status, _ := strconv.Atoi(m[1])
		golden(t, dir, "want.error."+m[1]+".json", indentJSON(t, tr.errorBody(status, read(e.Name()))))
	}
	if !ran {
		t.Fatalf("%s holds no input (in.*)", dir)
	}
}

var errorFile = regexp.MustCompile(`^in\.error\.(\d+)\.json$`)

func indentJSON(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	return append(out.Bytes(), '\n')
}

func golden(t *testing.T, dir, name string, got []byte) {
	t.Helper()
	path := filepath.Join(dir, name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./proxy/provider -run TestTranslateGolden -update, then read the file)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
