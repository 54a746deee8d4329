package redistest

import (
	"crypto/tls"
	"testing"
	"time"
)

func TestLifecycle(t *testing.T) {
	s := Start(t)
	addr := s.Addr()
	if err := ping(addr, s.Password()); err != nil {
		t.Fatalf("PING after Start: %v", err)
	}
	if err := ping(addr, "wrong"); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	s.Stop()
	if err := ping(addr, s.Password()); err == nil {
		t.Fatal("PING answered after Stop")
	}
	s.Restart()
	if s.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr(), addr)
	}
	if err := ping(addr, s.Password()); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	s.Kill()
	if err := ping(addr, s.Password()); err == nil {
		t.Fatal("PING answered after Kill")
	}
	s.Restart()
	s.Pause()
	if err := pingWithin(addr, s.Password(), 100*time.Millisecond); err == nil {
		t.Fatal("PING answered while paused")
	}
	s.Resume()
	if err := ping(addr, s.Password()); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
	s.Pause() // cleanup must stop a paused server too
}

// Two servers at once get different ports.
func TestTwoServers(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("both on %s", a.Addr())
	}
}

// A TLS server answers only TLS clients that trust its CA, and with TLSClientAuth only those
// with the client certificate; Restart keeps it TLS.
func TestTLS(t *testing.T) {
	s := Start(t, TLS())
	addr := s.Addr()
	trusted, err := s.clientTLS()
	if err != nil {
		t.Fatal(err)
	}
	if err := pingVia(addr, s.Password(), time.Second, trusted); err != nil {
		t.Fatalf("TLS PING with the CA: %v", err)
	}
	if err := pingVia(addr, s.Password(), time.Second, &tls.Config{MinVersion: tls.VersionTLS12}); err == nil {
		t.Fatal("TLS PING without the CA was verified")
	}
	if err := pingWithin(addr, s.Password(), 200*time.Millisecond); err == nil {
		t.Fatal("plain PING answered by a TLS-only server")
	}
	s.Restart()
	if err := pingVia(addr, s.Password(), time.Second, trusted); err != nil {
		t.Fatalf("TLS PING after Restart: %v", err)
	}

	m := Start(t, TLSClientAuth())
	withCert, err := m.clientTLS()
	if err != nil {
		t.Fatal(err)
	}
	if err := pingVia(m.Addr(), m.Password(), time.Second, withCert); err != nil {
		t.Fatalf("TLS PING with a client certificate: %v", err)
	}
	noCert := withCert.Clone()
	noCert.Certificates = nil
	if err := pingVia(m.Addr(), m.Password(), time.Second, noCert); err == nil {
		t.Fatal("TLS PING without a client certificate answered")
	}
}
