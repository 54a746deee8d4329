// Command herdbench benchmarks herd against baselines on one machine, over loopback.
//
//	herdbench proxy [flags]         herd's added latency vs a bare httputil.ReverseProxy vs
//	                                going direct to a fake upstream, at fixed request rates
//	herdbench cluster [flags]       N herd processes on loopback: how closely they keep one limit,
//	                                or (--keys off,on) what the cluster key costs per request, or
//	                                (--modes fast,strict) both limit modes side by side
//	herdbench reverseproxy [flags]  the bare reverse proxy used as the baseline (proxy starts it)
//
// scripts/bench-proxy.sh builds everything and runs `herdbench proxy`; docs/BENCHMARKS.md has
// the numbers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var uerr usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.As(err, &uerr):
		fmt.Fprintln(os.Stderr, "herdbench:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "herdbench:", err)
		os.Exit(1)
	}
}

// usageError is a bad command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

const usage = `herdbench: benchmarks for herd.

Usage:
  herdbench proxy [--rates 1000,3000] [--duration 10s] [--rounds 1] [--json FILE] ...
      herd's added latency vs a bare httputil.ReverseProxy vs direct, at fixed rates.
  herdbench cluster [--nodes 3,5] [--demands 1,3,10] [--patterns steady,bursty] [--limit 600] [--duration 75s]
      how closely N herd processes joined on loopback keep one rpm limit together.
  herdbench cluster --keys off,on [--rate 1000] [--nodes 3] [--duration 20s] [--rounds 3]
      herd CPU per request on clusters without and with a cluster key, measured in turn.
  herdbench cluster --modes fast,strict [--spread balanced,hot] [accuracy flags]
      the accuracy measurement on one cluster per cluster_limit_mode, side by side.
  herdbench cluster --modes fast,strict --rate 1000 [--nodes 3] [--duration 20s] [--rounds 3]
      herd latency and CPU per request in each cluster_limit_mode, measured in turn.
  herdbench streams [--concurrency 500,2000,5000] [--duration 20s] [--rounds 3] [--targets direct,floor,herd,herd-limits]
      what long streams cost through herd vs a bare httputil.ReverseProxy: streams/s, added time to
      first event, CPU and memory per stream, write syscalls per event.
  herdbench reverseproxy --listen 127.0.0.1:0 --target http://HOST:PORT
      a bare httputil.ReverseProxy with herd's upstream transport settings.

Run "herdbench SUBCOMMAND -h" for the flags of a subcommand.
`

// run dispatches to a subcommand. It writes reports to stdout and progress to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{"missing subcommand"}
	}
	switch args[0] {
	case "proxy":
		return runProxyBench(ctx, args[1:], stdout, stderr)
	case "cluster":
		return runClusterBench(ctx, args[1:], stdout, stderr)
	case "streams":
		return runStreamBench(ctx, args[1:], stdout, stderr)
	case "reverseproxy":
		return runReverseProxy(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return usageError{fmt.Sprintf("unknown subcommand %q", args[0])}
	}
}
