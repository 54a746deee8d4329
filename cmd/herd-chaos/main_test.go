package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/chaos"
)

func TestUsageAndBadArguments(t *testing.T) {
	used := t.TempDir() // an --out that already holds a run
	if err := os.WriteFile(filepath.Join(used, "history.jsonl"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{nil, {"dance"}, {"run", "--nodes", "0"}, {"run", "--mode", "eventual"}, {"run", "extra"},
		{"run", "--nemesis", "clock", "--clock-skew", "0s"}, {"run", "--out", used}, {"analyze"}, {"analyze", t.TempDir()}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != exitUnknown {
			t.Errorf("herd-chaos %v: exit %d, want %d (could not run)\n%s%s", args, code, exitUnknown, out.String(), errb.String())
		}
	}
	var out bytes.Buffer
	if code := run(context.Background(), []string{"help"}, &out, &out); code != exitValid || !strings.Contains(out.String(), "analyze DIR") {
		t.Errorf("help: exit %d: %s", code, out.String())
	}
}

// moduleRoot is the repository root, where go build runs.
func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// buildHerd builds ./cmd/herd into dir, with overlay (go build -overlay) when not empty.
func buildHerd(t *testing.T, dir, name string, overlay map[string]string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	args := []string{"build", "-o", out}
	if len(overlay) > 0 {
		data, _ := json.Marshal(map[string]any{"Replace": overlay})
		path := filepath.Join(dir, name+"-overlay.json")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-overlay", path)
	}
	cmd := exec.Command("go", append(args, "./cmd/herd")...)
	cmd.Dir = moduleRoot(t)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", args, err, msg)
	}
	return out
}

// plantLooseLimits returns an overlay that makes herd admit 10 % more than every limit: the
// bug a chaos run without faults must catch.
func plantLooseLimits(t *testing.T, dir string) map[string]string {
	t.Helper()
	src := filepath.Join(moduleRoot(t), "routing", "routing.go")
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	const exact = "state.Limits{RPM: d.Limits.RPM, TPM: d.Limits.TPM}"
	if !bytes.Contains(data, []byte(exact)) {
		t.Fatalf("%s no longer builds limits as %q: move the planted bug to where they are built now", src, exact)
	}
	loose := bytes.Replace(data, []byte(exact), []byte("state.Limits{RPM: d.Limits.RPM * 11 / 10, TPM: d.Limits.TPM * 11 / 10}"), 1)
	path := filepath.Join(dir, "routing-loose.go")
	if err := os.WriteFile(path, loose, 0o644); err != nil {
		t.Fatal(err)
	}
	return map[string]string{src: path}
}

func chaosRun(t *testing.T, herd, out string, extra ...string) (int, string) {
	t.Helper()
	args := append([]string{"run", "--herd", herd, "--nodes", "3", "--time", "25s", "--nemesis", "none", "--seed", "1", "--out", out}, extra...)
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String() + stderr.String()
}

func results(t *testing.T, dir string) chaos.Results {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, chaos.ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	var r chaos.Results
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPlantedAdmissionBugIsCaught: a herd that admits 10 % over every limit is found invalid
// by a run with no faults, by the limits checker alone, while the same run of the real herd is
// valid; analyze repeats the verdict from the stored run. It runs fast mode, whose nodes admit
// whatever their merged view allows, so every deployment's demand shows the loose limit (in
// strict mode a lightly loaded deployment may stay under even a loosened limit).
func TestPlantedAdmissionBugIsCaught(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real herd processes in network namespaces; skipped under -short")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root and must run the chaos test")
		}
		t.Skip("needs root for network namespaces")
	}
	dir := t.TempDir()
	loose := buildHerd(t, dir, "herd-loose", plantLooseLimits(t, dir))
	code, out := chaosRun(t, loose, filepath.Join(dir, "loose"), "--mode", "fast")
	if code != exitInvalid {
		t.Fatalf("the planted bug was not caught: exit %d, want %d\n%s", code, exitInvalid, out)
	}
	res := results(t, filepath.Join(dir, "loose"))
	if c := res.Checkers["limits"]; c.Valid != chaos.False {
		t.Errorf("limits: %s, want invalid: %s", c.Valid, c.Summary)
	}
	// The loose limits also show in /cluster/status's rpm_limit, which the config checker may
	// rightly flag; nothing else may go wrong.
	for _, name := range []string{"requests", "availability", "crashes"} {
		if c := res.Checkers[name]; c.Valid != chaos.True {
			t.Errorf("%s: %s, want valid: %s %v", name, c.Valid, c.Summary, c.Problems)
		}
	}
	for _, d := range res.Deployments {
		if d.MaxIn60s <= d.LimitRPM {
			t.Errorf("%s: at most %d in any 60 s against rpm %d: the loose limit did not show", d.ID, d.MaxIn60s, d.LimitRPM)
		}
	}
	agreeWithUpstreamLog(t, filepath.Join(dir, "loose"), res)
	t.Logf("loose herd:\n%s", out)

	var again bytes.Buffer
	if code := run(context.Background(), []string{"analyze", filepath.Join(dir, "loose")}, &again, &again); code != exitInvalid {
		t.Errorf("analyze of the stored run: exit %d, want %d\n%s", code, exitInvalid, again.String())
	}

	real := buildHerd(t, dir, "herd", nil)
	code, out = chaosRun(t, real, filepath.Join(dir, "real"), "--mode", "fast")
	if code != exitValid {
		t.Fatalf("the same run of the real herd: exit %d, want %d\n%s", code, exitValid, out)
	}
	t.Logf("real herd:\n%s", out)
}

// TestRunWithoutRootSaysSoAndExits2: the suite needs root for namespaces; a user without it
// gets one clear line and exit status 2, and nothing is created.
func TestRunWithoutRootSaysSoAndExits2(t *testing.T) {
	if testing.Short() {
		t.Skip("builds herd-chaos; skipped under -short")
	}
	if os.Geteuid() != 0 {
		// Not root already: the command itself is the test.
		var out, errb bytes.Buffer
		if code := run(context.Background(), []string{"run", "--out", t.TempDir()}, &out, &errb); code != exitUnknown || !strings.Contains(errb.String(), "needs root") {
			t.Fatalf("exit %d, want %d with 'needs root': %s", code, exitUnknown, errb.String())
		}
		return
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // nobody must reach the binary
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "herd-chaos")
	build := exec.Command("go", "build", "-o", bin, "./cmd/herd-chaos")
	build.Dir = moduleRoot(t)
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, msg)
	}
	cmd := exec.Command(bin, "run", "--herd", bin, "--out", filepath.Join(dir, "run"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitUnknown || !strings.Contains(string(out), "needs root") {
		t.Fatalf("as nobody: %v, want exit %d saying it needs root:\n%s", err, exitUnknown, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "run")); !os.IsNotExist(err) {
		t.Errorf("the run directory was created: %v", err)
	}
}

// agreeWithUpstreamLog recounts, straight from upstream.jsonl, what results.json says each
// deployment received: in total, and the most requests and tokens in any 60 s.
func agreeWithUpstreamLog(t *testing.T, dir string, res chaos.Results) {
	t.Helper()
	arrivals, err := chaos.ReadJSONL[chaos.Arrival](filepath.Join(dir, chaos.UpstreamFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range res.Deployments {
		var ts, toks []int64
		for _, a := range arrivals {
			if a.Deployment == d.ID {
				ts, toks = append(ts, a.T), append(toks, a.Tokens)
			}
		}
		// A busiest 60 s can always be slid to start at an arrival.
		var most, mostTokens int64
		for i := range ts {
			var n, tok int64
			for j := range ts {
				if ts[j] >= ts[i] && ts[j] < ts[i]+int64(60*time.Second) {
					n, tok = n+1, tok+toks[j]
				}
			}
			most, mostTokens = max(most, n), max(mostTokens, tok)
		}
		if int64(len(ts)) != d.Admitted || most != d.MaxIn60s || mostTokens != d.MaxTokensIn60s {
			t.Errorf("%s: upstream.jsonl has %d arrivals, at most %d requests and %d tokens in any 60 s; results.json says %d, %d, %d",
				d.ID, len(ts), most, mostTokens, d.Admitted, d.MaxIn60s, d.MaxTokensIn60s)
		}
	}
}
