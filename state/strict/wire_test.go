package strict

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/local"
)

func sampleRecords() []record {
	return []record{
		{kind: kindWant, dep: "gpt-4o-eu", id: 7, req: 3, tok: 4000, dReq: 2.5, dTok: 812.125, rpm: 600, tpm: 100000},
		{kind: kindGrant, dep: "gpt-4o-eu", id: 7, loan: 99, req: 2, tok: 3000},
		{kind: kindClose, dep: "d", loan: 99, req: 1, tok: 120},
		{kind: kindAbandon, dep: "d", id: 8},
		{kind: kindDemand, dep: "d", dReq: 0.5, dTok: 10},
		{kind: kindRecall, dep: "d", loan: 99},
	}
}

func TestWireRoundTrip(t *testing.T) {
	var enc encoder
	want := sampleRecords()
	for _, r := range want {
		enc.add(r)
	}
	msgs := enc.flush("node-a")
	if len(msgs) != 1 {
		t.Fatalf("%d messages for six small records", len(msgs))
	}
	var got []record
	if err := decode(msgs[0], func(from string, r *record) {
		if from != "node-a" {
			t.Fatalf("from %q", from)
		}
		got = append(got, *r)
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("decoded %d records; want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("record %d: got %+v; want %+v", i, got[i], want[i])
		}
	}
}

func TestEncoderSplitsUnderTheDatagramSize(t *testing.T) {
	var enc encoder
	for i := range 200 {
		enc.add(record{kind: kindDemand, dep: string(bytes.Repeat([]byte{'a' + byte(i%26)}, 40)), dReq: 1, dTok: 2})
	}
	n := 0
	for _, m := range enc.flush("n") {
		if len(m) > maxMessage+maxName+8 {
			t.Fatalf("message of %d bytes", len(m))
		}
		if err := decode(m, func(string, *record) { n++ }); err != nil {
			t.Fatal(err)
		}
	}
	if n != 200 {
		t.Fatalf("decoded %d of 200 records", n)
	}
}

func TestDecodeRefusesWholeMessages(t *testing.T) {
	good := encodeOne("a", sampleRecords()[0])
	bad := [][]byte{
		nil,
		{Magic},
		{Magic, version + 1, 1, 'a', kindDemand, 1, 'd', 0, 0},
		{Magic, version, 0},                                          // no sender
		{Magic, version, 1, 'a'},                                     // no records
		{Magic, version, 1, 'a', 99, 1, 'd'},                         // unknown kind
		{Magic, version, 1, 'a', kindDemand, 0, 0, 0},                // no deployment
		{Magic, version, 1, 'a', kindDemand, 5, 'd'},                 // string past the end
		append(bytes.Clone(good), kindClose, 1, 'd', 1),              // a good record, then a cut one
		binary.AppendUvarint(bytes.Clone(good[:len(good)-1]), 1<<62), // a count beyond MaxCount
	}
	for i, m := range bad {
		calls := 0
		if err := decode(m, func(string, *record) { calls++ }); err == nil || calls != 0 {
			t.Errorf("message %d %x: err %v after %d records; want a refusal before any", i, m, err, calls)
		}
	}
}

// A peer's message can never crash a node, nor make it lend what it does not hold.
func FuzzHandleMessage(f *testing.F) {
	var enc encoder
	for _, r := range sampleRecords() {
		enc.add(r)
	}
	for _, m := range enc.flush("peer") {
		f.Add(m)
	}
	f.Add(encodeOne("peer", record{kind: kindWant, dep: "d", id: 1, req: 1 << 40, tok: 1 << 40, rpm: 1 << 40}))
	f.Fuzz(func(t *testing.T, msg []byte) {
		granted := map[string]bool{"d": true}
		b := New(Options{Node: "self", Epoch: 1, Inner: local.New(local.Options{}), Network: netFuncs{to: func(to string, m []byte) bool {
			_ = decode(m, func(_ string, r *record) {
				if r.kind == kindGrant {
					granted[r.dep] = true
				}
			})
			return true
		}}, noLoop: true})
		b.SetHomes(1, []Home{{Name: "peer", Epoch: 1}, {Name: "self", Epoch: 1}})
		b.Counter("d").Admit(state.Limits{RPM: 10}, state.Reservation{Requests: 1})
		// A home lends under its own config's limits once it admitted ("d": rpm 10), and under
		// the borrower's for a deployment it has not served yet; what it has out, lent or
		// spent, never exceeds its share.
		check := func(when string) {
			for dep := range granted {
				c := b.counters.Lookup(dep)
				if c == nil {
					t.Fatalf("%s: granted for %q, which this node keeps no rights for", when, dep)
				}
				c.mu.Lock()
				lim, lentReq, lentTok := c.lim, c.lentReq, c.lentTok
				busyReq, busyTok := c.busy.Sums()
				c.mu.Unlock()
				if dep == "d" && lim != (state.Limits{RPM: 10}) {
					t.Fatalf("%s: a peer changed the configured limits of d to %+v", when, lim)
				}
				if lentReq+busyReq > part(lim.RPM, 1, 2) || lim.TPM > 0 && lentTok+busyTok > part(lim.TPM, 1, 2) {
					t.Fatalf("%s: %q has %d+%d requests, %d+%d tokens out (lent+busy) of a share of %d, %d",
						when, dep, lentReq, busyReq, lentTok, busyTok, part(lim.RPM, 1, 2), part(lim.TPM, 1, 2))
				}
			}
		}
		b.HandleMessage(msg)
		check("first delivery")
		b.HandleMessage(msg)
		check("second delivery")
		b.Tick()
		check("tick")
	})
}

// With Wait, a request that finds no rights waits for a loan on the way instead of failing.
func TestAdmitWaitsForALoan(t *testing.T) {
	cl := newCluster(t, 2, 11, func(o *Options) { o.Wait = time.Second })
	cl.delay = 20 * time.Millisecond
	// Deliver delayed messages in the background while node0 waits, as a network would.
	done := make(chan struct{})
	defer close(done)
	go func() {
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				cl.clock.Advance(time.Millisecond)
				cl.land()
			}
		}
	}()
	calls := cl.load("node0", "d", rpm60, 31, 0)
	if len(calls) != 31 {
		t.Fatalf("admitted %d of 31: the request past the own share of 30 should have waited for a loan", len(calls))
	}
}
