//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The states fakeCluster answers /cluster/status in.
const (
	fakeFull  = iota // every field, as this version of herd sends them
	fakeOlder        // only the fields herd sent before the dashboard: an older node
	fakeDown         // 503s
)

// fakeCluster answers /cluster/status for 50 members and 500 deployments in 10 groups, with
// history that is a function of the second, so the page's merge of polls can be checked.
type fakeCluster struct{ state atomic.Int32 }

// fakeRequests is deployment i's requests in unix second ts, as fakeCluster's history says.
func fakeRequests(i int, ts int64) int64 { return (ts + int64(i)) % 5 }

func fakeDeploymentID(i int) string {
	if i == 499 { // names come from config; a page that built markup from them would run this
		return `<img src=x onerror="window.pwned=1">`
	}
	return fmt.Sprintf("dep-%03d", i)
}

func (f *fakeCluster) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	state := f.state.Load()
	if state == fakeDown {
		http.Error(w, `{"error":{"message":"down for the test"}}`, http.StatusServiceUnavailable)
		return
	}
	full := state == fakeFull
	now := time.Now()
	members := make([]map[string]any, 50)
	for i := range members {
		name := fmt.Sprintf("node-%02d", i)
		status := "alive"
		switch {
		case i == 49:
			status = "left"
		case i%23 == 7:
			status = "dead"
		case i%17 == 5:
			status = "suspect"
		}
		m := map[string]any{"name": name, "addr": fmt.Sprintf("10.0.%d.%d:7946", i/10, i), "status": status,
			"clock_offset_seconds": float64(i)*0.013 - 0.3}
		if full {
			role := ""
			switch {
			case i == 1:
				role = "leader"
			case i < 5:
				role = "voter"
			case i < 10:
				role = "nonvoter"
			}
			m["self"], m["raft_role"], m["served_config_version"] = i == 0, role, 7
			if i == 3 {
				m["served_config_version"] = 6
			}
			if i != 0 {
				m["last_heard_seconds"] = 0.4 + float64(i%5)/10
			}
		}
		members[i] = m
	}
	deps := make([]map[string]any, 500)
	for i := range deps {
		d := map[string]any{"id": fakeDeploymentID(i), "model_name": fmt.Sprintf("group-%02d", i/50),
			"rpm_used": i % 601, "rpm_limit": 600, "tpm_used": i * 97, "tpm_limit": 100000, "in_flight": i % 4}
		if i%10 == 9 {
			d["rpm_limit"], d["tpm_limit"] = 0, 0
		}
		if i == 7 {
			d["cooled_until"] = now.Add(30 * time.Second).UTC().Format("2006-01-02T15:04:05.000Z07:00")
			if full {
				d["cooldown_reason"] = "3 failures in 60 s (last: 503 Service Unavailable)"
			}
		}
		if full {
			d["latency_ms"], d["ttft_ms"] = 120.5+float64(i), 0
			if i%2 == 0 {
				d["ttft_ms"] = 40.25
			}
		}
		deps[i] = d
	}
	out := map[string]any{"node": "node-00", "backend": "redis", "members": members, "deployments": deps,
		"served_config_version": 7, "leader": "node-01", "term": 4, "voters": []string{"node-00", "node-01", "node-02", "node-03", "node-04"},
		"config_version": 8, "config_error": "os.environ/AZURE_KEY is not set", "homes": []string{}, "homes_version": 0}
	if full {
		out["now"] = now.UTC().Format("2006-01-02T15:04:05.000Z07:00")
		out["backend_mode"], out["limit_mode"], out["backend_degraded"] = "degraded", "fast", true
		if n, err := strconv.Atoi(r.URL.Query().Get("history")); err == nil && n >= 1 && n <= 300 {
			end := now.Unix() - 1
			series := func(i int) (reqs, other []int64) {
				reqs, other = make([]int64, n), make([]int64, n)
				for k := range n {
					ts := end - int64(n-1-k)
					reqs[k] = fakeRequests(i, ts)
					if ts%7 == 0 {
						other[k] = 1
					}
				}
				return reqs, other
			}
			groups, hdeps := map[string]any{}, map[string]any{}
			for i := range deps {
				reqs, throttled := series(i)
				hdeps[fakeDeploymentID(i)] = map[string]any{"requests": reqs, "throttled": throttled}
				if i%50 == 0 {
					reqs, rejected := series(i)
					groups[fmt.Sprintf("group-%02d", i/50)] = map[string]any{"requests": reqs, "rejected": rejected}
				}
			}
			out["history"] = map[string]any{"end": end, "step_seconds": 1, "groups": groups, "deployments": hdeps}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// TestDashboardAtScale shows the page a cluster of 50 members and 500 deployments (a fake
// /cluster/status beside a real herd's /ui): it renders one page of 50 deployments quickly and
// keeps polling, pages and filters, shows a cooldown, a degraded backend and a config version
// not served, merges each poll's history by second, renders an older node's answer and warns
// when the answers stop. A herd without a master key needs no sign-in.
func TestDashboardAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a herd and a browser; skipped with -short")
	}
	b := newBrowser(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte("model_list:\n  - model_name: m\n    litellm_params: {model: mock/m}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr, _, done := started(t, ctx, []string{"--config", path, "--host", "127.0.0.1", "--port", "0"})
	t.Cleanup(func() { cancel(); <-done })
	herdURL, _ := url.Parse("http://" + addr)
	fake := &fakeCluster{}
	mux := http.NewServeMux()
	mux.Handle("/ui", httputil.NewSingleHostReverseProxy(herdURL))
	mux.Handle("/ui/", httputil.NewSingleHostReverseProxy(herdURL))
	mux.Handle("/cluster/status", fake)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	b.do("open /ui", chromedp.Navigate(srv.URL+"/ui"))
	b.waitJS("two polls", pollsAtLeast(2), 20*time.Second)
	if eval[bool](b, `!document.getElementById('login-panel').hidden || !document.getElementById('logout').hidden`) {
		t.Error("a herd without a master key shows the sign-in form or a log-out button")
	}
	v := b.view()
	if len(v.Members) != 50 || len(v.Deployments) != 50 {
		t.Fatalf("%d members and %d deployment rows shown; want 50 and one page of 50", len(v.Members), len(v.Deployments))
	}
	statuses := map[string]int{}
	for _, m := range v.Members {
		statuses[m.Status]++
	}
	if statuses["dead"] != 2 || statuses["suspect"] != 3 || statuses["left"] != 1 || v.Members[1].Role != "leader" || v.Members[20].Role != "–" {
		t.Errorf("members shown: statuses %v, roles %q %q", statuses, v.Members[1].Role, v.Members[20].Role)
	}
	pageInfo := func() string { return eval[string](b, `document.getElementById('page-info').textContent`) }
	if pi := pageInfo(); pi != "page 1 of 10 · 500 deployments" {
		t.Errorf("page info %q", pi)
	}
	// One page renders in well under a frame budget's worth of ms, and polling goes on.
	ms := eval[float64](b, `(() => { const t0 = performance.now(); document.getElementById('next').click();
		return performance.now() - t0; })()`)
	t.Logf("rendering a page of 50 deployments took %.1f ms", ms)
	if ms > 250 {
		t.Errorf("rendering a page of 50 deployments took %.0f ms", ms)
	}
	if v := b.view(); v.Deployments[0].ID != "dep-050" || pageInfo() != "page 2 of 10 · 500 deployments" {
		t.Errorf("after Next: first row %s, %q", v.Deployments[0].ID, pageInfo())
	}
	polls := b.view().Polls
	b.waitJS("three more polls", pollsAtLeast(polls+3), 10*time.Second)
	b.do("prev", clickID("prev"))
	if v := b.view(); v.Deployments[0].ID != "dep-000" {
		t.Errorf("after Prev: first row %s", v.Deployments[0].ID)
	}

	// Filters: a group, an ID prefix, and one deployment in cooldown (any case).
	for _, tt := range []struct {
		filter, info string
		rows         int
	}{
		{"group-03", "page 1 of 1 · 50 matching", 50},
		{"dep-4", "page 1 of 2 · 99 matching", 50}, // dep-400 to dep-498: 499's ID is markup
		{"DEP-007", "page 1 of 1 · 1 matching", 1},
	} {
		b.do("filter "+tt.filter, setFilter(tt.filter))
		v := b.view()
		if len(v.Deployments) != tt.rows || pageInfo() != tt.info {
			t.Errorf("filter %q: %d rows, %q; want %d, %q", tt.filter, len(v.Deployments), pageInfo(), tt.rows, tt.info)
		}
	}
	cooldown := eval[string](b, `document.querySelector('#deployments tr[data-deployment="dep-007"] td.cooldown')?.textContent ?? ''`)
	if !regexp.MustCompile(`^cooling until \d\d:\d\d:\d\d: 3 failures in 60 s \(last: 503 Service Unavailable\)$`).MatchString(cooldown) {
		t.Errorf("dep-007's cooldown shows %q", cooldown)
	}
	b.do("clear the filter", setFilter(""))
	b.do("last page", clickID("next"), clickID("next"), clickID("next"), clickID("next"), clickID("next"),
		clickID("next"), clickID("next"), clickID("next"), clickID("next"), clickID("next"))
	if eval[bool](b, `window.pwned !== undefined || document.querySelectorAll('#deployments img').length > 0 ||
		!document.querySelector('#deployments tr[data-deployment^="<img"]')`) {
		t.Error("a deployment ID became markup, or is not shown")
	}
	b.do("first page", setFilter(""))

	// The backend: degraded, and the committed config version not served, with the reason.
	if eval[bool](b, `!document.getElementById('backend').classList.contains('degraded')`) {
		t.Error("a degraded backend is not marked")
	}
	warning := eval[string](b, `document.getElementById('config-warning').hidden ? '' : document.getElementById('config-warning').textContent`)
	if !strings.Contains(warning, "os.environ/AZURE_KEY is not set") || !strings.Contains(warning, "version 7") {
		t.Errorf("config warning %q", warning)
	}

	// History: each poll asks a few seconds and the page merges them by second, so its 180 s
	// of dep-000's requests are exactly the fake's for the 180 s ending at the page's end.
	b.waitJS("a few polls more", pollsAtLeast(b.view().Polls+3), 10*time.Second)
	got := eval[[2]int64](b, `[Number(document.getElementById('app').dataset.historyEnd),
		Number(document.querySelector('#deployments tr[data-deployment="dep-000"] .spark.requests').dataset.total)]`)
	var want int64
	for ts := got[0] - 179; ts <= got[0]; ts++ {
		want += fakeRequests(0, ts)
	}
	if got[1] != want {
		t.Errorf("dep-000's requests sparkline totals %d over the 180 s to %d; the fake says %d", got[1], got[0], want)
	}
	b.screenshot("5-at-scale.png")

	// An older node's answer (none of the dashboard's fields) still renders, without sparklines.
	fake.state.Store(fakeOlder)
	b.waitJS("polls of an older node", pollsAtLeast(b.view().Polls+2), 10*time.Second)
	if v := b.view(); len(v.Members) != 50 || len(v.Deployments) != 50 || v.Members[1].Role != "–" || v.Sparklines != 0 {
		t.Errorf("an older node's answer shows %d members, %d deployments, role %q, %d sparklines (want none: no history)",
			len(v.Members), len(v.Deployments), v.Members[1].Role, v.Sparklines)
	}
	b.screenshot("6-older-node.png")

	// No answers: the page says its view is stale, then recovers.
	fake.state.Store(fakeDown)
	b.waitJS("the stale warning", `!document.getElementById('stale').hidden`, 15*time.Second)
	b.screenshot("7-stale.png")
	fake.state.Store(fakeFull)
	b.waitJS("the stale warning to go", `document.getElementById('stale').hidden`, 10*time.Second)
}

func clickID(id string) chromedp.Action[chromedp.Void] { return chromedp.Click(chromedp.ID(id)) }

// setFilter types v into the deployments filter as one input event.
func setFilter(v string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(
		`(() => { const f = document.getElementById('filter'); f.value = %q; f.dispatchEvent(new Event('input')); })()`, v))
}
