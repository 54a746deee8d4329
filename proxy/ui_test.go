package proxy

import (
	"regexp"
	"strings"
	"testing"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// TestDashboardAssets: /ui serves the page and its assets without the master key, with a CSP
// that forbids inline script and style and other origins; the data behind it still needs the
// key. (cmd/herd's TestDashboard drives the page in a real browser.)
func TestDashboardAssets(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, openAIConfig+"\ngeneral_settings:\n  master_key: sk-master-ui\n", base, nil)

	const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
		"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
	bodies := map[string]string{}
	for _, tt := range []struct{ path, contentType, cache string }{
		{"/ui", "text/html; charset=utf-8", "no-store"},
		{"/ui/", "text/html; charset=utf-8", "no-store"},
		{"/ui/assets/app.js", "text/javascript; charset=utf-8", "no-cache"},
		{"/ui/assets/app.css", "text/css; charset=utf-8", "no-cache"},
	} {
		resp, body := get(t, h.URL+tt.path) // no key
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: %d %s", tt.path, resp.StatusCode, body)
			continue
		}
		for name, want := range map[string]string{
			"Content-Type":            tt.contentType,
			"Content-Security-Policy": csp,
			"X-Content-Type-Options":  "nosniff",
			"Referrer-Policy":         "no-referrer",
			"Cache-Control":           tt.cache,
		} {
			if got := resp.Header.Get(name); got != want {
				t.Errorf("GET %s: %s = %q, want %q", tt.path, name, got, want)
			}
		}
		bodies[tt.path] = body
	}
	for _, p := range []string{"/ui/assets/missing.js", "/ui/assets/index.html", "/ui/assets/..%2fui.go"} {
		if resp, _ := get(t, h.URL+p); resp.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
	// The data needs the key.
	if resp, _ := get(t, h.URL+"/cluster/status"); resp.StatusCode != 401 {
		t.Errorf("/cluster/status without key: %d, want 401", resp.StatusCode)
	}
	if resp, _ := get(t, h.URL+"/cluster/status", "Authorization", "Bearer sk-master-ui"); resp.StatusCode != 200 {
		t.Errorf("/cluster/status with key: %d, want 200", resp.StatusCode)
	}

	page := bodies["/ui"]
	// The CSP allows no inline script or style: every <script> loads a file and is empty, and
	// nothing has a style attribute or a <style> element.
	for _, m := range regexp.MustCompile(`(?is)<script([^>]*)>(.*?)</script>`).FindAllStringSubmatch(page, -1) {
		if strings.TrimSpace(m[2]) != "" || !strings.Contains(m[1], `src="/ui/assets/`) {
			t.Errorf("inline script in index.html: %s", m[0])
		}
	}
	if regexp.MustCompile(`(?i)\sstyle\s*=|<style|\son[a-z]+\s*=|javascript:`).MatchString(page) {
		t.Error("index.html has inline style or an event handler attribute")
	}
	for _, id := range []string{`<form id="login"`, `id="key" type="password" autocomplete="off"`, `id="login-error"`,
		`id="logout"`, `id="app"`, `id="members"`, `id="backend"`, `id="filter"`, `id="prev"`, `id="next"`,
		`id="page-info"`, `id="stale"`, `id="updated"`} {
		if !strings.Contains(page, id) {
			t.Errorf("index.html lacks %s", id)
		}
	}
	// Nothing is loaded from another host: no CDN, no fonts. The SVG namespace name is an
	// identifier, never fetched.
	url := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s'"]*`)
	for path, body := range bodies {
		for _, u := range url.FindAllString(body, -1) {
			if u != "http://www.w3.org/2000/svg" {
				t.Errorf("%s refers to another host: %s", path, u)
			}
		}
	}
	// Server strings become text, never markup.
	if js := bodies["/ui/assets/app.js"]; regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write`).MatchString(js) {
		t.Error("app.js builds markup from strings")
	}
}
