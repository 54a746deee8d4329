package cluster

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"
)

// Fuzz targets for what a peer can send this package: forwarded requests and replies on the
// raft port (behind TLS, so only from a key holder, but still bounded) and raft metadata in
// gossip. The state backend's messages are fuzzed in state/crdt. CI runs each briefly:
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
	g.setLocal(&raftMeta{Addr: "127.0.0.1:7947", HasState: true, Expect: 3, Boot: "1x2y3z"})
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
