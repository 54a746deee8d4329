package redistest

import (
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
