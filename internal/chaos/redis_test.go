package chaos

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"
)

// TestRedisNemesisFailsOver: in a controller namespace, each setup the redis nemesis knows
// starts and serves; the nemesis kills the master of a deployment's keys, a replica takes over
// (cluster, sentinel) with the data written before, and the heal brings the killed process
// back as an in-sync replica; twice, so the second kill hits the promoted replica. Every
// process and the namespaces are gone afterwards.
func TestRedisNemesisFailsOver(t *testing.T) {
	needRoot(t)
	for _, tool := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	for _, setup := range []string{RedisCluster, RedisSentinel, RedisSingle} {
		t.Run(setup, func(t *testing.T) {
			ctx := context.Background()
			n, err := NewNet(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			keys := redisKeys([]DeploymentInfo{{ID: "alpha-1"}, {ID: "alpha-2"}, {ID: "beta-1"}})
			r := newRedisSetup(setup, n.Ctl, t.TempDir(), keys, slog.New(slog.NewTextHandler(testLog{t}, nil)))
			defer r.stop(ctx)
			if err := r.start(ctx); err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			var killed []string
			for round := range 2 {
				target, err := r.pickMaster(ctx, rng)
				if err != nil {
					t.Fatal(err)
				}
				key := r.key
				if key == "" {
					key = keys[0]
				}
				m, err := r.master(ctx, key)
				if err != nil || m.addr() != target {
					t.Fatalf("round %d: picked %s, the master of %s is %v (%v)", round, target, key, m, err)
				}
				if _, err := r.cli(ctx, m, "SET", key, "v"+target); err != nil {
					t.Fatal(err)
				}
				if failsOver(setup) {
					// The write is on a replica before the master dies.
					if out, err := r.cli(ctx, m, "WAIT", "1", "5000"); err != nil || out != "1" {
						t.Fatalf("WAIT: %q %v", out, err)
					}
				}
				if err := r.killMaster(ctx); err != nil {
					t.Fatal(err)
				}
				if m.running() {
					t.Fatalf("%s still runs after the kill", target)
				}
				stopped := false
				if err := r.heal(ctx, func() { stopped = true }); err != nil {
					t.Fatal(err)
				}
				if !stopped || !m.running() {
					t.Fatalf("round %d: heal recorded the stop: %v; %s runs again: %v", round, stopped, target, m.running())
				}
				nm, err := r.master(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				if !failsOver(setup) {
					if out, _ := r.cli(ctx, nm, "GET", key); out != "" {
						t.Fatalf("a restarted single Redis still holds %q", out)
					}
					continue
				}
				if nm == m {
					t.Fatalf("round %d: %s serves %s again after its kill", round, target, key)
				}
				if out, err := r.cli(ctx, nm, "GET", key); err != nil || out != "v"+target {
					t.Fatalf("round %d: the new master %s has %q (%v), want the write made before the kill", round, nm.addr(), out, err)
				}
				if role := r.info(ctx, m, "replication", "role"); role != "slave" {
					t.Fatalf("round %d: the healed %s is %q, want a replica", round, target, role)
				}
				killed = append(killed, target)
				if setup == RedisSentinel {
					rng = rand.New(rand.NewPCG(1, 2)) // the same key: the second kill hits the promoted replica
				}
			}
			t.Logf("killed %s", strings.Join(killed, ", "))
			if setup == RedisSentinel && killed[0] == killed[1] {
				t.Fatalf("both kills hit %s: the second should have hit the promoted replica", killed[0])
			}
			r.stop(ctx)
			if out, err := exec.Command("ip", "netns", "pids", n.Ctl).Output(); err != nil || strings.TrimSpace(string(out)) != "" {
				t.Errorf("processes left in the controller's namespace after stop: %q (%v)", out, err)
			}
		})
	}
}

// testLog sends log lines to t.Log.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
