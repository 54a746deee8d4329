package proxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// The dashboard's sparklines (GET /cluster/status?history=N): requests and 429s per second for
// the last historySeconds, per deployment and model group, as this node served them. A sampler
// reads the running totals the request path keeps anyway (depMetrics.answered, ...) once a
// second, so the request path pays one atomic add and nothing for the history itself.
const historySeconds = 300

// history holds the per-second counts. trails are keyed by the metrics they sample, which, like
// the counts, survive config changes.
type history struct {
	mu     sync.Mutex
	end    int64 // unix second of the newest sample; 0 before the first
	deps   map[*depMetrics]*trail
	groups map[string]*trail

	stop     chan struct{}
	stopOnce sync.Once
}

// trail is one series pair in a ring indexed by unix second modulo historySeconds: for a
// deployment its requests answered and the upstream's 429s, for a group every request answered
// (its deployments' and herd's own 429s) and herd's own 429s.
type trail struct {
	a, b         [historySeconds]uint32
	lastA, lastB int64 // the running totals at the previous sample
}

func newHistory() *history {
	return &history{deps: map[*depMetrics]*trail{}, groups: map[string]*trail{}, stop: make(chan struct{})}
}

// run samples m every second until close.
func (h *history) run(m *metrics) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case now := <-t.C:
			h.sample(m, now)
		}
	}
}

func (h *history) close() { h.stopOnce.Do(func() { close(h.stop) }) }

// sample records what m counted since the previous sample as the second before now, the last
// one complete; seconds skipped (a stalled process) count nothing.
func (h *history) sample(m *metrics, now time.Time) {
	sec := now.Unix() - 1
	m.mu.Lock()
	deps := make([]*depMetrics, 0, len(m.deps))
	for _, d := range m.deps {
		deps = append(deps, d)
	}
	m.mu.Unlock()

	h.mu.Lock()
	defer h.mu.Unlock()
	if sec <= h.end {
		return
	}
	from := max(h.end+1, sec-historySeconds+1) // the slots to write: skipped seconds, then sec
	if h.end == 0 {
		from = sec
	}
	type groupTotals struct{ reqs, rejected int64 } // requests since the last sample; herd's 429s ever
	groups := map[string]*groupTotals{}
	group := func(name string) *groupTotals {
		g := groups[name]
		if g == nil {
			g = new(groupTotals)
			groups[name] = g
			if h.groups[name] == nil {
				h.groups[name] = new(trail)
			}
		}
		return g
	}
	for g := range h.groups {
		group(g) // a group nothing touched since the last sample counts 0
	}
	for _, d := range deps {
		tr := h.deps[d]
		if tr == nil {
			tr = new(trail)
			h.deps[d] = tr
		}
		group(d.group).reqs += tr.advance(from, sec, d.answered.Load(), d.throttled.Load())
	}
	m.groups.Range(func(k, v any) bool {
		group(k.(string)).rejected = v.(*atomic.Int64).Load()
		return true
	})
	for name, g := range groups {
		tr := h.groups[name]
		// herd's own 429s are answers too: the group's requests are its deployments' and these.
		tr.advance(from, sec, tr.lastA+g.reqs+(g.rejected-tr.lastB), g.rejected)
	}
	h.end = sec
}

// advance writes the counts since the last sample (totalA, totalB are running totals) into sec,
// zeroes the seconds from..sec-1, and returns the first series' count.
func (tr *trail) advance(from, sec, totalA, totalB int64) int64 {
	for s := from; s < sec; s++ {
		tr.a[s%historySeconds], tr.b[s%historySeconds] = 0, 0
	}
	da, db := totalA-tr.lastA, totalB-tr.lastB
	tr.a[sec%historySeconds], tr.b[sec%historySeconds] = clampCount(da), clampCount(db)
	tr.lastA, tr.lastB = totalA, totalB
	return da
}

func clampCount(n int64) uint32 { return uint32(min(max(n, 0), 1<<32-1)) }

// historyJSON is /cluster/status's "history": n per-second counts ending at End, oldest first.
type historyJSON struct {
	End         int64                 `json:"end"` // unix second of the last count
	StepSeconds int                   `json:"step_seconds"`
	Groups      map[string]seriesJSON `json:"groups"`
	Deployments map[string]seriesJSON `json:"deployments"`
}

// seriesJSON is one group's or deployment's counts: requests answered and, for a group, herd's
// own 429s (Rejected) or, for a deployment, the upstream's (Throttled).
type seriesJSON struct {
	Requests  []uint32 `json:"requests"`
	Rejected  []uint32 `json:"rejected,omitempty"`
	Throttled []uint32 `json:"throttled,omitempty"`
}

// read returns the last n seconds for the deployments of snap.
func (h *history) read(snap *snapshot, n int) historyJSON {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := historyJSON{End: h.end, StepSeconds: 1, Groups: map[string]seriesJSON{}, Deployments: map[string]seriesJSON{}}
	if h.end == 0 {
		return out
	}
	window := func(tr *trail) (a, b []uint32) {
		a, b = make([]uint32, n), make([]uint32, n)
		if tr != nil {
			for i := range n {
				s := h.end - int64(n-1-i)
				a[i], b[i] = tr.a[s%historySeconds], tr.b[s%historySeconds]
			}
		}
		return a, b
	}
	for i := range snap.deps {
		d := &snap.deps[i]
		reqs, throttled := window(h.deps[d.metrics])
		out.Deployments[d.cfg.ID] = seriesJSON{Requests: reqs, Throttled: throttled}
		if _, ok := out.Groups[d.cfg.ModelName]; !ok {
			reqs, rejected := window(h.groups[d.cfg.ModelName])
			out.Groups[d.cfg.ModelName] = seriesJSON{Requests: reqs, Rejected: rejected}
		}
	}
	return out
}
