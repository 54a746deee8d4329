package redis

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/redistest"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/statetest"
)

// raceForLimits has two backends made by open race 64 goroutines for the rpm of every
// deployment in ids at once, three times over (each goroutine keeps asking until refused): in
// total exactly rpm must be admitted per deployment, by both nodes, with no failed Redis call
// (a CROSSSLOT or a redirect go-redis did not follow would be one) and nothing decided locally.
// open's backends run their windows on the Redis server's clock, as in production (their own,
// Now, is a fake that never moves), so the race may cross one of the server's seconds: escrow
// blocks end there and their remainders go back while the nodes are being refused.
func raceForLimits(t *testing.T, open func(prefix string) *Backend, ids []string) {
	t.Helper()
	prefix := uniquePrefix()
	nodes := []*Backend{open(prefix), open(prefix)}
	const rpm = 300
	lim := state.Limits{RPM: rpm, TPM: 100 * rpm}
	r := state.Reservation{Requests: 1, Tokens: 100}
	admitted := make([][2]atomic.Int64, len(ids))
	for _, n := range nodes {
		if err := n.ping(); err != nil { // connected, and the cluster's slots known
			t.Fatal(err)
		}
	}
	start := make(chan struct{}) // every goroutine races from the same moment
	var wg sync.WaitGroup
	for w := range 64 {
		n := w % 2
		for d, id := range ids {
			c := nodes[n].Counter(id)
			wg.Go(func() {
				<-start
				for {
					tk, err := c.Admit(lim, r)
					if err != nil {
						if !errors.Is(err, state.ErrNoCapacity) {
							t.Errorf("Admit %s: %v", id, err)
						}
						return
					}
					admitted[d][n].Add(1)
					c.Settle(tk, state.Usage{PromptTokens: 100})
				}
			})
		}
	}
	close(start)
	wg.Wait()
	for d, id := range ids {
		a, b := admitted[d][0].Load(), admitted[d][1].Load()
		t.Logf("%q: nodes admitted %d + %d = %d of %d", id, a, b, a+b, rpm)
		if a+b != rpm || a == 0 || b == 0 {
			t.Errorf("%s: nodes admitted %d and %d, want %d in total from both", id, a, b, rpm)
		}
	}
	for i, n := range nodes {
		s := n.Stats()
		t.Logf("node %d: %+v", i, s)
		if s.Errors != 0 || s.LocalAdmits != 0 || n.Mode() != ModeRedis {
			t.Errorf("node %d: mode %s, %d Redis calls failed, %d admissions decided locally", i, n.Mode(), s.Errors, s.LocalAdmits)
		}
	}
}

// Two nodes on a 3-master Redis Cluster keep every deployment's limit exactly, whichever
// master its keys live on, ids that need escaping in a hash tag included.
func TestClusterKeepsLimits(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC))
	ids := []string{"}x", "", "~y"}
	owners := map[*redistest.Server]bool{}
	for _, id := range ids {
		owners[c.MasterOf(hashTag(id))] = true
	}
	for i := 0; len(owners) < 3; i++ {
		id := fmt.Sprintf("dep-%d", i)
		owners[c.MasterOf(hashTag(id))] = true
		ids = append(ids, id)
	}
	raceForLimits(t, func(prefix string) *Backend {
		// Only one seed: the client finds the other masters itself.
		return newServerClockBackend(t, nil, Options{Addrs: c.Addrs()[:1], ClusterMode: true, Password: c.Password(),
			Now: clock.Now, KeyPrefix: prefix, Timeout: 5 * time.Second})
	}, ids)
}

// Two nodes given the Sentinels (with their own password) find the master and keep a limit.
func TestSentinelKeepsLimits(t *testing.T) {
	s := redistest.StartSentinel(t, 1, 3)
	clock := statetest.NewClock(time.Date(2025, 6, 2, 12, 0, 0, 370_000_000, time.UTC))
	raceForLimits(t, func(prefix string) *Backend {
		return newServerClockBackend(t, nil, Options{Addrs: s.Addrs(), MasterName: redistest.MasterName, Password: s.Password(),
			SentinelPassword: s.SentinelPassword(), Now: clock.Now, KeyPrefix: prefix, Timeout: 5 * time.Second})
	}, []string{"a", "b", "c"})
}

// A deployment's window runs on the clock of the master its keys live on, from its first call:
// a node whose last reply came from a master 2 minutes ahead (here: told so) starts using a
// deployment of another master on that master's clock, read when the backend started, and
// finds the window the other node filled still full.
func TestClusterDeploymentStartsOnItsMastersClock(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	prefix := uniquePrefix()
	open := func() *Backend {
		return newServerClockBackend(t, nil, Options{Addrs: c.Addrs(), ClusterMode: true, Password: c.Password(),
			KeyPrefix: prefix, Timeout: 5 * time.Second})
	}
	a, b := open(), open()
	owners := map[*redistest.Server]bool{}
	var ids []string
	for i := 0; len(owners) < 3; i++ {
		id := fmt.Sprintf("dep-%d", i)
		if m := c.MasterOf(hashTag(id)); !owners[m] {
			owners[m] = true
			ids = append(ids, id)
		}
	}
	lim := state.Limits{RPM: 10}
	r := state.Reservation{Requests: 1}
	for _, id := range ids {
		for i := range 10 {
			if _, err := a.Counter(id).Admit(lim, r); err != nil {
				t.Fatalf("%s: a's admission %d: %v", id, i+1, err)
			}
		}
	}
	for _, id := range ids {
		// What a reply from a master 2 minutes ahead leaves in b's estimate.
		b.srv.seen(time.Now(), time.Now().Add(2*time.Minute).UnixMicro())
		if _, err := b.Counter(id).Admit(lim, r); !errors.Is(err, state.ErrNoCapacity) {
			t.Errorf("%s: b admitted an 11th at rpm 10 (err %v): it started on another master's clock and moved the window on", id, err)
		}
	}
}
