package crdt

import (
	"sync"
	"time"

	"github.com/herd-proxy/herd/state/internal/window"
)

// maxOffset bounds the clock offset by which a peer's cells are aligned. An estimate beyond it
// is capped, and every message from that peer is reported (clock_offset): such a node's counts
// land up to its excess away from where they belong, and a clock that far off is broken, not
// skewed. The bound also keeps what a forged heartbeat can do small: cells held at most
// maxOffset longer than a window.
const maxOffset = 30 * time.Second

// alignment is how a peer node's cells are placed: its bucket b counts in our bucket b-shift.
type alignment struct {
	at     int64 // our bucket when the estimate was read
	shift  int64 // floor(offset / bucket width): never places a count later than it belongs
	ns     int64 // the offset applied, capped, in ns
	known  bool  // the cluster has an estimate; otherwise shift is 0
	capped bool  // the estimate was beyond maxOffset
}

// offsets caches Options.Offset per node name, read at most once per bucket.
type offsets struct {
	fn func(node string) (time.Duration, bool)

	mu sync.Mutex
	m  map[string]alignment
}

// of returns node's alignment as of bucket now.
func (o *offsets) of(node string, now int64) alignment {
	if o.fn == nil {
		return alignment{}
	}
	o.mu.Lock()
	a, ok := o.m[node]
	o.mu.Unlock()
	if ok && a.at == now {
		return a
	}
	d, known := o.fn(node) // outside the lock: the cluster takes its own
	a = alignment{at: now, known: known}
	if known {
		if d.Abs() > maxOffset {
			d, a.capped = min(max(d, -maxOffset), maxOffset), true
		}
		a.ns, a.shift = int64(d), window.BucketOf(int64(d))
	}
	o.mu.Lock()
	o.m[node] = a
	o.mu.Unlock()
	return a
}

// cached returns node's shift as last read, if the cluster had an estimate then. Counters call
// it under their lock, so it never asks the cluster.
func (o *offsets) cached(node string) (int64, bool) {
	if o.fn == nil {
		return 0, false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	a, ok := o.m[node]
	return a.shift, ok && a.known
}

// refresh reads the estimate of every node in names as of bucket now and forgets the others,
// so that counters' housekeeping (which reads only the cache) moves cells of nodes that sent
// nothing lately too.
func (o *offsets) refresh(names []string, now int64) {
	if o.fn == nil {
		return
	}
	keep := make(map[string]bool, len(names))
	for _, n := range names {
		keep[n] = true
		o.of(n, now)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for n := range o.m {
		if !keep[n] {
			delete(o.m, n)
		}
	}
}
