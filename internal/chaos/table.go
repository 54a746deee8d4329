package chaos

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Table summarises stored runs as the Markdown table docs/CHAOS.md publishes: one row per mode
// and nemesis set, with how many runs were valid, which checkers failed, the worst overshoot of
// any deployment, and the share of requests answered (200 or 429) per phase.
func Table(dirs []string) (string, error) {
	type row struct {
		mode, nemesis    string
		runs, valid      int
		unknown          int // runs that could not tell (or could not be carried out)
		failed           []string
		over             int64
		overPct          float64
		answered, totals map[string]float64
	}
	rows := map[string]*row{}
	var order []string
	for _, dir := range dirs {
		var info RunInfo
		var res Results
		if err := readJSON(filepath.Join(dir, RunFile), &info); err != nil {
			return "", err
		}
		if err := readJSON(filepath.Join(dir, ResultsFile), &res); errors.Is(err, os.ErrNotExist) {
			res = Results{Valid: Unknown} // the run could not be carried out or analysed
		} else if err != nil {
			return "", err
		}
		nem := strings.Join(info.Nemeses, ",")
		if nem == "" {
			nem = "none"
		}
		if slices.Contains(info.Nemeses, KindClock) && info.ClockSkew > 0 {
			nem += fmt.Sprintf(" (±%s)", info.ClockSkew)
		}
		mode := info.Mode
		switch {
		case info.Redis == "" || info.Redis == RedisSingle && info.Mode == ModeRedis:
		case info.Mode == ModeRedis:
			mode += " (" + info.Redis + ")"
		default: // strict rights over Redis
			mode += " over redis (" + info.Redis + ")"
		}
		if info.Provider != "" && info.Provider != "openai" {
			mode += ", " + info.Provider + " deployments"
		}
		key := mode + "\x00" + nem
		r := rows[key]
		if r == nil {
			r = &row{mode: mode, nemesis: nem, answered: map[string]float64{}, totals: map[string]float64{}}
			rows[key] = r
			order = append(order, key)
		}
		r.runs++
		switch res.Valid {
		case True:
			r.valid++
		case Unknown:
			r.unknown++
		}
		for name, c := range res.Checkers {
			if c.Valid != True && !slices.Contains(r.failed, name) {
				r.failed = append(r.failed, name)
			}
		}
		for _, d := range res.Deployments {
			if over := d.MaxIn60s - d.LimitRPM; over > r.over {
				r.over, r.overPct = over, 100*float64(over)/float64(d.LimitRPM)
			}
		}
		phases, _ := res.Checkers["availability"].Figures["phases"].(map[string]any)
		for phase, v := range phases {
			m, _ := v.(map[string]any)
			total, _ := m["total"].(float64)
			answered, _ := m["answered"].(float64)
			r.totals[phase] += total
			r.answered[phase] += answered
		}
	}
	slices.Sort(order)
	var b strings.Builder
	b.WriteString("| mode | nemesis | runs | valid | failing checkers | worst overshoot (any 60 s) | answered: healthy / majority / minority |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	for _, k := range order {
		r := rows[k]
		failed := "—"
		if len(r.failed) > 0 {
			slices.Sort(r.failed)
			failed = strings.Join(r.failed, ", ")
		}
		share := func(p string) string {
			if r.totals[p] == 0 {
				return "—"
			}
			return fmt.Sprintf("%.1f %%", 100*r.answered[p]/r.totals[p])
		}
		runs := fmt.Sprint(r.runs)
		if r.unknown > 0 {
			runs += fmt.Sprintf(" (%d unknown)", r.unknown)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %d (%.1f %%) | %s / %s / %s |\n", r.mode, r.nemesis, runs, r.valid, failed,
			r.over, r.overPct, share(PhaseHealthy), share(PhaseMajority), share(PhaseMinority))
	}
	return b.String(), nil
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
