package main

import (
	"context"
	"net"
	"net/http"
	"sort"
	"strconv"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// requestTimeout bounds one benchmark request; a timed-out request counts as a failure.
const requestTimeout = 10 * time.Second

// chatBody is the request every target gets: a small, realistic chat completion.
func chatBody(model string) []byte {
	return []byte(`{"model":"` + model + `","messages":[{"role":"system","content":"You are a helpful assistant."},` +
		`{"role":"user","content":"Write one sentence about load balancers."}],"max_tokens":64}`)
}

// loadTarget is one thing under load. Its client (and so its pool of keep-alive connections)
// lives for the whole run: the warm-up attack opens the connections the measured one reuses.
type loadTarget struct {
	name   string
	url    string // full URL of the chat completions endpoint
	body   []byte
	client *http.Client
	// overheadHeader is read from every response when set (herd reports its own overhead).
	overheadHeader string
	// proc is the proxy process serving this target; nil for the direct upstream.
	proc *child
}

func newLoadClient() *http.Client {
	return &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			DialContext: (&net.Dialer{
				Timeout:   10 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			MaxIdleConnsPerHost: 10000, // never close a connection the attack may reuse
			DisableCompression:  true,
		},
	}
}

// workersFor is the initial number of vegeta workers for a rate: enough for about 20ms of
// latency at that rate; vegeta adds more by itself if they are all busy.
func workersFor(rate int) uint64 {
	return uint64(min(max(rate/50, 10), 1000))
}

// attackResult is what one fixed-rate attack measured.
type attackResult struct {
	Sent       uint64            `json:"sent"`
	OK         uint64            `json:"ok_2xx"`
	Codes      map[string]uint64 `json:"status_codes"`
	Errors     map[string]uint64 `json:"errors,omitempty"`
	Latency    latencyUS         `json:"latency_us"`
	Rate       float64           `json:"achieved_rate"` // requests sent per second
	Throughput float64           `json:"throughput"`    // 2xx per second, waiting included
	Elapsed    float64           `json:"elapsed_s"`     // first to last request sent
	// SelfOverhead is the overhead the target reported in its overheadHeader, if any.
	SelfOverhead *latencyUS `json:"self_reported_overhead_us,omitempty"`
}

// latencyUS holds latency quantiles in microseconds.
type latencyUS struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func latencyOf(h *histogram) latencyUS {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return latencyUS{P50: us(h.quantile(0.5)), P90: us(h.quantile(0.9)), P99: us(h.quantile(0.99)), Max: us(h.max), Mean: us(h.mean())}
}

const maxDistinctErrors = 10

// recorder folds vegeta results into counts and histograms without keeping them.
type recorder struct {
	lat, self        *histogram
	overheadHeader   string
	sent, ok         uint64
	codes, errs      map[string]uint64
	first, last, end time.Time
}

func newRecorder() *recorder { return &recorder{lat: newHistogram(), self: newHistogram()} }

func (r *recorder) reset(overheadHeader string) {
	r.lat.reset()
	r.self.reset()
	r.overheadHeader = overheadHeader
	r.sent, r.ok = 0, 0
	r.codes, r.errs = map[string]uint64{}, map[string]uint64{}
	r.first, r.last, r.end = time.Time{}, time.Time{}, time.Time{}
}

func (r *recorder) add(res *vegeta.Result) {
	r.sent++
	r.lat.add(res.Latency)
	r.codes[strconv.Itoa(int(res.Code))]++
	if res.Code >= 200 && res.Code < 300 {
		r.ok++
		if r.overheadHeader != "" {
			if ms, err := strconv.ParseFloat(res.Headers.Get(r.overheadHeader), 64); err == nil {
				r.self.add(time.Duration(ms * float64(time.Millisecond)))
			}
		}
	}
	if res.Error != "" {
		if _, seen := r.errs[res.Error]; seen || len(r.errs) < maxDistinctErrors {
			r.errs[res.Error]++
		} else {
			r.errs["(other errors)"]++
		}
	}
	if r.first.IsZero() || res.Timestamp.Before(r.first) {
		r.first = res.Timestamp
	}
	if res.Timestamp.After(r.last) {
		r.last = res.Timestamp
	}
	if e := res.End(); e.After(r.end) {
		r.end = e
	}
}

func (r *recorder) result() attackResult {
	out := attackResult{Sent: r.sent, OK: r.ok, Codes: r.codes, Latency: latencyOf(r.lat)}
	if len(r.errs) > 0 {
		out.Errors = r.errs
	}
	if el := r.last.Sub(r.first); el > 0 {
		out.Elapsed = el.Seconds()
		out.Rate = float64(r.sent) / el.Seconds()
		out.Throughput = float64(r.ok) / r.end.Sub(r.first).Seconds()
	}
	if r.self.n > 0 {
		s := latencyOf(r.self)
		out.SelfOverhead = &s
	}
	return out
}

// attack sends POSTs to t at a constant rate for d, and folds the results into rec.
func attack(ctx context.Context, t *loadTarget, rate int, d time.Duration, rec *recorder) attackResult {
	rec.reset(t.overheadHeader)
	targeter := vegeta.NewStaticTargeter(postTarget(t.url, t.body))
	return attackWith(ctx, t.client, targeter, rate, d, rec)
}

// postTarget is a chat completion POST to url.
func postTarget(url string, body []byte) vegeta.Target {
	return vegeta.Target{
		Method: http.MethodPost,
		URL:    url,
		Body:   body,
		Header: http.Header{"Content-Type": []string{"application/json"}},
	}
}

// attackWith sends targeter's requests through client at a constant rate for d, and folds
// the results into rec (which the caller has reset).
//
// vegeta's Attacker cannot be reused once an attack is over (its stop channel stays closed),
// so each attack gets a new Attacker around the caller's long-lived http.Client: the
// connections, which are what matters, are reused.
func attackWith(ctx context.Context, client *http.Client, targeter vegeta.Targeter, rate int, d time.Duration, rec *recorder) attackResult {
	atk := vegeta.NewAttacker(
		vegeta.Client(client),
		vegeta.Workers(workersFor(rate)),
		vegeta.MaxBody(0), // drain response bodies without keeping them
	)
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()
	for res := range atk.Attack(targeter, vegeta.ConstantPacer{Freq: rate, Per: time.Second}, d, "") {
		rec.add(res)
	}
	return rec.result()
}

// sortedKeys returns m's keys in order, for stable output.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
