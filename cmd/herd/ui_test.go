//go:build linux

package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// chromiumPath finds a Chromium (or Chrome) to drive: $HERD_CHROMIUM, else the first on PATH.
// Without one the test is skipped, except in CI (CI=true), where a missing browser is a failure.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HERD_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium binary (apt-get install chromium): the dashboard test needs one in CI")
	}
	t.Skip("no chromium binary on PATH; set HERD_CHROMIUM or apt-get install chromium")
	return ""
}

// artifactsDir is where the test's screenshots go: $HERD_TEST_ARTIFACTS (CI sets it), else a
// new directory under the system temp dir that outlives the test, so they can be looked at.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("HERD_TEST_ARTIFACTS")
	if dir == "" {
		d, err := os.MkdirTemp("", "herd-dashboard-")
		if err != nil {
			t.Fatal(err)
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// browser is a headless Chromium tab driven by a dashboard test.
type browser struct {
	t     *testing.T
	ctx   context.Context // the tab, under the test's deadline
	shots string          // where screenshots go

	mu       sync.Mutex
	problems []string // console errors, uncaught exceptions and CSP refusals
}

// newBrowser starts a Chromium (see chromiumPath) with a 1400x1000 window; it is stopped at
// cleanup. The first Run starts it, on a context without a deadline (a deadline on it would
// end the browser); the steps then run under one.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromiumPath(t)
	b := &browser{t: t, shots: artifactsDir(t)}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.WindowSize(1400, 1000))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	if err := chromedp.Do(bctx); err != nil {
		cancelBrowser()
		cancelAlloc()
		t.Fatalf("starting %s: %v", path, err)
	}
	// Uncaught exceptions, console errors and CSP refusals fail the test; failed requests (the
	// 401s of signing in) are the network's, and expected.
	messages := chromedp.Console(bctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() || m.Source == "security" || (m.Source == "" && m.Type == "error") ||
				strings.Contains(m.Text, "Content Security Policy") {
				b.mu.Lock()
				b.problems = append(b.problems, m.String())
				b.mu.Unlock()
			}
		}
	}()
	ctx, cancel := context.WithTimeout(bctx, 4*time.Minute)
	b.ctx = ctx
	t.Cleanup(func() {
		cancel()
		cancelBrowser()
		<-done
		cancelAlloc()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, p := range b.problems {
			t.Errorf("browser console: %s", p)
		}
	})
	return b
}

// do runs steps in the tab.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// waitJS waits until the expression is true in the page.
func (b *browser) waitJS(what, expr string, timeout time.Duration) {
	b.t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(100*time.Millisecond),
		chromedp.WithPollingTimeout(timeout))); err != nil {
		b.t.Fatalf("waiting for %s: %v\npage: %+v", what, err, b.view())
	}
}

// screenshot saves a full-page PNG as name.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(b.shots, name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot %s", p)
}

// view reads what the page shows.
func (b *browser) view() dashboardView {
	b.t.Helper()
	return eval[dashboardView](b, readView)
}

// pollsAtLeast is true in the page once it rendered n polls.
func pollsAtLeast(n int) string {
	return fmt.Sprintf(`Number(document.getElementById('app').dataset.polls || 0) >= %d`, n)
}

// dashboardView is what the page shows, read from the DOM.
type dashboardView struct {
	Polls       int
	LoginShown  bool
	AppShown    bool
	Members     []struct{ Name, Status, Role string }
	Deployments []struct {
		ID       string
		RPMUsed  int64
		RPMLimit int64
		TPMUsed  int64
		TPMLimit int64
		RPMLabel string
		TPMLabel string
		RPMFill  string
		Requests int64 // the total of its requests sparkline (this node, 180 s); -1 without one
	}
	Groups     []groupView
	Sparklines int // polylines drawn in the deployments table
}

// groupView is a model group's header row.
type groupView struct {
	Name, Text string
	Elements   int // elements inside the group's name cell other than the count's span
}

const readView = `(() => {
  const $ = (s) => document.querySelector(s);
  const all = (s) => [...document.querySelectorAll(s)];
  return {
    Polls: Number($('#app').dataset.polls || 0),
    LoginShown: !$('#login-panel').hidden,
    AppShown: !$('#app').hidden,
    Members: all('#members tr[data-member]').map((tr) => ({Name: tr.dataset.member, Status: tr.dataset.status,
      Role: tr.cells[3].textContent})),
    Deployments: all('#deployments tr[data-deployment]').map((tr) => ({
      ID: tr.dataset.deployment,
      RPMUsed: Number(tr.dataset.rpmUsed), RPMLimit: Number(tr.dataset.rpmLimit),
      TPMUsed: Number(tr.dataset.tpmUsed), TPMLimit: Number(tr.dataset.tpmLimit),
      RPMLabel: tr.querySelector('.bar.rpm .label').textContent,
      TPMLabel: tr.querySelector('.bar.tpm .label').textContent,
      RPMFill: tr.querySelector('.bar.rpm .fill').style.width,
      Requests: Number(tr.querySelector('.spark.requests').dataset.total ?? -1),
    })),
    Groups: all('#deployments tr.group').map((tr) => ({
      Name: tr.dataset.group, Text: tr.querySelector('th').firstChild.textContent,
      Elements: tr.querySelectorAll('th *:not(span.muted)').length,
    })),
    Sparklines: all('#deployments polyline').length,
  };
})()`

// TestDashboard drives /ui in a real headless Chromium against a real three-node keyed herd
// cluster: it signs in through the form, checks that the members and the deployments' usage the
// page shows are what /cluster/status answers, sees usage rise under load and a killed node
// turn dead, and that the key lives in sessionStorage only (never the URL) until logging out.
// Screenshots of each stage go to $HERD_TEST_ARTIFACTS.
func TestDashboard(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and a browser; skipped with -short")
	}
	b := newBrowser(t)
	began := time.Now()

	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	path := filepath.Join(t.TempDir(), "config.yaml")
	// Two limited deployments in one group, an unlimited one, and names that would change as
	// markup (config refuses a '<' before a '>'): the page must show them as text.
	cfg := "model_list:\n" +
		"  - {model_name: chat, litellm_params: {model: openai/chat-a, api_base: " + base + "/v1, rpm: 600, tpm: 600000}, model_info: {id: chat-a}}\n" +
		"  - {model_name: chat, litellm_params: {model: openai/chat-b, api_base: " + base + "/v1, rpm: 600}, model_info: {id: chat-b}}\n" +
		"  - {model_name: embed, litellm_params: {model: openai/embed, api_base: " + base + "/v1}, model_info: {id: embed-1}}\n" +
		"  - {model_name: \"x&amp;<y\", litellm_params: {model: openai/markup, api_base: " + base + "/v1, rpm: 60}, model_info: {id: \"odd&lt;1\"}}\n" +
		"general_settings:\n  master_key: sk-admin\n" +
		"cluster_settings:\n  cluster_key: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	nodes := startRaftTrio(t, path)
	a, c := nodes[0], nodes[2]
	waitAll(t, nodes, "members not all alive", func(st map[string]any) bool {
		m := memberStatuses(st)
		return len(m) == 3 && m["a"] == "alive" && m["b"] == "alive" && m["c"] == "alive"
	})
	t.Logf("cluster formed in %v", time.Since(began).Round(time.Millisecond))

	// Sign in: a wrong key is refused with the server's message, the right one shows the app.
	ui := "http://" + a.addr + "/ui"
	b.do("open /ui", chromedp.Navigate(ui))
	b.waitJS("the sign-in form", `!document.getElementById('login-panel').hidden`, 10*time.Second)
	b.do("wrong key", chromedp.SendKeys(chromedp.ID("key"), "sk-wrong"), chromedp.Click(chromedp.CSS(`#login button[type=submit]`)))
	b.waitJS("the refusal", `!document.getElementById('login-error').hidden`, 10*time.Second)
	if msg, err := chromedp.Run(b.ctx, chromedp.TextContent(chromedp.ID("login-error"))); err != nil || !strings.Contains(msg, "Authentication Error") {
		t.Errorf("#login-error = %q, %v; want the server's authentication error", msg, err)
	}
	b.do("sign in", chromedp.SendKeys(chromedp.ID("key"), "sk-admin"),
		chromedp.Click(chromedp.CSS(`#login button[type=submit]`)))
	b.waitJS("three polls", pollsAtLeast(3), 20*time.Second)
	v := b.view()
	if v.LoginShown || !v.AppShown {
		t.Fatalf("after signing in: login shown %v, app shown %v", v.LoginShown, v.AppShown)
	}
	if eval[bool](b, `document.documentElement.outerHTML.includes('sk-admin') || document.getElementById('key').value !== ''`) {
		t.Error("the key is left in the page")
	}
	if stored := eval[string](b, `sessionStorage.getItem('herd-master-key')`); stored != "sk-admin" {
		t.Errorf("sessionStorage herd-master-key = %q", stored)
	}
	matchStatus(b, a.addr, 0)
	v = b.view()
	for _, d := range v.Deployments {
		switch d.ID {
		case "chat-a":
			if d.RPMLimit != 600 || d.RPMLabel != "0 / 600" || d.TPMLabel != "0 / 600,000" || d.RPMFill != "0%" {
				t.Errorf("chat-a shows %+v", d)
			}
		case "embed-1":
			if d.RPMLabel != "0 / ∞" || d.TPMLabel != "0 / ∞" {
				t.Errorf("an unlimited deployment shows %+v", d)
			}
		}
	}
	if i := slices.IndexFunc(v.Groups, func(g groupView) bool { return g.Name == "x&amp;<y" }); i < 0 ||
		v.Groups[i].Text != "x&amp;<y" || v.Groups[i].Elements != 0 {
		t.Errorf("a group named with markup shows as %+v", v.Groups)
	}
	b.screenshot("1-signed-in.png")

	// Load: 100 chat requests over the three nodes in about 5 s; the rpm bars rise to them.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 5 {
		wg.Go(func() {
			for i := w; i < 100; i += 5 {
				time.Sleep(250 * time.Millisecond) // paces the load (20 req/s in all); not a wait for an event
				req, _ := http.NewRequest(http.MethodPost, "http://"+nodes[i%3].addr+"/v1/chat/completions",
					strings.NewReader(`{"model":"chat","messages":[{"role":"user","content":"hi"}]}`))
				req.Header.Set("Authorization", "Bearer sk-admin")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- err
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("request %d: status %d", i, resp.StatusCode)
				}
			}
		})
	}
	b.waitJS("the rpm bars to rise", `[...document.querySelectorAll('#deployments tr[data-deployment^="chat-"]')]
		.reduce((n, tr) => n + Number(tr.dataset.rpmUsed), 0) >= 30`, 20*time.Second)
	t.Logf("the page showed 30 requests %v after the load began", time.Since(start).Round(time.Millisecond))
	b.screenshot("2-under-load.png")
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("100 requests in %v", time.Since(start).Round(time.Millisecond))
	b.waitJS("the rpm bars to count 100 requests", `[...document.querySelectorAll('#deployments tr[data-deployment^="chat-"]')]
		.reduce((n, tr) => n + Number(tr.dataset.rpmUsed), 0) >= 100`, 20*time.Second)
	t.Logf("the page showed them all %v after the load began", time.Since(start).Round(time.Millisecond))
	matchStatus(b, a.addr, 0)
	// The sparklines draw this node's per-second counts: their totals are a's own share.
	deadline := time.Now().Add(10 * time.Second)
	for {
		want := requestsOnNode(t, a.addr)
		got := map[string]int64{}
		for _, d := range b.view().Deployments {
			got[d.ID] = d.Requests
		}
		if fmt.Sprint(got) == fmt.Sprint(want) && want["chat-a"]+want["chat-b"] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the requests sparklines total %v; a's history says %v", got, want)
		}
		time.Sleep(200 * time.Millisecond) // poll interval
	}
	b.screenshot("3-after-load.png")
	// Strict mode: the rpm bar's tooltip tells this node's rights to the limit (held once used).
	if title := eval[string](b, `document.querySelector('#deployments tr[data-deployment="chat-a"] .bar.rpm').title`); !strings.Contains(title, "this node: home, share ") {
		t.Errorf("chat-a's rpm bar title %q does not tell a's rights", title)
	}

	// Kill c: memberlist's failure detector declares it dead, and the page shows it.
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	b.waitJS("c shown dead", `document.querySelector('#members tr[data-member="c"]')?.dataset.status === 'dead'`, 60*time.Second)
	t.Logf("c shown dead %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
	if st := memberStatuses(rawClusterStatus(t, a.addr)); st["c"] != "dead" {
		t.Errorf("the page shows c dead, /cluster/status says %q", st["c"])
	}
	b.screenshot("4-node-dead.png")

	// The session survives a reload (sessionStorage), and the key never reached the URL.
	loc, err := chromedp.Run(b.ctx, chromedp.Location())
	if err != nil || strings.Contains(loc, "sk-admin") || loc != ui {
		t.Errorf("page URL %q (%v); want %s without the key", loc, err, ui)
	}
	b.do("reload", chromedp.Reload())
	b.waitJS("polls after the reload without signing in", pollsAtLeast(2)+" && document.getElementById('login-panel').hidden", 20*time.Second)
	matchStatus(b, a.addr, 5)

	// Log out: the key is forgotten, and a reload asks for it again.
	b.do("log out", chromedp.Click(chromedp.ID("logout")))
	b.waitJS("the sign-in form after logging out", `!document.getElementById('login-panel').hidden && document.getElementById('app').hidden`, 10*time.Second)
	if stored := eval[*string](b, `sessionStorage.getItem('herd-master-key')`); stored != nil {
		t.Error("after logging out, sessionStorage still has the key")
	}
	b.do("reload after logging out", chromedp.Reload())
	b.waitJS("the sign-in form after reloading", `!document.getElementById('login-panel').hidden && document.getElementById('app').hidden`, 10*time.Second)

	t.Logf("dashboard test took %v", time.Since(began).Round(time.Millisecond))
}

// requestsOnNode sums, per deployment, the requests node addr served in the last 180 s, from
// /cluster/status?history=180.
func requestsOnNode(t *testing.T, addr string) map[string]int64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/cluster/status?history=180", nil)
	req.Header.Set("Authorization", "Bearer sk-admin")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		History struct {
			Deployments map[string]struct{ Requests []int64 }
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for id, s := range st.History.Deployments {
		for _, n := range s.Requests {
			out[id] += n
		}
	}
	return out
}

// memberStatuses maps member names to statuses in a /cluster/status answer.
func memberStatuses(st map[string]any) map[string]string {
	out := map[string]string{}
	members, _ := st["members"].([]any)
	for _, m := range members {
		if m, ok := m.(map[string]any); ok {
			name, _ := m["name"].(string)
			status, _ := m["status"].(string)
			out[name] = status
		}
	}
	return out
}

// matchStatus waits (10 s at most) until the page, after a poll that began after a read of
// /cluster/status at addr, shows that answer's members and statuses, its deployments with the
// same limits, and usage within tolerance of it. Page and server are read about a second apart,
// so a member's status may change between them: the check is repeated until they agree.
func matchStatus(b *browser, addr string, tolerance int64) {
	t := b.t
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := b.view().Polls
		st := rawClusterStatus(t, addr)
		diff := ""
		// The page polls once a second: wait for a poll that began after the read.
		_, err := chromedp.Run(b.ctx, chromedp.Poll[bool](pollsAtLeast(before+2), chromedp.WithPollingInterval(50*time.Millisecond),
			chromedp.WithPollingTimeout(5*time.Second)))
		if err != nil {
			diff = fmt.Sprintf("no new poll: %v", err)
		} else {
			diff = compareView(b.view(), st, tolerance)
		}
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page does not show what /cluster/status says: %s", diff)
		}
	}
}

// compareView says how the page differs from a /cluster/status answer; "" when it agrees.
func compareView(v dashboardView, st map[string]any, tolerance int64) string {
	want := memberStatuses(st)
	got := map[string]string{}
	for _, m := range v.Members {
		got[m.Name] = m.Status
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Sprintf("members %v, /cluster/status %v", got, want)
	}
	roles := map[string]string{}
	if members, _ := st["members"].([]any); len(members) == len(v.Members) {
		for _, m := range members {
			m, _ := m.(map[string]any)
			name, _ := m["name"].(string)
			role, _ := m["raft_role"].(string)
			roles[name] = cmp.Or(role, "–")
		}
	}
	for _, m := range v.Members {
		if m.Role != roles[m.Name] {
			return fmt.Sprintf("%s: raft role %q shown, /cluster/status %q", m.Name, m.Role, roles[m.Name])
		}
	}
	deps, _ := st["deployments"].([]any)
	if len(deps) != len(v.Deployments) {
		return fmt.Sprintf("%d deployments shown, /cluster/status has %d", len(v.Deployments), len(deps))
	}
	shown := map[string]int{}
	for i, d := range v.Deployments {
		shown[d.ID] = i
	}
	for _, d := range deps {
		d, _ := d.(map[string]any)
		id, _ := d["id"].(string)
		i, ok := shown[id]
		if !ok {
			return fmt.Sprintf("deployment %q not shown", id)
		}
		p := v.Deployments[i]
		num := func(k string) int64 { f, _ := d[k].(float64); return int64(f) }
		if p.RPMLimit != num("rpm_limit") || p.TPMLimit != num("tpm_limit") {
			return fmt.Sprintf("%s: limits %d/%d shown, /cluster/status %d/%d", id, p.RPMLimit, p.TPMLimit, num("rpm_limit"), num("tpm_limit"))
		}
		if abs(p.RPMUsed-num("rpm_used")) > tolerance || abs(p.TPMUsed-num("tpm_used")) > tolerance*1000 {
			return fmt.Sprintf("%s: used %d rpm, %d tpm shown, /cluster/status %d, %d", id, p.RPMUsed, p.TPMUsed, num("rpm_used"), num("tpm_used"))
		}
	}
	return ""
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}
