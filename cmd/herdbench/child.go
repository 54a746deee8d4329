package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// lineLog is a child's stdout and stderr: it keeps the last lines (to explain a failure),
// counts them, and looks for the line that says the child is ready.
type lineLog struct {
	mu      sync.Mutex
	partial []byte
	tail    []string
	lines   int
	match   func(line string) (string, bool) // nil once matched
	found   string
	ready   chan struct{} // closed when match returns true
}

const (
	tailLines   = 30
	maxLineSize = 4 << 10
)

func newLineLog(match func(string) (string, bool)) *lineLog {
	return &lineLog{match: match, ready: make(chan struct{})}
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			room := max(maxLineSize-len(l.partial), 0)
			l.partial = append(l.partial, p[:min(room, len(p))]...)
			break
		}
		line := p[:i]
		if len(l.partial) > 0 {
			room := max(maxLineSize-len(l.partial), 0)
			l.partial = append(l.partial, line[:min(room, len(line))]...)
			line = l.partial
		} else if len(line) > maxLineSize {
			line = line[:maxLineSize]
		}
		l.addLine(strings.TrimRight(string(line), "\r"))
		l.partial = l.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

func (l *lineLog) addLine(s string) {
	l.lines++
	if len(l.tail) == tailLines {
		copy(l.tail, l.tail[1:])
		l.tail = l.tail[:tailLines-1]
	}
	l.tail = append(l.tail, s)
	if l.match != nil {
		if v, ok := l.match(s); ok {
			l.found, l.match = v, nil
			close(l.ready)
		}
	}
}

// Tail returns the last lines written, partial line included.
func (l *lineLog) Tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := l.tail
	if len(l.partial) > 0 {
		lines = append(lines[:len(lines):len(lines)], string(l.partial))
	}
	return strings.Join(lines, "\n")
}

// Lines is how many complete lines were written.
func (l *lineLog) Lines() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lines
}

// child is a server process started for the benchmark.
type child struct {
	name   string
	cmd    *exec.Cmd
	log    *lineLog
	cancel context.CancelFunc
	done   chan struct{} // closed once the process has exited and its output is read
	err    error         // cmd.Wait's result; valid once done is closed
	addr   string        // what the ready line said, e.g. "127.0.0.1:43121"
}

// stopGrace is how long a child may take to exit after SIGTERM before it is killed.
const stopGrace = 5 * time.Second

// startChild starts path with args and waits (up to readyTimeout) for a line on its stdout or
// stderr for which ready returns true, whose value becomes the child's addr. The child gets
// SIGTERM when ctx ends or stop is called, SIGKILL stopGrace later, and (on Linux) SIGKILL if
// this process dies first, so nothing outlives the benchmark.
func startChild(ctx context.Context, name, path string, args []string, ready func(string) (string, bool), readyTimeout time.Duration) (*child, error) {
	cctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(cctx, path, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace
	cmd.SysProcAttr = childProcAttr()
	ll := newLineLog(ready)
	cmd.Stdout, cmd.Stderr = ll, ll
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, log: ll, cancel: cancel, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()

	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case <-ll.ready:
		ll.mu.Lock()
		c.addr = ll.found
		ll.mu.Unlock()
		return c, nil
	case <-c.done:
		cancel()
		return nil, fmt.Errorf("%s exited before it was ready (%v); its output:\n%s", name, c.err, ll.Tail())
	case <-timer.C:
		err := fmt.Errorf("%s not ready after %s; its output:\n%s", name, readyTimeout, ll.Tail())
		c.stop()
		return nil, err
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	}
}

// pid is the child's process ID.
func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports an error if the child is no longer running.
func (c *child) exited() error {
	select {
	case <-c.done:
		return fmt.Errorf("%s exited during the benchmark (%v); its output:\n%s", c.name, c.err, c.log.Tail())
	default:
		return nil
	}
}

// stop sends SIGTERM, waits for the exit (SIGKILL after stopGrace), and reports an exit that
// was not clean.
func (c *child) stop() error {
	c.cancel()
	<-c.done
	// After our SIGTERM a clean exit shows up as the context's error.
	if c.err != nil && !errors.Is(c.err, context.Canceled) {
		return fmt.Errorf("%s: %v; its output:\n%s", c.name, c.err, c.log.Tail())
	}
	return nil
}

// readyPrefix matches a line "PREFIX ADDR" (fakeupstream, herdbench reverseproxy) and returns
// ADDR without any http:// scheme.
func readyPrefix(prefix string) func(string) (string, bool) {
	return func(line string) (string, bool) {
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			return "", false
		}
		rest = strings.TrimPrefix(strings.TrimSpace(rest), "http://")
		return rest, rest != ""
	}
}

// herdReady matches herd's slog line `... msg="herd listening" addr=127.0.0.1:PORT ...` (text
// handler) or its JSON handler equivalent, and returns the address.
func herdReady(line string) (string, bool) {
	if !strings.Contains(line, `msg="herd listening"`) && !strings.Contains(line, `"msg":"herd listening"`) {
		return "", false
	}
	for _, key := range []string{" addr=", `"addr":`} {
		_, rest, ok := strings.Cut(line, key)
		if !ok {
			continue
		}
		rest = strings.TrimPrefix(rest, `"`)
		if i := strings.IndexAny(rest, "\" ,}"); i >= 0 {
			rest = rest[:i]
		}
		if rest != "" {
			return rest, true
		}
	}
	return "", false
}
