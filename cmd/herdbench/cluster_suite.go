package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Every `herdbench cluster` measurement (accuracy, --modes, --keys, --modes with --rate) is run
// by runSuite: each suite says only what it measures and how it reports it, so that all of them
// are bounded in time, cleaned up and written out alike.

// clusterSuite is what one kind of cluster measurement does its own way. R is one
// measurement's result; S one line of its summary, if it has one.
type clusterSuite[R, S any] struct {
	tmpPrefix string // of the temp dir holding the nodes' configs and logs
	// The whole run, children and all, is stopped after setup per node count plus each per
	// measurement: a wedged child must not hold the machine for good.
	measurements int
	each, setup  time.Duration
	plan         string // says what will be measured, before anything starts
	// measure makes every measurement of n nodes, starting and stopping its clusters.
	measure func(ctx context.Context, o clusterOptions, n int, herdPath, tmpDir string, progress io.Writer) ([]R, error)
	// report fills in rep's summary and checks from its runs, writes its markdown to w and
	// returns an error naming every target missed.
	report func(w io.Writer, o clusterOptions, rep *clusterReport[R, S]) error
}

// clusterReport is the --json file of a cluster measurement: what the markdown says, from
// which its figures can be recomputed. A suite without a summary or checks leaves them out.
type clusterReport[R, S any] struct {
	Command string      `json:"command"`
	Machine machineInfo `json:"machine"`
	Runs    []R         `json:"runs"`
	Summary []S         `json:"summary,omitempty"`
	Checks  []check     `json:"checks,omitempty"`
}

// runSuite measures every node count of o.nodes in turn as s says and reports all of them,
// on stdout and in o.jsonPath. It stops at the first measurement that fails: a report of
// the ones before it would read as the whole run. The machine is described before any child
// adds to its load.
func runSuite[R, S any](ctx context.Context, o clusterOptions, args []string, s clusterSuite[R, S], stdout, stderr io.Writer) error {
	herdPath, err := findBinary(o.herd, "herd")
	if err != nil {
		return err
	}
	budget := time.Duration(len(o.nodes))*s.setup + time.Duration(s.measurements)*s.each
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	rep := &clusterReport[R, S]{Machine: readMachineInfo(herdPath, time.Now())}
	tmpDir, err := os.MkdirTemp("", s.tmpPrefix)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmpDir)
	if o.profileDir != "" {
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return err
		}
	}
	fmt.Fprintf(stderr, "herdbench: %s; every child is stopped within %s\n", s.plan, budget)

	if o.together {
		runs, err := measureTogether(ctx, o, s.measure, herdPath, tmpDir, stderr)
		if err != nil {
			return err
		}
		rep.Runs = runs
	} else {
		for _, n := range o.nodes {
			runs, err := s.measure(ctx, o, n, herdPath, tmpDir, stderr)
			if err != nil {
				return err
			}
			rep.Runs = append(rep.Runs, runs...)
		}
	}

	rep.Command = commandLine("herdbench cluster", args)
	missed := s.report(stdout, o, rep)
	if o.jsonPath != "" {
		if err := writeJSON(o.jsonPath, rep); err != nil {
			return err
		}
	}
	return missed
}

// measureTogether makes every node count's measurements at the same time (--together), each
// load starting with the others' (o.gate), and returns their runs in the order of o.nodes.
// The first to fail stops the others.
func measureTogether[R any](ctx context.Context, o clusterOptions, measure func(context.Context, clusterOptions, int, string, string, io.Writer) ([]R, error), herdPath, tmpDir string, progress io.Writer) ([]R, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	o.gate = newLoadGate(len(o.nodes))
	runs := make([][]R, len(o.nodes))
	var wg sync.WaitGroup
	for i, n := range o.nodes {
		wg.Go(func() {
			var err error
			if runs[i], err = measure(ctx, o, n, herdPath, tmpDir, progress); err != nil {
				cancel(fmt.Errorf("%d nodes: %w", n, err))
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return slices.Concat(runs...), nil
}

// loadGate starts loads together: each waits until all n have arrived, and then all go, as
// often as there are loads.
type loadGate struct {
	mu      sync.Mutex
	n, in   int
	release chan struct{} // closed when the last of the current round arrives
}

func newLoadGate(n int) *loadGate { return &loadGate{n: n, release: make(chan struct{})} }

// wait returns once all n have called it in this round, or with ctx's error. A nil gate does
// not wait: loads that run in turn.
func (g *loadGate) wait(ctx context.Context) error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	release := g.release
	if g.in++; g.in == g.n {
		g.in, g.release = 0, make(chan struct{})
		close(release)
	}
	g.mu.Unlock()
	select {
	case <-release:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// costSuite is the part of a CPU-per-request suite (--keys, or --modes with --rate) that
// they share: measurements loads of o.warmup then o.duration at o.rate, each given 20 s more to
// read CPU, profiles and propagation; setup is what starting one node count's clusters may take.
func costSuite[R, S any](o clusterOptions, tmpPrefix string, measurements int, setup time.Duration) clusterSuite[R, S] {
	return clusterSuite[R, S]{
		tmpPrefix:    tmpPrefix,
		measurements: measurements,
		each:         o.warmup + o.duration + 20*time.Second,
		setup:        setup,
		plan:         fmt.Sprintf("%d measurements of %s (after %s of warm-up) at %d req/s", measurements, o.duration, o.warmup, o.rate),
	}
}

// failedChecks is an error naming every check that did not pass, or nil.
func failedChecks(checks []check) error {
	var failed []string
	for _, c := range checks {
		if c.Verdict != "PASS" {
			failed = append(failed, c.What)
		}
	}
	if len(failed) > 0 {
		return errors.New("targets missed: " + strings.Join(failed, "; "))
	}
	return nil
}

// writeChecks ends a cluster report with every check and its verdict.
func writeChecks(w io.Writer, checks []check) {
	fmt.Fprintln(w, "\nChecks:")
	for _, c := range checks {
		fmt.Fprintf(w, "- **%s** %s: %s\n", c.Verdict, c.What, c.Detail)
	}
}

// fmtMachine describes the machine a cluster report was measured on. A herd built without
// VCS stamps says so, rather than leave the reader to wonder which herd it was.
func fmtMachine(m machineInfo) string {
	rev := m.HerdRevision
	if rev == "" {
		rev = "unknown (the binary carries no VCS stamp)"
	}
	return fmt.Sprintf("%s, %d CPUs, load average %s at start, %s; herd revision %s; %s", m.CPUModel, m.NumCPU, m.LoadAvg, m.GoVersion, rev, m.Date)
}
