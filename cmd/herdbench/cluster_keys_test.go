package main

import (
	"errors"
	"flag"
	"io"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
)

func TestParseKeysFlags(t *testing.T) {
	o, err := parseClusterFlags([]string{"--keys", "off, on"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.keys, []string{keysOff, keysOn}) || !slices.Equal(o.nodes, []int{3}) || o.rate != 1000 || o.rounds != 3 ||
		o.duration != 20*time.Second || o.limit != keysDefaultLimit || o.warmup != 3*time.Second {
		t.Errorf("defaults = %+v", o)
	}
	o, err = parseClusterFlags([]string{"--keys", "on", "--nodes", "3,5", "--rate", "500", "--rounds", "5", "--duration", "5s", "--limit", "300000"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.keys, []string{keysOn}) || !slices.Equal(o.nodes, []int{3, 5}) || o.rate != 500 || o.rounds != 5 || o.duration != 5*time.Second || o.limit != 300000 {
		t.Errorf("given = %+v", o)
	}
	// Without --keys the accuracy mode's defaults stand.
	if o, err := parseClusterFlags(nil, io.Discard); err != nil || len(o.keys) != 0 || o.limit != 600 || !slices.Equal(o.nodes, []int{3, 5}) {
		t.Errorf("accuracy defaults = %+v, %v", o, err)
	}

	for _, bad := range [][]string{
		{"--keys", "yes"},
		{"--keys", "on,on"},
		{"--keys", "off,on", "--demands", "1"},       // accuracy flags are refused, not ignored
		{"--keys", "off,on", "--patterns", "steady"}, //
		{"--keys", "off,on", "--limit", "599999"},    // under 10 × 1000 req/s × 60 s: requests could be refused
		{"--keys", "off,on", "--rate", "0"},
		{"--keys", "off,on", "--rounds", "0"},
		{"--keys", "off,on", "--warmup", "-1s"},
		{"--rate", "1000"}, // --keys flags are refused without --keys
		{"--rounds", "3"},
		{"stray"},
	} {
		var uerr usageError
		if _, err := parseClusterFlags(bad, io.Discard); !errors.As(err, &uerr) {
			t.Errorf("%v: err = %v, want a usage error", bad, err)
		}
	}
	if _, err := parseClusterFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

// TestClusterConfigKey loads the generated config with herd's own loader: the key lands in
// cluster_settings.cluster_key, the limits on the deployment.
func TestClusterConfigKey(t *testing.T) {
	const key = "VZJIBqwT9oDJ8NLz7BPaASRHpdvlGsZLbi5ApGSAG8Q="
	for _, tt := range []struct {
		key string
		tpm int64
	}{{"", 0}, {key, keysTPM}} {
		cfg, err := config.Parse("cluster.yaml", []byte(clusterConfig("127.0.0.1:43121", []string{keysModel}, keysDefaultLimit, tt.tpm, tt.key)), config.MapEnv(nil), nil)
		if err != nil {
			t.Fatalf("key %q: %v", tt.key, err)
		}
		if got := cfg.ClusterSettings.ClusterKey.Reveal(); got != tt.key {
			t.Errorf("cluster_key = %q, want %q", got, tt.key)
		}
		if len(cfg.ModelList) != 1 {
			t.Fatalf("model_list = %+v", cfg.ModelList)
		}
		if l := cfg.ModelList[0].Limits; l.RPM != keysDefaultLimit || l.TPM != tt.tpm {
			t.Errorf("limits = %+v, want rpm %d tpm %d", l, keysDefaultLimit, tt.tpm)
		}
	}
}

func TestCheckChannels(t *testing.T) {
	logOf := func(enc, tls string) string {
		return `time=2026-12-02T07:42:33.730Z level=INFO msg="gossip started" node=n0 addr=127.0.0.1:45899 encrypted=` + enc + ` raft_port_tls=` + tls + ` label=""` +
			"\ntime=2026-12-02T07:42:33.731Z level=INFO msg=\"herd listening\" addr=127.0.0.1:44471"
	}
	if err := checkChannels("n0", logOf("true", "true"), true); err != nil {
		t.Errorf("keyed node, keyed wanted: %v", err)
	}
	if err := checkChannels("n0", logOf("false", "false"), false); err != nil {
		t.Errorf("plain node, plain wanted: %v", err)
	}
	for _, tt := range []struct {
		log   string
		keyed bool
	}{
		{logOf("false", "false"), true},  // a keyed benchmark on a plain cluster
		{logOf("true", "true"), false},   // a baseline that is keyed
		{logOf("true", "false"), true},   // gossip keyed, raft port plain
		{logOf("false", "true"), true},   //
		{"msg=\"herd listening\"", true}, // no line at all
	} {
		err := checkChannels("herd-on-n1", tt.log, tt.keyed)
		if err == nil || !strings.Contains(err.Error(), "herd-on-n1") {
			t.Errorf("keyed=%v, log %q: err = %v, want one naming the node", tt.keyed, tt.log, err)
		}
	}
}

func TestKeysOrder(t *testing.T) {
	keys := []string{keysOff, keysOn}
	for round, want := range map[int][]string{1: {keysOff, keysOn}, 2: {keysOn, keysOff}, 3: {keysOff, keysOn}} {
		if got := keysOrder(keys, round); !slices.Equal(got, want) {
			t.Errorf("round %d: %v, want %v", round, got, want)
		}
	}
	if got := keysOrder([]string{keysOn}, 2); !slices.Equal(got, []string{keysOn}) {
		t.Errorf("one cluster: %v", got)
	}
}

func TestHerdCPU(t *testing.T) {
	// 3 nodes used 2 s, 1 s and 1 s of CPU for 10,000 requests over 20 s.
	sum, each, core, err := herdCPU([]time.Duration{2 * time.Second, time.Second, time.Second}, 10000, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if sum != 400 || !slices.Equal(each, []float64{200, 100, 100}) || core != 20 {
		t.Errorf("sum %v µs/req, each %v, core %v%%; want 400, [200 100 100], 20", sum, each, core)
	}
	if _, _, _, err := herdCPU([]time.Duration{time.Second, 0, time.Second}, 10000, 20*time.Second); err == nil || !strings.Contains(err.Error(), "node 1") {
		t.Errorf("a node with no CPU: err = %v, want one naming node 1", err)
	}
	if _, _, _, err := herdCPU([]time.Duration{time.Second}, 0, time.Second); err == nil {
		t.Error("no requests: no error")
	}
}

func TestSummariseKeys(t *testing.T) {
	run := func(nodes int, keys string, round int, cpu float64, sent, ok uint64) keysRun {
		return keysRun{Nodes: nodes, Keys: keys, Round: round, HerdCPU: cpu,
			Result: attackResult{Sent: sent, OK: ok, Latency: latencyUS{P50: cpu * 10, P99: cpu * 20}}}
	}
	// Rounds alternate their order; the ratio pairs runs by round, not by position. Round 2
	// ran on a busier machine: both of its figures are higher, its ratio is not.
	runs := []keysRun{
		run(3, keysOff, 1, 200, 1000, 1000), run(3, keysOn, 1, 210, 1000, 1000),
		run(3, keysOn, 2, 330, 1000, 1000), run(3, keysOff, 2, 300, 1000, 1000),
		run(3, keysOff, 3, 220, 1000, 1000), run(3, keysOn, 3, 220, 1000, 1000),
	}
	sums := summariseKeys(runs)
	if len(sums) != 1 || sums[0].Nodes != 3 || len(sums[0].Modes) != 2 {
		t.Fatalf("summary = %+v", sums)
	}
	s := sums[0]
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	want := []float64{1.05, 1.1, 1}
	for i := range want {
		if !near(s.Ratios[i], want[i]) {
			t.Fatalf("ratios %v, want %v", s.Ratios, want)
		}
	}
	if !near(s.Ratio, 1.05) || !near(s.RatioOfMedians, 220.0/220) {
		t.Errorf("ratio %v, ratio of medians %v; want 1.05, 1", s.Ratio, s.RatioOfMedians)
	}
	off, on := s.mode(keysOff), s.mode(keysOn)
	if off.CPU != 220 || off.CPUMin != 200 || off.CPUMax != 300 || off.Rounds != 3 || off.Sent != 3000 || off.P50 != 2200 || off.P99 != 4400 {
		t.Errorf("off = %+v", off)
	}
	if on.CPU != 220 || on.CPUMin != 210 || on.CPUMax != 330 {
		t.Errorf("on = %+v", on)
	}
	for _, c := range keysChecks(sums) {
		if c.Verdict != "PASS" {
			t.Errorf("within target: %+v", c)
		}
	}

	// Over 10 %, and one failed request: both checks fail, per node count.
	runs = append(runs, run(5, keysOff, 1, 400, 1000, 1000), run(5, keysOn, 1, 441, 1000, 999))
	sums = summariseKeys(runs)
	if len(sums) != 2 || sums[1].Nodes != 5 || !near(sums[1].Ratio, 1.1025) {
		t.Fatalf("summary = %+v", sums)
	}
	var failed []string
	for _, c := range keysChecks(sums) {
		if c.Verdict != "PASS" {
			failed = append(failed, c.What)
		}
	}
	wantFailed := []string{"keyed herd CPU per request within 10% of unkeyed, 5 nodes", "100% success, keys on, 5 nodes"}
	if !slices.Equal(failed, wantFailed) {
		t.Errorf("failed %q, want %q", failed, wantFailed)
	}

	// One mode alone: figures, but no ratio and no ratio check.
	sums = summariseKeys([]keysRun{run(3, keysOn, 1, 250, 10, 10)})
	if len(sums) != 1 || len(sums[0].Ratios) != 0 || len(keysChecks(sums)) != 1 {
		t.Errorf("one mode: %+v, checks %+v", sums, keysChecks(sums))
	}
}

// The accuracy runs take --profile-dir too: each node's CPU profile of each measured load.
func TestAccuracyTakesProfileDir(t *testing.T) {
	o, err := parseClusterFlags([]string{"--nodes", "9", "--profile-dir", "/tmp/p"}, io.Discard)
	if err != nil || o.profileDir != "/tmp/p" || len(o.nodes) != 1 {
		t.Fatalf("%+v, %v", o, err)
	}
}
