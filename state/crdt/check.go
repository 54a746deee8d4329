package crdt

import (
	"sync"
)

// What a peer sends is checked, not trusted: one forged record must not lift a limit and a
// stream of made-up names must not grow memory. The unit of trust is the message for its
// structure and the record (one incarnation's counts of one deployment) for its meaning:
//
//   - A message too large, or one that does not decode, is dropped whole (too_large,
//     malformed): nothing in it can be located reliably.
//   - A record that breaks an invariant or a bound is dropped alone, and the message's other
//     records merge. A full state holds every deployment of every incarnation its sender
//     knows, so dropping it whole for one record would let one disagreement (a deployment
//     the receiver's config does not have yet, a clock a minute off) stop all repair.
//
// Every message with a rejection is reported once per reason to Options.OnReject.
//
// # Invariants of a cell
//
// An honest cell keeps 0 <= reqN <= reqP and 0 <= tokN <= tokP: a release gives back, in the
// bucket of its ticket, what that ticket reserved there, and a settle below the estimate gives
// back at most the estimate (Settle counts negative usage as 0). Max-merge keeps the invariant:
// max(Na, Nb) <= max(Pa, Pb) when Na <= Pa and Nb <= Pb. So a merged view never counts fewer
// than 0 requests or tokens per incarnation and bucket, whatever peers send.
//
// Within the invariant a peer holding the cluster key can still write an incarnation's cell
// with both counts raised (N = P), which hides that incarnation's counts in the cell from
// the other nodes, never from the node that owns it (a node ignores records in its own
// incarnation's name). Telling that from a real cell needs per-node signatures; the cluster
// key is the trust boundary, and gossip must be keyed (cluster_settings.gossip_key).
const (
	// maxCellRequests bounds the requests one incarnation can count in one bucket (1 s):
	// about 10^9, orders beyond what one process admits in a second.
	maxCellRequests = 1 << 30
	// maxCellTokens bounds its tokens in one bucket: about 10^12, a million requests
	// reserving a million tokens each. With maxCellRequests it keeps every sum far from
	// overflow: cells x incarnations x buckets x 2^40 < 2^62.
	maxCellTokens = 1 << 40
	// maxInFlight bounds one incarnation's calls in flight (each holds a connection).
	maxInFlight = 1 << 20
	// staleBuckets is how far outside its window a cell marks its record stale: a sender
	// whose clock or data is more than a window off. Cells just outside (clock skew, a late
	// packet) are ignored silently, as before.
	staleBuckets = ringSize

	// defaultMaxNodes caps the node names whose counts a node keeps, well above herd's
	// documented scale (3-50 nodes). A cluster larger than this loses counts (too_many_nodes).
	defaultMaxNodes = 256
	// maxIncsPerNode caps the incarnations of one node name: the live one and restarts whose
	// counts are still in the window. A node restarting more often than every ~15 s loses the
	// newest incarnations' counts until the oldest age out.
	maxIncsPerNode = 4
	// defaultMaxCounters caps the deployments a node keeps counts for while it knows no
	// configured set (Options.Deployments nil and no SetDeployments yet).
	defaultMaxCounters = 1024

	// maxDelta bounds a delta packet: an honest one is under maxMessage unless one record
	// with a maxString ID and node name alone exceeds it, far below this.
	maxDelta = 64 << 10
	// maxDeltaIncs bounds the incarnations one delta may define: a relayed delta holds many
	// origins' records, each at least a few bytes, so a 1200-byte packet defines fewer.
	maxDeltaIncs = 256
	// maxState bounds a full state, memberlist's own push-pull limit (20 MiB): about 27,000
	// records of a busy deployment (61 cells of 3-byte counts, ~750 bytes), e.g. 50 nodes x
	// 500 deployments all used in every second of the window.
	maxState = 20 << 20
)

// reason is why a message, or a record in it, was dropped; reasons are reported by name.
type reason uint8

const (
	reasonMalformed          reason = iota // does not decode
	reasonTooLarge                         // over maxDelta or maxState bytes
	reasonInvariant                        // a cell with N > P or over its bound, in flight over its bound
	reasonStale                            // a cell more than a window outside this node's window
	reasonUnknownDeployment                // a deployment the current config does not have
	reasonTooManyNodes                     // a new incarnation over maxNodes or maxIncsPerNode
	reasonTooManyDeployments               // a new deployment over maxCounters while no config is known
	reasonClockOffset                      // from a node whose clock is over maxOffset off: merged, aligned by only that
	numReasons
)

var reasonNames = [numReasons]string{
	"malformed", "too_large", "invariant", "stale", "unknown_deployment", "too_many_nodes", "too_many_deployments",
	"clock_offset",
}

// RejectReasons returns every reason Options.OnReject reports, so metrics can show each at 0.
func RejectReasons() []string { return append([]string(nil), reasonNames[:]...) }

// reasons is a set of reasons, so a message is reported once per reason.
type reasons uint16

func (r *reasons) add(x reason) { *r |= 1 << x }

// checkRecord returns why a peer's record must not merge, or ok; now is this node's bucket.
func checkRecord(now int64, inFlight int64, cells []cell) (reason, bool) {
	if inFlight > maxInFlight {
		return reasonInvariant, false
	}
	for i := range cells {
		cl := &cells[i]
		// The decoder guarantees counts >= 0.
		if cl.reqN > cl.reqP || cl.tokN > cl.tokP || cl.reqP > maxCellRequests || cl.tokP > maxCellTokens {
			return reasonInvariant, false
		}
	}
	for i := range cells {
		if x := cells[i].bucket; x <= now-ringSize-staleBuckets || x > now+staleBuckets {
			return reasonStale, false
		}
	}
	return 0, true
}

// deploymentSet is the configured deployment IDs; ids nil means none is known yet (any ID
// is kept, up to maxCounters). gen grows with every SetDeployments, see Backend.Counter.
type deploymentSet struct {
	ids map[string]struct{}
	gen uint64
}

func (d *deploymentSet) has(id string) bool {
	_, ok := d.ids[id]
	return ok
}

// accepts reports whether peers' counts for id are kept.
func (d *deploymentSet) accepts(id string) bool { return d.ids == nil || d.has(id) }

// incTable is every peer incarnation whose counts this node keeps, across all deployments,
// with the bucket of the last record of it that merged. It caps how many node names and how
// many incarnations of each a peer can make this node hold, and forgets an incarnation a
// window after its last record, when every counter has dropped its cells too.
type incTable struct {
	mu       sync.Mutex
	maxNodes int
	seen     map[incKey]int64
	names    map[string]int // incarnations per node name
}

func newIncTable(maxNodes int) *incTable {
	return &incTable{maxNodes: maxNodes, seen: map[incKey]int64{}, names: map[string]int{}}
}

// admit records a record of k at bucket now and reports whether k is within the caps.
func (t *incTable) admit(k incKey, now int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if at, ok := t.seen[k]; ok {
		t.seen[k] = max(at, now)
		return true
	}
	n, known := t.names[k.node]
	if (!known && len(t.names) >= t.maxNodes) || n >= maxIncsPerNode {
		return false
	}
	t.seen[k] = now
	t.names[k.node] = n + 1
	return true
}

// expire forgets incarnations heard of last more than a window (and a bucket of margin for
// counters' housekeeping) before now: their cells and in-flight counts are gone everywhere.
func (t *incTable) expire(now int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, at := range t.seen {
		if now-at > ringSize+1 {
			delete(t.seen, k)
			if t.names[k.node]--; t.names[k.node] == 0 {
				delete(t.names, k.node)
			}
		}
	}
}

// nodeNames returns the node names the table holds.
func (t *incTable) nodeNames() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.names))
	for n := range t.names {
		out = append(out, n)
	}
	return out
}

// len returns how many incarnations the table holds.
func (t *incTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.seen)
}
