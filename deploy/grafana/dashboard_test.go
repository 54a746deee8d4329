// Package grafana holds the Grafana dashboard for herd (herd.json) and checks it against the
// metrics herd really exports, so that renaming a metric breaks this test, not the dashboard.
package grafana

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/proxy"
	"github.com/herd-proxy/herd/state/local"
)

// dashboard is the part of Grafana's JSON model this test reads.
type dashboard struct {
	SchemaVersion int     `json:"schemaVersion"`
	UID           string  `json:"uid"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	Panels     []panel     `json:"panels"` // a collapsed row's panels
	Targets    []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// promDS is the datasource every panel and query must use: the dashboard's variable, so that
// it imports into any Grafana whatever its Prometheus datasource is called.
const promDS = "${datasource}"

// cmdHerdMetrics are the metrics cmd/herd registers next to the proxy's (cluster, raft, Redis):
// they need a running cluster node, raft store or Redis backend, which this test does not start,
// so each is checked to be named in the file that registers it instead. histogram marks those
// whose _bucket/_sum/_count series a query may use.
var cmdHerdMetrics = map[string]struct {
	file      string
	histogram bool
}{
	"herd_cluster_members":                   {file: "cmd/herd/cluster.go"},
	"herd_gossip_sent_bytes_total":           {file: "cmd/herd/cluster.go"},
	"herd_gossip_received_bytes_total":       {file: "cmd/herd/cluster.go"},
	"herd_cluster_clock_offset_seconds":      {file: "cmd/herd/cluster.go"},
	"herd_cluster_rejected_messages_total":   {file: "cmd/herd/cluster.go"},
	"herd_cluster_propagation_delay_seconds": {file: "cmd/herd/cluster.go", histogram: true},
	"herd_cluster_usage_repairs_total":       {file: "cmd/herd/cluster.go"},
	"herd_config_version":                    {file: "cmd/herd/raft.go"},
	"herd_config_unservable":                 {file: "cmd/herd/raft.go"},
	"herd_state_backend_degraded":            {file: "cmd/herd/redis.go"},
	"herd_redis_errors_total":                {file: "cmd/herd/redis.go"},
	"herd_redis_local_admissions_total":      {file: "cmd/herd/redis.go"},
	"herd_redis_block_admissions_total":      {file: "cmd/herd/redis.go"},
	"herd_redis_block_reservations_total":    {file: "cmd/herd/redis.go"},
}

// metricName finds metric names in PromQL: herd's own and the Go and process collectors'.
// Label names (model_group, deployment, ...) and Grafana variables never start with these.
var metricName = regexp.MustCompile(`\b(?:herd|go|process)_[a-z0-9_]+`)

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile("herd.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("herd.json is not valid JSON: %v", err)
	}
	return d
}

// allPanels flattens rows (collapsed rows carry their panels inside).
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// TestDashboardShape: herd.json is a Grafana 10+ dashboard whose panels have unique ids and
// query the datasource variable with non-empty expressions.
func TestDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want a Grafana 10+ model (>= 36)", d.SchemaVersion)
	}
	if d.UID == "" {
		t.Error("dashboard has no uid: links to it would change on every import")
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Name == "datasource" {
			if v.Type != "datasource" || string(v.Query) != `"prometheus"` {
				t.Errorf("datasource variable: type %q query %s, want a Prometheus datasource variable", v.Type, v.Query)
			}
			continue
		}
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID != promDS) {
			t.Errorf("variable %s does not query %s", v.Name, promDS)
		}
	}
	for _, name := range []string{"datasource", "instance", "model_group", "deployment"} {
		if !vars[name] {
			t.Errorf("no %q variable", name)
		}
	}
	ids := map[int]string{}
	queries := 0
	for _, p := range allPanels(d.Panels) {
		if prev, ok := ids[p.ID]; ok || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or shared with %q", p.Title, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != promDS {
			t.Errorf("panel %q: datasource %+v, want prometheus %s", p.Title, p.Datasource, promDS)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			queries++
			if strings.TrimSpace(q.Expr) == "" {
				t.Errorf("panel %q: query %s has an empty expr", p.Title, q.RefID)
			}
			if q.RefID == "" || refs[q.RefID] {
				t.Errorf("panel %q: refId %q empty or repeated", p.Title, q.RefID)
			}
			refs[q.RefID] = true
			if q.Datasource != nil && q.Datasource.UID != promDS {
				t.Errorf("panel %q query %s: datasource %+v, want %s", p.Title, q.RefID, q.Datasource, promDS)
			}
		}
	}
	if queries == 0 {
		t.Fatal("no queries in the dashboard")
	}
}

// dashboardMetrics returns every metric name used in the dashboard's queries and variables,
// with the panel that uses it.
func dashboardMetrics(t *testing.T, d dashboard) map[string]string {
	t.Helper()
	used := map[string]string{}
	for _, p := range allPanels(d.Panels) {
		for _, q := range p.Targets {
			for _, m := range metricName.FindAllString(q.Expr, -1) {
				used[m] = p.Title
			}
		}
	}
	for _, v := range d.Templating.List {
		for _, m := range metricName.FindAllString(string(v.Query), -1) {
			used[m] = "variable " + v.Name
		}
	}
	return used
}

// TestDashboardMetricsExist: every metric the dashboard queries is one a herd server registers.
// The proxy's own and the Go and process collectors' are gathered from a real in-process server
// after one good and one failing request; the cluster, raft and Redis ones from cmdHerdMetrics.
func TestDashboardMetricsExist(t *testing.T) {
	used := dashboardMetrics(t, loadDashboard(t))
	for _, want := range []string{"herd_requests_total", "herd_request_duration_seconds_bucket", "herd_cluster_members", "go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := used[want]; !ok {
			t.Errorf("the dashboard does not use %s: is the extraction broken?", want)
		}
	}
	served := gatherHerd(t)
	repo := filepath.Join("..", "..")
	sources := map[string]string{}
	var names []string
	for m := range used {
		names = append(names, m)
	}
	sort.Strings(names)
	for _, m := range names {
		if known(m, served) {
			continue
		}
		name := m // as registered: a histogram's series names its base
		entry, ok := cmdHerdMetrics[m]
		if base, isSeries := histogramBase(m); !ok && isSeries {
			entry, ok = cmdHerdMetrics[base]
			ok = ok && entry.histogram
			name = base
		}
		if !ok {
			t.Errorf("panel %q uses %s, which herd does not export", used[m], m)
			continue
		}
		src, seen := sources[entry.file]
		if !seen {
			b, err := os.ReadFile(filepath.Join(repo, entry.file))
			if err != nil {
				t.Fatal(err)
			}
			src = string(b)
			sources[entry.file] = src
		}
		if !strings.Contains(src, `"`+name+`"`) {
			t.Errorf("panel %q uses %s, which %s no longer registers", used[m], name, entry.file)
		}
	}
	// The Go and process collectors are registered in cmd/herd the way gatherHerd does.
	b, err := os.ReadFile(filepath.Join(repo, "cmd", "herd", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"collectors.NewGoCollector()", "collectors.NewProcessCollector("} {
		if !strings.Contains(string(b), c) {
			t.Errorf("cmd/herd/main.go no longer registers %s, which the runtime panels query", c)
		}
	}
}

// histogramBase strips the suffix of a histogram's or summary's series.
func histogramBase(m string) (string, bool) {
	for _, s := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(m, s); ok {
			return base, true
		}
	}
	return m, false
}

// known reports whether m is a family in served (name to type, as client_model spells it), or a series of a histogram or summary there.
func known(m string, served map[string]string) bool {
	if _, ok := served[m]; ok {
		return true
	}
	base, ok := histogramBase(m)
	if !ok {
		return false
	}
	typ, ok := served[base]
	if !ok {
		return false
	}
	if strings.HasSuffix(m, "_bucket") {
		return typ == "HISTOGRAM"
	}
	return typ == "HISTOGRAM" || typ == "SUMMARY"
}

// gatherHerd starts herd's proxy in process on a registry set up as cmd/herd sets it up, sends
// a request to a mock deployment and one to an upstream that fails (so the labelled families
// have series), and returns the metric families registered, by name.
func gatherHerd(t *testing.T) map[string]string {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, `{"error":{"message":"boom"}}`, http.StatusInternalServerError)
	}))
	t.Cleanup(up.Close)
	yaml := `
model_list:
  - {model_name: x, litellm_params: {model: mock/x}}
  - {model_name: broken, litellm_params: {model: openai/y, api_base: "` + up.URL + `/v1", api_key: sk-test}}
`
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg, err := config.Parse("t.yaml", []byte(yaml), config.MapEnv{}, log)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := proxy.New(proxy.Options{Config: cfg, State: local.New(local.Options{}), Backend: "local", Node: "n1", Version: "test", Logger: log, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	for model, want := range map[string]int{"x": http.StatusOK, "broken": http.StatusInternalServerError} {
		body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
		resp, err := http.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("model %s: status %d, want %d: %s", model, resp.StatusCode, want, b)
		}
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range fams {
		out[f.GetName()] = f.GetType().String()
	}
	for _, want := range []string{"herd_requests_total", "herd_tokens_total", "herd_upstream_failures_total", "go_goroutines"} {
		if _, ok := out[want]; !ok {
			t.Fatalf("herd registered no %s after the requests: the server setup is wrong", want)
		}
	}
	return out
}
