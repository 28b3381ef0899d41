package httpapi

import (
	"embed"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"

	"github.com/gin-gonic/gin"
)

// uiFiles are the browser monitor's pages: plain HTML, JS and CSS, no build step, nothing external.
//
//go:embed ui
var uiFiles embed.FS

// uiCSP allows only this origin's scripts, styles and WebSocket: with no inline script or style, an
// injected string can never run even if some code path forgot textContent.
const uiCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// registerUI mounts the browser pages: / and /ui redirect to /ui/ (job list and start form),
// /ui/jobs/{id} is the live job page, /ui/static/ holds their assets. The pages are public (they hold
// no data); the API calls they make need a key when CAO_API_KEYS is set.
func (s *Server) registerUI(r *gin.Engine) {
	toUI := func(c *gin.Context) { c.Redirect(http.StatusFound, "/ui/") }
	r.GET("/", toUI)
	r.GET("/ui", toUI)
	r.GET("/ui/", uiPage("ui/index.html"))
	r.GET("/ui/jobs/:id", uiPage("ui/job.html"))
	r.GET("/ui/static/*file", uiStatic)
}

func uiHeaders(c *gin.Context) {
	h := c.Writer.Header()
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	// The page may carry ?api_key=; never send it to another site.
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}

// uiPage serves one embedded HTML page.
func uiPage(name string) gin.HandlerFunc {
	body, err := uiFiles.ReadFile(name)
	if err != nil {
		panic("httpapi: missing embedded page " + name) // a build mistake, caught by the tests
	}
	return func(c *gin.Context) {
		uiHeaders(c)
		c.Data(http.StatusOK, "text/html; charset=utf-8", body)
	}
}

// uiStatic serves the embedded assets under /ui/static/.
func uiStatic(c *gin.Context) {
	name := strings.TrimPrefix(path.Clean(c.Param("file")), "/")
	body, err := fs.ReadFile(uiFiles, "ui/"+name)
	if err != nil || name == "" || strings.HasSuffix(name, ".html") {
		abort(c, http.StatusNotFound, codeNotFound, "no such file", nil)
		return
	}
	ct := mime.TypeByExtension(path.Ext(name))
	if ct == "" {
		ct = "application/octet-stream"
	}
	uiHeaders(c)
	c.Data(http.StatusOK, ct, body)
}
