package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

// keyChecker compares presented keys with the master key in constant time. Both sides are
// hashed first so neither the key's bytes nor its length leak through timing.
type keyChecker struct {
	want [sha256.Size]byte
	set  bool
}

func newKeyChecker(masterKey string) keyChecker {
	if masterKey == "" {
		return keyChecker{}
	}
	return keyChecker{want: sha256.Sum256([]byte(masterKey)), set: true}
}

func (k keyChecker) ok(presented string) bool {
	got := sha256.Sum256([]byte(presented))
	return subtle.ConstantTimeCompare(got[:], k.want[:]) == 1
}

// keySource is the request header a key was presented in.
type keySource int

const (
	noKey          keySource = iota
	fromLiteLLMKey           // x-litellm-api-key (LiteLLM clients whose Authorization is taken)
	fromBearer               // Authorization: Bearer (OpenAI SDKs)
	fromAPIKey               // api-key (Azure SDKs)
	fromXAPIKey              // x-api-key (Anthropic's clients, on the Messages API only)
)

// presentedKey returns the key a client sent and the header it came in, in LiteLLM's order:
// x-litellm-api-key first (it exists for clients whose Authorization carries something else),
// then Authorization (Bearer, or the bare key), then api-key, then, on /v1/messages only,
// Anthropic's x-api-key.
func presentedKey(r *http.Request) (string, keySource) {
	if k := r.Header.Get("x-litellm-api-key"); k != "" {
		return k, fromLiteLLMKey
	}
	if a := r.Header.Get("Authorization"); a != "" {
		if len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
			return strings.TrimSpace(a[7:]), fromBearer
		}
		return strings.TrimSpace(a), fromBearer
	}
	if k := r.Header.Get("api-key"); k != "" {
		return k, fromAPIKey
	}
	if k := r.Header.Get("x-api-key"); k != "" && strings.HasSuffix(r.URL.Path, "/messages") {
		return k, fromXAPIKey
	}
	return "", noKey
}

// unauthorized is the 401 for each place a key can be presented: it says what herd read, and
// where the key belongs.
var unauthorized = [...]*apiError{
	noKey:          authError("no API key was sent." + useBearer),
	fromLiteLLMKey: authError("the key in the 'x-litellm-api-key' header is not valid." + useBearer),
	fromBearer:     authError("invalid API key." + useBearer),
	// An Azure SDK sends its api_key as api-key, which is often the Azure resource's key
	// rather than the proxy's: say where the proxy's key belongs.
	fromAPIKey: authError("the key in the 'api-key' header is not the proxy's key." + useBearer +
		" (herd also reads it from 'api-key', as LiteLLM does for Azure SDKs.)"),
	fromXAPIKey: authError("the key in the 'x-api-key' header is not the proxy's key. Anthropic clients: set the proxy's key as the API key (ANTHROPIC_API_KEY)."),
}

const useBearer = " Pass the proxy's key as 'Authorization: Bearer <key>'."

func authError(what string) *apiError {
	return &apiError{Status: http.StatusUnauthorized, Message: "Authentication Error, " + what, Type: "auth_error"}
}

// requireKey rejects requests without the master key; with no master key set it lets all
// through. It runs before anything reads the body, and a refused request's body is never read.
func (s *Server) requireKey(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !s.key.set {
			return next(c)
		}
		if key, from := presentedKey(c.Request()); !s.key.ok(key) {
			e := unauthorized[from]
			if refuseUnread(c.Response().Writer, c.Request(), e) {
				return nil
			}
			return e
		}
		return next(c)
	}
}
