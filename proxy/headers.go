package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"maps"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/labstack/echo/v4"
)

// This file holds the response headers that are not about routing: the call ID every LLM
// response carries, and the upstream's own headers, passed on under LiteLLM's llm_provider-
// prefix.

const hdrCallID = "X-Litellm-Call-Id"

// withCallID gives every response of an LLM route an x-litellm-call-id, as LiteLLM does: a
// random UUID (v4), set before anything can refuse the request, so a 401 or a shed 503 has
// one too and a client can quote it.
func withCallID(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		c.Response().Header()[hdrCallID] = newCallID()
		return next(c)
	}
}

// callID is a header value and its bytes in one allocation: v[0] views b.
type callID struct {
	v [1]string
	b [36]byte
}

// newCallID returns a random UUID (version 4, RFC 9562) as a header value.
func newCallID() []string {
	var r [16]byte
	_, _ = rand.Read(r[:]) // never fails (crypto/rand crashes the program instead)
	r[6] = r[6]&0x0f | 0x40
	r[8] = r[8]&0x3f | 0x80
	id := new(callID)
	b := id.b[:]
	hex.Encode(b[0:8], r[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], r[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], r[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], r[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], r[10:16])
	// b is never written again, so the string may share it.
	id.v[0] = unsafe.String(&id.b[0], len(id.b))
	return id.v[:]
}

// Bounds on what is copied from an upstream's response headers: an upstream is trusted to
// answer, not to decide how large herd's responses are.
const (
	maxProviderHeaders     = 64       // header names copied
	maxProviderHeaderBytes = 16 << 10 // names and values copied, in all
)

// providerPrefix is LiteLLM's prefix for an upstream's own response headers (x-request-id
// reaches the client as llm_provider-x-request-id), in the form net/http canonicalises it to.
const providerPrefix = "Llm_provider-"

// forwarded reports whether an upstream header may be passed on. Not: hop-by-hop headers,
// which describe the upstream's connection; the body's framing and type, which herd sets for
// its own answer; cookies and credentials, which belong to the upstream's domain, not to
// herd's clients. (A switch: cheaper than hashing every name into a set.)
func forwarded(name string) bool {
	switch name {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade",
		"Content-Length", "Content-Type", "Content-Encoding",
		"Set-Cookie", "Set-Cookie2", "Cookie", "Authorization":
		return false
	}
	return true
}

// copyProviderHeaders adds the upstream's response headers to h as llm_provider-<name>, as
// LiteLLM does, so a client sees the upstream's x-request-id, openai-processing-ms and its own
// x-ratelimit-* beside herd's. A name that already has the prefix (the upstream is itself a
// LiteLLM or herd) keeps it, without a second one, unless this upstream's own header of that
// name takes the place. Values are shared, not copied.
func copyProviderHeaders(h, up http.Header) {
	hopByHop := connectionOptions(up["Connection"])
	n, size := 0, 0
	for name, vs := range up {
		if n == maxProviderHeaders {
			return
		}
		if !forwarded(name) || hopByHop != nil && listed(hopByHop, name) {
			continue
		}
		l := len(providerPrefix) + len(name)
		for _, v := range vs {
			l += len(v)
		}
		if size+l > maxProviderHeaderBytes {
			continue // one huge header must not crowd out the others
		}
		p := prefixed(name)
		if p == name {
			if _, taken := h[p]; taken {
				continue // an inner upstream's header loses to this upstream's own, as in LiteLLM
			}
		}
		n, size = n+1, size+l
		h[p] = vs
	}
}

// connectionOptions returns the Connection header's values when they name headers (which are
// then hop-by-hop too, RFC 9110 7.6.1), nil when they are only keep-alive or close, as usual.
func connectionOptions(vs []string) []string {
	for _, v := range vs {
		if !strings.EqualFold(v, "keep-alive") && !strings.EqualFold(v, "close") {
			return vs
		}
	}
	return nil
}

// listed reports whether name is one of the comma-separated tokens in vs (case-insensitive).
func listed(vs []string, name string) bool {
	for _, v := range vs {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), name) {
				return true
			}
		}
	}
	return false
}

// prefixedNames caches llm_provider-<name> for the header names upstreams send, which are few
// and the same on every response: the prefix then costs no allocation. The map is replaced,
// never changed, so reading it takes no lock; it stops growing at maxPrefixedNames, so an
// upstream inventing names cannot grow it for ever.
var (
	prefixedNames   atomic.Pointer[map[string]string]
	prefixedNamesMu sync.Mutex
)

const maxPrefixedNames = 512

func prefixed(name string) string {
	if strings.HasPrefix(name, providerPrefix) {
		return name
	}
	var names map[string]string
	if m := prefixedNames.Load(); m != nil {
		names = *m
	}
	if p, ok := names[name]; ok {
		return p
	}
	p := providerPrefix + name
	if len(names) < maxPrefixedNames {
		prefixedNamesMu.Lock()
		defer prefixedNamesMu.Unlock()
		if m := prefixedNames.Load(); m != nil {
			names = *m
		}
		if _, ok := names[name]; !ok && len(names) < maxPrefixedNames {
			next := make(map[string]string, len(names)+1)
			maps.Copy(next, names)
			next[name] = p
			prefixedNames.Store(&next)
		}
	}
	return p
}
