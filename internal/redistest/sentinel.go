package redistest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// MasterName is the name StartSentinel's Sentinels monitor the master under.
const MasterName = "herdtest"

// DownAfter is how long StartSentinel's Sentinels wait for a master that does not answer
// before they fail it over (about two seconds after it died, all told).
const DownAfter = time.Second

// Sentinel is a master with replicas, all with one password, watched by Sentinels that have a
// password of their own.
type Sentinel struct {
	t                          testing.TB
	password, sentinelPassword string
	// Servers are the data nodes: the first master, then its replicas. Which is master
	// changes with failovers (Master).
	Servers []*Server
	// Sentinels are the redis-server --sentinel processes.
	Sentinels []*Server
}

// StartSentinel starts a master, replicas replicas of it and sentinels Sentinels (quorum: a
// majority of them) and waits until every Sentinel knows the master, every replica and every
// other Sentinel, and every replica is in sync. Every process and directory is removed when
// the test ends, whether it passed or not. Skipped under -short, as Start.
func StartSentinel(t testing.TB, replicas, sentinels int) *Sentinel {
	t.Helper()
	s := &Sentinel{t: t, password: randomHex(16), sentinelPassword: randomHex(16)}
	master := Start(t, Password(s.password), Args("--masterauth", s.password))
	s.Servers = append(s.Servers, master)
	for range replicas {
		host, port, _ := strings.Cut(master.Addr(), ":")
		s.Servers = append(s.Servers, Start(t, Password(s.password), Args("--masterauth", s.password, "--replicaof", host, port)))
	}
	host, port, _ := strings.Cut(master.Addr(), ":")
	conf := fmt.Sprintf("sentinel monitor %s %s %s %d\n", MasterName, host, port, sentinels/2+1) +
		fmt.Sprintf("sentinel auth-pass %s %s\n", MasterName, s.password) +
		fmt.Sprintf("sentinel down-after-milliseconds %s %d\n", MasterName, DownAfter.Milliseconds()) +
		// A failover whose election failed (votes split, as on a busy machine) is tried again
		// after twice this: 6 s rather than the default 6 minutes.
		fmt.Sprintf("sentinel failover-timeout %s %d\n", MasterName, (3*time.Second).Milliseconds()) +
		// Sentinels authenticate to each other with the password clients use.
		fmt.Sprintf("sentinel sentinel-pass %s\n", s.sentinelPassword)
	for range sentinels {
		s.Sentinels = append(s.Sentinels, Start(t, Password(s.sentinelPassword), func(c *config) { c.sentinel = conf }))
	}
	poll(t, clusterReadyTimeout, "the Sentinels to be ready", func() error {
		for _, sn := range s.Sentinels {
			r, err := sn.Do("SENTINEL", "MASTER", MasterName)
			if err != nil {
				return fmt.Errorf("%s: %w", sn.Addr(), err)
			}
			f := fields(r)
			switch {
			case f["flags"] != "master":
				return fmt.Errorf("sentinel %s: master flags %q", sn.Addr(), f["flags"])
			case f["num-slaves"] != strconv.Itoa(replicas):
				return fmt.Errorf("sentinel %s knows %s replicas, want %d", sn.Addr(), f["num-slaves"], replicas)
			case f["num-other-sentinels"] != strconv.Itoa(sentinels-1):
				return fmt.Errorf("sentinel %s knows %s other sentinels, want %d", sn.Addr(), f["num-other-sentinels"], sentinels-1)
			}
		}
		for _, r := range s.Servers[1:] {
			if link, err := r.Info("replication", "master_link_status"); err != nil || link != "up" {
				return fmt.Errorf("replica %s: link %q (%v)", r.Addr(), link, err)
			}
		}
		return nil
	})
	return s
}

// Addrs are the Sentinels' host:port.
func (s *Sentinel) Addrs() []string {
	out := make([]string, len(s.Sentinels))
	for i, sn := range s.Sentinels {
		out[i] = sn.Addr()
	}
	return out
}

// Password is the data nodes' requirepass.
func (s *Sentinel) Password() string { return s.password }

// SentinelPassword is the Sentinels' requirepass.
func (s *Sentinel) SentinelPassword() string { return s.sentinelPassword }

// named is the data node a majority of the running Sentinels name as master now.
func (s *Sentinel) named() (*Server, error) {
	votes := map[string]int{}
	running := 0
	for _, sn := range s.Sentinels {
		if !sn.Running() {
			continue
		}
		running++
		r, err := sn.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MasterName)
		if err != nil {
			continue
		}
		if hp, ok := r.([]any); ok && len(hp) == 2 {
			votes[fmt.Sprintf("%v:%v", hp[0], hp[1])]++
		}
	}
	for addr, n := range votes {
		if n > running/2 {
			for _, d := range s.Servers {
				if d.Addr() == addr {
					return d, nil
				}
			}
			return nil, fmt.Errorf("the Sentinels name %s, not a server of this setup", addr)
		}
	}
	return nil, fmt.Errorf("no majority of the Sentinels names one master: %v", votes)
}

// Master is the data node a majority of the Sentinels name as master.
func (s *Sentinel) Master() *Server {
	s.t.Helper()
	m, err := s.named()
	if err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
	return m
}

// WaitFailover waits until a majority of the Sentinels name a running data node other than
// old as master (after the test killed old, about two seconds later) and that node says it
// is master. It returns it.
func (s *Sentinel) WaitFailover(old *Server) *Server {
	s.t.Helper()
	var m *Server
	poll(s.t, clusterReadyTimeout, "a Sentinel failover of "+old.Addr(), func() error {
		var err error
		if m, err = s.named(); err != nil {
			return err
		}
		if m == old || !m.Running() {
			return fmt.Errorf("the Sentinels still name %s", m.Addr())
		}
		if role, err := m.Info("replication", "role"); err != nil || role != "master" {
			return fmt.Errorf("%s: role %q (%v)", m.Addr(), role, err)
		}
		return nil
	})
	return m
}
