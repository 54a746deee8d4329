package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"syscall"
	"time"
)

// Nemesis timing: each fault is held for a random 5-20 s, with 5-10 s of quiet around it.
const (
	holdMin, holdMax   = 5 * time.Second, 20 * time.Second
	quietMin, quietMax = 5 * time.Second, 10 * time.Second
)

// AllNemeses are the fault kinds --nemesis all means (redis and redis-pause only in redis mode).
var AllNemeses = []string{KindPartition, KindLoss, KindKill, KindPause, KindClock, KindLeader, KindRedis, KindRedisPause}

// redisNemesis reports whether kind faults Redis itself, which only redis mode has.
func redisNemesis(kind string) bool { return kind == KindRedis || kind == KindRedisPause }

// Partition shapes.
var shapes = []string{"halves", "isolate", "ring", "bridge"}

// nemesis injects faults into a run's nodes and heals them.
type nemesis struct {
	kinds     []string
	nodes     []*node
	rng       *rand.Rand
	rec       *recorder
	cli       *client
	clockSkew time.Duration
	redis     *redisSetup // nil unless mode redis

	active *Fault // the fault in force, if any
}

// run injects one fault after another until ctx ends, then heals what is in force.
func (n *nemesis) run(ctx context.Context) error {
	if len(n.kinds) == 0 {
		return nil
	}
	for {
		if !wait(ctx, between(n.rng, quietMin, quietMax)) {
			return nil
		}
		kind := n.kinds[n.rng.IntN(len(n.kinds))]
		hold := between(n.rng, holdMin, holdMax)
		// A fault is injected whole even if the run ends meanwhile: the final heal undoes it.
		if _, err := n.start(context.WithoutCancel(ctx), kind); err != nil {
			return fmt.Errorf("nemesis %s: %w", kind, err)
		}
		if !wait(ctx, hold) {
			return nil // heal() runs after the workload, as the final heal
		}
		if err := n.heal(context.WithoutCancel(ctx)); err != nil {
			return err
		}
	}
}

func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

// wait waits d unless ctx ends first; it reports whether d passed.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (n *nemesis) names() []string {
	out := make([]string, len(n.nodes))
	for i, nd := range n.nodes {
		out[i] = nd.name
	}
	return out
}

func (n *nemesis) byName(name string) *node {
	for _, nd := range n.nodes {
		if nd.name == name {
			return nd
		}
	}
	return nil
}

// actionTimeout bounds one nemesis action (a kill and its wait, a restart, the packet filters),
// so that a stuck process or a held lock cannot hang the run.
const actionTimeout = 30 * time.Second

// start chooses one fault of kind, records it and injects it. The start op comes first, as
// Jepsen's invoke: a partition takes many iptables calls, and the fault must not be taken as
// absent while it is being put in place. It returns nil when there is nothing to inject (every
// node is down).
func (n *nemesis) start(ctx context.Context, kind string) (*Fault, error) {
	f, target := n.choose(ctx, kind)
	if f == nil {
		return nil, nil
	}
	n.rec.add(Op{Type: Info, F: FStart, Process: NemesisProcess, Value: Value{Fault: f}})
	n.active = f
	ctx, cancel := context.WithTimeout(ctx, actionTimeout)
	defer cancel()
	var err error
	switch f.Kind {
	case KindPartition:
		err = n.partition(ctx, f.Grudge)
	case KindLoss:
		err = n.loss(ctx, f.Loss)
	case KindKill:
		if err = target.kill(ctx); err != nil && !target.running() {
			err = nil // it ended on its own just now: the crash is recorded, and it is down as wanted
		}
	case KindPause:
		err = target.signal(syscall.SIGSTOP, false)
	case KindClock:
		err = target.setClock(f.Offset)
	case KindRedis:
		err = n.redis.killMaster(ctx)
	case KindRedisPause:
		err = n.redis.pauseMaster()
	}
	return f, err
}

// choose picks a fault of kind and its target node: kills and pauses only hit a running node.
func (n *nemesis) choose(ctx context.Context, kind string) (*Fault, *node) {
	f := &Fault{Kind: kind}
	names := n.names()
	var up []*node
	for _, nd := range n.nodes {
		if nd.running() {
			up = append(up, nd)
		}
	}
	var target *node
	if len(up) > 0 {
		target = up[n.rng.IntN(len(up))]
	}
	switch kind {
	case KindRedis, KindRedisPause:
		target, err := n.redis.pickMaster(ctx, n.rng)
		if err != nil {
			// Nothing to kill or pause that serves the run: the fault is skipped, not half-made.
			n.redis.log.Warn("redis nemesis: no master to fault", "kind", kind, "err", err)
			return nil, nil
		}
		f.Target = target
		return f, nil
	case KindPartition:
		f.Shape = shapes[n.rng.IntN(len(shapes))]
		f.Grudge = grudge(f.Shape, names, n.rng)
	case KindLoss:
		f.Nodes, f.Loss = names, 0.2+0.3*n.rng.Float64()
	case KindKill, KindLeader, KindPause, KindClock:
		if target == nil {
			return nil, nil
		}
		if kind == KindLeader {
			kind = KindKill
			if l := n.byName(n.leader(ctx)); l != nil && l.running() {
				target, f.Leader = l, true
			}
		}
		f.Kind, f.Nodes = kind, []string{target.name}
		if kind == KindClock {
			f.Offset = between(n.rng, time.Second, n.clockSkew+1)
			if n.rng.IntN(2) == 0 {
				f.Offset = -f.Offset
			}
		}
	}
	return f, target
}

// heal ends the fault in force, if any, and records that: after it is undone, except for a
// Redis restart, recorded before (Redis is empty from the moment it answers again; in a
// setup that fails over, after the failover, before the killed master comes back).
func (n *nemesis) heal(ctx context.Context) error {
	f := n.active
	if f == nil {
		return nil
	}
	n.active = nil
	ctx, cancel := context.WithTimeout(ctx, actionTimeout)
	defer cancel()
	stop := func() { n.rec.add(Op{Type: Info, F: FStop, Process: NemesisProcess, Value: Value{Fault: f}}) }
	var err error
	switch f.Kind {
	case KindPartition, KindLoss:
		err = n.flush(ctx)
	case KindKill:
		if nd := n.byName(f.Nodes[0]); !nd.running() {
			err = nd.start()
		}
	case KindPause:
		err = n.byName(f.Nodes[0]).signal(syscall.SIGCONT, false)
	case KindClock:
		err = n.byName(f.Nodes[0]).setClock(0)
	case KindRedisPause:
		err = n.redis.resume(ctx)
	case KindRedis:
		if err := n.redis.heal(ctx, stop); err != nil {
			return fmt.Errorf("healing %s: %w", f.Kind, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("healing %s: %w", f.Kind, err)
	}
	stop()
	return nil
}

// grudge computes, for a partition shape, which nodes each node cannot exchange packets with.
func grudge(shape string, names []string, rng *rand.Rand) map[string][]string {
	nodes := slices.Clone(names)
	rng.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
	cut := map[string][]string{}
	split := func(a, b []string) {
		for _, x := range a {
			for _, y := range b {
				cut[x] = append(cut[x], y)
				cut[y] = append(cut[y], x)
			}
		}
	}
	n := len(nodes)
	switch {
	case shape == "isolate" || n < 3:
		split(nodes[:1], nodes[1:])
	case shape == "halves":
		split(nodes[:n/2], nodes[n/2:])
	case shape == "ring" && n >= 4:
		// Majorities ring: on a ring, each node hears the nodes within distance k, a majority
		// with itself, and no two nodes hear the same majority.
		k := (n/2 + 1) / 2
		for i, x := range nodes {
			for j, y := range nodes {
				d := min((i-j+n)%n, (j-i+n)%n)
				if d > k {
					cut[x] = append(cut[x], y)
				}
			}
		}
	default: // bridge (and ring on 3 nodes): two sides that only the first node hears both of
		rest := nodes[1:]
		split(rest[:len(rest)/2], rest[len(rest)/2:])
	}
	for k := range cut {
		slices.Sort(cut[k])
		cut[k] = slices.Compact(cut[k])
	}
	return cut
}

// partition drops every packet between the nodes of each grudge, in both directions, in the
// nodes' own namespaces (iptables, as Jepsen does).
func (n *nemesis) partition(ctx context.Context, g map[string][]string) error {
	for name, others := range g {
		nd := n.byName(name)
		for _, o := range others {
			addr := n.byName(o).addr
			if err := inNS(ctx, nd.ns, "iptables", "-w", "-A", "INPUT", "-s", addr, "-j", "DROP"); err != nil {
				return err
			}
			if err := inNS(ctx, nd.ns, "iptables", "-w", "-A", "OUTPUT", "-d", addr, "-j", "DROP"); err != nil {
				return err
			}
		}
	}
	return nil
}

// loss drops packets between nodes at random with probability p (each node's input from the
// others); the controller's traffic is not touched.
func (n *nemesis) loss(ctx context.Context, p float64) error {
	for _, nd := range n.nodes {
		for _, o := range n.nodes {
			if o == nd {
				continue
			}
			if err := inNS(ctx, nd.ns, "iptables", "-w", "-A", "INPUT", "-s", o.addr, "-m", "statistic",
				"--mode", "random", "--probability", fmt.Sprintf("%.3f", p), "-j", "DROP"); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush removes every packet filter.
func (n *nemesis) flush(ctx context.Context) error {
	var errs []error
	for _, nd := range n.nodes {
		errs = append(errs, inNS(ctx, nd.ns, "iptables", "-w", "-F"))
	}
	return errors.Join(errs...)
}

// leader asks the live nodes who leads raft.
func (n *nemesis) leader(ctx context.Context) string {
	for _, nd := range n.nodes {
		if !nd.running() {
			continue
		}
		if cs, _, err := n.cli.status(ctx, nd.name); err == nil && cs.Leader != "" {
			return cs.Leader
		}
	}
	return ""
}
