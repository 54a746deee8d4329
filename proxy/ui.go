package proxy

import (
	"embed"
	"net/http"

	"github.com/labstack/echo/v4"
)

// The dashboard (GET /ui): a static page and its script and stylesheet, embedded in the binary.
// They hold no data and are served without the master key; the page fetches /cluster/status
// with the key the operator types in, sent as Authorization: Bearer, never in a URL.
//
//go:embed ui/index.html ui/app.js ui/app.css
var uiFiles embed.FS

// uiCSP allows the page only its own script, stylesheet and API: no inline script or style, no
// other origin, no framing.
const uiCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// uiAsset is one embedded file with its content type, read once at startup.
type uiAsset struct {
	body        []byte
	contentType string
	cache       string
}

var uiAssets = func() map[string]uiAsset {
	read := func(name, contentType, cache string) uiAsset {
		b, err := uiFiles.ReadFile("ui/" + name)
		if err != nil {
			panic(err) // embedded above: cannot be missing
		}
		return uiAsset{body: b, contentType: contentType, cache: cache}
	}
	return map[string]uiAsset{
		"index.html": read("index.html", "text/html; charset=utf-8", "no-store"),
		// Not versioned by name, so revalidated: a new binary's script is never mixed with an
		// old page.
		"app.js":  read("app.js", "text/javascript; charset=utf-8", "no-cache"),
		"app.css": read("app.css", "text/css; charset=utf-8", "no-cache"),
	}
}()

// uiPage serves index.html (GET /ui and /ui/).
func uiPage(c echo.Context) error { return serveUIAsset(c, "index.html") }

// uiStatic serves GET /ui/assets/NAME.
func uiStatic(c echo.Context) error {
	if name := c.Param("name"); name != "index.html" {
		return serveUIAsset(c, name)
	}
	return echo.ErrNotFound
}

func serveUIAsset(c echo.Context, name string) error {
	a, ok := uiAssets[name]
	if !ok {
		return echo.ErrNotFound
	}
	h := c.Response().Header()
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY") // frame-ancestors for browsers without CSP level 2
	h.Set("Cache-Control", a.cache)
	return c.Blob(http.StatusOK, a.contentType, a.body)
}
