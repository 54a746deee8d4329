package proxy

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"
)

// apiError is an error a client sees, always in OpenAI's shape:
// {"error":{"message","type","param","code"}} with the matching HTTP status.
type apiError struct {
	Status  int
	Message string
	Type    string
	Param   string // "" marshals as null
	Code    string // "" = the status, as LiteLLM sends it; OpenAI's own codes ("model_not_found") where a client may look for one
}

func (e *apiError) Error() string { return e.Message }

// MarshalJSON writes the error in OpenAI's field order. Strings that JSON writes as they are
// (herd's own messages, configured model names: the usual case, and every 429 a full group
// sends) are copied in; any other goes through encoding/json, which escapes as before.
func (e *apiError) MarshalJSON() ([]byte, error) {
	code := e.Code
	if code == "" {
		code = strconv.Itoa(e.Status)
	}
	if !plainJSON(e.Message) || !plainJSON(e.Type) || !plainJSON(e.Param) || !plainJSON(code) {
		return e.marshalEscaped(code)
	}
	b := make([]byte, 0, len(`{"error":{"message":"","type":"","param":null,"code":""}}`)+len(e.Message)+len(e.Type)+len(e.Param)+len(code))
	b = append(b, `{"error":{"message":"`...)
	b = append(b, e.Message...)
	b = append(b, `","type":"`...)
	b = append(b, e.Type...)
	if e.Param == "" {
		b = append(b, `","param":null,"code":"`...)
	} else {
		b = append(b, `","param":"`...)
		b = append(b, e.Param...)
		b = append(b, `","code":"`...)
	}
	b = append(b, code...)
	return append(b, `"}}`...), nil
}

// marshalEscaped is MarshalJSON through encoding/json, for strings that need escaping.
func (e *apiError) marshalEscaped(code string) ([]byte, error) {
	type body struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	}
	b := body{Message: e.Message, Type: e.Type, Code: code}
	if e.Param != "" {
		b.Param = &e.Param
	}
	return json.Marshal(struct {
		Error body `json:"error"`
	}{b})
}

// plainJSON reports whether encoding/json writes s inside a string byte for byte: printable
// ASCII other than the quote, the backslash and the characters it escapes for HTML.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20, c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// body is the error's JSON.
func (e *apiError) body() []byte {
	b, _ := e.MarshalJSON()
	return b
}

// writeRaw sends a JSON error body as it is. Only for responses whose headers are not yet written.
func writeRaw(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

func badRequest(msg, param string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Message: msg, Type: "invalid_request_error", Param: param}
}

// writeError sends e as the response. Only for responses whose headers are not yet written.
func writeError(w http.ResponseWriter, e *apiError) {
	body, _ := e.MarshalJSON()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	w.WriteHeader(e.Status)
	_, _ = w.Write(append(body, '\n'))
}

// errorHandler is echo's HTTPErrorHandler: every error, including echo's own 404/405 and
// recovered panics, becomes an OpenAI-shaped JSON error; never an HTML page.
func errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{Status: http.StatusInternalServerError, Message: "Internal server error.", Type: "internal_server_error"}
		var he *echo.HTTPError
		if errors.As(err, &he) {
			ae.Status = he.Code
			switch he.Code {
			case http.StatusNotFound:
				ae.Message, ae.Type = "Not found: "+c.Request().Method+" "+c.Request().URL.Path, "not_found_error"
			case http.StatusMethodNotAllowed:
				ae.Message, ae.Type = "Method not allowed: "+c.Request().Method+" "+c.Request().URL.Path, "invalid_request_error"
			case http.StatusRequestEntityTooLarge:
				ae.Message, ae.Type = "Request body is too large.", "invalid_request_error"
			default:
				if he.Code < 500 {
					ae.Message, ae.Type = http.StatusText(he.Code), "invalid_request_error"
				}
			}
		}
	}
	writeError(c.Response(), ae)
}
