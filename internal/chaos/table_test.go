package chaos

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTable: runs group by mode and nemesis set; the worst overshoot and the answered shares
// are taken over every run of the row.
func TestTable(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, info RunInfo, res Results) string {
		d := filepath.Join(dir, name)
		if err := writeJSON(filepath.Join(d, RunFile), info); err == nil {
			t.Fatal("writeJSON into a missing directory succeeded")
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := writeJSON(filepath.Join(d, RunFile), info); err != nil {
			t.Fatal(err)
		}
		if err := writeJSON(filepath.Join(d, ResultsFile), res); err != nil {
			t.Fatal(err)
		}
		return d
	}
	avail := func(healthyTotal, healthyAnswered float64) map[string]CheckResult {
		return map[string]CheckResult{
			"availability": {Valid: True, Figures: map[string]any{"phases": map[string]any{
				PhaseHealthy: map[string]any{"total": healthyTotal, "answered": healthyAnswered}}}},
			"limits": {Valid: True},
		}
	}
	a := write("a", RunInfo{Mode: ModeFast, Nemeses: []string{KindKill}},
		Results{Valid: True, Checkers: avail(100, 100), Deployments: []DeploymentResult{{ID: "d", LimitRPM: 600, MaxIn60s: 603}}})
	checkers := avail(100, 50)
	checkers["limits"] = CheckResult{Valid: False}
	b := write("b", RunInfo{Mode: ModeFast, Nemeses: []string{KindKill}},
		Results{Valid: False, Checkers: checkers, Deployments: []DeploymentResult{{ID: "d", LimitRPM: 600, MaxIn60s: 1200}}})
	c := write("c", RunInfo{Mode: ModeStrict}, Results{Valid: True, Checkers: avail(10, 10)})
	d := filepath.Join(dir, "died") // a run that could not be carried out: run.json, no results
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeJSON(filepath.Join(d, RunFile), RunInfo{Mode: ModeStrict}); err != nil {
		t.Fatal(err)
	}
	got, err := Table([]string{a, b, c, d})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| fast | kill | 2 | 1 | limits | 600 (100.0 %) | 75.0 % / — / — |",
		"| strict | none | 2 (1 unknown) | 1 | — | 0 (0.0 %) | 100.0 % / — / — |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	if _, err := Table([]string{filepath.Join(dir, "missing")}); err == nil {
		t.Error("a missing run directory gave no error")
	}
}
