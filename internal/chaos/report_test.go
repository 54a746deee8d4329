package chaos

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"
)

const hostile = `<script>alert(1)</script>`

// reportRun is a synthetic run: chat requests spread over d, a partition, a kill, a kill of
// the leader that never stops, a crash, and the upstream's arrivals for two deployments.
func reportRun(requests int, d time.Duration) *Run {
	rng := rand.New(rand.NewPCG(7, 11))
	start := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).UnixNano()
	info := RunInfo{
		Seed: 42, Mode: "fast", Demand: 1.5, Duration: d, Start: start,
		Nodes:   []NodeInfo{{"n1", "10.77.0.11"}, {"n2", "10.77.0.12"}, {"n3", "10.77.0.13"}},
		Nemeses: []string{KindPartition, KindKill},
		Deployments: []DeploymentInfo{
			{ID: "dep-a", Group: "gpt", RPM: 600},
			{ID: "dep-b<i>", Group: "gpt", RPM: 300, TPM: 30000},
		},
		Propagation: 200 * time.Millisecond, Repair: 2 * time.Second, ConvergeWithin: 10 * time.Second,
	}
	r := &Run{Info: info}
	sec := func(f float64) int64 { return int64(f * float64(d) / 120) } // fault times scale with d
	nem := func(t int64, f string, fault *Fault, node string) {
		r.History = append(r.History, Op{Type: Info, F: f, Process: NemesisProcess, Time: t,
			Node: node, Value: Value{Fault: fault}})
	}
	halves := &Fault{Kind: KindPartition, Shape: "halves",
		Grudge: map[string][]string{"n1": {"n2", "n3"}, "n2": {"n1"}, "n3": {"n1"}}}
	nem(sec(30), FStart, halves, "")
	nem(sec(55), FStop, halves, "")
	kill := &Fault{Kind: KindKill, Nodes: []string{"n2"}}
	nem(sec(70), FStart, kill, "n2")
	nem(sec(85), FStop, kill, "n2")
	r.History = append(r.History, Op{Type: Info, F: FExit, Process: NemesisProcess, Time: sec(95),
		Node: "n3", Value: Value{Exit: "exit status 2"}})
	nem(sec(105), FStart, &Fault{Kind: KindKill, Leader: true, Nodes: []string{"n1"}}, "n1")

	for i := range requests {
		t0 := int64(float64(i) / float64(requests) * float64(d))
		id := fmt.Sprintf("req-%d", i)
		node := info.Nodes[i%3].Name
		dep := info.Deployments[i%2].ID
		r.History = append(r.History, Op{Type: Invoke, F: FChat, Process: Process(i % 32), Node: node,
			Time: t0, Value: Value{RequestID: id, Model: "gpt", MaxTokens: 64}})
		lat := int64(math.Exp(rng.NormFloat64()*0.8+math.Log(80)) * 1e6) // ~80 ms, log-normal
		v := Value{RequestID: id}
		typ := OK
		switch p := rng.Float64(); {
		case p < 0.2:
			typ, v.Status, lat = Fail, 429, lat/20
		case p < 0.24:
			typ, lat = Info, int64(10*time.Second)
		default:
			v.Status, v.Deployment = 200, dep
			r.Upstream = append(r.Upstream, Arrival{T: start + t0 + lat/2, Deployment: dep,
				RequestID: id, Tokens: 40 + rng.Int64N(80)})
		}
		r.History = append(r.History, Op{Type: typ, F: FChat, Process: Process(i % 32), Node: node,
			Time: t0 + lat, Value: v})
	}
	sort.SliceStable(r.History, func(a, b int) bool { return r.History[a].Time < r.History[b].Time })
	for i := range r.History {
		r.History[i].Index = i
	}
	return r
}

func reportResults() *Results {
	var problems []string
	for i := range 25 {
		problems = append(problems, fmt.Sprintf("request req-%d: ok but never reached the upstream", i))
	}
	problems[3] = "problem " + hostile
	return &Results{
		Valid: False,
		Checkers: map[string]CheckResult{
			"limits":       {Valid: True, Summary: "Every deployment stayed within its fast-mode bound."},
			"requests":     {Valid: False, Summary: "25 requests answered ok never reached the upstream.", Problems: problems, Figures: map[string]any{"ok": 700.0, "phantoms": 0.0}},
			"config":       {Valid: Unknown, Summary: "config summary " + hostile},
			"availability": {Valid: True, Summary: "The majority side kept serving."},
		},
		Deployments: []DeploymentResult{
			{ID: "dep-a", LimitRPM: 600, MaxIn60s: 212, Bound: 1212, Admitted: 380, Refused: 40, FaultFactorInWorst: 2},
			{ID: "dep-b<i>", LimitRPM: 300, LimitTPM: 30000, MaxIn60s: 210, MaxTokensIn60s: 16000, Bound: 606,
				TokenBound: 60600, Admitted: 375, Refused: 41, OverBoundWindows: 0, FaultFactorInWorst: 2},
		},
	}
}

// parseReport writes the report of r and res and parses it.
func parseReport(t *testing.T, r *Run, res *Results) ([]byte, *html.Node) {
	t.Helper()
	path := filepath.Join(t.TempDir(), ReportFile)
	if err := WriteReport(path, r, res); err != nil {
		t.Fatalf("WriteReport: %v", err)
	}
	page, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := html.Parse(bytes.NewReader(page))
	if err != nil {
		t.Fatalf("report.html does not parse: %v", err)
	}
	return page, doc
}

func walk(n *html.Node, fn func(*html.Node)) {
	fn(n)
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		walk(c, fn)
	}
}

// textOf is the page's text as a reader sees it, entities decoded.
func textOf(doc *html.Node) string {
	var b strings.Builder
	walk(doc, func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
	})
	return b.String()
}

func TestReportPage(t *testing.T) {
	r := reportRun(400, 120*time.Second)
	res := reportResults()
	page, doc := parseReport(t, r, res)

	var plots int
	walk(doc, func(n *html.Node) {
		if n.Type != html.ElementNode {
			return
		}
		switch {
		case n.Data == "svg":
			plots++
		case n.Data == "script", n.Data == "i", n.Data == "iframe", n.Data == "link", n.Data == "img":
			// <i> would be the deployment ID "dep-b<i>" let through unescaped.
			t.Errorf("report has a <%s> element", n.Data)
		}
		for _, a := range n.Attr {
			v := strings.ToLower(strings.TrimSpace(a.Val))
			if (a.Key == "src" || a.Key == "href" || strings.HasSuffix(a.Key, ":href")) &&
				(strings.Contains(v, "://") || strings.HasPrefix(v, "//") || strings.HasPrefix(v, "javascript:")) {
				t.Errorf("<%s %s=%q> loads from elsewhere", n.Data, a.Key, a.Val)
			}
		}
	})
	// Nothing in this run names a URL, so any is something the page would fetch.
	for _, s := range []string{"http://", "https://", "url("} {
		if bytes.Contains(page, []byte(s)) {
			t.Errorf("report contains %q", s)
		}
	}
	// timeline, latency, throughput, dep-a requests, dep-b requests and tokens
	if plots != 6 {
		t.Errorf("%d <svg> plots, want 6", plots)
	}

	text := textOf(doc)
	for name, c := range res.Checkers {
		if !strings.Contains(text, c.Summary) {
			t.Errorf("checker %s's summary %q is not on the page", name, c.Summary)
		}
	}
	for _, want := range []string{
		"invalid",
		"herd-chaos run --nodes 3 --time 2m0s --nemesis partition,kill --mode fast --rpm 600 --tpm 30000 --demand 1.5 --seed 42",
		"problem " + hostile, // shown as text, escaped
		"and 5 more",         // 25 problems, 20 shown
		"dep-b<i>: at most 210 requests in any 60 s", // the plot's title, escaped by gonum/plot
		"dep-b<i>: at most 16000 tokens in any 60 s",
		"halves",             // the partition's bar label
		"kill (raft leader)", // the leader kill's legend entry
		"never stopped",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("page text lacks %q", want)
		}
	}
	if bytes.Contains(page, []byte(hostile)) {
		t.Errorf("report contains %s unescaped", hostile)
	}
	for _, href := range []string{"history.jsonl", "upstream.jsonl", "results.json", "run.json", "config.html", "nodes/n2.log"} {
		if !bytes.Contains(page, []byte(`href="`+href+`"`)) {
			t.Errorf("no link to %s", href)
		}
	}

	// The sample page, to look at in a browser: HERD_CHAOS_REPORT_SAMPLE=/tmp/sample go test ...
	if dir := os.Getenv("HERD_CHAOS_REPORT_SAMPLE"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := WriteReport(filepath.Join(dir, ReportFile), r, res); err != nil {
			t.Fatal(err)
		}
	}
}

// A 10-minute run of 50,000 chat requests (100,000 ops) keeps the page small: the plots
// aggregate per second or sample rather than draw every op.
func TestReportSize(t *testing.T) {
	if testing.Short() {
		t.Skip("large synthetic run")
	}
	r := reportRun(50000, 10*time.Minute)
	// Without the limits checker's figures the page measures the busiest 60 s itself.
	res := reportResults()
	res.Deployments = nil
	page, doc := parseReport(t, r, res)
	const most = 3 << 20
	t.Logf("report of %d ops: %d bytes", len(r.History), len(page))
	if len(page) > most {
		t.Errorf("report is %d bytes, want at most %d", len(page), most)
	}
	text := textOf(doc)
	if !strings.Contains(text, "50000: ") {
		t.Errorf("page does not count the 50000 chat requests")
	}
	var times []int64
	for _, a := range r.Upstream {
		if a.Deployment == "dep-a" {
			times = append(times, a.T)
		}
	}
	slices.Sort(times)
	var busiest int
	for i, t0 := range times {
		end, _ := slices.BinarySearch(times, t0+int64(time.Minute))
		busiest = max(busiest, end-i)
	}
	if want := fmt.Sprintf("dep-a: at most %d requests in any 60 s", busiest); !strings.Contains(text, want) {
		t.Errorf("page text lacks %q", want)
	}
	if dir := os.Getenv("HERD_CHAOS_REPORT_SAMPLE"); dir != "" {
		if err := WriteReport(filepath.Join(dir, "report-large.html"), r, res); err != nil {
			t.Fatal(err)
		}
	}
}

// A run with nothing in it (it died at once) still gets a page.
func TestReportEmptyRun(t *testing.T) {
	_, doc := parseReport(t, &Run{}, nil)
	if !strings.Contains(textOf(doc), "unknown") {
		t.Errorf("empty run's verdict is not unknown")
	}
}
