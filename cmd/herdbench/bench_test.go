package main

import (
	"errors"
	"flag"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
)

// TestHerdConfig loads the generated config with herd's own loader, with and without limits.
func TestHerdConfig(t *testing.T) {
	for _, limits := range []bool{false, true} {
		cfg, err := config.Parse("bench.yaml", []byte(herdConfig("127.0.0.1:43121", limits, "")), config.MapEnv(nil), nil)
		if err != nil {
			t.Fatalf("limits=%v: %v", limits, err)
		}
		if len(cfg.ModelList) != 1 {
			t.Fatalf("model_list = %+v", cfg.ModelList)
		}
		d := cfg.ModelList[0]
		if d.ModelName != "bench" || d.UpstreamModel != "bench-upstream" || d.APIBase != "http://127.0.0.1:43121/v1" || d.LiteLLMParams.APIKey.Reveal() != "sk-bench" {
			t.Errorf("deployment = %+v", d)
		}
		if got := d.Limits.RPM > 0 && d.Limits.TPM > 0; got != limits {
			t.Errorf("limits=%v but deployment limits are %+v", limits, d.Limits)
		}
	}
}

func TestBaselineNeedsItsTarget(t *testing.T) {
	for _, args := range [][]string{{"--targets", "herd,herd-baseline"}, {"--baseline", "/bin/true"}} {
		if _, err := parseBenchFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	o, err := parseBenchFlags([]string{"--baseline", "/bin/true", "--targets", "herd-baseline,direct,herd"}, io.Discard)
	if err != nil || !slices.Equal(o.targets, []string{"direct", "herd", "herd-baseline"}) {
		t.Errorf("targets %q, %v", o.targets, err)
	}
}

func TestParseBenchFlags(t *testing.T) {
	o, err := parseBenchFlags([]string{"--rates", "1000, 3000", "--rounds", "2", "--targets", "herd,direct", "--warmup", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.rates, []int{1000, 3000}) || o.rounds != 2 || o.warmup != 0 || o.duration != 10*time.Second {
		t.Errorf("options = %+v", o)
	}
	if !slices.Equal(o.targets, []string{"direct", "herd"}) {
		t.Errorf("targets = %v, want canonical order", o.targets)
	}
	if got := o.attacks(); got != 8 {
		t.Errorf("attacks = %d", got)
	}
	if got, want := o.budget(), 8*(10*time.Second+requestTimeout)+time.Minute; got != want {
		t.Errorf("budget = %v, want %v", got, want)
	}

	for _, bad := range [][]string{
		{"--rates", "1000,x"}, {"--rates", "0"}, {"--rounds", "0"}, {"--duration", "10ms"},
		{"--targets", "nginx"}, {"--warmup", "-1s"}, {"stray"},
	} {
		var uerr usageError
		if _, err := parseBenchFlags(bad, io.Discard); !errors.As(err, &uerr) {
			t.Errorf("%v: err = %v, want a usage error", bad, err)
		}
	}
	if _, err := parseBenchFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

func TestShellJoin(t *testing.T) {
	got := shellJoin([]string{"--rates", "1000,3000", "--json", "/tmp/a b.json", "it's", ""})
	want := `--rates 1000,3000 --json '/tmp/a b.json' 'it'\''s' ''`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// TestCommandLine: a report names the command that made it, or the one the script that ran
// herdbench says to paste.
func TestCommandLine(t *testing.T) {
	t.Setenv("HERDBENCH_COMMAND", "")
	if got, want := commandLine("herdbench cluster", []string{"--keys", "off,on", "--json", "a b.json"}), `herdbench cluster --keys off,on --json 'a b.json'`; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	t.Setenv("HERDBENCH_COMMAND", "scripts/bench-proxy.sh --rates 1000")
	if got := commandLine("herdbench proxy", []string{"--rates", "1000"}); got != "scripts/bench-proxy.sh --rates 1000" {
		t.Errorf("with $HERDBENCH_COMMAND: %s", got)
	}
}

func TestWorkersFor(t *testing.T) {
	for rate, want := range map[int]uint64{100: 10, 1000: 20, 3000: 60, 1_000_000: 1000} {
		if got := workersFor(rate); got != want {
			t.Errorf("workersFor(%d) = %d, want %d", rate, got, want)
		}
	}
}
