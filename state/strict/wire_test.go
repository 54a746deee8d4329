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
		var granted int64
		b := New(Options{Node: "self", Epoch: 1, Inner: local.New(local.Options{}), Network: netFuncs{to: func(to string, m []byte) bool {
			_ = decode(m, func(_ string, r *record) {
				if r.kind == kindGrant {
					granted += r.req
				}
			})
			return true
		}}, noLoop: true})
		b.SetHomes(1, []Home{{Name: "peer", Epoch: 1}, {Name: "self", Epoch: 1}})
		lim := state.Limits{RPM: 10}
		b.Counter("d").Admit(lim, state.Reservation{Requests: 1})
		b.HandleMessage(msg)
		b.HandleMessage(msg)
		b.Tick()
		if granted > part(10, 1, 2) {
			t.Fatalf("lent %d of a share of %d", granted, part(10, 1, 2))
		}
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
