package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// testClockEnv names a file holding a clock offset (a Go duration such as "-7s"). It exists for
// the chaos suite's clock nemesis only: Go reads the system clock directly, so libfaketime cannot
// skew a herd, and a chaos run must. With it set, herd's usage counters read time.Now() plus the
// file's offset, re-read every 100 ms, and herd says so loudly at start and at every change.
const testClockEnv = "HERD_TEST_CLOCK_OFFSET_FILE"

// testClockPoll is how often the offset file is read.
const testClockPoll = 100 * time.Millisecond

// newClock returns the clock the usage counters read: time.Now, or with HERD_TEST_CLOCK_OFFSET_FILE
// set, a clock skewed by that file's offset. The file is watched until ctx ends.
func newClock(ctx context.Context, getenv func(string) string, log *slog.Logger) (func() time.Time, error) {
	path := getenv(testClockEnv)
	if path == "" {
		return time.Now, nil
	}
	var offset atomic.Int64
	read := func() (time.Duration, error) {
		data, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			return 0, nil // no file yet: no skew
		}
		if err != nil {
			return 0, err
		}
		s := strings.TrimSpace(string(data))
		if s == "" {
			return 0, nil
		}
		return time.ParseDuration(s)
	}
	d, err := read()
	if err != nil {
		return nil, fmt.Errorf("%s=%s: %w", testClockEnv, path, err)
	}
	offset.Store(int64(d))
	log.Warn("TEST ONLY: "+testClockEnv+" is set: this node's usage clock is skewed by the offset in that file. Never set it in production.",
		"file", path, "offset", d)
	go func() {
		tick := time.NewTicker(testClockPoll)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			d, err := read()
			if err != nil || int64(d) == offset.Load() {
				continue
			}
			// Logged first: whoever sees the clock move finds the line already written.
			log.Warn("TEST ONLY: clock offset changed", "file", path, "offset", d)
			offset.Store(int64(d))
		}
	}()
	return func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }, nil
}
