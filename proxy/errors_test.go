package proxy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
)

// MarshalJSON copies plain strings in and escapes the rest through encoding/json: either way
// the body is what encoding/json writes, valid JSON in OpenAI's shape.
func TestAPIErrorJSON(t *testing.T) {
	cases := []apiError{
		{Status: http.StatusTooManyRequests, Message: "No deployments available for selected model, Try again in 7 seconds. Passed model=gpt-4o", Type: "rate_limit_error"},
		{Status: http.StatusNotFound, Message: "Not found", Type: "not_found_error", Code: "model_not_found", Param: "model"},
		{Status: 500},
	}
	// Each byte that sends the strings through encoding/json, alone in each field.
	for _, c := range []string{`"`, `\`, "<", ">", "&", "\x00", "\t", "\n", "\x1f", "\x7f", "é", "\u2028", "\xff"} {
		cases = append(cases,
			apiError{Status: http.StatusBadRequest, Message: "a " + c + " b", Type: "x"},
			apiError{Status: http.StatusBadRequest, Message: "m", Type: "a" + c, Param: "p"},
			apiError{Status: http.StatusBadRequest, Message: "m", Type: "x", Param: c},
			apiError{Status: http.StatusBadRequest, Message: "m", Type: "x", Code: c})
	}
	for _, e := range cases {
		got, err := e.MarshalJSON()
		if err != nil {
			t.Fatalf("%q: %v", e.Message, err)
		}
		want := escapedJSON(t, &e)
		if !bytes.Equal(got, want) {
			t.Errorf("%q:\n got %s\nwant %s", e.Message, got, want)
		}
		var v map[string]map[string]any
		if err := json.Unmarshal(got, &v); err != nil {
			t.Errorf("%q: not JSON: %v: %s", e.Message, err, got)
		}
		if param, code := v["error"]["param"], v["error"]["code"]; (param == nil) != (e.Param == "") || code == "" {
			t.Errorf("%q: param %v, code %v in %s", e.Message, param, code, got)
		}
	}
}

// escapedJSON is e's body written by encoding/json alone.
func escapedJSON(t testing.TB, e *apiError) []byte {
	t.Helper()
	code := e.Code
	if code == "" {
		code = strconv.Itoa(e.Status)
	}
	b, err := e.marshalEscaped(code)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func FuzzAPIErrorJSON(f *testing.F) {
	f.Add(429, "No deployments available", "rate_limit_error", "", "")
	f.Add(400, "a \"b\" <c> & \\ \x01 \xff é", "t", "p", "c")
	f.Fuzz(func(t *testing.T, status int, msg, typ, param, code string) {
		e := &apiError{Status: status, Message: msg, Type: typ, Param: param, Code: code}
		got, err := e.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if want := escapedJSON(t, e); !bytes.Equal(got, want) {
			t.Fatalf("got %s\nwant %s", got, want)
		}
	})
}

func BenchmarkAPIErrorJSON(b *testing.B) {
	e := &apiError{Status: http.StatusTooManyRequests, Message: "No deployments available for selected model, Try again in 7 seconds. Passed model=gpt-4o", Type: "rate_limit_error"}
	b.Run("plain", func(b *testing.B) {
		for b.Loop() {
			_, _ = e.MarshalJSON()
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			_, _ = e.marshalEscaped("429")
		}
	})
}
