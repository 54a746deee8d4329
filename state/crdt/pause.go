package crdt

import (
	"sync"
	"time"
)

// # Pauses in an origin's deltas
//
// After a partition heals, each node resends its own counts since the silence began (Resend),
// and the cluster knows when a member fell silent only from its heartbeats: at 50 nodes one
// every 7 s, so a silence seems to begin up to 7 s before the partition did, and a resend from
// there carries twice what was missed. A busy origin's records arrive every few tens of
// milliseconds, so the last one before a pause marks when the partition began far closer.
// pauses keeps, per origin, when its records last arrived and the last pause of at least
// minPause in them; LastPause reports the latest, going on or ended.

// minPause is the least gap in an origin's records that counts as a pause: many times the
// relays' batching, far below a heartbeat interval.
const minPause = time.Second

// pauseForget is how long an origin whose records stopped is remembered: past the window,
// nothing it sent still counts.
const pauseForget = 2 * time.Minute

type pauses struct {
	mu  sync.Mutex
	m   map[string]pause
	max int // origins remembered at most (Options' node cap)
}

// pause is one origin's: its records' last arrival and its last pause, Unix ns.
type pause struct{ last, from, to int64 }

// heard notes a record from origin node at ns.
func (p *pauses) heard(node string, ns int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.m[node]
	if !ok {
		if len(p.m) >= p.max {
			return
		}
		if p.m == nil {
			p.m = make(map[string]pause)
		}
	} else if ns-e.last >= int64(minPause) {
		e.from, e.to = e.last, ns
	}
	e.last = max(e.last, ns)
	p.m[node] = e
}

// forget drops the origins not heard from since before.
func (p *pauses) forget(before int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n, e := range p.m {
		if e.last < before {
			delete(p.m, n)
		}
	}
}

// LastPause reports how long ago the latest pause of at least minPause in origin node's delta
// records began, by this backend's clock: the one going on, or the last that ended; ok is false
// if there was none, or nothing came from node.
func (b *Backend) LastPause(node string) (began time.Duration, ok bool) {
	b.pauses.mu.Lock()
	e, ok := b.pauses.m[node]
	b.pauses.mu.Unlock()
	now := b.now().UnixNano()
	switch {
	case !ok:
		return 0, false
	case now-e.last >= int64(minPause):
		return time.Duration(now - e.last), true
	case e.to != 0:
		return time.Duration(now - e.from), true
	}
	return 0, false
}
