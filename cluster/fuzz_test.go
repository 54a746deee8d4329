package cluster

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
)

// Fuzz targets for what a peer can send this package: forwarded requests and replies on the
// raft port (behind TLS, so only from a key holder, but still bounded), the log entries and
// snapshots the config FSM applies, and raft metadata in gossip. The state backend's messages are fuzzed in state/crdt. CI runs each briefly:
// go test -run '^$' -fuzz FuzzX -fuzztime 10s ./cluster

func frame(hdr []byte, body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(hdr, uint32(len(body))), body...)
}

func FuzzReadRequest(f *testing.F) {
	f.Add(frame([]byte{opApply, 0, 0, 7, 208}, []byte(`{"expect":1}`)))
	f.Add(frame([]byte{opStats, 0, 0, 0, 0}, nil))
	f.Add([]byte{opApply, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		op, timeout, payload, err := readRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			if len(in) >= 9 && binary.BigEndian.Uint32(in[5:]) > maxFrame && !errors.Is(err, errFrameTooLarge) {
				t.Fatalf("oversized length read as %v", err)
			}
			return
		}
		if len(payload) > maxFrame || timeout < 0 {
			t.Fatalf("payload %d bytes, timeout %v", len(payload), timeout)
		}
		// What was read is exactly what was framed.
		want := frame([]byte{op, 0, 0, 0, 0}, payload)
		binary.BigEndian.PutUint32(want[1:], uint32(timeout/time.Millisecond))
		if !bytes.Equal(want, in[:len(want)]) {
			t.Fatalf("read %x from %x", want, in)
		}
	})
}

func FuzzReadReply(f *testing.F) {
	f.Add(frame([]byte{codeOK, 0, 0, 0, 0, 0, 0, 0, 9}, []byte("3")))
	f.Add(frame([]byte{codeRejected, 0, 0, 0, 0, 0, 0, 0, 0}, []byte("no")))
	f.Fuzz(func(t *testing.T, in []byte) {
		_, _, body, err := readReply(bufio.NewReader(bytes.NewReader(in)))
		if err == nil && (len(body) > maxFrame || len(in) < 13+len(body)) {
			t.Fatalf("body %d bytes from %d bytes of input", len(body), len(in))
		}
	})
}

func FuzzDecodeRaftMeta(f *testing.F) {
	var g gossipRaft
	g.setLocal(&raftMeta{Addr: "127.0.0.1:7947", HasState: true, Expect: 3, Boot: "1x2y3z", Proto: raftProto, Epoch: 1796208843412977202})
	f.Add(g.encode(false, 512))
	f.Add(g.encode(true, 512))
	f.Add([]byte(`R{"a":"herd-0:7947","e":-1}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		m := decodeRaftMeta(in)
		if m == nil {
			return
		}
		host, _, err := net.SplitHostPort(m.Addr)
		if err != nil || net.ParseIP(host) == nil || m.Expect < 0 || m.Expect > maxBootstrapExpect {
			t.Fatalf("accepted %+v", m)
		}
		var n Node
		n.raftGossip.observe("peer", in, StatusAlive) // must not panic either
	})
}

// fuzzStore is a ConfigStore at config version 1 and homes version 1, as every node holds it.
func fuzzStore(t testing.TB) *ConfigStore {
	static, file, err := config.Split([]byte(storeFile))
	if err != nil {
		t.Fatal(err)
	}
	s := NewConfigStore(static, file, config.MapEnv{"KEY": "k"}, nil)
	seed, _ := encodeCommand(configCommand{Expect: 0, Next: &file})
	table, _ := encodeHomesCommand(homesCommand{Expect: 0, Homes: []Home{{"a", 1}, {"b", 2}}})
	for i, cmd := range [][]byte{seed, table} {
		if _, err := s.FSM().Apply(uint64(i+1), cmd); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// FuzzApplyCommand feeds the config FSM any log entry (a forwarded write reaches it from any
// key holder): it must never panic, a refused entry changes nothing, and an applied one moves
// one of the two versions by exactly one and leaves a valid table.
func FuzzApplyCommand(f *testing.F) {
	f.Add([]byte(`{"expect":1,"check":true}`))
	f.Add([]byte(`o{"expect":1,"op":{"kind":"delete_model","index":0}}`))
	f.Add([]byte(`h{"expect":1,"homes":[{"name":"a","epoch":1},{"name":"c","epoch":3}]}`))
	f.Add([]byte(`h{"expect":1,"homes":[{"name":"b","epoch":1},{"name":"a","epoch":3}]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		s := fuzzStore(t)
		_, err := s.FSM().Apply(3, in)
		cfgV, homes := s.Version(), s.Homes()
		if err != nil {
			if cfgV != 1 || homes.Version != 1 || !slices.Equal(homes.Names(), []string{"a", "b"}) {
				t.Fatalf("refused (%v), yet config %d, homes %+v", err, cfgV, homes)
			}
			return
		}
		if cfgV+homes.Version > 3 || cfgV < 1 || homes.Version < 1 {
			t.Fatalf("one entry moved the versions to config %d, homes %d", cfgV, homes.Version)
		}
		if err := checkHomes(homes.Homes); err != nil {
			t.Fatalf("applied an invalid table %+v: %v", homes, err)
		}
	})
}

// FuzzRestoreSnapshot restores any bytes as a snapshot (the leader sends them to followers):
// never a panic; what restores is a valid table that snapshots and restores to itself.
func FuzzRestoreSnapshot(f *testing.F) {
	snap, _ := fuzzStore(f).FSM().Snapshot()
	f.Add(snap)
	f.Add([]byte(`{"version":3,"model_list":[]}`))
	f.Add([]byte(`{"version":1,"homes":{"version":0,"homes":[{"name":"a","epoch":1}]}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		s := fuzzStore(t)
		if err := s.FSM().Restore(in); err != nil {
			return
		}
		h := s.Homes()
		if err := checkHomes(h.Homes); err != nil || (h.Version == 0 && len(h.Homes) > 0) {
			t.Fatalf("restored table %+v (%v)", h, err)
		}
		again, err := s.FSM().Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		s2 := fuzzStore(t)
		if err := s2.FSM().Restore(again); err != nil {
			t.Fatalf("its own snapshot %s does not restore: %v", again, err)
		}
		if h2 := s2.Homes(); h2.Version != h.Version || !slices.Equal(h2.Homes, h.Homes) || s2.Version() != s.Version() {
			t.Fatalf("round trip: %+v v%d, then %+v v%d", h, s.Version(), h2, s2.Version())
		}
	})
}
