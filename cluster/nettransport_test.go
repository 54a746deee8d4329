package cluster

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"testing"
	"time"
)

// Packets of every size arrive whole, from the sender's address, each in a buffer of about its
// own size (not a 64 KiB one); streams connect both ways; Shutdown returns although nobody reads the channels.
func TestNetTransportCarriesPacketsAndStreams(t *testing.T) {
	a, err := listenTransport(net.ParseIP("127.0.0.1"), 0, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := listenTransport(net.ParseIP("127.0.0.1"), 0, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ip, port, err := a.FinalAdvertiseAddr("", 0)
	if err != nil || !ip.Equal(net.ParseIP("127.0.0.1")) || port != a.port() {
		t.Fatalf("advertise %v:%d, %v; want the bound 127.0.0.1:%d", ip, port, err, a.port())
	}
	bAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port()))
	for _, size := range []int{1, 1400, 60000} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		if _, err := a.WriteTo(msg, bAddr); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-b.PacketCh():
			if !bytes.Equal(p.Buf, msg) || cap(p.Buf) > size+size/4+64 {
				t.Fatalf("%d-byte packet arrived as %d bytes in a %d-byte buffer", size, len(p.Buf), cap(p.Buf))
			}
			if from := p.From.(*net.UDPAddr); from.Port != a.port() || !from.IP.Equal(net.ParseIP("127.0.0.1")) {
				t.Fatalf("packet from %v, want 127.0.0.1:%d", p.From, a.port())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d-byte packet lost on loopback", size)
		}
	}
	conn, err := a.DialTimeout(bAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	in := <-b.StreamCh()
	if _, err := conn.Write([]byte("push-pull")); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if got, err := io.ReadAll(in); err != nil || string(got) != "push-pull" {
		t.Fatalf("stream carried %q, %v", got, err)
	}
	in.Close()

	// Nobody reads b's channels any more; a packet in flight must not hold up Shutdown.
	if _, err := a.WriteTo([]byte("late"), bAddr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if b.packetsReceived.Load() < 4 {
			return errors.New("the late packet has not been read")
		}
		return nil
	})
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if sent, got := a.packetsSent.Load(), b.packetsReceived.Load(); sent != 4 || got != 4 || a.sent.Load() != b.received.Load() {
		t.Fatalf("a counted %d packets and %d bytes sent, b %d and %d received", sent, a.sent.Load(), got, b.received.Load())
	}
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteTo([]byte("x"), bAddr); err == nil {
		t.Fatal("a shut-down transport still sends")
	}
}
