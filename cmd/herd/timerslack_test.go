//go:build linux

package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// threadSlacks is the timer slack of every thread of process pid.
func threadSlacks(t *testing.T, pid int) map[int]time.Duration {
	t.Helper()
	tids, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]time.Duration{}
	for _, e := range tids {
		tid, _ := strconv.Atoi(e.Name())
		b, err := os.ReadFile("/proc/" + e.Name() + "/timerslack_ns")
		if err != nil {
			continue // the thread ended meanwhile
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		out[tid] = time.Duration(ns)
	}
	if len(out) < 2 {
		t.Fatalf("read %d threads of herd: the runtime's own threads are missing", len(out))
	}
	return out
}

// Every thread of a herd, the Go runtime's monitor among them (started before main), gets the
// timer slack herd is given, by the flag or the environment; 0, the default, keeps what herd
// inherited. herd stays the process that was started (it executes itself in place).
func TestTimerSlackReachesEveryThread(t *testing.T) {
	if testing.Short() {
		t.Skip("starts herd processes; skipped with -short")
	}
	inherited, err := currentTimerSlack()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want time.Duration
	}{
		{"flag", nil, []string{"--timer-slack", "3ms"}, 3 * time.Millisecond},
		{"env", []string{"HERD_TIMER_SLACK=2ms"}, nil, 2 * time.Millisecond},
		{"zero keeps the inherited", nil, []string{"--timer-slack", "0"}, inherited},
		{"by default the inherited", nil, nil, inherited},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.want == inherited && (c.name == "flag" || c.name == "env") {
				t.Fatalf("the test runs with slack %s already: it could not tell", inherited)
			}
			p := startProcessEnv(t, c.name, c.env, append([]string{"--host", "127.0.0.1", "--port", "0"}, c.args...)...)
			for tid, got := range threadSlacks(t, p.cmd.Process.Pid) {
				if got != c.want {
					t.Errorf("thread %d: timer slack %s, want %s", tid, got, c.want)
				}
			}
			if !p.logged("timer_slack=" + c.want.String()) {
				t.Errorf("the listening line does not say timer_slack=%s", c.want)
			}
		})
	}
}

// Timer slack is checked like every other setting: a negative one, or one that is not a
// duration, stops herd naming it.
func TestTimerSlackFlag(t *testing.T) {
	env := func(string) string { return "" }
	if _, err := parseFlags([]string{"--timer-slack", "-1ms"}, env, &strings.Builder{}); err == nil || !strings.Contains(err.Error(), "--timer-slack") {
		t.Errorf("a negative slack: %v", err)
	}
	bad := func(k string) string {
		if k == "HERD_TIMER_SLACK" {
			return "soon"
		}
		return ""
	}
	if _, err := parseFlags(nil, bad, &strings.Builder{}); err == nil || !strings.Contains(err.Error(), "HERD_TIMER_SLACK") {
		t.Errorf("HERD_TIMER_SLACK=soon: %v", err)
	}
	o, err := parseFlags(nil, env, &strings.Builder{})
	if err != nil || o.timerSlack != defaultTimerSlack {
		t.Errorf("default: %s, %v", o.timerSlack, err)
	}
	if o, _ := parseFlags([]string{"--timer-slack", "1ms"}, env, &strings.Builder{}); o.timerSlack != time.Millisecond {
		t.Errorf("--timer-slack 1ms: %s", o.timerSlack)
	}
}

// TestRawSocketsFlag: raw socket calls are on unless --raw-sockets=false or HERD_RAW_SOCKETS
// says otherwise; a value that is not a boolean stops startup naming the variable.
func TestRawSocketsFlag(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "HERD_RAW_SOCKETS" {
				return v
			}
			return ""
		}
	}
	for _, c := range []struct {
		args []string
		env  string
		want bool
	}{
		{nil, "", true},
		{[]string{"--raw-sockets=false"}, "", false},
		{nil, "false", false},
		{nil, "0", false},
		{[]string{"--raw-sockets"}, "false", true}, // the flag over the environment
	} {
		o, err := parseFlags(c.args, env(c.env), &strings.Builder{})
		if err != nil || o.rawSockets != c.want {
			t.Errorf("%v with HERD_RAW_SOCKETS=%q: raw %v, %v; want %v", c.args, c.env, o.rawSockets, err, c.want)
		}
	}
	if _, err := parseFlags(nil, env("sometimes"), &strings.Builder{}); err == nil || !strings.Contains(err.Error(), "HERD_RAW_SOCKETS") {
		t.Errorf("HERD_RAW_SOCKETS=sometimes: %v", err)
	}
}
