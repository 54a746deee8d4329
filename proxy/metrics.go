package proxy

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are herd's Prometheus series. Labels carry model group names and deployment IDs,
// never api_base, keys or client-chosen strings (an unknown model is counted with an empty group).
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	overhead *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
	tokens   *prometheus.CounterVec
	failures *prometheus.CounterVec

	mu     sync.Mutex
	deps   map[string]*depMetrics // by model group and deployment ID; survives config changes
	groups sync.Map               // model group -> *atomic.Int64: herd's own 429s (no deployment had room)
	// unrouted holds the requests series of requests that failed before a deployment was
	// chosen, by unroutedKey: a full group answers every request so, and a label lookup each
	// time cost as much as the rest of its bookkeeping. Groups come from the config.
	unrouted sync.Map
}

// unroutedKey is a series of metrics.unrouted.
type unroutedKey struct {
	group  string
	status int
}

// depMetrics are one deployment's series, resolved once so the hot path does no label lookups.
type depMetrics struct {
	group, id        string
	parent           *metrics
	duration         prometheus.Observer
	overhead         prometheus.Observer
	inFlight         prometheus.Gauge
	promptTokens     prometheus.Counter
	completionTokens prometheus.Counter
	byStatus         sync.Map // int -> prometheus.Counter

	// Plain running totals the dashboard's history samples each second (history.go): requests
	// answered, and the upstream's 429s.
	answered, throttled atomic.Int64
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_requests_total",
			Help: "LLM requests answered, by model group, deployment ID and HTTP status.",
		}, []string{"model_group", "deployment", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "herd_request_duration_seconds",
			Help:    "End-to-end request duration as the client sees it (streams: until the last event).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"model_group"}),
		overhead: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "herd_overhead_duration_seconds",
			Help:    "Time herd itself added to a request: everything but waiting for the upstream.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}, []string{"model_group"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herd_in_flight_requests",
			Help: "Requests being served (streams until their last event), by model group.",
		}, []string{"model_group"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_tokens_total",
			Help: "Tokens used, as reported by the upstream (or estimated when it reports none), by type.",
		}, []string{"model_group", "deployment", "type"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_upstream_failures_total",
			Help: "Upstream calls that failed (and were retried elsewhere when possible), by deployment and status (502 unreachable, 504 timeout, or the upstream's).",
		}, []string{"model_group", "deployment", "status"}),
		deps: make(map[string]*depMetrics),
	}
	reg.MustRegister(m.requests, m.duration, m.overhead, m.inFlight, m.tokens, m.failures)
	return m
}

// deployment returns the series for deployment id in group.
func (m *metrics) deployment(group, id string) *depMetrics {
	key := group + "\x00" + id
	m.mu.Lock()
	defer m.mu.Unlock()
	if d, ok := m.deps[key]; ok {
		return d
	}
	d := &depMetrics{
		group:            group,
		id:               id,
		parent:           m,
		duration:         m.duration.WithLabelValues(group),
		overhead:         m.overhead.WithLabelValues(group),
		inFlight:         m.inFlight.WithLabelValues(group),
		promptTokens:     m.tokens.WithLabelValues(group, id, "prompt"),
		completionTokens: m.tokens.WithLabelValues(group, id, "completion"),
	}
	m.deps[key] = d
	return d
}

// count adds one request with status to d's series.
func (d *depMetrics) count(status int) {
	d.answered.Add(1)
	if c, ok := d.byStatus.Load(status); ok {
		c.(prometheus.Counter).Inc()
		return
	}
	c := d.parent.requests.WithLabelValues(d.group, d.id, strconv.Itoa(status))
	d.byStatus.Store(status, c)
	c.Inc()
}

// upstreamFailure counts a failed upstream call (a rare path: no caching).
func (d *depMetrics) upstreamFailure(status int) {
	if status == http.StatusTooManyRequests {
		d.throttled.Add(1)
	}
	d.parent.failures.WithLabelValues(d.group, d.id, strconv.Itoa(status)).Inc()
}

// countUnrouted adds a request that failed before a deployment was chosen.
func (m *metrics) countUnrouted(group string, status int) {
	if status == http.StatusTooManyRequests && group != "" {
		n, ok := m.groups.Load(group)
		if !ok {
			n, _ = m.groups.LoadOrStore(group, new(atomic.Int64))
		}
		n.(*atomic.Int64).Add(1)
	}
	k := unroutedKey{group, status}
	c, ok := m.unrouted.Load(k)
	if !ok {
		c, _ = m.unrouted.LoadOrStore(k, m.requests.WithLabelValues(group, "", strconv.Itoa(status)))
	}
	c.(prometheus.Counter).Inc()
}
