package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Ports every node uses on its own address.
const (
	httpPort   = 4000
	gossipPort = 7946 // raft takes gossip + 1
)

// node is one herd process and its lives: the same name, address, data dir and log across
// restarts, as a user would restart it.
type node struct {
	name, ns, addr string
	argv           []string // ip netns exec <ns> herd ...
	env            []string
	logPath        string
	clockPath      string // HERD_TEST_CLOCK_OFFSET_FILE

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current life ends
	expect  bool          // the current life is being ended on purpose (nemesis kill, shutdown)
	paused  bool
	onCrash func(n *node, how string) // a life ended that nobody ended
}

// start begins a new life. The node must not be running.
func (n *node) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== herd-chaos: %s starts %s at %s\n", n.name, n.addr, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command("ip", n.argv...)
	cmd.Env = n.env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a Ctrl-C on herd-chaos reaches herd-chaos alone and it ends its
	// nodes itself (ip netns exec execs herd in place: this process is herd). No Pdeathsig: Linux
	// sends it when the forking *thread* ends, which in Go can be any time; a herd-chaos that dies
	// leaves its nodes to the next run's CleanStale.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", n.name, err)
	}
	done := make(chan struct{})
	n.cmd, n.done, n.expect, n.paused = cmd, done, false, false
	go func() {
		err := cmd.Wait()
		logf.Close()
		n.mu.Lock()
		expected := n.expect
		n.mu.Unlock()
		close(done)
		if !expected && n.onCrash != nil {
			how := "exited with status 0"
			if err != nil {
				how = err.Error()
			}
			n.onCrash(n, how)
		}
	}()
	return nil
}

// running reports whether a life is in progress.
func (n *node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// signal sends sig to the current life; expectEnd marks an end the suite caused.
func (n *node) signal(sig syscall.Signal, expectEnd bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return fmt.Errorf("%s is not running", n.name)
	}
	if expectEnd {
		n.expect = true
	}
	switch sig {
	case syscall.SIGSTOP:
		n.paused = true
	case syscall.SIGCONT:
		n.paused = false
	}
	return n.cmd.Process.Signal(sig)
}

// kill ends the current life with SIGKILL and waits for it.
func (n *node) kill(ctx context.Context) error {
	if err := n.signal(syscall.SIGKILL, true); err != nil {
		return err
	}
	return n.wait(ctx)
}

// stop ends the current life gracefully (SIGTERM: drain, leave), falling back to SIGKILL.
func (n *node) stop(ctx context.Context) error {
	if !n.running() {
		return nil
	}
	n.mu.Lock()
	paused := n.paused
	n.mu.Unlock()
	if paused {
		_ = n.signal(syscall.SIGCONT, false)
	}
	if err := n.signal(syscall.SIGTERM, true); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := n.wait(wctx); err != nil {
		return n.kill(ctx)
	}
	return nil
}

func (n *node) wait(ctx context.Context) error {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s did not end: %w", n.name, ctx.Err())
	}
}

// setClock writes the node's clock offset (read by herd every 100 ms).
func (n *node) setClock(d time.Duration) error {
	tmp := n.clockPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(d.String()+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, n.clockPath)
}

// herdArgs are a node's command line, as a user would start it.
func herdArgs(herd, config, name, addr, dataDir string, join []string, bootstrapExpect int) []string {
	args := []string{herd, "--config", config, "--host", addr, "--port", fmt.Sprint(httpPort),
		"--node-name", name, "--gossip-addr", fmt.Sprintf("%s:%d", addr, gossipPort),
		"--data-dir", dataDir, "--bootstrap-expect", fmt.Sprint(bootstrapExpect), "--drain-timeout", "5s"}
	if len(join) > 0 {
		args = append(args, "--join", joinList(join))
	}
	return args
}

func joinList(addrs []string) string {
	s := ""
	for i, a := range addrs {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf("%s:%d", a, gossipPort)
	}
	return s
}

// newNode prepares node i (1-based) of a run in dir.
func newNode(dir, herd, config string, i int, all []string, net *Net, env []string) *node {
	name := fmt.Sprintf("n%d", i)
	addr := NodeAddr(i)
	var join []string
	for j := range all {
		if j+1 != i {
			join = append(join, NodeAddr(j+1))
		}
	}
	n := &node{name: name, ns: net.NS(name), addr: addr,
		logPath:   filepath.Join(dir, NodesDir, name+".log"),
		clockPath: filepath.Join(dir, "clock", name)}
	n.argv = append([]string{"netns", "exec", n.ns},
		herdArgs(herd, config, name, addr, filepath.Join(dir, "data", name), join, len(all))...)
	n.env = append(append([]string(nil), env...), "HERD_TEST_CLOCK_OFFSET_FILE="+n.clockPath)
	return n
}
