package crdt

import (
	"testing"
	"time"

	"github.com/herd-proxy/herd/state/internal/window"
	"github.com/herd-proxy/herd/state/statetest"
)

// LastPause reports the latest gap of at least minPause in an origin's delta records, going on
// or ended, from when its last record before the gap arrived; records at a steady pace, records
// that fail their checks and full states make none.
func TestLastPause(t *testing.T) {
	clock := statetest.NewClock(t0)
	b := New(Options{Node: "a", Now: clock.Now, FlushEvery: -1, Deployments: []string{"d"}})
	p := incKey{node: "p", epoch: 1}
	count := int64(0)
	delta := func() []byte {
		count++
		return forge(record{k: p, id: "d", cells: []cell{{bucket: window.BucketOf(clock.Now().UnixNano()), reqP: count}}})
	}
	wantPause := func(what string, began time.Duration, ok bool) {
		t.Helper()
		if got, gotOK := b.LastPause("p"); got != began || gotOK != ok {
			t.Fatalf("%s: LastPause = %v, %v; want %v, %v", what, got, gotOK, began, ok)
		}
	}
	wantPause("nothing heard", 0, false)
	for range 20 {
		b.HandleMessage(delta())
		clock.Advance(minPause / 4)
	}
	wantPause("records at a steady pace", 0, false)

	clock.Advance(2 * time.Second)
	wantPause("a pause going on", 2*time.Second+minPause/4, true)
	b.MergeRemoteState(delta())
	unknown := forge(record{k: p, id: "x", cells: []cell{{bucket: window.BucketOf(clock.Now().UnixNano()), reqP: 1}}})
	b.HandleMessage(unknown)
	wantPause("after a full state and a rejected record", 2*time.Second+minPause/4, true)

	b.HandleMessage(delta())
	clock.Advance(time.Second / 2)
	b.HandleMessage(delta())
	wantPause("after the pause ended", 2*time.Second+minPause/4+time.Second/2, true)

	clock.Advance(pauseForget + time.Second)
	b.Flush() // the first flush of a bucket forgets origins not heard from
	wantPause("long after the last record", 0, false)
}
