package redistest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
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

// leftovers runs start in a subtest and reports the processes and directories of the servers
// it returns that still exist once the subtest's cleanups have run.
func leftovers(t *testing.T, start func(t *testing.T) []*Server) []string {
	var pids []int
	var dirs []string
	t.Run("run", func(t *testing.T) {
		for _, s := range start(t) {
			s.mu.Lock()
			if s.cmd != nil {
				pids = append(pids, s.cmd.Process.Pid)
			}
			s.mu.Unlock()
			dirs = append(dirs, s.dir)
		}
	})
	var left []string
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			left = append(left, fmt.Sprintf("process %d (%v)", pid, err))
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			left = append(left, "directory "+d)
		}
	}
	return left
}

// A 3-master cluster with a replica each: keys spread over the masters, a node redirects a key
// it does not serve, a killed master's replica takes over with its data, and the old master
// comes back as a replica. Nothing is left behind.
func TestCluster(t *testing.T) {
	left := leftovers(t, func(t *testing.T) []*Server {
		c := StartCluster(t, 3, 1)
		if got := len(c.Masters()); got != 3 {
			t.Fatalf("%d masters, want 3", got)
		}
		owners := map[*Server]bool{}
		for i := range 30 {
			owners[c.MasterOf(fmt.Sprintf("{k%d}", i))] = true
		}
		if len(owners) != 3 {
			t.Fatalf("30 keys landed on %d masters", len(owners))
		}
		key := "{dep}:w"
		m := c.MasterOf(key)
		if _, err := m.Do("SET", key, "v"); err != nil {
			t.Fatalf("SET on its master: %v", err)
		}
		for _, n := range c.Nodes {
			if n == m {
				continue
			}
			_, err := n.Do("SET", key, "v")
			var re ReplyError
			if !errors.As(err, &re) || !strings.HasPrefix(string(re), "MOVED ") {
				t.Fatalf("SET on %s (not its master): %v, want MOVED", n.Addr(), err)
			}
		}
		// WAIT: the replica has the write before its master dies.
		if r, err := m.Do("WAIT", "1", "5000"); err != nil || r.(int64) != 1 {
			t.Fatalf("WAIT 1 replica: %v %v", r, err)
		}
		m.Kill()
		nm := c.WaitFailover(key, m)
		if v, err := nm.Do("GET", key); err != nil || v != "v" {
			t.Fatalf("GET on the new master %s: %v %v", nm.Addr(), v, err)
		}
		m.Restart()
		poll(t, clusterReadyTimeout, "the old master to rejoin as a replica", func() error {
			if role, err := m.Info("replication", "role"); err != nil || role != "slave" {
				return fmt.Errorf("role %q (%v)", role, err)
			}
			return nil
		})
		return c.Nodes
	})
	if len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// A master, a replica and three Sentinels: the Sentinels name the master, and after it is
// killed they name the replica, which has its data. Nothing is left behind.
func TestSentinel(t *testing.T) {
	left := leftovers(t, func(t *testing.T) []*Server {
		s := StartSentinel(t, 1, 3)
		m := s.Master()
		if m != s.Servers[0] {
			t.Fatalf("the Sentinels name %s, want the first master %s", m.Addr(), s.Servers[0].Addr())
		}
		if _, err := s.Sentinels[0].Do("PING"); err != nil {
			t.Fatalf("PING a Sentinel with its password: %v", err)
		}
		if _, err := do(s.Sentinels[0].Addr(), s.Password(), time.Second, nil, "PING"); err == nil {
			t.Fatal("a Sentinel took the data nodes' password")
		}
		if _, err := m.Do("SET", "k", "v"); err != nil {
			t.Fatal(err)
		}
		if r, err := m.Do("WAIT", "1", "5000"); err != nil || r.(int64) != 1 {
			t.Fatalf("WAIT 1 replica: %v %v", r, err)
		}
		m.Kill()
		nm := s.WaitFailover(m)
		if nm != s.Servers[1] {
			t.Fatalf("new master %s, want the replica %s", nm.Addr(), s.Servers[1].Addr())
		}
		if v, err := nm.Do("GET", "k"); err != nil || v != "v" {
			t.Fatalf("GET on the new master: %v %v", v, err)
		}
		return append(slices.Clone(s.Servers), s.Sentinels...)
	})
	if len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
