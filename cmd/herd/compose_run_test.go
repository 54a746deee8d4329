//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/chaos"
)

// TestComposeClusterRuns is `docker compose up` of deploy/compose.yaml without docker: every
// service the file (and profile) starts runs as a real process, with the command line and
// environment the file gives it, in a network namespace of its own named after it, on a bridge
// in a namespace of its own (internal/chaos's Net), at a TEST-NET-2 address that exists nowhere
// else. Where compose's network gives a container what a process here does not have, the test
// stands in for it as follows:
//
//   - Service names: compose's DNS resolves each service's name to its container. Here every
//     namespace has an /etc/netns/<namespace>/hosts naming each running service's address,
//     which ip netns exec bind-mounts over /etc/hosts for the process it starts (Net.WriteHosts).
//   - Images: herd is this test binary run as herd (TestMain, as the other process tests do),
//     fakeupstream is built from cmd/fakeupstream, both the Dockerfile targets' sources;
//     redis:7-alpine is the machine's redis-server with the compose command line.
//   - Volumes: an argument under a volume's container path (/etc/herd/..., /var/lib/herd) is
//     replaced by the same path under the volume's source: deploy/compose in the repository for
//     the bind mount (read-only there; herd never writes its config), a fresh directory of the
//     service's own for a named volume. herd opens no path but those on its command line, so to
//     herd this is the mount; a real bind mount would need /etc/herd and /var/lib/herd to exist
//     on this machine as mount points, i.e. directories made in the host's /etc and /var/lib.
//   - Published ports (4001-4003 on the host): the test's client sits in the Net's controller
//     namespace on the bridge, as the host sits on a compose network's bridge, and reaches each
//     node's container port (4000) at its address directly.
//   - The advertise address: with gossip bound to 0.0.0.0 and no --advertise-addr, memberlist
//     advertises the first forwardable RFC 6890 address it finds, which a container's 172.x
//     address is and TEST-NET-2 is not (no other range may be used here), so each node gets
//     --advertise-addr <its address>:7946 after its compose command line: what memberlist would
//     have derived in the container.
//   - The redis image runs redis-server built with protected mode off (the official image patches
//     its default); here it gets --protected-mode no after its compose command line.
//
// Then the cluster must work as the README says: every node sees the three nodes alive and one
// raft leader, demo-model answers through every node, and the three nodes together admit at
// most the model group's rpm (the sum of its deployments' rpm in the mounted config) while the
// rest get 429. The redis profile runs too where redis-server is installed.
func TestComposeClusterRuns(t *testing.T) {
	needNamespaces(t)
	began := time.Now()
	if err := chaos.CleanStale(); err != nil { // an earlier test process killed before its cleanup
		t.Logf("removing an earlier run's namespaces: %v", err)
	}
	fakeupstream := buildFakeupstream(t)
	for _, tc := range []struct {
		name     string
		shell    map[string]string
		profiles []string
		backend  string // /cluster/status's backend_mode once the cluster is up: strict rights (the default cluster_limit_mode) over gossip, or Redis reachable
	}{
		{name: "gossip", backend: "strict"},
		{name: "redis", shell: map[string]string{"HERD_COMPOSE_CONFIG": "config.redis.yaml"}, profiles: []string{"redis"}, backend: "redis"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			if slices.Contains(tc.profiles, "redis") {
				if _, err := exec.LookPath("redis-server"); err != nil {
					t.Skip("redis-server not installed")
				}
			}
			up := composeUp(t, loadCompose(t, tc.shell), tc.profiles, fakeupstream)
			up.waitFormed(t, tc.backend)
			t.Logf("%s: cluster formed in %s", tc.name, time.Since(start).Round(time.Millisecond))
			for _, name := range herdServices {
				code, body := up.chat(name)
				var answer struct {
					Choices []struct{ Message struct{ Content string } }
				}
				if err := json.Unmarshal([]byte(body), &answer); code != http.StatusOK || err != nil || len(answer.Choices) == 0 || answer.Choices[0].Message.Content == "" {
					t.Fatalf("%s: demo-model chat completion: %d %s", name, code, body)
				}
			}
			up.checkSharedLimit(t, len(herdServices))
			if slices.Contains(tc.profiles, "redis") {
				// The counts the nodes kept are in Redis (a node that could not reach it would
				// have reported backend_mode "degraded" and counted alone).
				if n := up.redisKeys(t); n == 0 {
					t.Error("the redis service holds no keys after the load")
				}
			}
		})
	}
	t.Logf("whole test: %s", time.Since(began).Round(time.Millisecond))
}

// needNamespaces skips a test that builds network namespaces where it cannot, as
// internal/chaos's tests do, except in CI, which runs as root with iproute2 and must run it.
// (iptables, which the chaos suite's partitions need, is not needed here.)
func needNamespaces(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("creates network namespaces; skipped under -short")
	}
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root to create network namespaces"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs ip(8) to create network namespaces (install iproute2)"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CI must run this test: " + why)
	}
	t.Skip(why)
}

// buildFakeupstream builds cmd/fakeupstream, the Dockerfile's fakeupstream target.
func buildFakeupstream(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "fakeupstream")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/fakeupstream")
	cmd.Dir = "../.."
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/fakeupstream: %v\n%s", err, msg)
	}
	return out
}

// composeRun is the services of one compose up, running.
type composeRun struct {
	spec   composeSpec
	addrs  map[string]string // service -> its address on the bridge
	procs  map[string]*composeProc
	client *http.Client // from the controller's namespace
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	config string // the herd nodes' config, as a path on this machine
}

// composeProc is one service's process.
type composeProc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when it has exited
	err  error         // its exit, once done
}

func (p *composeProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// composeUp starts the services that compose up with profiles starts, each after the services
// it depends on (compose waits for nothing more than their start either), and stops them all at
// the end of the test, dependents first, as compose down does.
func composeUp(t *testing.T, spec composeSpec, profiles []string, fakeupstream string) *composeRun {
	t.Helper()
	var names []string
	for name, svc := range spec.Services {
		if len(svc.Profiles) == 0 || slices.ContainsFunc(svc.Profiles, func(p string) bool { return slices.Contains(profiles, p) }) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	cnet, err := chaos.NewNet(context.Background(), names)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cnet.Close(); err != nil {
			t.Errorf("removing the namespaces: %v", err)
		}
	})
	up := &composeRun{spec: spec, addrs: map[string]string{}, procs: map[string]*composeProc{}}
	for i, name := range names {
		up.addrs[name] = chaos.NodeAddr(i + 1)
	}
	if err := cnet.WriteHosts(up.addrs); err != nil {
		t.Fatal(err)
	}
	up.dial = chaos.DialerIn(cnet.Ctl)
	up.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: up.dial}}

	dir := t.TempDir()
	var levels [][]string // services in start order: each level depends only on earlier ones
	for started := map[string]bool{}; len(started) < len(names); {
		var level []string
		for _, name := range names {
			if !started[name] && !slices.ContainsFunc(spec.Services[name].DependsOn, func(d string) bool { return !started[d] }) {
				level = append(level, name)
			}
		}
		if len(level) == 0 {
			t.Fatalf("services %q: depends_on names a service that is not started (or a cycle)", names)
		}
		for _, name := range level {
			started[name] = true
		}
		levels = append(levels, level)
	}
	t.Cleanup(func() {
		for i := len(levels) - 1; i >= 0; i-- {
			var wg sync.WaitGroup
			for _, name := range levels[i] {
				if p := up.procs[name]; p != nil {
					wg.Add(1)
					go func() { defer wg.Done(); up.stop(t, p) }()
				}
			}
			wg.Wait()
		}
		if t.Failed() {
			for _, name := range names {
				if p := up.procs[name]; p != nil {
					logTail(t, p)
				}
			}
		}
	})
	for _, level := range levels {
		for _, name := range level {
			argv, env := up.commandLine(t, name, filepath.Join(dir, name), fakeupstream)
			p := &composeProc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
			logf, err := os.Create(p.log)
			if err != nil {
				t.Fatal(err)
			}
			// ip netns exec execs the command in place, so this process is the service itself.
			p.cmd = exec.Command("ip", append([]string{"netns", "exec", cnet.NS(name)}, argv...)...)
			p.cmd.Env, p.cmd.Dir = env, filepath.Join(dir, name)
			p.cmd.Stdout, p.cmd.Stderr = logf, logf
			// Killed with the test process; a run killed harder leaves its namespaces, with what
			// runs in them, to the next run's CleanStale.
			p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := p.cmd.Start(); err != nil {
				logf.Close()
				t.Fatalf("start %s: %v", name, err)
			}
			up.procs[name] = p
			go func() {
				p.err = p.cmd.Wait()
				logf.Close()
				close(p.done)
			}()
		}
	}
	return up
}

// commandLine is a service's argv and environment on this machine (see TestComposeClusterRuns
// for what stands in for what); dir is its own directory, the working directory it runs in.
func (up *composeRun) commandLine(t *testing.T, name, dir, fakeupstream string) (argv, env []string) {
	t.Helper()
	svc := up.spec.Services[name]
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range svc.Environment {
		env = append(env, k+"="+v)
	}
	// Volumes: SOURCE:TARGET[:MODE], SOURCE a path relative to the compose file or a volume name.
	mounts := map[string]string{} // container path -> path here
	for _, v := range svc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 {
			t.Fatalf("%s: volume %q: want SOURCE:TARGET[:MODE]", name, v)
		}
		src := filepath.Join(dir, parts[0]) // a named volume: empty and the service's own
		if strings.HasPrefix(parts[0], ".") || strings.HasPrefix(parts[0], "/") {
			abs, err := filepath.Abs(filepath.Join(filepath.Dir(composeFile), parts[0]))
			if err != nil {
				t.Fatal(err)
			}
			src = abs
		} else if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		mounts[parts[1]] = src
	}
	args := slices.Clone(svc.Command)
	for i, a := range args {
		for target, src := range mounts {
			if rest, ok := strings.CutPrefix(a, target); ok && (rest == "" || rest[0] == '/') {
				args[i] = src + rest
			}
		}
	}
	switch {
	case svc.Build != nil && svc.Build.Target == "herd":
		argv = append(append([]string{os.Args[0]}, args...), "--advertise-addr", up.addrs[name]+":7946")
		env = append(env, "HERD_TEST_RUN_AS_HERD=1")
		o, err := parseFlags(args, func(k string) string { return svc.Environment[k] }, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		up.config = o.configPath
	case svc.Build != nil && svc.Build.Target == "fakeupstream":
		argv = append([]string{fakeupstream}, args...)
	case strings.HasPrefix(svc.Image, "redis:") && len(args) > 0 && args[0] == "redis-server":
		redis, err := exec.LookPath("redis-server")
		if err != nil {
			t.Fatal(err)
		}
		argv = append(append([]string{redis}, args[1:]...), "--protected-mode", "no")
	default:
		t.Fatalf("%s: no stand-in for build %+v image %q", name, svc.Build, svc.Image)
	}
	return argv, env
}

// stop ends p as compose down does: SIGTERM, and SIGKILL after the service's stop_grace_period
// (docker's default 10 s), which counts as a failure. A service that had already exited crashed.
func (up *composeRun) stop(t *testing.T, p *composeProc) {
	if p.exited() {
		t.Errorf("%s exited by itself while the cluster ran: %v", p.name, p.err)
		return
	}
	grace := 10 * time.Second
	if g := up.spec.Services[p.name].StopGracePeriod; g != "" {
		d, err := time.ParseDuration(g)
		if err != nil {
			t.Errorf("%s: stop_grace_period %q: %v", p.name, g, err)
		}
		grace = d
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not stop within %s of SIGTERM", p.name, grace)
	}
}

// logTail shows the end of a service's output.
func logTail(t *testing.T, p *composeProc) {
	data, err := os.ReadFile(p.log)
	if err != nil {
		t.Logf("%s: %v", p.name, err)
		return
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	t.Logf("%s's last output lines:\n%s", p.name, strings.Join(lines[max(0, len(lines)-30):], "\n"))
}

// url is a path on a service's container port: the port the service publishes (ports:
// "HOST:CONTAINER") or, for a service that publishes none, port.
func (up *composeRun) url(name, port, path string) string {
	if ports := up.spec.Services[name].Ports; len(ports) > 0 {
		port = ports[0][strings.LastIndex(ports[0], ":")+1:]
	}
	return "http://" + up.addrs[name] + ":" + port + path
}

// do sends a request with the demo master key and returns the status and body (0 and the
// error's text when there is no answer).
func (up *composeRun) do(method, url, body string) (int, string) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer sk-herd-demo")
	req.Header.Set("Content-Type", "application/json")
	resp, err := up.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(b)
}

// chat sends the README's demo-model request to a node.
func (up *composeRun) chat(name string) (int, string) {
	return up.do(http.MethodPost, up.url(name, "4000", "/v1/chat/completions"),
		`{"model":"demo-model","messages":[{"role":"user","content":"Hello"}]}`)
}

// redisKeys asks the redis service how many keys it holds (DBSIZE, in RESP).
func (up *composeRun) redisKeys(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := up.dial(ctx, "tcp", up.addrs["redis"]+":6379")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "*1\r\n$6\r\nDBSIZE\r\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	n, perr := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, ":")))
	if err != nil || perr != nil || !strings.HasPrefix(line, ":") {
		t.Fatalf("redis DBSIZE: %q (%v)", line, errors.Join(err, perr))
	}
	return n
}

// composeStatus is the part of /cluster/status the test reads.
type composeStatus struct {
	Node        string                          `json:"node"`
	Members     []struct{ Name, Status string } `json:"members"`
	Leader      string                          `json:"leader"`
	BackendMode string                          `json:"backend_mode"`
	Homes       []string                        `json:"homes"`
}

// waitFormed polls every node's /cluster/status until each sees the three nodes alive, they
// agree on a raft leader and their limits are kept by backend (strict rights, with the three
// nodes as homes, or Redis reachable), or fails at a deadline or when a service exits.
func (up *composeRun) waitFormed(t *testing.T, backend string) {
	t.Helper()
	deadline := time.Now().Add(40 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond) // poll interval
	defer tick.Stop()
	for {
		why := up.notFormed(backend)
		if why == "" {
			return
		}
		for _, p := range up.procs {
			if p.exited() {
				t.Fatalf("%s exited while the cluster formed (%v); the cluster: %s", p.name, p.err, why)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster did not form in 40 s: %s", why)
		}
		<-tick.C
	}
}

// notFormed says why the cluster is not yet up, or "".
func (up *composeRun) notFormed(backend string) string {
	leader := ""
	for _, name := range herdServices {
		code, body := up.do(http.MethodGet, up.url(name, "4000", "/cluster/status"), "")
		var st composeStatus
		if code != http.StatusOK {
			return fmt.Sprintf("%s: /cluster/status: %d %s", name, code, body)
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return fmt.Sprintf("%s: /cluster/status: %v", name, err)
		}
		var alive []string
		for _, m := range st.Members {
			if m.Status == "alive" {
				alive = append(alive, m.Name)
			}
		}
		slices.Sort(alive)
		switch {
		case st.Node != name:
			return fmt.Sprintf("%s calls itself %q", name, st.Node)
		case !slices.Equal(alive, herdServices):
			return fmt.Sprintf("%s sees %q alive, want %q", name, alive, herdServices)
		case st.Leader == "" || leader != "" && st.Leader != leader:
			return fmt.Sprintf("%s sees raft leader %q (another node sees %q)", name, st.Leader, leader)
		case st.BackendMode != backend:
			return fmt.Sprintf("%s: backend_mode %q, want %q", name, st.BackendMode, backend)
		case backend == "strict" && !slices.Equal(slices.Sorted(slices.Values(st.Homes)), herdServices):
			// Strict limits are kept by shares the raft-written homes table hands out: until
			// every node has it, a burst meets nodes with no share yet and is partly refused.
			return fmt.Sprintf("%s sees homes %q, want %q", name, st.Homes, herdServices)
		}
		leader = st.Leader
	}
	return ""
}

// checkSharedLimit sends one and a half times demo-model's rpm over the nodes, a few at a
// time, round robin: together they admit at most the rpm (counting the requests sent before)
// and refuse the rest with 429, and the fake upstream sees exactly what they admitted. They
// also admit at least 95 % of it (as internal/chaos's strict tests ask of a burst on an empty
// window), so each node does not keep to a third of the limit either.
func (up *composeRun) checkSharedLimit(t *testing.T, sentBefore int) {
	t.Helper()
	data, err := os.ReadFile(up.config)
	if err != nil {
		t.Fatal(err)
	}
	env := config.MapEnv{}
	for k, v := range up.spec.Services[herdServices[0]].Environment {
		env[k] = v
	}
	cfg, err := config.Parse(up.config, data, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	limit := 0
	for _, d := range cfg.ModelList {
		if d.ModelName == "demo-model" {
			if d.Limits.RPM == 0 {
				t.Fatalf("%s: a demo-model deployment has no rpm limit", up.config)
			}
			limit += int(d.Limits.RPM)
		}
	}
	n := limit * 3 / 2
	codes := map[int]int{}
	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				code, body := up.chat(herdServices[i%len(herdServices)])
				mu.Lock()
				codes[code]++
				mu.Unlock()
				if code != http.StatusOK && code != http.StatusTooManyRequests {
					t.Errorf("request %d: %d %s", i, code, body)
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	admitted := sentBefore + codes[http.StatusOK]
	t.Logf("%d requests over %d nodes, limit %d rpm (%d admitted before): statuses %v", n, len(herdServices), limit, sentBefore, codes)
	if admitted > limit {
		t.Errorf("the nodes admitted %d in the minute, over the shared limit of %d", admitted, limit)
	}
	if admitted < limit*95/100 {
		t.Errorf("the nodes admitted %d in the minute, under 95 %% of the shared limit of %d", admitted, limit)
	}
	if codes[http.StatusOK]+codes[http.StatusTooManyRequests] != n {
		t.Errorf("statuses %v: want every request over the limit refused with 429", codes)
	}
	code, body := up.do(http.MethodGet, up.url("fakeupstream", "8081", "/fake/stats"), "")
	var stats struct{ Counts map[string]int64 }
	if err := json.Unmarshal([]byte(body), &stats); code != http.StatusOK || err != nil {
		t.Fatalf("fakeupstream /fake/stats: %d %s (%v)", code, body, err)
	}
	seen := 0
	for _, c := range stats.Counts {
		seen += int(c)
	}
	if seen != admitted {
		t.Errorf("the fake upstream saw %d requests (%v), the nodes admitted %d", seen, stats.Counts, admitted)
	}
}
