package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestLineLog(t *testing.T) {
	l := newLineLog(readyPrefix("listening on "))
	for _, chunk := range []string{"starting\nlis", "tening on 127.0.0.1:4", "3121\r\nserving\npart"} {
		if _, err := l.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-l.ready:
	default:
		t.Fatal("ready line not seen")
	}
	if l.found != "127.0.0.1:43121" {
		t.Errorf("found %q", l.found)
	}
	if got, want := l.Tail(), "starting\nlistening on 127.0.0.1:43121\nserving\npart"; got != want {
		t.Errorf("tail = %q, want %q", got, want)
	}
	if l.Lines() != 3 {
		t.Errorf("lines = %d", l.Lines())
	}
	for range 2 * tailLines {
		l.Write([]byte(strings.Repeat("x", 2*maxLineSize) + "\n"))
	}
	if tail := strings.Split(l.Tail(), "\n"); len(tail) != tailLines || len(tail[0]) != maxLineSize {
		t.Errorf("tail keeps %d lines, the first %d bytes long", len(tail), len(tail[0]))
	}
}

func TestReadyMatchers(t *testing.T) {
	for _, tc := range []struct {
		match func(string) (string, bool)
		line  string
		want  string
	}{
		{readyPrefix("fakeupstream listening on "), "fakeupstream listening on http://127.0.0.1:40301", "127.0.0.1:40301"},
		{readyPrefix("listening on "), "listening on 127.0.0.1:40787", "127.0.0.1:40787"},
		{readyPrefix("listening on "), "not listening on 1", ""},
		{herdReady, `time=2026-11-24T15:02:54.550Z level=INFO msg="herd listening" addr=127.0.0.1:35273 node=vm version=dev`, "127.0.0.1:35273"},
		{herdReady, `{"time":"2026-11-24T15:02:54Z","level":"INFO","msg":"herd listening","addr":"127.0.0.1:35273","node":"vm"}`, "127.0.0.1:35273"},
		{herdReady, `time=... level=INFO msg="herd stopped" addr=127.0.0.1:1`, ""},
	} {
		got, ok := tc.match(tc.line)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%q: got %q, %v; want %q", tc.line, got, ok, tc.want)
		}
	}
}

func TestStartChild(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	ctx := context.Background()

	// A child that is ready, then stops cleanly on SIGTERM.
	c, err := startChild(ctx, "helper", sh, []string{"-c", `sleep 600 & p=$!; trap 'kill $p; echo bye; exit 0' TERM; echo "listening on 127.0.0.1:9"; wait $p`},
		readyPrefix("listening on "), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != "127.0.0.1:9" {
		t.Errorf("addr = %q", c.addr)
	}
	if err := c.exited(); err != nil {
		t.Errorf("running child reported as exited: %v", err)
	}
	if err := c.stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	if err := c.exited(); err == nil {
		t.Error("stopped child not reported as exited")
	}

	// A child that dies before it is ready: its output explains why.
	_, err = startChild(ctx, "broken", sh, []string{"-c", "echo config error: no model_list >&2; exit 3"}, readyPrefix("listening on "), 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") || !strings.Contains(err.Error(), "config error: no model_list") {
		t.Errorf("err = %v", err)
	}

	// A child that never gets ready is stopped after the timeout.
	_, err = startChild(ctx, "silent", sh, []string{"-c", "echo warming up; exec sleep 600"}, readyPrefix("listening on "), 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "not ready after") || !strings.Contains(err.Error(), "warming up") {
		t.Errorf("err = %v", err)
	}
}
