//go:build linux

package main

import (
	"context"
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

// dashboardView is what the page shows, read from the DOM.
type dashboardView struct {
	Polls       int
	LoginShown  bool
	AppShown    bool
	Members     []struct{ Name, Status string }
	Deployments []struct {
		ID       string
		RPMUsed  int64
		RPMLimit int64
		TPMUsed  int64
		TPMLimit int64
		RPMLabel string
		TPMLabel string
		RPMFill  string
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
    Members: all('#members tr[data-member]').map((tr) => ({Name: tr.dataset.member, Status: tr.dataset.status})),
    Deployments: all('#deployments tr[data-deployment]').map((tr) => ({
      ID: tr.dataset.deployment,
      RPMUsed: Number(tr.dataset.rpmUsed), RPMLimit: Number(tr.dataset.rpmLimit),
      TPMUsed: Number(tr.dataset.tpmUsed), TPMLimit: Number(tr.dataset.tpmLimit),
      RPMLabel: tr.querySelector('.bar.rpm .label').textContent,
      TPMLabel: tr.querySelector('.bar.tpm .label').textContent,
      RPMFill: tr.querySelector('.bar.rpm .fill').style.width,
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
	browser := chromiumPath(t)
	shots := artifactsDir(t)
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

	// The browser. The first Run starts it, on a context without a deadline (a deadline on it
	// would end the browser); the steps then run under one.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.WindowSize(1400, 1000))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting %s: %v", browser, err)
	}
	// Uncaught exceptions, console errors and CSP refusals fail the test; the 401s of the
	// sign-in are expected network errors.
	var consoleMu sync.Mutex
	var problems []string
	messages := chromedp.Console(bctx)
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() || m.Source == "security" || (m.Source == "" && m.Type == "error") ||
				strings.Contains(m.Text, "Content Security Policy") {
				consoleMu.Lock()
				problems = append(problems, m.String())
				consoleMu.Unlock()
			}
		}
	}()
	defer func() { cancelBrowser(); <-consoleDone }()
	ctx, cancel := context.WithTimeout(bctx, 4*time.Minute)
	defer cancel()

	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// waitJS waits until the expression is true in the page.
	waitJS := func(what, expr string, timeout time.Duration) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(100*time.Millisecond),
			chromedp.WithPollingTimeout(timeout))); err != nil {
			t.Fatalf("waiting for %s: %v\npage: %+v", what, err, view(t, ctx))
		}
	}
	screenshot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		p := filepath.Join(shots, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s", p)
	}
	const pollsAtLeast = `Number(document.getElementById('app').dataset.polls || 0) >= `

	// Sign in: a wrong key is refused with the server's message, the right one shows the app.
	ui := "http://" + a.addr + "/ui"
	do("open /ui", chromedp.Navigate(ui))
	waitJS("the sign-in form", `!document.getElementById('login-panel').hidden`, 10*time.Second)
	do("wrong key", chromedp.SendKeys(chromedp.ID("key"), "sk-wrong"), chromedp.Click(chromedp.CSS(`#login button[type=submit]`)))
	waitJS("the refusal", `!document.getElementById('login-error').hidden`, 10*time.Second)
	if msg, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.ID("login-error"))); err != nil || !strings.Contains(msg, "Authentication Error") {
		t.Errorf("#login-error = %q, %v; want the server's authentication error", msg, err)
	}
	do("sign in", chromedp.SendKeys(chromedp.ID("key"), "sk-admin"),
		chromedp.Click(chromedp.CSS(`#login button[type=submit]`)))
	waitJS("three polls", pollsAtLeast+"3", 20*time.Second)
	v := view(t, ctx)
	if v.LoginShown || !v.AppShown {
		t.Fatalf("after signing in: login shown %v, app shown %v", v.LoginShown, v.AppShown)
	}
	keyLeft, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.outerHTML.includes('sk-admin') || document.getElementById('key').value !== ''`))
	if err != nil || keyLeft {
		t.Errorf("the key is left in the page (%v)", err)
	}
	stored, err := chromedp.Run(ctx, chromedp.Evaluate[string](`sessionStorage.getItem('herd-master-key')`))
	if err != nil || stored != "sk-admin" {
		t.Errorf("sessionStorage herd-master-key = %q, %v", stored, err)
	}
	matchStatus(t, ctx, a.addr, 0)
	v = view(t, ctx)
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
	screenshot("1-signed-in.png")

	// Load: 100 chat requests over the three nodes; the rpm bars rise to them.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 5 {
		wg.Go(func() {
			for i := w; i < 100; i += 5 {
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
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("100 requests in %v", time.Since(start).Round(time.Millisecond))
	waitJS("the rpm bars to count 100 requests", `[...document.querySelectorAll('#deployments tr[data-deployment^="chat-"]')]
		.reduce((n, tr) => n + Number(tr.dataset.rpmUsed), 0) >= 100`, 20*time.Second)
	t.Logf("the page showed them %v after the load began", time.Since(start).Round(time.Millisecond))
	matchStatus(t, ctx, a.addr, 0)
	if _, ok := rawClusterStatus(t, a.addr)["history"]; ok {
		// The sparklines draw this node's per-second counts once the server sends them.
		waitJS("sparklines", `document.querySelectorAll('#deployments tr[data-deployment="chat-a"] polyline').length > 0`, 10*time.Second)
	} else {
		t.Log("/cluster/status has no history yet: sparklines not checked")
	}
	screenshot("2-under-load.png")

	// Kill c: memberlist's failure detector declares it dead, and the page shows it.
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitJS("c shown dead", `document.querySelector('#members tr[data-member="c"]')?.dataset.status === 'dead'`, 60*time.Second)
	t.Logf("c shown dead %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
	if st := memberStatuses(rawClusterStatus(t, a.addr)); st["c"] != "dead" {
		t.Errorf("the page shows c dead, /cluster/status says %q", st["c"])
	}
	screenshot("3-node-dead.png")

	// The session survives a reload (sessionStorage), and the key never reached the URL.
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil || strings.Contains(loc, "sk-admin") || loc != ui {
		t.Errorf("page URL %q (%v); want %s without the key", loc, err, ui)
	}
	do("reload", chromedp.Reload())
	waitJS("polls after the reload without signing in", pollsAtLeast+"2 && document.getElementById('login-panel').hidden", 20*time.Second)
	matchStatus(t, ctx, a.addr, 5)

	// Log out: the key is forgotten, and a reload asks for it again.
	do("log out", chromedp.Click(chromedp.ID("logout")))
	waitJS("the sign-in form after logging out", `!document.getElementById('login-panel').hidden && document.getElementById('app').hidden`, 10*time.Second)
	if stored, err := chromedp.Run(ctx, chromedp.Evaluate[*string](`sessionStorage.getItem('herd-master-key')`)); err != nil || stored != nil {
		t.Errorf("after logging out, sessionStorage still has the key (%v)", err)
	}
	do("reload after logging out", chromedp.Reload())
	waitJS("the sign-in form after reloading", `!document.getElementById('login-panel').hidden && document.getElementById('app').hidden`, 10*time.Second)

	consoleMu.Lock()
	defer consoleMu.Unlock()
	for _, p := range problems {
		t.Errorf("browser console: %s", p)
	}
	t.Logf("dashboard test took %v", time.Since(began).Round(time.Millisecond))
}

// view reads what the page shows.
func view(t *testing.T, ctx context.Context) dashboardView {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[dashboardView](readView))
	if err != nil {
		t.Fatalf("reading the page: %v", err)
	}
	return v
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
func matchStatus(t *testing.T, ctx context.Context, addr string, tolerance int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := view(t, ctx).Polls
		st := rawClusterStatus(t, addr)
		diff := ""
		// The page polls once a second: wait for a poll that began after the read.
		waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := chromedp.Run(waitCtx, chromedp.Poll[bool](fmt.Sprintf(`Number(document.getElementById('app').dataset.polls || 0) >= %d`, before+2),
			chromedp.WithPollingInterval(50*time.Millisecond)))
		cancel()
		if err != nil {
			diff = fmt.Sprintf("no new poll: %v", err)
		} else {
			diff = compareView(view(t, ctx), st, tolerance)
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
