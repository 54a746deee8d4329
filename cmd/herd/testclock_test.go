package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/redistest"
)

func TestClockWithoutOffsetFileIsTheSystemClock(t *testing.T) {
	now, err := newClock(t.Context(), func(string) string { return "" }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(now()); d < 0 || d > time.Second {
		t.Errorf("clock is %s off the system clock", d)
	}
}

// TestClockOffsetFile: the test-only offset skews the clock, follows the file, and is logged
// loudly each time.
func TestClockOffsetFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "offset")
	if err := os.WriteFile(path, []byte("-30s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs redistest.Buffer
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	env := map[string]string{testClockEnv: path}
	now, err := newClock(ctx, func(k string) string { return env[k] }, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(now()); d < 29*time.Second || d > 31*time.Second {
		t.Fatalf("clock is %s behind, want 30s", d)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "TEST ONLY") {
		t.Errorf("no loud warning: %s", logs.String())
	}
	if err := os.WriteFile(path, []byte("5s"), 0o644); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(5 * time.Second)
	for d := now().Sub(time.Now()); d < 4*time.Second; d = now().Sub(time.Now()) {
		if time.Now().After(deadline) {
			t.Fatalf("clock did not follow the file: %s ahead", d)
		}
		<-tick.C
	}
	if !strings.Contains(logs.String(), "clock offset changed") {
		t.Errorf("the change was not logged: %s", logs.String())
	}
}

func TestClockOffsetFileMustParse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "offset")
	if err := os.WriteFile(path, []byte("soon"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := newClock(t.Context(), func(string) string { return path }, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), testClockEnv) {
		t.Fatalf("err = %v, want one naming %s", err, testClockEnv)
	}
}
