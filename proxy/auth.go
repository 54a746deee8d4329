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

// presentedKey returns the key a client sent: Authorization: Bearer (OpenAI SDKs),
// api-key (Azure SDKs) or x-litellm-api-key (LiteLLM clients).
func presentedKey(r *http.Request) string {
	if a := r.Header.Get("Authorization"); a != "" {
		if len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
			return strings.TrimSpace(a[7:])
		}
		return strings.TrimSpace(a)
	}
	if k := r.Header.Get("api-key"); k != "" {
		return k
	}
	return r.Header.Get("x-litellm-api-key")
}

var errUnauthorized = &apiError{
	Status:  http.StatusUnauthorized,
	Message: "Authentication Error, invalid or missing API key. Pass the proxy's key as 'Authorization: Bearer <key>'.",
	Type:    "auth_error",
}

// requireKey rejects requests without the master key; with no master key set it lets all
// through. It runs before anything reads the body, and a refused request's body is never read.
func (s *Server) requireKey(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.key.set && !s.key.ok(presentedKey(c.Request())) {
			if refuseUnread(c.Response().Writer, c.Request(), errUnauthorized) {
				return nil
			}
			return errUnauthorized
		}
		return next(c)
	}
}
