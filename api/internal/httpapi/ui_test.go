package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

func TestUIRoutes(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	// Keys are configured: the pages themselves are still public (they hold no data).
	api := env.startAPI(t, nodeOptions{APIKeys: []string{"k1"}})
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	for _, p := range []string{"/", "/ui"} {
		res, err := noRedirect.Get(api.URL + p)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusFound, res.StatusCode, p)
		require.Equal(t, "/ui/", res.Header.Get("Location"), p)
	}

	tests := []struct {
		path, contentType, contains string
	}{
		{"/ui/", "text/html", `<script src="/ui/static/index.js">`},
		{"/ui/jobs/0b6f7a52-3c1e-4e55-9d55-1f7c3a1b2c3d", "text/html", `<script src="/ui/static/job.js">`},
		{"/ui/static/app.css", "text/css", ".badge"},
		{"/ui/static/common.js", "javascript", "textContent"},
		{"/ui/static/index.js", "javascript", "/api/v1/features"},
		{"/ui/static/job.js", "javascript", "after_seq"},
	}
	for _, tc := range tests {
		res, err := http.Get(api.URL + tc.path)
		require.NoError(t, err)
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, res.StatusCode, tc.path)
		require.Contains(t, res.Header.Get("Content-Type"), tc.contentType, tc.path)
		require.Contains(t, string(b), tc.contains, tc.path)
		require.Equal(t, uiCSP, res.Header.Get("Content-Security-Policy"), tc.path)
		require.Equal(t, "nosniff", res.Header.Get("X-Content-Type-Options"), tc.path)
		require.Equal(t, "no-referrer", res.Header.Get("Referrer-Policy"), tc.path)
	}

	for _, p := range []string{"/ui/static/missing.js", "/ui/static/index.html", "/ui/static/../ui.go"} {
		var body struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		require.Equal(t, http.StatusNotFound, api.do(t, http.MethodGet, p, nil, &body), p)
		require.Equal(t, "not_found", body.Error.Code, p)
	}
}

// TestUINoHTMLInjection guards the XSS rule: the scripts never parse strings as HTML, and the pages
// have no inline script or style that the CSP would have to allow.
func TestUINoHTMLInjection(t *testing.T) {
	t.Parallel()
	forbidden := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function|\.setAttribute\('on`)
	inline := regexp.MustCompile(`<script>|<script [^>]*>[^<]|style=|<style|\son[a-z]+=`)
	err := fs.WalkDir(uiFiles, "ui", func(p string, d fs.DirEntry, err error) error {
		require.NoError(t, err)
		if d.IsDir() {
			return nil
		}
		b, err := uiFiles.ReadFile(p)
		require.NoError(t, err)
		switch filepath.Ext(p) {
		case ".js":
			require.NotRegexp(t, forbidden, string(b), p)
		case ".html":
			require.NotRegexp(t, inline, string(b), p)
		}
		return nil
	})
	require.NoError(t, err)
}

// chromiumPath is where Debian's chromium package installs the browser.
const chromiumPath = "/usr/bin/chromium"

// newBrowser starts headless Chromium with a fresh profile; the returned context runs actions in one
// tab, and the console of that tab is collected.
func newBrowser(t *testing.T) (context.Context, *consoleLog) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("Chromium is not installed at %s (%v); install it with: apt-get update && apt-get install -y chromium", chromiumPath, err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
	})
	require.NoError(t, chromedp.Do(ctx), "start Chromium") // no timeout on the first run: it owns the browser
	log := &consoleLog{}
	msgs := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			log.add(m)
		}
	}()
	t.Cleanup(func() { cancelCtx(); <-done })
	return ctx, log
}

// consoleLog is what the page wrote to its console.
type consoleLog struct {
	mu   sync.Mutex
	msgs []chromedp.ConsoleMessage
}

func (l *consoleLog) add(m chromedp.ConsoleMessage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, m)
}

// requireClean fails on uncaught exceptions and CSP violations.
func (l *consoleLog) requireClean(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.msgs {
		t.Logf("browser console: %s", m)
		require.False(t, m.IsException(), "uncaught exception in the page: %s", m)
		require.NotContains(t, m.Text, "Content Security Policy", "CSP violation: %s", m)
	}
}

// poll waits in the page until the JavaScript expression is true.
func poll(ctx context.Context, expr string, d time.Duration) error {
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](expr,
		chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(25*time.Millisecond)))
	return err
}

// pollAcrossNavigation is poll for an expression that holds only after the page navigates: a
// navigation ends the in-page poll, which then starts again on the new page.
func pollAcrossNavigation(ctx context.Context, expr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := poll(ctx, expr, time.Until(deadline))
		if err == nil || time.Now().After(deadline) || !navigationError(err) {
			return err
		}
	}
}

// navigationError reports whether err is the end of an in-page evaluation by a navigation.
func navigationError(err error) bool {
	msg := err.Error()
	for _, s := range []string{"navigated", "context with specified id", "context was destroyed"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func TestUIBrowserMonitor(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	const key = "browser-key"
	api := env.startAPI(t, nodeOptions{APIKeys: []string{key}, Runner: true})
	ctx, console := newBrowser(t)

	// A job whose input tries to inject markup: the page must show it as text.
	const evil = `<img src=x onerror="window.__xss=1">`
	var created struct {
		JobID string `json:"job_id"`
	}
	require.Equal(t, http.StatusAccepted, api.do(t, http.MethodPost, "/api/v1/jobs",
		map[string]any{"feature_name": "pipeline", "input_data": map[string]any{"name": evil}}, &created,
		"Authorization", "Bearer "+key))

	// The page takes the key from ?api_key=, then runs live until the job completes.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(api.URL+"/ui/jobs/"+created.JobID+"?api_key="+key)))
	allSucceeded := `(() => { const rows = document.querySelectorAll('#steps tbody tr');
		return rows.length === ` + strconv.Itoa(len(pipelineSteps)) + ` &&
			[...rows].every(r => r.dataset.status === 'SUCCEEDED'); })()`
	require.NoError(t, poll(ctx, `document.body.dataset.jobStatus === 'COMPLETED' && document.body.dataset.conn === 'closed' &&
		document.body.dataset.synced === 'final' && `+allSucceeded, 90*time.Second),
		"the page did not show the job COMPLETED")
	// The page is final now (no more renders): read what it shows.
	text := func(css string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector(`+strconv.Quote(css)+`).textContent`))
		require.NoError(t, err, css)
		return strings.TrimSpace(v)
	}
	for _, name := range pipelineSteps {
		row := text(`#steps tr[data-step="` + name + `"]`)
		require.Contains(t, row, name)
		require.Contains(t, row, "SUCCEEDED")
	}
	require.Equal(t, "COMPLETED", text("#job-status-badge"))
	require.Equal(t, "2", text(`#steps tr[data-step="enrich"] td:nth-child(6)`), "enrich fails once and is retried")
	require.Equal(t, "job finished", text("#conn-text"))

	// The key left the address bar; the injected markup stayed text.
	loc, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.NotContains(t, loc, "api_key")
	injected, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__xss === 1 || document.querySelector('#input img') !== null`))
	require.NoError(t, err)
	require.False(t, injected)
	input, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('input').textContent`))
	require.NoError(t, err)
	require.Contains(t, input, "onerror")

	// The start page: the key is remembered, features are listed, Start runs a job and opens it.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(api.URL+"/ui/")))
	require.NoError(t, poll(ctx, `document.querySelectorAll('#feature option[value="pipeline"]').length === 1 &&
		document.getElementById('input').value.includes('"name"') &&
		document.querySelector('#jobs tr[data-job="`+created.JobID+`"]') !== null`, 20*time.Second))
	jobsPNG, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(t.ArtifactDir(), "jobs.png"), jobsPNG, 0o644))
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.ID("start"))))
	require.NoError(t, pollAcrossNavigation(ctx, `location.pathname.startsWith('/ui/jobs/') &&
		document.body.dataset.jobStatus === 'COMPLETED' && document.body.dataset.conn === 'closed' &&
		document.body.dataset.synced === 'final' && document.querySelectorAll('#events li').length >= 20`, 90*time.Second))

	// The screenshot for humans: a job watched live from its start to the end.
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(t.ArtifactDir(), "monitor.png"), png, 0o644))
	if dir := screenshotDir(); dir != "" {
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "monitor.png"), png, 0o644))
	}
	loc, err = chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	newID := loc[strings.LastIndex(loc, "/")+1:]
	require.NotEqual(t, created.JobID, newID)
	var job struct {
		FeatureName string          `json:"feature_name"`
		InputData   json.RawMessage `json:"input_data"`
	}
	require.NoError(t, json.Unmarshal(api.getJobWithKey(t, newID, key), &job))
	require.Equal(t, "pipeline", job.FeatureName)
	require.JSONEq(t, `{"name": "Example name"}`, string(job.InputData))

	console.requireClean(t)
}

// screenshotDir is docs/screenshots of the repository (found from this package's directory) when
// CAO_UPDATE_SCREENSHOTS=1, so ordinary runs leave the committed picture alone; they keep theirs in
// the test's artifact directory (go test -artifacts).
func screenshotDir() string {
	if os.Getenv("CAO_UPDATE_SCREENSHOTS") != "1" {
		return ""
	}
	wd, err := os.Getwd() // .../api/internal/httpapi
	if err != nil {
		return ""
	}
	root := filepath.Clean(filepath.Join(wd, "..", "..", ".."))
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		return ""
	}
	return filepath.Join(root, "docs", "screenshots")
}

// getJobWithKey reads GET /api/v1/jobs/{id} with an API key.
func (a *testAPI) getJobWithKey(t testing.TB, jobID, key string) json.RawMessage {
	t.Helper()
	var res struct {
		Job json.RawMessage `json:"job"`
	}
	require.Equal(t, http.StatusOK, a.do(t, http.MethodGet, "/api/v1/jobs/"+jobID, nil, &res, "Authorization", "Bearer "+key))
	return res.Job
}
