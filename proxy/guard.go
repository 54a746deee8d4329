package proxy

import (
	"crypto/tls"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/herd-proxy/herd/config"
)

// This file holds what bounds the node's trust in clients and upstreams (issues 11 and 12):
// which client addresses may connect (allowed_ips), how long a body may take to arrive
// (request_body_timeout), how many LLM requests may be in flight (the parallel caps) and how
// many bytes of their bodies (max_inflight_request_mb), how a refused client is shown the door
// without its body being read, and how upstream certificates are checked (ssl_verify).

// inFlight counts the LLM requests in flight on the node. It sits on a cache line of its own:
// every request adds to it from every core, and it must not slow reads of the fields beside it.
type inFlight struct {
	_ [64]byte
	n atomic.Int64
	_ [56]byte
}

// limit admits an LLM request while fewer than the node's cap are in flight, counting it until
// the handler returns — body read, retries, and a stream's last event included — and sheds it
// with 503 and Retry-After otherwise. One atomic add each way: nothing else on the hot path.
func (s *Server) limit(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.inFlight.n.Add(1) > s.maxInFlight {
			s.inFlight.n.Add(-1)
			retryInASecond(c.Response().Header())
			return s.reject(s.errShed)
		}
		defer s.inFlight.n.Add(-1)
		return next(c)
	}
}

func shedError(limit int64) *apiError {
	return &apiError{
		Status: http.StatusServiceUnavailable,
		Message: "This herd node is at its limit of " + strconv.FormatInt(limit, 10) +
			" requests in flight (general_settings.global_max_parallel_requests or max_parallel_requests); retry shortly.",
		Type: "service_unavailable_error",
	}
}

// bodyHold is one request's share of the node's request-body budget
// (general_settings.max_inflight_request_mb): the capacity of its body buffer, taken as the
// buffer grows and given back when the handler returns.
type bodyHold struct {
	s *Server
	n int64
}

// take adds n bytes to the hold, or returns false if the node's budget cannot spare them.
func (h *bodyHold) take(n int64) bool {
	if h.s.bodyBytes.n.Add(n) > h.s.maxBodyBytes {
		h.s.bodyBytes.n.Add(-n)
		return false
	}
	h.n += n
	return true
}

func (h *bodyHold) release() {
	h.s.bodyBytes.n.Add(-h.n)
	h.n = 0
}

func bodyBudgetError(limit int64) *apiError {
	return &apiError{
		Status: http.StatusServiceUnavailable,
		Message: "This herd node is buffering its limit of " + strconv.FormatInt(limit>>20, 10) +
			" MB of request bodies (general_settings.max_inflight_request_mb); retry shortly.",
		Type: "service_unavailable_error",
	}
}

// shedBody answers a request whose body did not fit the node's body budget: 503 with
// Retry-After, and the connection closed without reading the rest of the body.
func (s *Server) shedBody(c echo.Context) error {
	s.metrics.countUnrouted("", http.StatusServiceUnavailable)
	retryInASecond(c.Response().Header())
	if refuseUnread(c.Response().Writer, c.Request(), s.errBodyBudget) {
		return nil
	}
	return s.errBodyBudget
}

// refuseUnread answers e and closes the connection without reading the rest of the request
// body: a client herd turns away (no key, address not allowed, body budget full) must not make
// it read — or wait for — a body it will not use. Left to itself net/http reads up to 256 KB
// of it first (as slowly as the client trickles it, until request_body_timeout), and before
// the answer goes out. So the connection is taken over: the answer is written, the write side
// shut so the client reads it, and the socket closed a moment later, never read again.
// It returns false, having written nothing, when the request has no body or the connection
// cannot be taken over (HTTP/2, test recorders); the caller then answers as usual, with
// Connection: close set.
func refuseUnread(w http.ResponseWriter, r *http.Request, e *apiError) bool {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return false
	}
	h := w.Header()
	h.Set("Connection", "close")
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	body, _ := e.MarshalJSON()
	body = append(body, '\n')
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	_ = conn.SetWriteDeadline(time.Now().Add(refuseLinger))
	bw := rw.Writer
	_, _ = bw.WriteString("HTTP/1.1 " + strconv.Itoa(e.Status) + " " + http.StatusText(e.Status) + "\r\n")
	_ = h.Write(bw)
	_, _ = bw.WriteString("\r\n")
	_, _ = bw.Write(body)
	_ = bw.Flush()
	// Closing with unread bytes queued would send a reset, which can destroy the answer before
	// the client reads it; shut the write side (FIN) first, as net/http does, and close later.
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		time.AfterFunc(refuseLinger, func() { _ = conn.Close() })
	} else {
		_ = conn.Close()
	}
	return true
}

// refuseLinger is how long a refused connection stays half-open for the client to read the
// answer (net/http waits as long before closing a connection with an unread body).
const refuseLinger = 500 * time.Millisecond

// clientAllowed reports whether r's TCP peer is in general_settings.allowed_ips. The peer
// address is used, never X-Forwarded-For: herd has no trusted-proxy setting, and a header is
// whatever the client wants it to be. An address that does not parse is refused.
func (s *Server) clientAllowed(r *http.Request) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	a := ap.Addr().WithZone("").Unmap()
	for _, p := range s.allowedNets {
		if p.Contains(a) {
			return a, true
		}
	}
	return a, false
}

// forbid answers a client outside allowed_ips with LiteLLM's 403, without reading its body.
func (s *Server) forbid(w http.ResponseWriter, r *http.Request, addr netip.Addr) {
	s.metrics.countUnrouted("", http.StatusForbidden)
	shown := "(unknown)"
	if addr.IsValid() {
		shown = addr.String()
	}
	e := &apiError{
		Status:  http.StatusForbidden,
		Message: "Access forbidden: IP address " + shown + " not allowed (general_settings.allowed_ips).",
		Type:    "permission_error",
	}
	if !refuseUnread(w, r, e) {
		writeError(w, e)
	}
}

// limitBodyTime gives r's body request_body_timeout to arrive: a read deadline on the
// connection, which net/http lifts by itself when the body has been read to its end (it then
// reads the idle connection in the background to notice a departed client), so a stream that
// outlives it is not cut — unlike http.Server.ReadTimeout. A body cut short keeps the deadline,
// so net/http's drain of an unread rest cannot be trickled either. Requests not on a real
// connection (benchmarks, recorders) are left alone.
func (s *Server) limitBodyTime(w http.ResponseWriter) {
	// net/http's own writer has the method (http.ResponseController finds it the same way);
	// asserting it directly keeps the request path free of an allocation.
	if d, ok := w.(interface{ SetReadDeadline(time.Time) error }); ok {
		_ = d.SetReadDeadline(time.Now().Add(s.bodyTimeout))
		return
	}
	if _, wrapped := w.(interface{ Unwrap() http.ResponseWriter }); wrapped {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.bodyTimeout))
	}
}

// bodyReadError is the answer to a body that could not be read: 408 when the client took longer
// than request_body_timeout (the connection is then closed), else 400.
func (s *Server) bodyReadError(err error) *apiError {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return &apiError{
			Status: http.StatusRequestTimeout,
			Message: "The request body did not arrive within " + s.bodyTimeout.String() +
				" (general_settings.request_body_timeout).",
			Type: "invalid_request_error",
		}
	}
	return badRequest("Could not read the request body: "+err.Error(), "")
}

// upstreamTLS is the TLS client config litellm_settings.ssl_verify asks for; nil = Go's
// defaults (system roots, verified).
func upstreamTLS(ls *config.LiteLLMSettings) *tls.Config {
	if !ls.SkipTLSVerify && ls.UpstreamRootCAs == nil {
		return nil
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    ls.UpstreamRootCAs,
		// ssl_verify: false, asked for explicitly and warned about at startup.
		InsecureSkipVerify: ls.SkipTLSVerify, //nolint:gosec
	}
}
