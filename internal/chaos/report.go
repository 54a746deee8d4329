package chaos

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
)

// report.html is one self-contained page: inline CSS and inline SVG, no script and nothing
// fetched, so it opens from a copied run directory on any machine. Every string that comes
// from the run goes through html/template; only the plots' SVG, which gonum/plot escapes, is
// inserted as is.

var reportTemplate = template.Must(template.New("report").Parse(reportTemplateText))

// repProblemsShown is how many of a checker's problems the page lists.
const repProblemsShown = 20

// A plot draws at most about this many steps across its width (1152 px): per second over a
// 10-minute run, per few seconds over a longer one.
const (
	repBuckets = 600  // completions: per second up to 10 minutes
	repSamples = 2400 // trailing-60 s usage: every 250 ms up to 10 minutes
)

type repPage struct {
	Verdict  string
	Info     *RunInfo
	Start    string
	Duration string
	Demand   string
	Command  string

	Chats, OKs, Fails, Infos, Pending, Arrivals int

	UsageStep float64 // seconds between the points of the usage plots

	Checkers    []repChecker
	FaultKinds  []repKindItem
	Faults      []repFaultRow
	Exits       []repExit
	Timeline    template.HTML
	Latency     template.HTML
	Throughput  template.HTML
	Usage       []repUsage
	Deployments []repDeploymentRow
	Links       []repLink
	Errors      []string // plots that could not be drawn
}

type repChecker struct {
	Name, Verdict, Summary string
	Problems               []string
	More                   int
	Figures                []repFigure
}

type repFigure struct{ Key, Value string }

type repKindItem struct {
	Name  string
	Color template.CSS
}

type repFaultRow struct {
	Kind, Label, Lanes string
	Start, End         string
	Color              template.CSS
}

type repUsage struct {
	ID               string
	Requests, Tokens template.HTML
}

type repDeploymentRow struct {
	DeploymentResult
	Group    string
	TPM      string
	OverRPM  bool // more requests than the limit in some 60 s
	OverBnd  bool // more than the checker's bound
	Tokens   string
	TokBound string
}

type repLink struct{ Href, Note string }

// WriteReport writes report.html: the verdict, the checkers' findings, the faults and plots of
// latency, throughput and each deployment's usage against its limits, with links to the raw
// files beside it.
func WriteReport(path string, r *Run, res *Results) error {
	if res == nil {
		res = &Results{}
	}
	page, err := buildReport(r, res)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := reportTemplate.Execute(&buf, page); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func buildReport(r *Run, res *Results) (*repPage, error) {
	info := &r.Info
	pg := &repPage{
		Verdict:  res.Valid.String(),
		Info:     info,
		Duration: info.Duration.String(),
		Demand:   strconv.FormatFloat(info.Demand, 'g', -1, 64),
		Command:  repCommand(info),
		Arrivals: len(r.Upstream),
	}
	if info.Start != 0 {
		pg.Start = time.Unix(0, info.Start).UTC().Format("2006-01-02 15:04:05 MST")
	}

	// Checkers, by name.
	for _, n := range res.CheckerNames() {
		c := res.Checkers[n]
		rc := repChecker{Name: n, Verdict: c.Valid.String(), Summary: c.Summary, Problems: c.Problems}
		if len(rc.Problems) > repProblemsShown {
			rc.More = len(rc.Problems) - repProblemsShown
			rc.Problems = rc.Problems[:repProblemsShown]
		}
		keys := make([]string, 0, len(c.Figures))
		for k := range c.Figures {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			rc.Figures = append(rc.Figures, repFigure{k, repFigureValue(c.Figures[k])})
		}
		pg.Checkers = append(pg.Checkers, rc)
	}

	// Faults.
	end := repEnd(r)
	spans, exits := repFaults(r, end)
	lanes := repLaneNames(r, spans, exits)
	pg.Exits = exits
	seen := map[string]bool{}
	for _, s := range spans {
		seen[s.Key] = true
		stop := fmt.Sprintf("%.1f s", s.End)
		if s.Open {
			stop = "never stopped"
		}
		pg.Faults = append(pg.Faults, repFaultRow{
			Kind: repKindName(s.Key), Label: s.Label, Lanes: strings.Join(s.Lanes, ", "),
			Start: fmt.Sprintf("%.1f s", s.Start), End: stop, Color: repCSSColor(s.Key),
		})
	}
	var extra []string
	for k := range seen {
		if !slices.Contains(repKinds, k) {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	for _, k := range append(slices.Clone(repKinds), extra...) {
		if seen[k] || slices.Contains(info.Nemeses, k) {
			pg.FaultKinds = append(pg.FaultKinds, repKindItem{repKindName(k), repCSSColor(k)})
		}
	}
	bands := repUnion(spans)

	// Chat requests.
	chats, pending := repChats(r)
	pg.Chats, pg.Pending = len(chats)+pending, pending
	for _, c := range chats {
		switch c.Type {
		case OK:
			pg.OKs++
		case Fail:
			pg.Fails++
		case Info:
			pg.Infos++
		}
	}

	// Plots. Each is built first, so that their y axes can be aligned, then drawn.
	type job struct {
		p     *plot.Plot
		h     vg.Length
		label string
		out   *template.HTML
	}
	var todo []job
	if len(lanes) > 0 {
		tlp, tlh := repTimelinePlot(lanes, spans, exits, end)
		todo = append(todo, job{tlp, tlh, "fault timeline", &pg.Timeline})
	}
	lat, err := repLatencyPlot(chats, bands, end)
	if err != nil {
		return nil, err
	}
	todo = append(todo, job{lat, 320, "chat latency", &pg.Latency})
	bucket := max(1, math.Ceil(end/repBuckets))
	thr, err := repThroughputPlot(repPerBucket(chats, end, bucket), bucket, bands, end)
	if err != nil {
		return nil, err
	}
	todo = append(todo, job{thr, 260, "chat completions per second", &pg.Throughput})

	results := map[string]DeploymentResult{}
	for _, d := range res.Deployments {
		results[d.ID] = d
	}
	arrivals := repArrivalsByDeployment(r)
	pg.UsageStep = max(0.25, end/repSamples)
	tl := NewTimeline(r)
	usage, _ := usageByDeployment(r)
	pg.Usage = make([]repUsage, len(info.Deployments))
	for i, d := range info.Deployments {
		pg.Usage[i].ID = d.ID
		a := arrivals[d.ID]
		if a == nil {
			a = &repArrivals{}
		}
		dr, reported := results[d.ID]
		maxReq, maxTok := dr.MaxIn60s, dr.MaxTokensIn60s
		if !reported {
			maxReq, maxTok = a.maxIn60s()
		}
		xs, reqs, toks := a.trailing(end, pg.UsageStep)
		breqs, btoks := repBounds(tl, usage[d.ID], xs)
		title := fmt.Sprintf("%s: at most %d requests in any 60 s, limit %d rpm", d.ID, maxReq, d.RPM)
		p, err := repUsagePlot(title, "requests admitted in trailing 60 s", "requests", xs, reqs, d.RPM, breqs, bands, end)
		if err != nil {
			return nil, err
		}
		todo = append(todo, job{p, 250, d.ID + " requests", &pg.Usage[i].Requests})
		if d.TPM > 0 {
			title := fmt.Sprintf("%s: at most %d tokens in any 60 s, limit %d tpm", d.ID, maxTok, d.TPM)
			p, err := repUsagePlot(title, "tokens admitted in trailing 60 s", "tokens", xs, toks, d.TPM, btoks, bands, end)
			if err != nil {
				return nil, err
			}
			todo = append(todo, job{p, 250, d.ID + " tokens", &pg.Usage[i].Tokens})
		}
	}
	var ps []*plot.Plot
	for _, t := range todo {
		ps = append(ps, t.p)
	}
	repAlignY(ps...)
	for _, t := range todo {
		svg, err := repSVG(t.p, t.h, t.label)
		if err != nil {
			// One plot that cannot be drawn should not hide the rest of the report.
			pg.Errors = append(pg.Errors, err.Error())
			continue
		}
		*t.out = svg
	}

	// Deployment figures: the checker's, in its order, with the limits the run had.
	groups := map[string]DeploymentInfo{}
	for _, d := range info.Deployments {
		groups[d.ID] = d
	}
	for _, d := range res.Deployments {
		row := repDeploymentRow{DeploymentResult: d, Group: groups[d.ID].Group, TPM: "none", Tokens: "–", TokBound: "–"}
		if d.LimitTPM > 0 {
			row.TPM = strconv.FormatInt(d.LimitTPM, 10)
			row.Tokens = strconv.FormatInt(d.MaxTokensIn60s, 10)
			row.TokBound = strconv.FormatInt(d.TokenBound, 10)
		}
		row.OverRPM = d.LimitRPM > 0 && d.MaxIn60s > d.LimitRPM
		// Bound is the worst window's; the busiest window may have had a higher one (faults).
		row.OverBnd = d.OverBoundWindows > 0
		pg.Deployments = append(pg.Deployments, row)
	}

	// Raw files, relative to the page so the run directory can be moved.
	pg.Links = []repLink{
		{HistoryFile, "every client and nemesis operation (JSON lines)"},
		{UpstreamFile, "every request the fake upstream received: the ground truth for limits"},
		{ResultsFile, "the checkers' verdicts and figures"},
		{RunFile, "what was run"},
		{ConfigHTML, "porcupine's visualisation of the config history"},
	}
	for _, n := range info.Nodes {
		pg.Links = append(pg.Links, repLink{NodesDir + "/" + n.Name + ".log", "node " + n.Name + "'s log: every life of it, appended"})
	}
	return pg, nil
}

func repCSSColor(key string) template.CSS { return template.CSS(repHex(repKindColor(key))) }

// repFigureValue writes a checker's figure compactly: numbers and strings as they are, the
// rest as JSON.
func repFigureValue(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'g', 6, 64)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// repBounds is, at every sample time x, the bound the limits checker allows the trailing
// window ending at x: it rises where faults allowed more views of the usage.
func repBounds(tl *Timeline, u *depUsage, xs []float64) (reqs, toks []float64) {
	if u == nil {
		return nil, nil
	}
	reqs, toks = make([]float64, len(xs)), make([]float64, len(xs))
	for i, x := range xs {
		e := int64(x * 1e9)
		b := limitBound(tl.Mode, u, tl.FaultFactor(e-LimitWindow, e))
		reqs[i], toks[i] = float64(b.Requests), float64(b.Tokens)
	}
	return reqs, toks
}
