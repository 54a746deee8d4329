package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// redisPort is where redis-server listens on the controller's address in --mode redis.
const redisPort = 6379

// redisServer is the real redis-server a redis-mode run keeps usage in, run in the
// controller's namespace so every node reaches it whatever the partition between them.
type redisServer struct {
	ns, password, logPath string
	cmd                   *exec.Cmd
	done                  chan struct{}
}

func (r *redisServer) addr() string { return fmt.Sprintf("%s:%d", ctlHost, redisPort) }

// start starts redis-server (empty: no persistence, as a crashed cache comes back) and waits
// until it accepts connections.
func (r *redisServer) start(ctx context.Context) error {
	logf, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", "netns", "exec", r.ns, "redis-server", "--bind", ctlHost, "--port", fmt.Sprint(redisPort),
		"--requirepass", r.password, "--save", "", "--appendonly", "no", "--protected-mode", "no")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	r.cmd, r.done = cmd, done
	dial := DialerIn(r.ns)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := dial(ctx, "tcp", r.addr())
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server did not start listening on %s: %w", r.addr(), err)
		}
		if !wait(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// signal sends sig to redis-server: SIGSTOP freezes it with its data and its connections open,
// SIGCONT resumes it.
func (r *redisServer) signal(sig syscall.Signal) error {
	if r.cmd == nil {
		return fmt.Errorf("redis-server is not running")
	}
	return r.cmd.Process.Signal(sig)
}

// kill ends redis-server with SIGKILL and waits for it.
func (r *redisServer) kill(ctx context.Context) error {
	if r.cmd == nil {
		return nil
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-r.done:
		r.cmd = nil
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
