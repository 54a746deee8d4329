package chaos

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Files of a run directory.
const (
	HistoryFile  = "history.jsonl"
	UpstreamFile = "upstream.jsonl"
	RunFile      = "run.json"
	ResultsFile  = "results.json"
	ReportFile   = "report.html"
	ConfigHTML   = "config.html" // porcupine's visualisation of the config history
	NodesDir     = "nodes"       // NodesDir/<node>.log: every life of that node, appended
)

// Run is a stored run, loaded for checking.
type Run struct {
	Dir      string
	Info     RunInfo
	History  []Op
	Upstream []Arrival
}

// NodeLog is the path of a node's log in the run directory.
func (r *Run) NodeLog(node string) string { return filepath.Join(r.Dir, NodesDir, node+".log") }

// Load reads a run directory.
func Load(dir string) (*Run, error) {
	r := &Run{Dir: dir}
	data, err := os.ReadFile(filepath.Join(dir, RunFile))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &r.Info); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, RunFile), err)
	}
	if r.History, err = ReadJSONL[Op](filepath.Join(dir, HistoryFile)); err != nil {
		return nil, err
	}
	if r.Upstream, err = ReadJSONL[Arrival](filepath.Join(dir, UpstreamFile)); err != nil {
		return nil, err
	}
	return r, nil
}

// Check runs every checker over r.
func Check(r *Run) *Results {
	res := &Results{Valid: True, Checkers: map[string]CheckResult{}}
	var limits CheckResult
	limits, res.Deployments = CheckLimits(r)
	res.Checkers["limits"] = limits
	res.Checkers["requests"] = CheckRequests(r)
	res.Checkers["config"] = CheckConfig(r)
	res.Checkers["availability"] = CheckAvailability(r)
	res.Checkers["crashes"] = CheckCrashes(r)
	for _, c := range res.Checkers {
		res.Valid = res.Valid.And(c.Valid)
	}
	return res
}

// Analyze checks the run stored in dir and writes results.json, config.html and report.html
// beside its logs.
func Analyze(dir string) (*Results, error) {
	r, err := Load(dir)
	if err != nil {
		return nil, err
	}
	res := Check(r)
	data, err := res.MarshalIndent()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ResultsFile), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := WriteReport(filepath.Join(dir, ReportFile), r, res); err != nil {
		return res, fmt.Errorf("report: %w", err)
	}
	return res, nil
}
