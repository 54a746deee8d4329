// Package local is the in-process state backend: usage kept in this process's memory only.
// It is the single-node backend and the building block of the cluster backend.
package local

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-proxy/herd/state"
)

// Backend tracks per-deployment usage in memory. Limits are not enforced yet: every
// reservation is granted. Its zero value is not usable; call New.
type Backend struct {
	now func() time.Time
	mu  sync.RWMutex
	dep map[string]*counters
}

type counters struct {
	inFlight atomic.Int64
	requests atomic.Int64
	tokens   atomic.Int64
}

// New returns an empty backend reading time from now (time.Now when nil).
func New(now func() time.Time) *Backend {
	if now == nil {
		now = time.Now
	}
	return &Backend{now: now, dep: make(map[string]*counters)}
}

func (b *Backend) counters(id string) *counters {
	b.mu.RLock()
	c := b.dep[id]
	b.mu.RUnlock()
	if c != nil {
		return c
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if c = b.dep[id]; c == nil {
		c = new(counters)
		b.dep[id] = c
	}
	return c
}

// Admit reserves r on deployment id.
func (b *Backend) Admit(id string, r state.Reservation) (state.Ticket, error) {
	c := b.counters(id)
	c.inFlight.Add(1)
	c.requests.Add(r.Requests)
	c.tokens.Add(r.Tokens)
	return state.Ticket{Deployment: id, Reserved: r, At: b.now()}, nil
}

// Settle replaces t's token estimate with the real usage and ends the call.
func (b *Backend) Settle(t state.Ticket, u state.Usage) {
	c := b.counters(t.Deployment)
	c.tokens.Add(u.Total() - t.Reserved.Tokens)
	c.inFlight.Add(-1)
}

// Release gives t's reservation back: the call never reached the upstream.
func (b *Backend) Release(t state.Ticket) {
	c := b.counters(t.Deployment)
	c.requests.Add(-t.Reserved.Requests)
	c.tokens.Add(-t.Reserved.Tokens)
	c.inFlight.Add(-1)
}

// InFlight is the number of calls admitted to id and not yet settled or released.
func (b *Backend) InFlight(id string) int64 { return b.counters(id).inFlight.Load() }

// Used returns the requests and tokens counted for id.
func (b *Backend) Used(id string) (requests, tokens int64) {
	c := b.counters(id)
	return c.requests.Load(), c.tokens.Load()
}
