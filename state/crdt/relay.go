package crdt

import (
	"cmp"
	"slices"
)

// # Relaying
//
// Up to directMax peers, a node sends its deltas to every peer itself: one hop, and at most
// directMax packets per flush. Beyond that, sending to everyone would make a node's packets per
// flush, and the cluster's, grow with its size (N-1 per node, N² in all), so deltas travel
// over a ring instead. The live members, sorted by name, form a ring that every node derives
// alike from membership (SetMembers). A node sends its own records to its fingers, the members
// 1, 2, 4, ... places after it, and tells each finger how many of the ring's next places it
// covers (its span): the finger 2^i places on covers the places up to the next finger. A
// receiver forwards what it got to its own fingers within its span, each with the part of the
// span that finger covers, and so on: a binomial tree, which reaches every member exactly once
// within log2(N) hops.
//
// Every node's fingers are the same few members whatever the origin, so a node batches
// everything it forwards, its own records and every origin's, into one packet per finger and
// flush: ceil(log2 N) packets per flush (6 at 50 nodes), and since a relaying node flushes at
// most every RelayWait (crdt.go's loop), a node's packets per second are bounded whatever the
// cluster's size. The records themselves are not: every node receives every origin's changes,
// N-1 origins' worth, and the nearest fingers forward most of them. So a relay packs a packet
// to twice maxMessage and compresses it (wire.go), and a finger that still gets more than fits
// gets more packets. A record keeps its origin's send time through every hop, so receivers
// measure the delay from the origin and place its counts in the share check by when the origin
// made them. Relays forward the merged cells, which carry totals, so forwarding the newest
// value of a cell is always right, and a record that arrives twice changes nothing.
//
// Membership views differ for a moment after a change: a node may then reach a member twice
// or not at all. A relay that failed without the ring knowing yet loses what it would have
// forwarded. Both heal as direct sending does: the origin repeats what it changed in the two
// buckets before (counter.takeDelta), and its digests (antientropy.go) repair the rest.

// directMax is how many peers a node sends its deltas to itself before relaying over the ring.
const directMax = 8

// ring is the sorted alive membership as this node last learned it.
type ring struct {
	names []string // sorted, this node included
	self  int      // this node's place in names
}

// newRing returns the ring of members, which need not be sorted and gets self if it lacks it.
func newRing(self string, members []string) *ring {
	names := slices.Clone(members)
	if !slices.Contains(names, self) {
		names = append(names, self)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	i, _ := slices.BinarySearch(names, self)
	return &ring{names: names, self: i}
}

// direct reports whether a node with this view sends to every peer itself (nil: membership
// not told yet, so the network's own idea of the members counts).
func (r *ring) direct() bool { return r == nil || len(r.names)-1 <= directMax }

// finger returns the member d places after this node.
func (r *ring) finger(d int) string { return r.names[(r.self+d)%len(r.names)] }

// subSpan is the span of the finger d places on, for a record whose receiver covers the span
// places after it (d <= span): the places from d+1 to the next finger, 2d, or to the span's
// end.
func subSpan(span, d int) int { return min(d, span+1-d) - 1 }

// outRec is one record waiting in a Flush: an incarnation's cells for one deployment, with
// its origin's send time and the span the receiver is to cover.
type outRec struct {
	k        incKey
	id       string
	ifVer    uint64
	inFlight int64
	sent     int64
	span     int // spanAll: this node's own record, for every member
	lo, hi   int // its cells in outbox.cells
}

// spanAll marks this node's own records, which go to every member.
const spanAll = -1

// outbox collects a Flush's records before they are routed: this node's own and those it
// relays. Its slices are reused from one Flush to the next.
type outbox struct {
	recs  []outRec
	cells []cell
}

func (o *outbox) reset() {
	o.recs = o.recs[:0]
	o.cells = o.cells[:0]
}

func (o *outbox) add(k incKey, id string, ifVer uint64, inFlight int64, sent int64, span int, cells []cell) {
	lo := len(o.cells)
	o.cells = append(o.cells, cells...)
	o.recs = append(o.recs, outRec{k: k, id: id, ifVer: ifVer, inFlight: inFlight, sent: sent, span: span, lo: lo, hi: len(o.cells)})
}

// encode appends every record to enc whose span reaches d places on (d 0: direct sending,
// where every record goes with span 0), each under its origin's send time and the finger's
// part of its span. n is the ring's size.
func (o *outbox) encode(enc *encoder, n, d int) {
	for i := range o.recs {
		r := &o.recs[i]
		span := r.span
		if span == spanAll {
			span = n - 1
		}
		sub := 0
		if d > 0 {
			if d > span {
				continue
			}
			sub = subSpan(span, d)
		}
		enc.section(r.sent, sub)
		enc.record(r.k, r.id, r.ifVer, r.inFlight, o.cells[r.lo:r.hi])
	}
}

// sort orders the records so that those under one send time and span sit together and share
// their items: this node's own first, then by origin.
func (o *outbox) sort() {
	slices.SortStableFunc(o.recs, func(a, b outRec) int {
		return cmp.Or(cmp.Compare(relayed(a), relayed(b)), cmp.Compare(a.k.node, b.k.node), cmp.Compare(a.k.epoch, b.k.epoch), cmp.Compare(a.sent, b.sent), cmp.Compare(a.span, b.span))
	})
}

// relayed is 0 for this node's own record, 1 for one it relays.
func relayed(r outRec) int {
	if r.span == spanAll {
		return 0
	}
	return 1
}
