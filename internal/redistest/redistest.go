// Package redistest runs real redis-server processes for tests: on free loopback ports, with a
// random password, no persistence, stopped when the test ends, optionally TLS only with
// certificates made for the test (TLS); alone (Start), as a Redis Cluster (StartCluster) or as
// a master with replicas watched by Sentinels (StartSentinel). Tests that use it are skipped
// with -short.
package redistest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binary is the server the package starts; CI installs it with apt.
const Binary = "redis-server"

const (
	startTimeout = 10 * time.Second // how long a start may take before the test fails
	stopTimeout  = 5 * time.Second  // how long a SIGTERM may take before SIGKILL
	bindAttempts = 5                // ports tried when another process takes ours between probe and bind
)

// Option changes how Start runs the server.
type Option func(*config)

type config struct {
	args       []string
	tls        bool   // TLS only (TLS, TLSClientAuth)
	clientAuth bool   // clients must present a certificate
	password   string // requirepass; "" means a random one
	clusterBus bool   // a Redis Cluster node: a free port for its cluster bus too
	sentinel   string // run as a Sentinel with this configuration file
}

// Args passes extra redis-server arguments, e.g. Args("--maxmemory", "1mb").
func Args(args ...string) Option {
	return func(c *config) { c.args = append(c.args, args...) }
}

// Password sets the server's requirepass instead of a random one: the nodes of a cluster, a
// master and its replicas share one.
func Password(pw string) Option {
	return func(c *config) { c.password = pw }
}

// Server is one redis-server process (or, after Stop or Kill, the place one ran).
type Server struct {
	t        testing.TB
	bin      string
	dir      string
	password string
	args     []string
	sentinel string // the Sentinel configuration it started with ("" for a data node)

	tls, clientAuth bool
	certs           certs // PEM files, with TLS

	mu      sync.Mutex
	port    int
	busPort int // the cluster bus port of a Redis Cluster node (0 otherwise)
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited
	out     *Buffer
}

// Start launches redis-server on a free 127.0.0.1 port and waits until it answers PING. The
// server stops when the test ends. Under -short the test is skipped. Without redis-server on
// PATH it is skipped too (so the README's test command works on a machine without Redis),
// except when CI is set: there it fails, so CI cannot pass by silently skipping the Redis tests.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bin := lookPath(t, Binary)
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.password == "" {
		c.password = randomHex(16)
	}
	var err error
	s := &Server{t: t, bin: bin, dir: t.TempDir(), password: c.password, args: c.args, tls: c.tls, clientAuth: c.clientAuth,
		sentinel: c.sentinel}
	if s.tls {
		if s.certs, err = makeCerts(s.dir); err != nil {
			t.Fatalf("redistest: TLS certificates: %v", err)
		}
	}
	t.Cleanup(s.Kill)
	var lastErr error
	for range bindAttempts {
		port, err := freePort()
		if err != nil {
			t.Fatalf("redistest: %v", err)
		}
		bus := 0
		if c.clusterBus {
			if bus, err = freePort(); err != nil {
				t.Fatalf("redistest: %v", err)
			}
		}
		s.mu.Lock()
		s.port, s.busPort = port, bus
		lastErr = s.startLocked()
		s.mu.Unlock()
		if lastErr == nil {
			return s
		}
		if !errors.Is(lastErr, errBind) {
			break
		}
	}
	t.Fatalf("redistest: %v", lastErr)
	return nil
}

// lookPath skips the test under -short, and finds bin on PATH. Without it the test is skipped
// too (so the README's test command works on a machine without Redis), except when CI is set:
// there it fails, so CI cannot pass by silently skipping the Redis tests.
func lookPath(t testing.TB, bin string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("redistest: starts redis-server; skipped in -short mode")
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		msg := fmt.Sprintf("redistest: %s not found on PATH: install redis-server and redis-tools (apt-get install -y redis-server) to run the Redis tests: %v", bin, err)
		if os.Getenv("CI") == "" {
			t.Skip(msg)
		}
		t.Fatal(msg)
	}
	return path
}

// Addr is the server's host:port.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Password is the server's requirepass.
func (s *Server) Password() string { return s.password }

// Running reports whether the process runs (not stopped, killed or exited).
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Stop ends the server with SIGTERM and waits for it to exit (SIGKILL if it takes too long).
func (s *Server) Stop() { s.signal(syscall.SIGTERM) }

// Kill ends the server with SIGKILL, as a crash would, and waits for it to exit.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

// Restart starts the server again on the same port, with the same password and an empty
// dataset (nothing is persisted), after stopping it if it still runs.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	// The port was ours a moment ago, but another process may take it; a test that needs the
	// same address cannot move, so a few tries with the same port is all that helps.
	var err error
	for range bindAttempts {
		if err = s.startLocked(); err == nil || !errors.Is(err, errBind) {
			break
		}
	}
	if err != nil {
		s.t.Fatalf("redistest: restart: %v", err)
	}
}

// Pause freezes the server with SIGSTOP: connections stay open and calls hang, as with a Redis
// stuck on a slow command or a full disk. Resume ends it.
func (s *Server) Pause() { s.send(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() { s.send(syscall.SIGCONT) }

func (s *Server) send(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused server handles no signal but SIGKILL until continued
	select {
	case <-s.done:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd, s.done = nil, nil
}

var errBind = errors.New("port already in use")

// startLocked starts the process on s.port and waits for PING. Called with s.mu held.
func (s *Server) startLocked() error {
	port := []string{"--port", strconv.Itoa(s.port)}
	if s.tls {
		port = s.tlsArgs(strconv.Itoa(s.port))
	}
	clientTLS, err := s.clientTLS()
	if err != nil {
		return fmt.Errorf("TLS client config: %w", err)
	}
	args := append(port,
		"--bind", "127.0.0.1",
		"--requirepass", s.password,
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		"--logfile", "",
	)
	if s.busPort != 0 {
		args = append(args, "--cluster-port", strconv.Itoa(s.busPort))
	}
	args = append(args, s.args...)
	if s.sentinel != "" {
		// Sentinel rewrites its configuration file as it learns the topology, so the file
		// is written once and a restart reads what it learnt.
		conf := filepath.Join(s.dir, "sentinel.conf")
		if _, err := os.Stat(conf); errors.Is(err, fs.ErrNotExist) {
			if err := os.WriteFile(conf, []byte(s.sentinel), 0o600); err != nil {
				return err
			}
		}
		args = append([]string{conf, "--sentinel"}, args...)
	}
	cmd := exec.Command(s.bin, args...)
	out := &Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-done:
			log := out.String()
			if strings.Contains(log, "Address already in use") {
				return fmt.Errorf("port %d: %w", s.port, errBind)
			}
			return fmt.Errorf("redis-server exited at start:\n%s", log)
		default:
		}
		err := pingVia(addr, s.password, time.Second, clientTLS)
		if err == nil {
			s.cmd, s.done, s.out = cmd, done, out
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("redis-server on %s did not answer PING within %v: %w\n%s", addr, startTimeout, err, out.String())
		}
		// Poll: wait for the process to exit or a short tick, whichever comes first.
		select {
		case <-done:
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ping authenticates and sends PING over raw RESP, so the package needs no client library.
func ping(addr, password string) error { return pingWithin(addr, password, time.Second) }

func pingWithin(addr, password string, d time.Duration) error { return pingVia(addr, password, d, nil) }

// pingVia is ping over TLS when tlsCfg is not nil.
func pingVia(addr, password string, d time.Duration, tlsCfg *tls.Config) error {
	var conn net.Conn
	var err error
	if tlsCfg != nil {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: d}, "tcp", addr, tlsCfg)
	} else {
		conn, err = net.DialTimeout("tcp", addr, d)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(d))
	req := fmt.Sprintf("*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n", len(password), password)
	if _, err := conn.Write([]byte(req)); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	for _, want := range []string{"+OK", "+PONG"} {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if got := strings.TrimRight(line, "\r\n"); got != want {
			return fmt.Errorf("got %q, want %q", got, want)
		}
	}
	return nil
}

// freePort asks the kernel for a free port. Another process may take it before redis-server
// binds it; Start retries with a new one when that happens.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}

// Buffer is a bytes.Buffer safe for one writer and concurrent readers: it collects the
// server's output for error messages, and tests use it to capture a backend's logs.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
