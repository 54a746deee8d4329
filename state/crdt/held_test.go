package crdt

import (
	"math/rand/v2"
	"testing"

	"github.com/herd-proxy/herd/state/internal/window"
)

// held yields exactly what a scan of the whole ring finds (the cells in the window of the
// newest bucket, oldest first), whatever the order and spread of the buckets written, and
// forgets the slots it found stale.
func TestHeldMatchesAFullScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 2000 {
		inc := &incState{newest: 1000 - ringSize}
		b := int64(1000)
		for range rng.IntN(80) {
			// Mostly near the newest bucket, sometimes far ahead (the window moves past
			// everything), sometimes just behind it.
			switch r := rng.IntN(10); {
			case r < 6:
				b += int64(rng.IntN(3))
			case r < 7:
				b += int64(rng.IntN(3 * int(ringSize)))
			default:
				b -= int64(rng.IntN(int(ringSize)))
			}
			if b <= inc.newest-ringSize {
				continue
			}
			if b > inc.newest {
				inc.newest = b
			}
			cl := &inc.cells[window.Slot(b)]
			if cl.bucket != b {
				*cl = cell{bucket: b, reqP: b}
			}
			inc.occ |= 1 << uint(window.Slot(b))
		}
		var want []int64
		for x := inc.newest - ringSize + 1; x <= inc.newest; x++ {
			if inc.cells[window.Slot(x)].bucket == x {
				want = append(want, x)
			}
		}
		var got []int64
		for x, cl := range inc.held() {
			if cl.bucket != x || cl.reqP != x {
				t.Fatalf("round %d: held gave bucket %d with cell %+v", round, x, *cl)
			}
			got = append(got, x)
		}
		if len(got) != len(want) {
			t.Fatalf("round %d: held gave %v, a full scan %v", round, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("round %d: held gave %v, a full scan %v", round, got, want)
			}
		}
		for s := range int64(ringSize) {
			if inc.occ&(1<<uint(s)) != 0 && !(inc.cells[s].bucket > inc.newest-ringSize) {
				t.Fatalf("round %d: slot %d stays marked with stale bucket %d (newest %d)", round, s, inc.cells[s].bucket, inc.newest)
			}
		}
	}
}
