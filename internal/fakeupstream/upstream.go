package fakeupstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// Options shape every answer of an Upstream. The zero value answers at once, without auth.
type Options struct {
	Latency      time.Duration // added before response headers; a cancelled request ends at once
	Jitter       time.Duration // uniform random extra latency in [0, Jitter)
	ChunkDelay   time.Duration // delay between stream events
	StreamChunks int           // content chunks per stream, and completion_tokens (default 5)
	APIKey       string        // if set: "Authorization: Bearer <key>" (OpenAI) or "api-key: <key>" (Azure), else 401
	FailRate     float64       // fraction of requests answered with FailStatus (random)
	FailStatus   int           // status used by FailRate (default 500)
	// OnArrival, if set, is called for every counted request as soon as its body is read: the
	// chaos suite's ground truth of what reached the upstream. It must be safe for concurrent use.
	OnArrival func(Arrival)
}

// Arrival is one request as the upstream received it, for Options.OnArrival.
type Arrival struct {
	Time       time.Time
	Deployment string
	User       string // the body's "user" field (OpenAI's end-user ID), which callers may use as a request ID
	Tokens     int64  // the total_tokens a successful answer reports (0 when the request is invalid)
}

// Fault is injected into the requests of one deployment (or of all, with "*").
// The zero Fault means no fault.
type Fault struct {
	Status     int           // answer with this status and an OpenAI-shaped error body (0 = no status fault)
	Body       string        // raw body to send with Status instead of the error JSON (e.g. an HTML page)
	RetryAfter string        // Retry-After header value to send with Status
	Delay      time.Duration // extra latency before headers (to provoke client timeouts)
	Hang       bool          // never answer; return only when the request context is cancelled
	StreamCut  int           // streams: abort the connection after this many content events (capped at StreamChunks)
	NoUsage    bool          // streams: never send a usage chunk; JSON: omit "usage"
}

// Request is a copy of a request as the upstream received it.
type Request struct {
	Method, Path, RawQuery string
	Header                 http.Header
	Body                   []byte
}

// Upstream is the fake upstream; it implements http.Handler and is safe for concurrent use.
type Upstream struct {
	opts     Options
	bearer   string // "Bearer " + APIKey, built once so the hot path does not concatenate
	nextID   atomic.Uint64
	inFlight atomic.Int64
	deps     sync.Map // deployment -> *depState

	faultMu sync.Mutex                        // serialises writers of faults
	faults  atomic.Pointer[map[string]*fault] // copy-on-write: read on every request, written rarely
}

// depState is the per-deployment counters and the answer pre-rendered for that deployment.
type depState struct {
	count     atomic.Int64
	cancelled atomic.Int64
	last      atomic.Pointer[lastRequest]

	model   string   // the deployment as a JSON string literal
	content string   // the answer as a JSON string literal
	pieces  []string // the answer split into StreamChunks JSON string literals
}

// lastRequest keeps what LastRequest needs without copying on the hot path; LastRequest copies.
type lastRequest struct {
	method, path, rawQuery string
	header                 http.Header
	body                   string
}

type fault struct {
	Fault
	contentType []string // for Body
	retryAfter  []string
}

const (
	defaultStreamChunks = 5
	defaultFailStatus   = http.StatusInternalServerError
	maxBodyBytes        = 32 << 20
)

// New returns an Upstream answering with opts, after filling in defaults.
func New(opts Options) *Upstream {
	if opts.StreamChunks <= 0 {
		opts.StreamChunks = defaultStreamChunks
	}
	if opts.FailStatus == 0 {
		opts.FailStatus = defaultFailStatus
	}
	u := &Upstream{opts: opts}
	if opts.APIKey != "" {
		u.bearer = "Bearer " + opts.APIKey
	}
	return u
}

// SetFault injects f into the requests of deployment ("*" = every deployment without its own
// fault). Fault{} clears it.
func (u *Upstream) SetFault(deployment string, f Fault) {
	u.faultMu.Lock()
	defer u.faultMu.Unlock()
	next := make(map[string]*fault)
	if cur := u.faults.Load(); cur != nil {
		maps.Copy(next, *cur)
	}
	if f == (Fault{}) {
		delete(next, deployment)
	} else {
		next[deployment] = compileFault(f)
	}
	u.faults.Store(&next)
}

func compileFault(f Fault) *fault {
	cf := &fault{Fault: f}
	if f.Body != "" {
		ct := http.DetectContentType([]byte(f.Body))
		if gjson.Valid(f.Body) {
			ct = "application/json"
		}
		cf.contentType = []string{ct}
	}
	if f.RetryAfter != "" {
		cf.retryAfter = []string{f.RetryAfter}
	}
	return cf
}

func (u *Upstream) fault(deployment string) *fault {
	m := u.faults.Load()
	if m == nil || len(*m) == 0 {
		return nil
	}
	if f, ok := (*m)[deployment]; ok {
		return f
	}
	return (*m)["*"]
}

// Count returns how many requests deployment received, faulted or not.
func (u *Upstream) Count(deployment string) int64 {
	if st := u.lookup(deployment); st != nil {
		return st.count.Load()
	}
	return 0
}

// Counts returns the request count of every deployment seen since New or Reset.
func (u *Upstream) Counts() map[string]int64 {
	out := make(map[string]int64)
	u.deps.Range(func(k, v any) bool {
		out[k.(string)] = v.(*depState).count.Load()
		return true
	})
	return out
}

// Cancelled returns how many requests of deployment had their context cancelled (client gone)
// before the handler finished.
func (u *Upstream) Cancelled(deployment string) int64 {
	if st := u.lookup(deployment); st != nil {
		return st.cancelled.Load()
	}
	return 0
}

// InFlight returns the number of requests being handled now.
func (u *Upstream) InFlight() int64 { return u.inFlight.Load() }

// LastRequest returns a copy of the last request deployment received.
func (u *Upstream) LastRequest(deployment string) (Request, bool) {
	st := u.lookup(deployment)
	if st == nil {
		return Request{}, false
	}
	lr := st.last.Load()
	if lr == nil {
		return Request{}, false
	}
	return Request{
		Method:   lr.method,
		Path:     lr.path,
		RawQuery: lr.rawQuery,
		Header:   lr.header.Clone(),
		Body:     []byte(lr.body),
	}, true
}

// Reset forgets counters, last requests and faults. Requests in flight during Reset are
// accounted to the forgotten counters.
func (u *Upstream) Reset() {
	u.faultMu.Lock()
	u.faults.Store(nil)
	u.faultMu.Unlock()
	u.deps.Clear()
}

func (u *Upstream) lookup(deployment string) *depState {
	if v, ok := u.deps.Load(deployment); ok {
		return v.(*depState)
	}
	return nil
}

func (u *Upstream) state(deployment string) *depState {
	if st := u.lookup(deployment); st != nil {
		return st
	}
	// The key may be a substring of a request body; cloning it keeps that body collectable.
	deployment = strings.Clone(deployment)
	v, _ := u.deps.LoadOrStore(deployment, newDepState(deployment, u.opts.StreamChunks))
	return v.(*depState)
}

func newDepState(deployment string, chunks int) *depState {
	// k space-separated sentences of n runes hold k*n + k-1 runes: enough for one rune per chunk.
	sentence := "Hello from " + deployment + "."
	n := utf8.RuneCountInString(sentence)
	k := max(1, (chunks+n+1)/(n+1))
	text := strings.TrimSuffix(strings.Repeat(sentence+" ", k), " ")
	runes := []rune(text)
	st := &depState{
		model:   string(gjson.AppendJSONString(nil, deployment)),
		content: string(gjson.AppendJSONString(nil, text)),
		pieces:  make([]string, chunks),
	}
	for i := range chunks {
		piece := string(runes[i*len(runes)/chunks : (i+1)*len(runes)/chunks])
		st.pieces[i] = string(gjson.AppendJSONString(nil, piece))
	}
	return st
}

type endpoint uint8

const (
	epUnknown endpoint = iota
	epChat
	epCompletions
	epEmbeddings
	epModels
)

// route maps a path to its endpoint and, for Azure paths, the deployment.
func route(path string) (ep endpoint, azureDeployment string, azure bool) {
	if rest, ok := strings.CutPrefix(path, "/openai/deployments/"); ok {
		dep, op, ok := strings.Cut(rest, "/")
		if !ok || dep == "" {
			return epUnknown, "", false
		}
		switch op {
		case "chat/completions":
			return epChat, dep, true
		case "completions":
			return epCompletions, dep, true
		case "embeddings":
			return epEmbeddings, dep, true
		}
		return epUnknown, "", false
	}
	switch strings.TrimPrefix(path, "/v1") {
	case "/chat/completions":
		return epChat, "", false
	case "/completions":
		return epCompletions, "", false
	case "/embeddings":
		return epEmbeddings, "", false
	case "/models":
		return epModels, "", false
	}
	return epUnknown, "", false
}

// ServeHTTP answers one request; see the package doc for the order of handling.
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.inFlight.Add(1)
	defer u.inFlight.Add(-1)

	if d := dialectFor(r.URL.Path); d != nil {
		u.serveDialect(w, r, d)
		return
	}
	ep, dep, azure := route(r.URL.Path)
	switch {
	case ep == epUnknown:
		writeError(w, http.StatusNotFound, "Unknown request URL: "+r.Method+" "+r.URL.Path+".")
		return
	case ep == epModels:
		u.serveModels(w, r)
		return
	case r.Method != http.MethodPost:
		w.Header()["Allow"] = allowPost
		writeError(w, http.StatusMethodNotAllowed, "Method "+r.Method+" not allowed; use POST.")
		return
	}

	body, readErr := readBody(r)
	if readErr != nil && !errors.Is(readErr, errBodyTooLarge) {
		// The client gave up before its body was complete (herd's strict mode aborts a call
		// whose rights lapsed after the head left): no request to serve, count or bill, as
		// for a real API.
		return
	}
	req, parsed := parseRequest(body, ep)
	if !azure {
		dep = req.model.Str
	}
	st := u.state(dep)
	st.count.Add(1)
	if u.opts.OnArrival != nil {
		u.opts.OnArrival(u.arrival(dep, body, parsed, &req, ep))
	}
	// net/http gives each request its own header map and leaves it alone after the handler
	// returns, so keeping a reference is safe; LastRequest clones it.
	st.last.Store(&lastRequest{method: r.Method, path: r.URL.Path, rawQuery: r.URL.RawQuery, header: r.Header, body: body})
	ctx := r.Context()
	defer func() {
		if ctx.Err() != nil {
			st.cancelled.Add(1)
		}
	}()

	f := u.fault(dep)
	if f != nil && f.Hang {
		<-ctx.Done()
		return
	}
	if status, msg := u.invalid(r, azure, readErr, parsed, &req, ep); status != 0 {
		writeError(w, status, msg)
		return
	}

	if !u.wait(ctx, f) {
		return
	}

	switch {
	case f != nil && f.Status != 0:
		writeFault(w, f)
		return
	case u.opts.FailRate > 0 && rand.Float64() < u.opts.FailRate:
		writeError(w, u.opts.FailStatus, "fakeupstream: injected failure (FailRate)")
		return
	}

	a := answer{
		st:      st,
		id:      u.nextID.Add(1),
		created: time.Now().Unix(),
		model:   st.model,
		usage:   f == nil || !f.NoUsage,
	}
	if azure && req.model.Type == gjson.String {
		a.model = req.model.Raw // Azure answers with the model behind the deployment
	}
	a.prompt = max(1, req.textBytes/4)
	switch {
	case ep == epEmbeddings:
		a.writeEmbeddings(w, &req)
	case req.stream:
		cut := 0
		if f != nil {
			cut = f.StreamCut
		}
		a.stream(ctx, w, ep, req.includeUsage, u.opts.ChunkDelay, cut)
	default:
		a.writeJSON(w, ep)
	}
}

// wait sleeps the latency, jitter and f's delay; false when the client left first.
func (u *Upstream) wait(ctx context.Context, f *fault) bool {
	delay := u.opts.Latency
	if u.opts.Jitter > 0 {
		delay += rand.N(u.opts.Jitter)
	}
	if f != nil {
		delay += f.Delay
	}
	return sleep(ctx, nil, delay)
}

// arrival describes a request for OnArrival, with the usage its answer will carry.
func (u *Upstream) arrival(dep, body string, parsed bool, req *request, ep endpoint) Arrival {
	a := Arrival{Time: time.Now(), Deployment: strings.Clone(dep)}
	if !parsed {
		return a
	}
	a.User = gjson.Get(body, "user").String()
	if req.hasText {
		a.Tokens = int64(max(1, req.textBytes/4))
		if ep != epEmbeddings {
			a.Tokens += int64(u.opts.StreamChunks)
		}
	}
	return a
}

// Validation messages, worded as OpenAI and Azure word them.
const (
	msgNoKey        = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
	msgBadKey       = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
	msgBadAzureKey  = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."
	msgAPIVersion   = "The api-version query parameter (?api-version=) is required for all requests."
	msgBadJSON      = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
	msgNoModel      = "you must provide a model parameter"
	msgNoMessages   = "Missing required parameter: 'messages'."
	msgNoPrompt     = "Missing required parameter: 'prompt'."
	msgNoInput      = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
	msgBodyTooLarge = "Request body too large."
	msgBodyRead     = "Could not read the request body."
)

// invalid returns the status and message that reject the request before it reaches the
// "model", or 0.
func (u *Upstream) invalid(r *http.Request, azure bool, readErr error, parsed bool, req *request, ep endpoint) (int, string) {
	if azure && !hasAPIVersion(r.URL.RawQuery) {
		return http.StatusBadRequest, msgAPIVersion
	}
	if msg := u.checkKey(r, azure); msg != "" {
		return http.StatusUnauthorized, msg
	}
	switch {
	case readErr == errBodyTooLarge:
		return http.StatusRequestEntityTooLarge, msgBodyTooLarge
	case readErr != nil:
		return http.StatusBadRequest, msgBodyRead
	case !parsed:
		return http.StatusBadRequest, msgBadJSON
	case !azure && req.model.Str == "":
		return http.StatusBadRequest, msgNoModel
	case !req.hasText && ep == epChat:
		return http.StatusBadRequest, msgNoMessages
	case !req.hasText && ep == epCompletions:
		return http.StatusBadRequest, msgNoPrompt
	case !req.hasText && ep == epEmbeddings:
		return http.StatusBadRequest, msgNoInput
	}
	return 0, ""
}

func (u *Upstream) checkKey(r *http.Request, azure bool) string {
	switch {
	case u.opts.APIKey == "":
		return ""
	case azure:
		if r.Header.Get("Api-Key") != u.opts.APIKey {
			return msgBadAzureKey
		}
	default:
		switch r.Header.Get("Authorization") {
		case u.bearer:
		case "":
			return msgNoKey
		default:
			return msgBadKey
		}
	}
	return ""
}

func hasAPIVersion(rawQuery string) bool {
	for rawQuery != "" {
		var kv string
		kv, rawQuery, _ = strings.Cut(rawQuery, "&")
		if v, ok := strings.CutPrefix(kv, "api-version="); ok && v != "" {
			return true
		}
	}
	return false
}

func (u *Upstream) serveModels(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header()["Allow"] = allowGet
		writeError(w, http.StatusMethodNotAllowed, "Method "+r.Method+" not allowed; use GET.")
		return
	}
	if msg := u.checkKey(r, false); msg != "" {
		writeError(w, http.StatusUnauthorized, msg)
		return
	}
	buf := getBuf()
	defer putBuf(buf)
	b := append(buf.b, `{"object":"list","data":[`...)
	for i, dep := range sortedKeys(u.Counts()) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = gjson.AppendJSONString(b, dep)
		b = append(b, `,"object":"model","created":1700000000,"owned_by":"fakeupstream"}`...)
	}
	b = append(b, "]}"...)
	buf.b = b
	writeBody(w, http.StatusOK, jsonType, b)
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		if k != "" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

var readPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readBody reads the whole body: reaching EOF is also what lets net/http notice a client
// that goes away while the handler waits.
func readBody(r *http.Request) (string, error) {
	buf := readPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 1<<20 {
			buf.Reset()
			readPool.Put(buf)
		}
	}()
	_, err := buf.ReadFrom(io.LimitReader(r.Body, maxBodyBytes+1))
	if err == nil && buf.Len() > maxBodyBytes {
		err = errBodyTooLarge
	}
	return buf.String(), err
}

var errBodyTooLarge = errors.New("request body too large")

// sleep waits d unless ctx ends first; it reports whether the request should go on.
// t, when given, is reused so a stream does not allocate a timer per event.
func sleep(ctx context.Context, t *time.Timer, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	if t == nil {
		t = time.NewTimer(d)
		defer t.Stop()
	} else {
		t.Reset(d)
	}
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		t.Stop()
		return false
	}
}

// Pre-built header values: assigning them skips Header.Set's canonicalisation and allocation.
// net/http never mutates header values, so sharing the slices is safe.
var (
	jsonType  = []string{"application/json"}
	eventType = []string{"text/event-stream; charset=utf-8"}
	noCache   = []string{"no-cache"}
	allowPost = []string{http.MethodPost}
	allowGet  = []string{http.MethodGet}
)
