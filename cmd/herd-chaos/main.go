// Command herd-chaos is herd's Jepsen-style chaos suite: it runs real herd processes in network
// namespaces, partitions, kills, pauses and skews them on a seeded schedule, and checks what held.
//
//	herd-chaos run [--herd PATH] [--nodes 3] [--time 120s] [--nemesis LIST] [--mode fast|strict|redis]
//	               [--redis single|cluster|sentinel] [--rpm 600] [--tpm N] [--demand 3] [--seed N] [--out DIR]
//	herd-chaos analyze DIR
//	herd-chaos table DIR...
//
// Exit status, as Jepsen's: 0 valid, 1 invalid, 2 unknown or could not run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/herd-proxy/herd/internal/chaos"
)

// Exit statuses.
const (
	exitValid   = 0
	exitInvalid = 1
	exitUnknown = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		// The first signal ends the run cleanly (nodes stopped, namespaces removed); a second
		// one kills herd-chaos at once, and the next run removes what it leaves.
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `herd-chaos: herd's chaos suite.

Usage:
  herd-chaos run [flags]      run herd nodes under faults and check what held (needs root)
  herd-chaos analyze DIR      re-run every checker on a stored run
  herd-chaos table DIR...     a Markdown table of stored runs (docs/CHAOS.md's)

Exit status: 0 valid, 1 invalid, 2 unknown or could not run.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUnknown
	}
	switch args[0] {
	case "run":
		return runCmd(ctx, args[1:], stdout, stderr)
	case "analyze":
		return analyzeCmd(args[1:], stdout, stderr)
	case "table":
		t, err := chaos.Table(args[1:])
		if err != nil {
			fmt.Fprintln(stderr, "herd-chaos:", err)
			return exitUnknown
		}
		fmt.Fprint(stdout, t)
		return exitValid
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitValid
	}
	fmt.Fprintf(stderr, "herd-chaos: unknown command %q\n\n%s", args[0], usage)
	return exitUnknown
}

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("herd-chaos run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o chaos.Options
	var nemesis string
	fs.StringVar(&o.Herd, "herd", "", "herd binary to test (default: build ./cmd/herd into the out dir)")
	fs.BoolVar(&o.Race, "race", true, "build herd with the race detector (when building it)")
	fs.IntVar(&o.Nodes, "nodes", 3, "herd nodes, each in its own network namespace (1-9)")
	fs.DurationVar(&o.Time, "time", 120*time.Second, "how long the workload runs")
	fs.StringVar(&nemesis, "nemesis", "all", "faults: comma list of partition, loss, kill, pause, clock, leader, redis, redis-pause; all; or none")
	fs.StringVar(&o.Mode, "mode", chaos.ModeStrict, "cluster limit mode: strict (herd's default), fast, or redis (usage in a redis-server the suite runs, which checks every admission)")
	fs.StringVar(&o.Redis, "redis", "", "the Redis of --mode redis (default single), or of strict rights over Redis with --mode strict: single (the redis nemesis kills and restarts it, empty), "+
		"cluster (3 masters with a replica each) or sentinel (a master, a replica, 3 Sentinels); with cluster and sentinel the redis nemesis kills a master and a replica takes over")
	fs.Int64Var(&o.RPM, "rpm", 600, "rpm of the main deployment (the two others get half)")
	fs.Int64Var(&o.TPM, "tpm", 0, "tpm of the token-limited deployments (default rpm x 30)")
	fs.Float64Var(&o.Demand, "demand", 3, "offered load as a multiple of the limits")
	fs.Int64Var(&o.Seed, "seed", 0, "fixes the fault schedule and the workload's choices (default: random)")
	fs.StringVar(&o.Out, "out", "", "run directory (default chaos-results/<time>)")
	fs.DurationVar(&o.ClockSkew, "clock-skew", 10*time.Second, "the clock nemesis skews a node by up to this much, either way")
	fs.StringVar(&o.Provider, "provider", "openai", "every deployment's provider: openai, or anthropic (herd translates each request to the fake upstream's Messages API)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitValid
		}
		return exitUnknown
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "herd-chaos run: unexpected argument %q\n", fs.Arg(0))
		return exitUnknown
	}
	o.Nemeses = chaos.ParseNemeses(nemesis, o.Mode == chaos.ModeRedis || o.Redis != "")
	if o.Seed == 0 {
		o.Seed = time.Now().UnixNano() % 1_000_000_000
	}
	if o.Out == "" {
		o.Out = filepath.Join("chaos-results", time.Now().Format("20060102T150405"))
	}
	o.Log = slog.New(slog.NewTextHandler(stderr, nil))
	fmt.Fprintf(stdout, "herd-chaos: seed %d (repeat with --seed %d), out %s\n", o.Seed, o.Seed, o.Out)
	res, err := chaos.Execute(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "herd-chaos:", err)
		return exitUnknown
	}
	return verdict(res, o.Out, stdout)
}

func analyzeCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprint(stderr, "usage: herd-chaos analyze DIR\n")
		return exitUnknown
	}
	res, err := chaos.Analyze(args[0])
	if err != nil {
		fmt.Fprintln(stderr, "herd-chaos:", err)
		if res == nil {
			return exitUnknown
		}
	}
	return verdict(res, args[0], stdout)
}

// verdict prints each checker's verdict and returns the exit status.
func verdict(res *chaos.Results, dir string, w io.Writer) int {
	for _, n := range res.CheckerNames() {
		c := res.Checkers[n]
		fmt.Fprintf(w, "%-13s %-8s %s\n", n, c.Valid, c.Summary)
		for i, p := range c.Problems {
			if i == 5 {
				fmt.Fprintf(w, "%13s   ... %d more in results.json\n", "", len(c.Problems)-5)
				break
			}
			fmt.Fprintf(w, "%13s   %s\n", "", p)
		}
	}
	fmt.Fprintf(w, "\n%s — %s\n", res.Valid, filepath.Join(dir, chaos.ReportFile))
	switch res.Valid {
	case chaos.True:
		return exitValid
	case chaos.False:
		return exitInvalid
	}
	return exitUnknown
}
