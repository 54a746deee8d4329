package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Redis setups of a redis-mode run (--redis).
const (
	RedisSingle   = "single"   // one redis-server; the nemesis kills it and starts it again, empty
	RedisCluster  = "cluster"  // a Redis Cluster of 3 masters with a replica each; the nemesis kills a master
	RedisSentinel = "sentinel" // a master, a replica and 3 Sentinels; the nemesis kills the master
)

// RedisSetups are the values of --redis.
var RedisSetups = []string{RedisSingle, RedisCluster, RedisSentinel}

// failsOver reports whether a setup's Redis survives the loss of its master: a replica takes
// over with the data it had received.
func failsOver(setup string) bool { return setup == RedisCluster || setup == RedisSentinel }

// Ports in the controller's namespace. Every Redis listens on the controller's address only.
const (
	redisPort        = 6379  // single, and the sentinel setup's first master (its replica: +1)
	clusterFirstPort = 7001  // the cluster's nodes: 7001-7006 (cluster bus: +10000)
	sentinelPort     = 26379 // the Sentinels: 26379-26381
	sentinelMaster   = "herd"
	clusterNodes     = 6 // 3 masters and a replica each
	sentinels        = 3
	// redisDownAfter is how long Sentinels and cluster nodes wait for a master that does not
	// answer before failing it over.
	redisDownAfter = time.Second
)

// redisReadyTimeout bounds starting a setup and, in a nemesis action, waiting for a failover
// or for a restarted node to be in sync as a replica.
const redisReadyTimeout = 30 * time.Second

// redisProc is one redis-server process (data node or Sentinel) in the controller's namespace.
type redisProc struct {
	port    int
	dir     string   // its working directory (cluster nodes.conf, Sentinel configuration)
	args    []string // its own arguments, after the common ones
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

func (p *redisProc) addr() string { return fmt.Sprintf("%s:%d", ctlHost, p.port) }

func (p *redisProc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// redisSetup is the Redis a redis-mode run keeps usage in, run in the controller's namespace
// so every node reaches it whatever the partition between them.
type redisSetup struct {
	kind, ns, dir          string
	password, sentinelPass string
	data                   []*redisProc // data nodes
	sentinels              []*redisProc
	keys                   []string // a key of each deployment of the run: where its usage lives
	log                    *slog.Logger

	killed *redisProc // the master the nemesis killed or paused, until it heals
	key    string     // in a cluster: the key whose master was killed or paused
}

// newRedisSetup prepares (without starting) a setup of kind in namespace ns, with its
// processes' directories and logs under dir. keys are the Redis keys of the run's deployments.
func newRedisSetup(kind, ns, dir string, keys []string, log *slog.Logger) *redisSetup {
	r := &redisSetup{kind: kind, ns: ns, dir: dir, password: randomHex(16), sentinelPass: randomHex(16), keys: keys, log: log}
	data := func(name string, port int, args ...string) *redisProc {
		return &redisProc{port: port, dir: filepath.Join(dir, name), args: args, logPath: filepath.Join(dir, name+".log")}
	}
	switch kind {
	case RedisCluster:
		for i := range clusterNodes {
			r.data = append(r.data, data(fmt.Sprintf("redis-%d", clusterFirstPort+i), clusterFirstPort+i,
				"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
				"--cluster-node-timeout", strconv.FormatInt(redisDownAfter.Milliseconds(), 10), "--masterauth", r.password))
		}
	case RedisSentinel:
		r.data = append(r.data, data("redis-master", redisPort, "--masterauth", r.password),
			data("redis-replica", redisPort+1, "--masterauth", r.password, "--replicaof", ctlHost, strconv.Itoa(redisPort)))
		for i := range sentinels {
			port := sentinelPort + i
			r.sentinels = append(r.sentinels, &redisProc{port: port, dir: filepath.Join(dir, fmt.Sprintf("sentinel-%d", port)),
				logPath: filepath.Join(dir, fmt.Sprintf("sentinel-%d.log", port))})
		}
	default:
		r.data = append(r.data, data("redis", redisPort))
	}
	return r
}

// routerSettings are the router_settings keys that point herd at the setup (the passwords
// come from the environment: REDIS_PASSWORD, REDIS_SENTINEL_PASSWORD).
func (r *redisSetup) routerSettings() map[string]any {
	rs := map[string]any{"redis_password": "os.environ/REDIS_PASSWORD"}
	switch r.kind {
	case RedisCluster:
		var seeds []string
		for _, p := range r.data[:3] {
			seeds = append(seeds, p.addr())
		}
		rs["redis_host"] = strings.Join(seeds, ",")
	case RedisSentinel:
		var addrs []string
		for _, s := range r.sentinels {
			addrs = append(addrs, s.addr())
		}
		rs["redis_host"] = strings.Join(addrs, ",")
		rs["redis_sentinel_master"] = sentinelMaster
		rs["redis_sentinel_password"] = "os.environ/REDIS_SENTINEL_PASSWORD"
	default:
		rs["redis_host"], rs["redis_port"] = ctlHost, redisPort
	}
	return rs
}

// env is what the nodes need in their environment.
func (r *redisSetup) env() []string {
	return []string{"REDIS_PASSWORD=" + r.password, "REDIS_SENTINEL_PASSWORD=" + r.sentinelPass}
}

// start starts every process (empty: no persistence, as a crashed cache comes back) and
// waits until the setup serves: a cluster agrees on its slots and replicas, the Sentinels
// know the master, its replica and each other.
func (r *redisSetup) start(ctx context.Context) error {
	for _, p := range r.data {
		if err := r.startProc(ctx, p); err != nil {
			return err
		}
	}
	switch r.kind {
	case RedisCluster:
		args := []string{"--cluster", "create"}
		for _, p := range r.data {
			args = append(args, p.addr())
		}
		if _, err := r.cli(ctx, r.data[0], append(args, "--cluster-replicas", "1", "--cluster-yes")...); err != nil {
			return err
		}
	case RedisSentinel:
		for _, s := range r.sentinels {
			if err := r.startProc(ctx, s); err != nil {
				return err
			}
		}
	}
	return r.poll(ctx, "Redis to be ready", func() error { return r.ready(ctx) })
}

// startProc starts p and waits until it accepts connections.
func (r *redisSetup) startProc(ctx context.Context, p *redisProc, extra ...string) error {
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := []string{"netns", "exec", r.ns, "redis-server"}
	pass := r.password
	if slices.Contains(r.sentinels, p) {
		conf := filepath.Join(p.dir, "sentinel.conf")
		if _, err := os.Stat(conf); errors.Is(err, os.ErrNotExist) {
			text := fmt.Sprintf("sentinel monitor %s %s %d %d\n", sentinelMaster, ctlHost, redisPort, sentinels/2+1) +
				fmt.Sprintf("sentinel auth-pass %s %s\n", sentinelMaster, r.password) +
				fmt.Sprintf("sentinel down-after-milliseconds %s %d\n", sentinelMaster, redisDownAfter.Milliseconds()) +
				// A failover whose election failed is tried again after twice this.
				fmt.Sprintf("sentinel failover-timeout %s %d\n", sentinelMaster, 3000) +
				fmt.Sprintf("sentinel sentinel-pass %s\n", r.sentinelPass)
			if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
				logf.Close()
				return err
			}
		}
		args = append(args, conf, "--sentinel")
		pass = r.sentinelPass
	}
	args = append(args, "--bind", ctlHost, "--port", strconv.Itoa(p.port), "--requirepass", pass,
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", p.dir)
	args = append(append(args, p.args...), extra...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	p.cmd, p.done = cmd, done
	dial := DialerIn(r.ns)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := dial(ctx, "tcp", p.addr())
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server did not start listening on %s: %w", p.addr(), err)
		}
		if !wait(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// kill ends p with SIGKILL and waits for it.
func (r *redisSetup) killProc(ctx context.Context, p *redisProc) error {
	if p.cmd == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
		p.cmd = nil
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop kills every process.
func (r *redisSetup) stop(ctx context.Context) {
	for _, p := range append(slices.Clone(r.data), r.sentinels...) {
		_ = r.killProc(ctx, p)
	}
}

// cli runs redis-cli against p, authenticated, and returns its output.
func (r *redisSetup) cli(ctx context.Context, p *redisProc, args ...string) (string, error) {
	pass := r.password
	if slices.Contains(r.sentinels, p) {
		pass = r.sentinelPass
	}
	all := append([]string{"netns", "exec", r.ns, "redis-cli", "-h", ctlHost, "-p", strconv.Itoa(p.port), "-a", pass, "--no-auth-warning"}, args...)
	out, err := exec.CommandContext(ctx, "ip", all...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("redis-cli -p %d %s: %v: %s", p.port, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// info is one field of p's INFO.
func (r *redisSetup) info(ctx context.Context, p *redisProc, section, field string) string {
	out, err := r.cli(ctx, p, "INFO", section)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// poll calls check every 100 ms until it returns nil or redisReadyTimeout passes.
func (r *redisSetup) poll(ctx context.Context, what string, check func() error) error {
	deadline := time.Now().Add(redisReadyTimeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if !wait(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// ready reports why the setup does not serve as a whole yet (nil: it does).
func (r *redisSetup) ready(ctx context.Context) error {
	switch r.kind {
	case RedisCluster:
		for _, p := range r.data {
			out, err := r.cli(ctx, p, "CLUSTER", "INFO")
			if err != nil {
				return err
			}
			if !strings.Contains(out, "cluster_state:ok") || !strings.Contains(out, "cluster_known_nodes:"+strconv.Itoa(clusterNodes)) ||
				!strings.Contains(out, "cluster_size:"+strconv.Itoa(clusterNodes/2)) {
				return fmt.Errorf("%s: %s", p.addr(), strings.Join(strings.Fields(out)[:min(7, len(strings.Fields(out)))], " "))
			}
		}
	case RedisSentinel:
		for _, s := range r.sentinels {
			out, err := r.cli(ctx, s, "SENTINEL", "MASTER", sentinelMaster)
			if err != nil {
				return err
			}
			f := strings.Split(out, "\n")
			got := map[string]string{}
			for i := 0; i+1 < len(f); i += 2 {
				got[f[i]] = f[i+1]
			}
			if got["num-slaves"] != "1" || got["num-other-sentinels"] != strconv.Itoa(sentinels-1) {
				return fmt.Errorf("sentinel %s knows %s replicas and %s other sentinels", s.addr(), got["num-slaves"], got["num-other-sentinels"])
			}
		}
	}
	for _, p := range r.data {
		if r.info(ctx, p, "replication", "role") == "slave" {
			if link := r.info(ctx, p, "replication", "master_link_status"); link != "up" {
				return fmt.Errorf("replica %s: link %q", p.addr(), link)
			}
		}
	}
	return nil
}

// master is the data node that serves key now (a cluster), or that the Sentinels name.
func (r *redisSetup) master(ctx context.Context, key string) (*redisProc, error) {
	switch r.kind {
	case RedisCluster:
		var from *redisProc
		for _, p := range r.data {
			if p.running() {
				from = p
				break
			}
		}
		if from == nil {
			return nil, errors.New("no cluster node runs")
		}
		slot, err := r.cli(ctx, from, "CLUSTER", "KEYSLOT", key)
		if err != nil {
			return nil, err
		}
		s, err := strconv.Atoi(slot)
		if err != nil {
			return nil, fmt.Errorf("CLUSTER KEYSLOT %s: %q", key, slot)
		}
		nodes, err := r.cli(ctx, from, "CLUSTER", "NODES")
		if err != nil {
			return nil, err
		}
		return r.slotOwner(nodes, s)
	case RedisSentinel:
		votes := map[string]int{}
		for _, sn := range r.sentinels {
			if out, err := r.cli(ctx, sn, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinelMaster); err == nil {
				votes[strings.Join(strings.Fields(out), ":")]++
			}
		}
		for addr, n := range votes {
			if n > sentinels/2 {
				for _, p := range r.data {
					if p.addr() == addr {
						return p, nil
					}
				}
			}
		}
		return nil, fmt.Errorf("no majority of the Sentinels names one master: %v", votes)
	}
	return r.data[0], nil
}

// slotOwner finds the master serving slot in CLUSTER NODES output.
func (r *redisSetup) slotOwner(nodes string, slot int) (*redisProc, error) {
	for _, line := range strings.Split(nodes, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !slices.Contains(strings.Split(f[2], ","), "master") {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		for _, rg := range f[8:] {
			lo, hi, found := strings.Cut(rg, "-")
			if !found {
				hi = lo
			}
			a, errA := strconv.Atoi(lo)
			b, errB := strconv.Atoi(hi)
			if errA != nil || errB != nil || slot < a || slot > b {
				continue
			}
			for _, p := range r.data {
				if p.addr() == addr {
					return p, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("no master serves slot %d", slot)
}

// pickMaster chooses the redis nemesis's target: single's redis-server; in a cluster the
// master of a deployment's keys (chosen with rng); in a Sentinel setup the master the
// Sentinels name. It returns its address.
func (r *redisSetup) pickMaster(ctx context.Context, rng *rand.Rand) (string, error) {
	p := r.data[0]
	if failsOver(r.kind) {
		r.key = r.keys[rng.IntN(len(r.keys))]
		var err error
		if p, err = r.master(ctx, r.key); err != nil {
			return "", err
		}
	}
	r.killed = p
	return p.addr(), nil
}

// killMaster kills the process pickMaster chose.
func (r *redisSetup) killMaster(ctx context.Context) error {
	if r.killed == nil {
		return errors.New("no Redis master chosen")
	}
	return r.killProc(ctx, r.killed)
}

// pauseMaster freezes the process pickMaster chose (SIGSTOP): unreachable, its connections
// open and hanging, its data kept. In a setup that fails over, a replica takes over if the
// pause outlasts redisDownAfter.
func (r *redisSetup) pauseMaster() error {
	if r.killed == nil || r.killed.cmd == nil {
		return errors.New("no running Redis master chosen")
	}
	return r.killed.cmd.Process.Signal(syscall.SIGSTOP)
}

// resume lets the paused master go on (SIGCONT). In a setup that fails over it then waits
// (within redisReadyTimeout) until the setup is whole again — a master that was replaced
// learns it is a replica now (from the cluster's gossip, or the Sentinels reconfigure it) and
// syncs — so the next fault finds a replica to promote.
func (r *redisSetup) resume(ctx context.Context) error {
	p := r.killed
	if p == nil {
		return nil
	}
	r.killed = nil
	if p.cmd == nil {
		return errors.New("the paused Redis master is gone")
	}
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		return err
	}
	if failsOver(r.kind) {
		if err := r.poll(ctx, "Redis to be whole after "+p.addr()+" resumed", func() error { return r.ready(ctx) }); err != nil {
			r.log.Warn("Redis is not whole again after a pause", "redis", p.addr(), "err", err)
		}
	}
	return nil
}

// heal brings the killed process back: single restarts it (empty). In a setup that fails
// over, it first waits (within redisReadyTimeout) until a replica has taken over, so the
// process never comes back as an empty master of data the others hold; then restarts it as
// a replica (a cluster node rejoins as one by itself; a Sentinel setup's former master is
// told whom to follow) and waits until it is in sync, so the next kill finds a replica to
// promote. recordStop is called when Redis may count anew: just before the restart.
func (r *redisSetup) heal(ctx context.Context, recordStop func()) error {
	p := r.killed
	if p == nil {
		recordStop()
		return nil
	}
	r.killed = nil
	if !failsOver(r.kind) {
		recordStop()
		return r.startProc(ctx, p)
	}
	var nm *redisProc
	err := r.poll(ctx, "a replica to take over from "+p.addr(), func() error {
		m, err := r.master(ctx, r.key)
		if err != nil {
			return err
		}
		if m == p || !m.running() || r.info(ctx, m, "replication", "role") != "master" {
			return fmt.Errorf("%s still serves %s", m.addr(), r.key)
		}
		nm = m
		return nil
	})
	if err != nil {
		// Redis stays down for those keys until the restart, which brings it back empty: the
		// checker's bound allows a new epoch there too.
		r.log.Warn("no failover; restarting the killed master", "redis", p.addr(), "err", err)
	}
	recordStop()
	var extra []string
	if r.kind == RedisSentinel && nm != nil {
		extra = []string{"--replicaof", ctlHost, strconv.Itoa(nm.port)}
	}
	if err := r.startProc(ctx, p, extra...); err != nil {
		return err
	}
	if nm == nil {
		return nil
	}
	if err := r.poll(ctx, p.addr()+" to follow "+nm.addr(), func() error {
		if role := r.info(ctx, p, "replication", "role"); role != "slave" {
			return fmt.Errorf("role %q", role)
		}
		if link := r.info(ctx, p, "replication", "master_link_status"); link != "up" {
			return fmt.Errorf("link %q", link)
		}
		return nil
	}); err != nil {
		r.log.Warn("the restarted master is not an in-sync replica yet", "redis", p.addr(), "err", err)
	}
	return nil
}
