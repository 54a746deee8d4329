package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// suiteRun stands for one measurement's result in TestRunSuite.
type suiteRun struct {
	Nodes int `json:"nodes"`
}

// TestRunSuite: every node count is measured in order, under the budget, in a temp dir that is
// gone afterwards; the report sees every run, its JSON file holds what the report filled in,
// and the report's verdict is the run's. A failed measurement ends the run with no report.
func TestRunSuite(t *testing.T) {
	t.Setenv("HERDBENCH_COMMAND", "")
	exe, err := os.Executable() // stands in for herd: runSuite only reads its build info
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	o := clusterOptions{herd: exe, nodes: []int{3, 5}, jsonPath: filepath.Join(dir, "report.json"), profileDir: filepath.Join(dir, "profiles")}
	var measured []int
	var tmpDirs []string
	suite := clusterSuite[suiteRun, string]{
		tmpPrefix:    "herdbench-suite-test-",
		measurements: 4,
		each:         10 * time.Second,
		setup:        time.Minute,
		plan:         "4 measurements of nothing",
		measure: func(ctx context.Context, o clusterOptions, n int, herdPath, tmpDir string, progress io.Writer) ([]suiteRun, error) {
			if herdPath != exe {
				t.Errorf("herd %q, want %q", herdPath, exe)
			}
			if deadline, ok := ctx.Deadline(); !ok || time.Until(deadline) > 2*time.Minute+40*time.Second {
				t.Errorf("no deadline within the budget: %v, %v", deadline, ok)
			}
			if st, err := os.Stat(tmpDir); err != nil || !st.IsDir() {
				t.Errorf("temp dir %q: %v", tmpDir, err)
			}
			if st, err := os.Stat(o.profileDir); err != nil || !st.IsDir() {
				t.Errorf("profile dir %q: %v", o.profileDir, err)
			}
			measured, tmpDirs = append(measured, n), append(tmpDirs, tmpDir)
			return []suiteRun{{Nodes: n}, {Nodes: n}}, nil
		},
		report: func(w io.Writer, o clusterOptions, rep *clusterReport[suiteRun, string]) error {
			rep.Summary = []string{fmt.Sprintf("%d runs", len(rep.Runs))}
			rep.Checks = []check{{Verdict: "FAIL", What: "a target"}}
			fmt.Fprintf(w, "Command: `%s`\n%d runs\n", rep.Command, len(rep.Runs))
			return failedChecks(rep.Checks)
		},
	}
	var stdout, stderr strings.Builder
	err = runSuite(context.Background(), o, []string{"--nodes", "3,5"}, suite, &stdout, &stderr)
	if err == nil || err.Error() != "targets missed: a target" {
		t.Errorf("runSuite = %v, want the report's verdict", err)
	}
	if !slices.Equal(measured, []int{3, 5}) {
		t.Errorf("measured %v, want 3 then 5 nodes", measured)
	}
	if want := "herdbench: 4 measurements of nothing; every child is stopped within 2m40s\n"; stderr.String() != want {
		t.Errorf("progress %q, want %q", stderr.String(), want)
	}
	if want := "Command: `herdbench cluster --nodes 3,5`\n4 runs\n"; stdout.String() != want {
		t.Errorf("report %q, want %q", stdout.String(), want)
	}
	if _, err := os.Stat(tmpDirs[0]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir left behind: %v", err)
	}
	var got map[string]json.RawMessage
	b, err := os.ReadFile(o.jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for field, want := range map[string]string{
		"command": `"herdbench cluster --nodes 3,5"`,
		"runs":    `[{"nodes":3},{"nodes":3},{"nodes":5},{"nodes":5}]`,
		"summary": `["4 runs"]`,
		"checks":  `[{"verdict":"FAIL","what":"a target","detail":""}]`,
	} {
		var compact bytes.Buffer
		if err := json.Compact(&compact, got[field]); err != nil || compact.String() != want {
			t.Errorf("%s = %s (%v), want %s", field, got[field], err, want)
		}
	}
	if len(got) != 5 || got["machine"] == nil {
		t.Errorf("JSON fields %v, want command, machine, runs, summary, checks", slices.Sorted(maps.Keys(got)))
	}

	// Nothing to summarise or check: the file has neither (the accuracy report's shape).
	suite.report = func(w io.Writer, o clusterOptions, rep *clusterReport[suiteRun, string]) error { return nil }
	if err := runSuite(context.Background(), o, nil, suite, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(o.jsonPath)
	got = nil
	if err := json.Unmarshal(b, &got); err != nil || len(got) != 3 || got["summary"] != nil || got["checks"] != nil {
		t.Errorf("JSON without summary or checks: %s (%v)", b, err)
	}

	// A failed measurement: its error, and no report at all.
	os.Remove(o.jsonPath)
	stdout.Reset()
	suite.measure = func(ctx context.Context, o clusterOptions, n int, herdPath, tmpDir string, progress io.Writer) ([]suiteRun, error) {
		if n == 5 {
			return nil, errors.New("5 nodes did not start")
		}
		return []suiteRun{{Nodes: n}}, nil
	}
	suite.report = func(w io.Writer, o clusterOptions, rep *clusterReport[suiteRun, string]) error {
		t.Error("report written after a failed measurement")
		return nil
	}
	if err := runSuite(context.Background(), o, nil, suite, &stdout, io.Discard); err == nil || err.Error() != "5 nodes did not start" {
		t.Errorf("runSuite = %v, want the measurement's error", err)
	}
	if _, err := os.Stat(o.jsonPath); !errors.Is(err, os.ErrNotExist) || stdout.Len() > 0 {
		t.Errorf("a report after a failed measurement: %q, JSON %v", stdout.String(), err)
	}
}

// TestFmtMachine: a report names herd's revision, or says it cannot.
func TestFmtMachine(t *testing.T) {
	m := machineInfo{CPUModel: "AMD EPYC", NumCPU: 2, LoadAvg: "1.00 0.50 0.25", GoVersion: "go1.26", HerdRevision: "b17a708c0ffe", Date: "2025-12-01T00:00:00Z"}
	if got, want := fmtMachine(m), "AMD EPYC, 2 CPUs, load average 1.00 0.50 0.25 at start, go1.26; herd revision b17a708c0ffe; 2025-12-01T00:00:00Z"; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	m.HerdRevision = ""
	if got := fmtMachine(m); !strings.Contains(got, "herd revision unknown (the binary carries no VCS stamp);") {
		t.Errorf("no revision: %s", got)
	}
}

// TestRunSuiteTogether: with --together every node count is measured at the same time, each
// load starting with the other's (a run that measured them in turn would leave the first at
// its gate until the context ends), and the runs are reported in the order of --nodes. The
// first failure stops the other measurement and is the run's error.
func TestRunSuiteTogether(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	o := clusterOptions{herd: exe, nodes: []int{1, 9}, together: true}
	started := map[int]chan struct{}{1: make(chan struct{}), 9: make(chan struct{})}
	suite := clusterSuite[suiteRun, string]{
		tmpPrefix: "herdbench-suite-test-", measurements: 4, each: time.Minute, setup: time.Minute,
		measure: func(ctx context.Context, o clusterOptions, n int, herdPath, tmpDir string, progress io.Writer) ([]suiteRun, error) {
			close(started[n])
			select {
			case <-started[10-n]: // the other node count's measurement is under way too
			case <-ctx.Done():
				return nil, fmt.Errorf("%d nodes measured alone", n)
			}
			if o.gate == nil {
				return nil, errors.New("no gate to start the loads together")
			}
			var runs []suiteRun
			for range 2 { // two loads, as a cluster and then its lone processes
				if err := o.gate.wait(ctx); err != nil {
					return nil, err
				}
				runs = append(runs, suiteRun{Nodes: n})
			}
			return runs, nil
		},
	}
	var got []suiteRun
	suite.report = func(w io.Writer, o clusterOptions, rep *clusterReport[suiteRun, string]) error {
		got = rep.Runs
		return nil
	}
	if err := runSuite(ctx, o, nil, suite, io.Discard, io.Discard); err != nil {
		t.Fatalf("runSuite = %v: the node counts were not measured at the same time", err)
	}
	if want := []suiteRun{{1}, {1}, {9}, {9}}; !slices.Equal(got, want) {
		t.Errorf("runs %v, want %v", got, want)
	}

	suite.measure = func(ctx context.Context, o clusterOptions, n int, herdPath, tmpDir string, progress io.Writer) ([]suiteRun, error) {
		if err := o.gate.wait(ctx); err != nil {
			return nil, err
		}
		if n == 9 {
			return nil, errors.New("a node died")
		}
		return nil, o.gate.wait(ctx) // the second load never gets its partner
	}
	err = runSuite(ctx, o, nil, suite, io.Discard, io.Discard)
	if err == nil || err.Error() != "9 nodes: a node died" {
		t.Errorf("runSuite = %v, want the failed measurement's error", err)
	}
	if ctx.Err() != nil {
		t.Error("the other measurement was left waiting until the test's deadline")
	}
}

// A loadGate lets no one through before all have arrived, then all, round after round; a
// waiter whose context ends gets its cause.
func TestLoadGate(t *testing.T) {
	g := newLoadGate(3)
	for round := range 2 {
		passed := make(chan int, 3)
		for i := range 2 {
			go func() {
				if err := g.wait(context.Background()); err == nil {
					passed <- i
				}
			}()
		}
		// Both are in once the gate counts them; none may be through then.
		for deadline := time.Now().Add(10 * time.Second); ; {
			g.mu.Lock()
			in := g.in
			g.mu.Unlock()
			if in == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d of 2 waiters arrived", round, in)
			}
			runtime.Gosched()
		}
		if len(passed) > 0 {
			t.Fatalf("round %d: a waiter passed with 2 of 3 arrived", round)
		}
		if err := g.wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			select {
			case <-passed:
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: a waiter was not let through once all arrived", round)
			}
		}
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errors.New("stopped"))
	if err := g.wait(ctx); err == nil || err.Error() != "stopped" {
		t.Errorf("wait with an ended context = %v", err)
	}
	var none *loadGate
	if err := none.wait(ctx); err != nil {
		t.Errorf("a nil gate waited: %v", err)
	}
}
