package crdt

import (
	"encoding/base64"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
)

// allNames is the names of a cluster of n nodes.
func allNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("n%d", i+1)
	}
	return out
}

// relayCluster is a cluster whose nodes all know the membership (SetMembers), with messages
// queued until delivered, hop by hop.
func relayCluster(t *testing.T, n int) *cluster {
	c := newCluster(t, n)
	c.net.queue = true
	for _, b := range c.nodes {
		b.SetMembers(allNames(n))
	}
	return c
}

// hop flushes every node and delivers what they sent; it returns the queued packets.
func (c *cluster) hop() []packet {
	c.net.flushAll()
	c.net.mu.Lock()
	ps := slices.Clone(c.net.pending)
	c.net.mu.Unlock()
	c.net.Deliver()
	return ps
}

// records decodes p and returns its records' origins, send times and spans.
func records(t *testing.T, p packet) (origins []string, metas []meta) {
	t.Helper()
	msg := p.msg
	if msg[0] == wireFlate {
		var err error
		if msg, err = expand(nil, msg, maxDelta); err != nil {
			t.Fatalf("%s -> %s: %v", p.from, p.to, err)
		}
	}
	err := decode(msg, maxDeltaIncs, func(m meta, k incKey, _ string, _ uint64, _ int64, _ []cell) {
		origins = append(origins, k.node)
		metas = append(metas, m)
	})
	if err != nil {
		t.Fatalf("%s -> %s: %v", p.from, p.to, err)
	}
	return origins, metas
}

// Beyond directMax peers every node's counts reach every other node exactly once, within
// ceil(log2 N) hops, and each node sends each flush to at most ceil(log2 N) members (its
// fingers); up to directMax peers each node sends to all of them itself, in one hop.
func TestRelayReachesEveryNodeOnce(t *testing.T) {
	for _, n := range []int{2, directMax + 1, directMax + 2, 13, 32, 33, 50} {
		t.Run(fmt.Sprint(n, "nodes"), func(t *testing.T) {
			c := relayCluster(t, n)
			want := 0
			for i, name := range allNames(n) {
				c.admitN(name, "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 1}, i+1)
				want += i + 1
			}
			maxHops := bits.Len(uint(n - 1)) // ceil(log2 n)
			if n-1 <= directMax {
				maxHops = 1
			}
			got := map[[2]string]int{} // (origin, receiver): copies received
			hops := 0
			for ps := c.hop(); len(ps) > 0; ps = c.hop() {
				hops++
				if hops > maxHops {
					t.Fatalf("still relaying after %d hops", hops)
				}
				targets := map[string]map[string]bool{}
				for _, p := range ps {
					if targets[p.from] == nil {
						targets[p.from] = map[string]bool{}
					}
					targets[p.from][p.to] = true
					origins, _ := records(t, p)
					for _, o := range origins {
						got[[2]string{o, p.to}]++
					}
				}
				for from, to := range targets {
					if limit := max(maxHops, min(n-1, directMax)); len(to) > limit {
						t.Fatalf("hop %d: %s sent to %d members, want at most %d", hops, from, len(to), limit)
					}
				}
			}
			for _, o := range allNames(n) {
				for _, r := range allNames(n) {
					if o != r && got[[2]string{o, r}] != 1 {
						t.Fatalf("%s received %s's counts %d times, want once", r, o, got[[2]string{o, r}])
					}
				}
			}
			c.wantSnapshot(allNames(n), "d", int64(want), int64(want), 0)
			t.Logf("%d nodes: every count everywhere after %d hops", n, hops)
		})
	}
}

// A relayed record keeps its origin's send time, so the far end measures the delay from the
// origin, relays' waits included, and the span each finger is given covers the ring.
func TestRelayKeepsTheOriginsSendTime(t *testing.T) {
	c := relayCluster(t, 16)
	// The ring by name is n1 n10 ... n16 n2 ... n9: n9 is 15 places after n1, four hops.
	var delays []time.Duration
	far := New(Options{Node: "n9", Now: c.clock.Now, FlushEvery: -1, OnReject: c.rejects.add,
		OnDelay: func(d time.Duration) { delays = append(delays, d) }})
	far.SetMembers(allNames(16))
	c.nodes["n9"] = far
	c.net.add("n9", far)

	c.admitN("n1", "d", state.Limits{}, state.Reservation{Requests: 1, Tokens: 1}, 3)
	spans := map[string]int{}
	for {
		ps := c.hop()
		if len(ps) == 0 {
			break
		}
		for _, p := range ps {
			if p.from == "n1" {
				_, ms := records(t, p)
				spans[p.to] = ms[0].span
			}
		}
		c.clock.Advance(5 * time.Millisecond)
	}
	if len(delays) != 1 || delays[0] != 15*time.Millisecond {
		t.Fatalf("n9 measured %v from n1, want one delay of the three relays' 5ms waits", delays)
	}
	covered := len(spans)
	for _, s := range spans {
		covered += s
	}
	if covered != 15 {
		t.Fatalf("n1's fingers and their spans %v cover %d members, want 15", spans, covered)
	}
	c.wantSnapshot(allNames(16), "d", 3, 3, 0)
}

// relayAll admits, on each of n relaying nodes, perNode requests spread over deployments
// named by id(node, j), and delivers hop by hop until no node has anything left to send. It
// returns every packet sent and the requests each deployment took.
func relayAll(t *testing.T, n, perNode int, id func(node, j int) string) (*cluster, []packet, map[string]int64) {
	t.Helper()
	c := relayCluster(t, n)
	want := map[string]int64{}
	for i, name := range allNames(n) {
		for j := range perNode {
			d := id(i, j)
			c.admitN(name, d, state.Limits{}, state.Reservation{Requests: 1, Tokens: 1}, 1)
			want[d]++
		}
	}
	var sent []packet
	for ps := c.hop(); len(ps) > 0; ps = c.hop() {
		sent = append(sent, ps...)
	}
	return c, sent, want
}

// A relay packs what it forwards to a finger into messages of up to packLimit bytes and
// compresses them: every packet stays within maxMessage, some hold more than maxMessage of
// records, and every count arrives everywhere.
func TestRelayPacksAndCompresses(t *testing.T) {
	const n = 50
	c, sent, want := relayAll(t, n, 20, func(node, j int) string { return fmt.Sprintf("deployment-%02d", (node+j)%40) })
	packed, bytes := 0, 0
	for _, p := range sent {
		bytes += len(p.msg)
		if len(p.msg) > maxMessage {
			t.Fatalf("%s -> %s: a %d-byte packet, want at most %d", p.from, p.to, len(p.msg), maxMessage)
		}
		if p.msg[0] != wireFlate {
			continue
		}
		full, err := expand(nil, p.msg, maxDelta)
		if err != nil {
			t.Fatalf("%s -> %s: %v", p.from, p.to, err)
		}
		if len(full) > maxMessage {
			packed++
		}
	}
	if packed == 0 {
		t.Fatalf("none of %d packets held more than %d bytes of records", len(sent), maxMessage)
	}
	for id, w := range want {
		c.wantSnapshot(allNames(n), id, w, w, 0)
	}
	t.Logf("%d packets, %d of them packed beyond %d bytes; %d bytes in all", len(sent), packed, maxMessage, bytes)
}

// Records that do not compress to half go in messages of maxMessage instead (compressed as
// far as they do): no packet is larger, and every count arrives everywhere.
func TestRelayIncompressibleFallsBack(t *testing.T) {
	const n, perNode = 20, 30
	rng := rand.New(rand.NewPCG(1, 2))
	ids := make([]string, n*perNode) // one each: a deployment ID repeated would compress
	for i := range ids {
		raw := make([]byte, 90)
		for j := range raw {
			raw[j] = byte(rng.Uint32())
		}
		ids[i] = base64.RawStdEncoding.EncodeToString(raw)
	}
	c, sent, want := relayAll(t, n, perNode, func(node, j int) string { return ids[node*perNode+j] })
	for _, p := range sent {
		if len(p.msg) > maxMessage {
			t.Fatalf("%s -> %s: a %d-byte packet, want at most %d", p.from, p.to, len(p.msg), maxMessage)
		}
		if p.msg[0] != wireFlate {
			continue
		}
		if full, err := expand(nil, p.msg, maxDelta); err != nil || len(full) > maxMessage {
			t.Fatalf("%s -> %s: %d bytes of records (%v), want at most %d", p.from, p.to, len(full), err, maxMessage)
		}
	}
	for id, w := range want {
		c.wantSnapshot(allNames(n), id, w, w, 0)
	}
}
