//go:build linux

package main

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// TestMain lets this test binary run as herd itself (HERD_TEST_RUN_AS_HERD=1), so the process
// tests start real herd processes without building a separate binary.
func TestMain(m *testing.M) {
	if os.Getenv("HERD_TEST_RUN_AS_HERD") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// herdProcess is a herd running as its own process.
type herdProcess struct {
	cmd        *exec.Cmd
	addr       string // HTTP
	gossipAddr string

	mu    sync.Mutex
	lines []string // its log so far
}

// logged reports whether a log line so far contains s.
func (p *herdProcess) logged(s string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.ContainsFunc(p.lines, func(l string) bool { return strings.Contains(l, s) })
}

// startProcess starts herd with args as a child process and waits until it serves. The kernel
// kills it if the test process dies; the test stops it with SIGTERM at cleanup.
func startProcess(t *testing.T, name string, args ...string) *herdProcess {
	t.Helper()
	return startProcessEnv(t, name, nil, args...)
}

// startProcessEnv is startProcess with extra NAME=value environment variables.
func startProcessEnv(t *testing.T, name string, env []string, args ...string) *herdProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "HERD_TEST_RUN_AS_HERD=1"), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &herdProcess{cmd: cmd}
	exited := make(chan struct{})
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	ready := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(exited)
		gossip := regexp.MustCompile(`msg="cluster started" .*gossip_addr=(\S+)`)
		listening := regexp.MustCompile(`msg="herd listening" addr=(\S+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			t.Logf("%s: %s", name, line)
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
			if m := gossip.FindStringSubmatch(line); m != nil {
				p.gossipAddr = m[1]
			}
			if m := listening.FindStringSubmatch(line); m != nil {
				p.addr = m[1]
				once.Do(func() { close(ready) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
	}()
	select {
	case <-ready:
	case <-exited:
		t.Fatalf("%s exited before serving", name)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not start", name)
	}
	return p
}

// startRaftTrio starts herd processes a, b and c on the config at path, each with its own data
// directory, bootstrapping raft together (b and c join through a), and waits until every node
// sees three voters and a leader.
func startRaftTrio(t *testing.T, path string) []*herdProcess {
	t.Helper()
	common := []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0", "--bootstrap-expect", "3"}
	a := startProcess(t, "a", append(common, "--node-name", "a", "--data-dir", t.TempDir())...)
	b := startProcess(t, "b", append(common, "--node-name", "b", "--data-dir", t.TempDir(), "--join", a.gossipAddr)...)
	c := startProcess(t, "c", append(common, "--node-name", "c", "--data-dir", t.TempDir(), "--join", a.gossipAddr)...)
	nodes := []*herdProcess{a, b, c}
	waitAll(t, nodes, "raft did not form", func(st map[string]any) bool {
		voters, _ := st["voters"].([]any)
		return len(voters) == 3 && st["leader"] != ""
	})
	return nodes
}

// waitAll polls each node's /cluster/status (30 s at most in all) until ready says yes, and
// returns the last answer.
func waitAll(t *testing.T, nodes []*herdProcess, what string, ready func(st map[string]any) bool) (st map[string]any) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		for st = rawClusterStatus(t, n.addr); !ready(st); st = rawClusterStatus(t, n.addr) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s: %v", n.addr, what, st)
			}
			time.Sleep(50 * time.Millisecond) // poll interval
		}
	}
	return st
}

// TestThreeProcessesKeepOneLimit starts three herd processes joined over loopback with one
// deployment of rpm 60 and spreads 120 requests over them: the upstream sees 60 (61 at most).
func TestThreeProcessesKeepOneLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; skipped with -short")
	}
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	path := filepath.Join(t.TempDir(), "config.yaml")
	// Fast mode, whose counts are gossiped (strict_test.go keeps a limit in strict mode).
	cfg := "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/shared\n      api_base: " + base + "/v1\n      rpm: 60\n" +
		"router_settings: {cluster_limit_mode: fast}\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	common := []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0"}
	a := startProcess(t, "a", append(common, "--node-name", "a")...)
	if a.gossipAddr == "" {
		t.Fatal("no gossip address logged")
	}
	b := startProcess(t, "b", append(common, "--node-name", "b", "--join", a.gossipAddr)...)
	c := startProcess(t, "c", append(common, "--node-name", "c", "--join", a.gossipAddr)...)
	nodes := []*herdProcess{a, b, c}
	// b and c joined through a; they learn of each other by gossip.
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range nodes {
		for st := clusterStatus(t, n.addr); len(st.Members) != 3; st = clusterStatus(t, n.addr) {
			if time.Now().After(deadline) {
				t.Fatalf("%s sees %d members, want 3", st.Node, len(st.Members))
			}
			time.Sleep(10 * time.Millisecond) // poll interval
		}
	}

	// 120 requests at about 40 req/s, round robin: the limit is shared, so half are refused.
	codes := map[int]int{}
	for i := 0; i < 120; i++ {
		resp, err := http.Post("http://"+nodes[i%3].addr+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes[resp.StatusCode]++
		time.Sleep(25 * time.Millisecond) // paces the load (40 req/s); not a wait for an event
	}
	got := up.Count("shared")
	t.Logf("statuses %v; upstream saw %d", codes, got)
	if got < 60 || got > 61 {
		t.Errorf("upstream saw %d requests in the minute, want 60 (61 at most)", got)
	}
	if codes[200] != int(got) || codes[200]+codes[429] != 120 {
		t.Errorf("statuses %v do not match the upstream's count %d", codes, got)
	}
}
