package crdt

import (
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
	"github.com/herd-proxy/herd/state/statetest"
)

// Every decoder a peer reaches is fuzzed: HandleMessage (delta packets) and MergeRemoteState
// (push-pull state). Whatever the input: no panic, the merged state keeps every invariant
// (checkInvariants), memory stays within the caps, merging it again changes nothing, and
// the node's own state still encodes to a message that decodes.
//
//	go test -run '^$' -fuzz '^FuzzHandleMessage$' -fuzztime 30s ./state/crdt/
//	go test -run '^$' -fuzz '^FuzzMergeRemoteState$' -fuzztime 30s ./state/crdt/

var fuzzDeployments = []string{"d0", "d1", "d2"}

// fuzzSeeds returns real encoded messages: deltas as Flush sends them and full states as
// LocalState returns them, from a node with a restart behind it and a peer's counts.
func fuzzSeeds(clock *statetest.Clock) (deltas, states [][]byte) {
	old := New(Options{Node: "src", Now: clock.Now, FlushEvery: -1})
	src := New(Options{Node: "src", Now: clock.Now, FlushEvery: -1}) // restarted
	peer := New(Options{Node: "peer", Now: clock.Now, FlushEvery: -1})
	var sent [][]byte
	capture := captureNet(func(m []byte) { sent = append(sent, slices.Clone(m)) })
	src.SetNetwork(capture)
	for i, id := range fuzzDeployments {
		tk, _ := old.Counter(id).Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 100})
		old.Counter(id).Release(tk)
		tk, _ = peer.Counter(id).Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 7})
		peer.Counter(id).Settle(tk, state.Usage{PromptTokens: 9000})
		tk, _ = src.Counter(id).Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 100})
		clock.Advance(time.Second)
		src.Counter(id).Settle(tk, state.Usage{PromptTokens: 40, CompletionTokens: int64(i)})
	}
	src.Counter("d0").Admit(state.Limits{}, state.Reservation{Requests: 1, Tokens: 100}) // one in flight
	src.Flush()
	src.MergeRemoteState(old.LocalState(true))
	src.MergeRemoteState(peer.LocalState(true))
	now := window.BucketOf(clock.Now().UnixNano())
	p := incKey{node: "p", epoch: 1}
	forged := [][]byte{
		forge(record{k: p, id: "d0", cells: []cell{{bucket: now, reqN: 1 << 40}}}),
		forge(record{k: p, id: "d1", ifVer: 3, inFlight: 2, cells: []cell{{bucket: now - 2, reqP: 5, reqN: 1, tokP: 50, tokN: 10}, {bucket: now, reqP: 1}}}),
		forge(record{k: p, id: "unknown", cells: []cell{{bucket: now, reqP: 1}}}),
	}
	// Deltas compressed too, as relays send them (sendFinger), and full states compressed,
	// as LocalState sends them, and not, as older nodes did.
	for _, m := range sent {
		forged = append(forged, compress(nil, m))
	}
	// Anti-entropy: a digest, an ask for a repair, and the repair it brings (in sent).
	digest := src.digest(clock.Now().UnixNano())
	ask := appendString([]byte{msgAsk}, "peer")
	ask = binary.AppendUvarint(ask, src.self.epoch)
	ask = binary.AppendVarint(ask, now)
	ask = binary.AppendUvarint(ask, 1<<digestGroups-1)
	src.HandleMessage(ask)
	forged = append(forged, digest, ask)
	return append(sent, forged...), append([][]byte{src.LocalState(true), old.LocalState(true), src.fullState(false)}, forged...)
}

func fuzzMerge(f *testing.F, seeds [][]byte, clock *statetest.Clock, merge func(*Backend, []byte)) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Add([]byte{wireVersion, tagInc, 1, 'x', 1, tagDep, 0, 1, 'd', 1, 1, 1, 2, 1, 0, 1, 0})
	base := New(Options{Node: "base", Now: clock.Now, FlushEvery: -1})
	for _, s := range seeds {
		base.MergeRemoteState(s)
	}
	known := base.LocalState(true) // honest counts the input lands on
	f.Fuzz(func(t *testing.T, msg []byte) {
		configured := New(Options{Node: "dst", Now: clock.Now, FlushEvery: -1, Deployments: fuzzDeployments, Offset: fuzzOffset})
		unknown := New(Options{Node: "dst", Now: clock.Now, FlushEvery: -1, maxNodes: 4, maxCounters: 4})
		for _, dst := range []*Backend{configured, unknown} {
			dst.MergeRemoteState(known)
			merge(dst, msg)
			if err := checkInvariants(dst); err != nil {
				t.Fatal(err)
			}
			before := fuzzSnapshot(dst)
			merge(dst, msg)
			if after := fuzzSnapshot(dst); !slices.Equal(before, after) {
				t.Fatalf("merging twice changed %v to %v", before, after)
			}
			if err := decode(dst.fullState(false), maxMessageIncs, nil); err != nil {
				t.Fatalf("own state does not decode: %v", err)
			}
			if n := dst.incs.len(); n > dst.maxNodes*maxIncsPerNode {
				t.Fatalf("%d incarnations, cap %d", n, dst.maxNodes*maxIncsPerNode)
			}
		}
		for _, c := range configured.all(nil) {
			if !slices.Contains(fuzzDeployments, c.id) {
				t.Fatalf("counter for unconfigured %q", c.id)
			}
		}
		if n := len(unknown.all(nil)); n > unknown.maxCounters {
			t.Fatalf("%d counters, cap %d", n, unknown.maxCounters)
		}
	})
}

// fuzzOffset gives every node name a clock offset, from 26 s behind to 26 s ahead in steps
// that are no whole number of buckets, and to some beyond maxOffset, so that merged records are
// aligned every way (the "unknown" destination aligns none).
func fuzzOffset(node string) (time.Duration, bool) {
	switch n := len(node); {
	case n%11 == 0:
		return 0, false
	case n%7 == 0:
		return -time.Duration(n) * 17 * time.Second, true
	default:
		return time.Duration(n%5-2)*13*time.Second + time.Duration(n)*70*time.Millisecond, true
	}
}

// fuzzSnapshot lists every counter's merged counts, sorted.
func fuzzSnapshot(b *Backend) []string {
	var out []string
	for _, c := range b.all(nil) {
		l := c.Load()
		out = append(out, fmt.Sprintf("%s=%d/%d/%d", c.id, l.Requests, l.Tokens, l.InFlight))
	}
	slices.Sort(out)
	return out
}

func FuzzHandleMessage(f *testing.F) {
	clock := statetest.NewClock(t0)
	deltas, _ := fuzzSeeds(clock)
	fuzzMerge(f, deltas, clock, (*Backend).HandleMessage)
}

func FuzzMergeRemoteState(f *testing.F) {
	clock := statetest.NewClock(t0)
	_, states := fuzzSeeds(clock)
	fuzzMerge(f, states, clock, (*Backend).MergeRemoteState)
}
