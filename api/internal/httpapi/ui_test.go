package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/chromedp/chromedp"
	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
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

// --- operator actions, step panel, index filters, DAG preview, auth ---------------------------------

// uiRegistry has the features of the browser tests for operators: a job slow enough to be cancelled,
// one whose last step fails until its input has a region (resume with edited input), and one whose
// HTTP step fails its first run (retry failed steps; the attempt history has HTTP statuses).
func uiRegistry(serviceURL string) string {
	return `
services:
  sim: {kind: mock, latency: 5ms}
  slow: {kind: mock, latency: 120s}
  ext:
    kind: http
    base_url: ` + serviceURL + `
    timeout: 5s
    retry: {max_attempts: 2, initial_backoff: 20ms, max_backoff: 50ms}
features:
  slow_job:
    description: Prepare, then wait on a slow service.
    input:
      type: object
      required: [name]
      properties: {name: {type: string, minLength: 1}}
    steps:
      - {name: prepare, service: sim}
      - {name: wait, service: slow, needs: [prepare]}
      - {name: finish, service: sim, needs: [wait]}
  publish:
    description: Draft, review and translate a text, then release it in a region.
    input:
      type: object
      required: [name]
      properties:
        name: {type: string, minLength: 1, maxLength: 40}
        region: {type: string, enum: [eu, us]}
        copies: {type: integer, minimum: 1, maximum: 5}
        contact: {type: string, format: email}
    steps:
      - {name: draft, service: sim}
      - {name: review, service: sim, needs: [draft]}
      - {name: translate, service: sim, needs: [draft]}
      - name: release
        service: sim
        needs: [review, translate]
        output: {released: "{{ .input.name }}", region: "{{ .input.region }}"}
  sync:
    steps:
      - {name: extract, service: sim}
      - {name: upload, service: ext, needs: [extract], request: {method: POST, path: /upload, body: {job: "{{ .job.id }}"}}}
      - {name: notify, service: sim, needs: [upload]}
`
}

// uiSteps are the step names of uiRegistry's features, in order.
var uiSteps = map[string][]string{
	"slow_job": {"prepare", "wait", "finish"},
	"publish":  {"draft", "review", "translate", "release"},
	"sync":     {"extract", "upload", "notify"},
}

// flakyService is the HTTP service of the sync feature: it answers 503 to its first failFirst calls,
// then 200 with a JSON body.
type flakyService struct {
	mu        sync.Mutex
	failFirst int
	calls     int
}

func (s *flakyService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.calls++
	n, fail := s.calls, s.calls <= s.failFirst
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if fail {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error": "upstream is warming up"}`))
		return
	}
	_, _ = w.Write([]byte(`{"uploaded": true, "call": ` + strconv.Itoa(n) + `}`))
}

// newUIEnv is a test environment over uiRegistry; the sync feature's service fails its first
// failFirst calls.
func newUIEnv(t *testing.T, failFirst int) *testEnv {
	t.Helper()
	svc := httptest.NewServer(&flakyService{failFirst: failFirst})
	t.Cleanup(svc.Close)
	env := newTestEnv(t)
	reg, err := registry.Parse("ui-registry.yaml", []byte(uiRegistry(svc.URL)), nil)
	require.NoError(t, err)
	env.Registry = reg
	return env
}

// startJob starts a job of feature with input through the API (with key) and returns its id.
func (a *testAPI) startJob(t *testing.T, key, feature string, input map[string]any) string {
	t.Helper()
	var res struct {
		JobID string `json:"job_id"`
	}
	require.Equal(t, http.StatusAccepted, a.do(t, http.MethodPost, "/api/v1/jobs",
		map[string]any{"feature_name": feature, "input_data": input}, &res, "Authorization", "Bearer "+key))
	return res.JobID
}

// uiJob is the part of the job object the browser tests check against the page.
type uiJob struct {
	Status       string          `json:"status"`
	Error        *string         `json:"error"`
	InputData    json.RawMessage `json:"input_data"`
	InputVersion int             `json:"input_version"`
	Steps        []struct {
		Name   string          `json:"name"`
		Status string          `json:"status"`
		Run    int             `json:"run"`
		Output json.RawMessage `json:"output"`
	} `json:"steps"`
}

func (a *testAPI) job(t *testing.T, id, key string) uiJob {
	t.Helper()
	var j uiJob
	require.NoError(t, json.Unmarshal(a.getJobWithKey(t, id, key), &j))
	return j
}

// waitJobStatus waits until the API shows the job in status.
func (a *testAPI) waitJobStatus(t *testing.T, id, key, status string) uiJob {
	t.Helper()
	var j uiJob
	testinfra.Eventually(t, 60*time.Second, func() bool {
		j = a.job(t, id, key)
		return j.Status == status
	}, "job %s never became %s", id, status)
	return j
}

// page drives one browser tab in a test.
type page struct {
	t   *testing.T
	ctx context.Context
}

// wait polls the expression in the page; on timeout it fails with what the page shows.
func (p page) wait(expr string, d time.Duration, what string) {
	p.t.Helper()
	if err := poll(p.ctx, expr, d); err != nil {
		state, _ := chromedp.Run(p.ctx, chromedp.Evaluate[string](`JSON.stringify({data: {...document.body.dataset},
			status: (document.getElementById('job-status-badge') || {}).textContent,
			action: (document.getElementById('action-status') || {}).textContent,
			errors: [...document.querySelectorAll('.banner:not(.hidden)')].map(b => b.textContent)})`))
		p.t.Fatalf("%s: %v (page: %s)", what, err, state)
	}
}

func (p page) navigate(url string) {
	p.t.Helper()
	require.NoError(p.t, chromedp.Do(p.ctx, chromedp.Navigate(url)))
}

func (p page) click(css string) {
	p.t.Helper()
	require.NoError(p.t, chromedp.Do(p.ctx, chromedp.Click(chromedp.CSS(css))), "click %s", css)
}

// text is the trimmed textContent of the first element matching css.
func (p page) text(css string) string {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`(document.querySelector(`+strconv.Quote(css)+`) || {textContent: ''}).textContent`))
	require.NoError(p.t, err, css)
	return strings.TrimSpace(v)
}

func (p page) eval(expr string) string {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](expr))
	require.NoError(p.t, err, expr)
	return v
}

func (p page) evalBool(expr string) bool {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](expr))
	require.NoError(p.t, err, expr)
	return v
}

// setValue sets a form field as typing would (the page hears an input event).
func (p page) setValue(css, value string) {
	p.t.Helper()
	_ = p.eval(`(() => { const e = document.querySelector(` + strconv.Quote(css) + `); e.value = ` + strconv.Quote(value) + `;
		e.dispatchEvent(new Event('input', {bubbles: true})); e.dispatchEvent(new Event('change', {bubbles: true})); return ''; })()`)
}

// screenshot saves a full-page PNG in the test's artifact directory and, with
// CAO_UPDATE_SCREENSHOTS=1, in docs/screenshots.
func (p page) screenshot(name string) {
	p.t.Helper()
	// A viewport as tall as the page: what is fixed to the viewport (a dialog's backdrop) covers it all.
	height, err := chromedp.Run(p.ctx, chromedp.Evaluate[int64](`Math.ceil(document.documentElement.scrollHeight)`))
	require.NoError(p.t, err)
	require.NoError(p.t, chromedp.Do(p.ctx, chromedp.EmulateViewport(1280, height)))
	png, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100))
	require.NoError(p.t, err)
	require.NoError(p.t, chromedp.Do(p.ctx, chromedp.ResetViewport()))
	require.NoError(p.t, os.WriteFile(filepath.Join(p.t.ArtifactDir(), name), png, 0o644))
	if dir := screenshotDir(); dir != "" {
		require.NoError(p.t, os.MkdirAll(dir, 0o755))
		require.NoError(p.t, os.WriteFile(filepath.Join(dir, name), png, 0o644))
	}
}

// jobFinal is true when the page shows the job in status, the stream ended and the last REST read is
// final.
func jobFinal(status string) string {
	return `document.body.dataset.jobStatus === '` + status + `' && document.body.dataset.conn === 'closed' &&
		document.body.dataset.synced === 'final'`
}

func TestUIBrowserCancelJob(t *testing.T) {
	t.Parallel()
	env := newUIEnv(t, 0)
	const key = "ops-key"
	api := env.startAPI(t, nodeOptions{APIKeys: []string{key}, Runner: true})
	ctx, console := newBrowser(t)
	p := page{t, ctx}

	id := api.startJob(t, key, "slow_job", map[string]any{"name": "nightly"})
	p.navigate(api.URL + "/ui/jobs/" + id + "?api_key=" + key)
	// While the slow step runs: Cancel is on, Resume and Retry are off (the job is neither ended nor stuck).
	p.wait(`document.querySelector('#steps tr[data-step="wait"]')?.dataset.status === 'RUNNING' &&
		!document.getElementById('cancel-btn').disabled`, 30*time.Second, "the slow step never ran")
	require.True(t, p.evalBool(`document.getElementById('resume-btn').disabled && document.getElementById('retry-btn').disabled`))
	p.eval(`window.__sameDocument = true; ''`)

	p.click("#cancel-btn")
	p.wait(jobFinal("CANCELLED"), 30*time.Second, "the page never showed the job CANCELLED")
	require.Contains(t, p.text("#action-status"), "Cancel accepted")
	require.Equal(t, "CANCELLED", p.text(`#steps tr[data-step="wait"] td:nth-child(5)`))
	require.Equal(t, "CANCELLED", p.text(`#steps tr[data-step="finish"] td:nth-child(5)`))
	require.Equal(t, "SUCCEEDED", p.text(`#steps tr[data-step="prepare"] td:nth-child(5)`))
	// Now the job can be resumed or retried, not cancelled again; the page was never reloaded.
	require.True(t, p.evalBool(`document.getElementById('cancel-btn').disabled &&
		!document.getElementById('resume-btn').disabled && !document.getElementById('retry-btn').disabled &&
		window.__sameDocument === true`))
	require.Equal(t, "CANCELLED", api.job(t, id, key).Status)
	console.requireClean(t)
}

func TestUIBrowserResumeFromStepWithEditedInput(t *testing.T) {
	t.Parallel()
	env := newUIEnv(t, 0)
	const key = "ops-key"
	api := env.startAPI(t, nodeOptions{APIKeys: []string{key}, Runner: true})
	ctx, console := newBrowser(t)
	p := page{t, ctx}

	// Without a region the release step cannot render its output: the job FAILS.
	id := api.startJob(t, key, "publish", map[string]any{"name": "spring launch"})
	failed := api.waitJobStatus(t, id, key, "FAILED")
	require.NotNil(t, failed.Error)

	p.navigate(api.URL + "/ui/jobs/" + id + "?api_key=" + key)
	p.wait(jobFinal("FAILED")+` && !document.getElementById('resume-btn').disabled`, 30*time.Second, "the page never showed the job FAILED")
	require.True(t, p.evalBool(`document.getElementById('cancel-btn').disabled`), "a FAILED job cannot be cancelled")
	require.Equal(t, *failed.Error, p.text("#job-error"))
	p.eval(`window.__sameDocument = true; ''`)

	// The dialog offers every step of the job, and starts from the job's input.
	p.click("#resume-btn")
	p.wait(`document.getElementById('resume-dialog').open && document.getElementById('resume-dialog').dataset.ready === 'true'`,
		10*time.Second, "the resume dialog did not open")
	opts := p.eval(`[...document.querySelectorAll('#resume-from option')].map(o => o.value).join(',')`)
	require.Equal(t, ","+strings.Join(uiSteps["publish"], ","), opts)
	require.Equal(t, "release", p.eval(`document.getElementById('resume-from').value`), "the first step that did not succeed")
	var shown map[string]any
	require.NoError(t, json.Unmarshal([]byte(p.eval(`document.getElementById('resume-input').value`)), &shown))
	require.Equal(t, map[string]any{"name": "spring launch"}, shown)

	// Client-side validation: the input breaks the schema in three fields; nothing is sent.
	p.setValue("#resume-input", `{"name": "", "region": "mars", "copies": 9}`)
	p.click("#resume-submit")
	p.wait(`document.querySelectorAll('#resume-errors li').length === 3`, 5*time.Second, "no field errors")
	require.Equal(t, "client", p.eval(`document.querySelector('#resume-errors ul').dataset.source`))
	require.Equal(t, "name must not be empty", p.text(`#resume-errors li[data-field="name"]`))
	require.Equal(t, `region must be one of: "eu", "us"`, p.text(`#resume-errors li[data-field="region"]`))
	require.Equal(t, "copies must be at most 5", p.text(`#resume-errors li[data-field="copies"]`))
	p.setValue("#resume-input", `{"name": "spring launch"`)
	p.wait(`document.querySelector('#resume-errors li[data-field="$"]')?.textContent.includes('must be valid JSON')`,
		5*time.Second, "broken JSON was not refused")
	require.True(t, p.evalBool(`document.getElementById('resume-dialog').open`))
	j := api.job(t, id, key)
	require.Equal(t, "FAILED", j.Status, "refused input was not sent")
	require.Equal(t, 1, j.InputVersion)

	// What only the server checks (formats) comes back as its 422 details, per field, in the dialog.
	p.setValue("#resume-input", `{"name": "spring launch", "region": "eu", "contact": "not an address"}`)
	p.wait(`document.getElementById('resume-errors').classList.contains('hidden')`, 5*time.Second, "valid input still refused")
	p.click("#resume-submit")
	p.wait(`document.querySelector('#resume-errors ul[data-source="server"] li[data-field="contact"]') !== null`,
		10*time.Second, "the server's 422 details were not shown")
	require.Contains(t, p.text("#resume-errors"), "invalid_input")
	require.Equal(t, "contact must be a valid email address", p.text(`#resume-errors li[data-field="contact"]`))
	require.Equal(t, 1, api.job(t, id, key).InputVersion)

	// Resume from translate with the region: translate and release run again, draft and review keep
	// their run.
	p.setValue("#resume-input", "{\n  \"name\": \"spring launch\",\n  \"region\": \"eu\",\n  \"copies\": 2\n}")
	p.setValue("#resume-from", "translate")
	p.wait(`document.getElementById('resume-errors').classList.contains('hidden') &&
		document.getElementById('resume-input-note').textContent.startsWith('Changed')`, 5*time.Second, "edited input not accepted")
	require.Equal(t, "Will run again: translate, release.", p.text("#resume-plan"))
	p.screenshot("resume-dialog.png")
	p.click("#resume-submit")

	// The page follows the new run live: the old stream had closed with the FAILED event.
	p.wait(`!document.getElementById('resume-dialog').open`, 10*time.Second, "the dialog stayed open")
	p.wait(jobFinal("COMPLETED"), 60*time.Second, "the page never showed the resumed job COMPLETED")
	require.True(t, p.evalBool(`window.__sameDocument === true`), "the page was reloaded")
	require.Contains(t, p.text("#action-status"), "Resume accepted from step translate with the new input")
	for name, run := range map[string]string{"draft": "1", "review": "1", "translate": "2", "release": "2"} {
		require.Equal(t, "SUCCEEDED", p.text(`#steps tr[data-step="`+name+`"] td:nth-child(5)`), name)
		require.Equal(t, run, p.text(`#steps tr[data-step="`+name+`"] td:nth-child(7)`), name)
	}
	require.Contains(t, p.text("#input"), `"region": "eu"`)
	require.Contains(t, p.text("#output"), `"released": "spring launch"`)
	require.True(t, p.evalBool(`[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('job') && li.textContent.includes('PENDING'))`),
		"the resume's events were not streamed")
	require.True(t, p.evalBool(`document.getElementById('resume-btn').disabled && document.getElementById('cancel-btn').disabled`),
		"a COMPLETED job can be neither resumed nor cancelled")

	j = api.job(t, id, key)
	require.Equal(t, "COMPLETED", j.Status)
	require.Equal(t, 2, j.InputVersion)
	require.JSONEq(t, `{"name": "spring launch", "region": "eu", "copies": 2}`, string(j.InputData))
	for _, s := range j.Steps {
		if s.Name == "release" {
			require.JSONEq(t, `{"released": "spring launch", "region": "eu"}`, string(s.Output))
		}
	}
	console.requireClean(t)
}

func TestUIBrowserRetryFailedStepsAndStepPanel(t *testing.T) {
	t.Parallel()
	// Both attempts of upload's first run get 503: the job FAILS; the retry's call succeeds.
	env := newUIEnv(t, 2)
	const key = "ops-key"
	api := env.startAPI(t, nodeOptions{APIKeys: []string{key}, Runner: true})
	ctx, console := newBrowser(t)
	p := page{t, ctx}

	id := api.startJob(t, key, "sync", map[string]any{})
	api.waitJobStatus(t, id, key, "FAILED")
	p.navigate(api.URL + "/ui/jobs/" + id + "?api_key=" + key)
	p.wait(jobFinal("FAILED")+` && !document.getElementById('retry-btn').disabled`, 30*time.Second, "the page never showed the job FAILED")
	require.Equal(t, "FAILED", p.text(`#steps tr[data-step="upload"] td:nth-child(5)`))
	notify := p.text(`#steps tr[data-step="notify"] td:nth-child(5)`)
	require.NotEqual(t, "SUCCEEDED", notify)

	// The step panel: the failed run's two attempts, each with its worker, times, class and HTTP status.
	p.click(`#steps tr[data-step="upload"]`)
	p.wait(`document.getElementById('step-panel').dataset.step === 'upload' &&
		document.querySelectorAll('#step-attempts tbody tr').length === 2`, 10*time.Second, "the step panel did not open")
	require.Equal(t, "Step upload", p.text("#step-panel-title"))
	require.Equal(t, "http_status", p.text("#step-error .tag"))
	require.Contains(t, p.text("#step-error"), "503")
	require.Equal(t, "(none)", p.text("#step-output"))
	for i := 1; i <= 2; i++ {
		row := `#step-attempts tbody tr:nth-child(` + strconv.Itoa(i) + `)`
		require.Equal(t, "1", p.text(row+" td:nth-child(1)"), "run")
		require.Equal(t, strconv.Itoa(i), p.text(row+" td:nth-child(2)"), "attempt")
		require.Equal(t, "FAILED", p.text(row+" td:nth-child(3)"))
		require.NotEqual(t, "—", p.text(row+" td:nth-child(4)"), "worker")
		require.NotEqual(t, "—", p.text(row+" td:nth-child(5)"), "started")
		require.NotEqual(t, "—", p.text(row+" td:nth-child(6)"), "finished")
		require.Regexp(t, `^\d+(\.\d+)? m?s$`, p.text(row+" td:nth-child(7)"), "duration")
		require.Equal(t, "http_status", p.text(row+" td:nth-child(8)"))
		require.Equal(t, "503", p.text(row+" td:nth-child(9)"))
	}
	require.Contains(t, p.eval(`location.hash`), "step=upload")
	// The graph marks the selected step.
	require.True(t, p.evalBool(`document.querySelector('#dag g.node[data-step="upload"]').classList.contains('selected')`))

	// Retry failed steps: POST /resume without a body; the page follows the new run live.
	p.eval(`window.__sameDocument = true; ''`)
	p.click("#retry-btn")
	p.wait(jobFinal("COMPLETED"), 60*time.Second, "the page never showed the retried job COMPLETED")
	require.True(t, p.evalBool(`window.__sameDocument === true`), "the page was reloaded")
	require.Contains(t, p.text("#action-status"), "Retry accepted")
	p.wait(`document.querySelectorAll('#step-attempts tbody tr').length === 3 &&
		document.getElementById('step-panel').dataset.status === 'SUCCEEDED'`, 10*time.Second, "the panel did not follow the retry")
	last := `#step-attempts tbody tr:nth-child(3)`
	require.Equal(t, "2", p.text(last+" td:nth-child(1)"), "the retry is run 2")
	require.Equal(t, "1", p.text(last+" td:nth-child(2)"))
	require.Equal(t, "SUCCEEDED", p.text(last+" td:nth-child(3)"))
	require.True(t, p.evalBool(`document.getElementById('step-error').classList.contains('hidden')`))
	var out map[string]any
	require.NoError(t, json.Unmarshal([]byte(p.text("#step-output")), &out), "the output is pretty JSON")
	require.Equal(t, map[string]any{"uploaded": true, "call": float64(3)}, out)
	require.Contains(t, p.text("#step-output"), "\n  \"uploaded\": true")
	for _, name := range uiSteps["sync"] {
		require.Equal(t, "SUCCEEDED", p.text(`#steps tr[data-step="`+name+`"] td:nth-child(5)`), name)
	}
	require.Equal(t, "1", p.text(`#steps tr[data-step="extract"] td:nth-child(7)`), "a succeeded step is not retried")
	p.screenshot("job-step-panel.png")

	// Clicking the selected step again closes the panel.
	p.click(`#dag g.node[data-step="upload"]`)
	p.wait(`document.getElementById('step-panel').classList.contains('hidden')`, 5*time.Second, "the panel did not close")
	require.Equal(t, "COMPLETED", api.job(t, id, key).Status)
	console.requireClean(t)
}

func TestUIBrowserIndexFiltersAndDAGPreview(t *testing.T) {
	t.Parallel()
	env := newUIEnv(t, 0)
	const key = "ops-key"
	api := env.startAPI(t, nodeOptions{APIKeys: []string{key}, Runner: true})
	ctx, console := newBrowser(t)
	p := page{t, ctx}

	// Three publish jobs FAIL (no region), one COMPLETES; a slow_job is cancelled.
	var failedIDs []string
	for i := range 3 {
		failedIDs = append(failedIDs, api.startJob(t, key, "publish", map[string]any{"name": "launch " + strconv.Itoa(i)}))
	}
	okID := api.startJob(t, key, "publish", map[string]any{"name": "launch ok", "region": "us"})
	slowID := api.startJob(t, key, "slow_job", map[string]any{"name": "<b>bold</b>"})
	require.Equal(t, http.StatusAccepted, api.do(t, http.MethodPost, "/api/v1/jobs/"+slowID+"/cancel", nil, nil, "Authorization", "Bearer "+key))
	var jobErr string
	for _, id := range failedIDs {
		j := api.waitJobStatus(t, id, key, "FAILED")
		jobErr = *j.Error
	}
	api.waitJobStatus(t, okID, key, "COMPLETED")

	p.navigate(api.URL + "/ui/?api_key=" + key)
	p.wait(`document.querySelectorAll('#jobs tbody tr').length === 5 && document.querySelectorAll('#feature-filter option').length === 4`,
		20*time.Second, "the job list did not load")

	// Filter by feature: only publish jobs; every FAILED one shows its error.
	p.setValue("#feature-filter", "publish")
	p.wait(`document.getElementById('jobs').dataset.query === 'limit=25&feature=publish' &&
		document.querySelectorAll('#jobs tbody tr').length === 4`, 10*time.Second, "the feature filter did not apply")
	require.True(t, p.evalBool(`[...document.querySelectorAll('#jobs tbody tr')].every(r => r.dataset.feature === 'publish')`))
	for _, id := range failedIDs {
		require.Equal(t, jobErr, p.text(`#jobs tr[data-job="`+id+`"] td.err`))
	}
	require.Equal(t, "", p.text(`#jobs tr[data-job="`+okID+`"] td.err`))

	// And by status.
	p.setValue("#status-filter", "COMPLETED")
	p.wait(`document.getElementById('jobs').dataset.query === 'limit=25&status=COMPLETED&feature=publish' &&
		document.querySelectorAll('#jobs tbody tr').length === 1`, 10*time.Second, "the status filter did not apply")
	require.Equal(t, okID, p.eval(`document.querySelector('#jobs tbody tr').dataset.job`))
	require.Contains(t, p.eval(`location.search`), "feature=publish")
	p.setValue("#feature-filter", "slow_job")
	p.wait(`document.querySelectorAll('#jobs tbody tr').length === 0 &&
		!document.getElementById('jobs-empty').classList.contains('hidden')`, 10*time.Second, "no empty state")
	require.Equal(t, "No jobs match these filters.", p.text("#jobs-empty"))

	// Pages: ?limit=2 shows two jobs, Load more adds the next ones until next_cursor is null.
	p.navigate(api.URL + "/ui/?feature=publish&limit=2")
	p.wait(`document.querySelectorAll('#jobs tbody tr').length === 2 && !document.getElementById('more').classList.contains('hidden')`,
		10*time.Second, "the first page did not load")
	require.Equal(t, "publish", p.eval(`document.getElementById('feature-filter').value`))
	p.click("#more")
	p.wait(`document.querySelectorAll('#jobs tbody tr').length === 4 && document.getElementById('jobs').dataset.pages === '2'`,
		10*time.Second, "Load more did not add the second page")
	// The last page may still carry a cursor (exactly full): follow until the button goes.
	for range 3 {
		if p.evalBool(`document.getElementById('more').classList.contains('hidden')`) {
			break
		}
		pages := p.eval(`document.getElementById('jobs').dataset.pages`)
		p.click("#more")
		p.wait(`document.getElementById('jobs').dataset.pages !== '`+pages+`'`, 10*time.Second, "Load more did nothing")
	}
	require.True(t, p.evalBool(`document.getElementById('more').classList.contains('hidden')`))
	ids := p.eval(`[...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.job).sort().join(',')`)
	want := append(append([]string{}, failedIDs...), okID)
	slices.Sort(want)
	require.Equal(t, strings.Join(want, ","), ids, "each publish job once across the pages")

	// The DAG preview of the selected feature: one box per step, in columns by depth, one line per need.
	p.setValue("#feature", "publish")
	p.wait(`document.querySelectorAll('#feature-dag g.node').length === 4`, 10*time.Second, "no DAG preview")
	type box struct {
		Step  string  `json:"step"`
		Depth string  `json:"depth"`
		X     float64 `json:"x"`
	}
	var boxes []box
	require.NoError(t, json.Unmarshal([]byte(p.eval(`JSON.stringify([...document.querySelectorAll('#feature-dag g.node')].map(g =>
		({step: g.dataset.step, depth: g.dataset.depth, x: g.querySelector('rect').x.baseVal.value})))`)), &boxes))
	depth := map[string]string{}
	x := map[string]float64{}
	for _, b := range boxes {
		depth[b.Step], x[b.Step] = b.Depth, b.X
	}
	require.Equal(t, map[string]string{"draft": "0", "review": "1", "translate": "1", "release": "2"}, depth)
	require.Equal(t, x["review"], x["translate"], "same depth, same column")
	require.Less(t, x["draft"], x["review"])
	require.Less(t, x["review"], x["release"])
	edges := p.eval(`[...document.querySelectorAll('#feature-dag path.edge')].map(e => e.dataset.from + '>' + e.dataset.to).sort().join(',')`)
	require.Equal(t, "draft>review,draft>translate,review>release,translate>release", edges)
	require.Contains(t, p.text("#feature-desc"), "4 steps, 4 dependencies")
	// The DAG of another feature replaces it.
	p.setValue("#feature", "slow_job")
	p.wait(`document.querySelectorAll('#feature-dag g.node').length === 3 && document.querySelectorAll('#feature-dag path.edge').length === 2`,
		10*time.Second, "the preview did not follow the feature")
	p.setValue("#feature", "publish")
	p.wait(`document.querySelectorAll('#feature-dag g.node').length === 4`, 10*time.Second, "no DAG preview")

	// The start form validates against the schema before sending.
	p.setValue("#input", `{"name": "x", "copies": 0}`)
	p.wait(`document.querySelector('#input-errors li[data-field="copies"]')?.textContent === 'copies must be at least 1'`,
		5*time.Second, "the start form did not validate")
	p.setValue("#input", "{\n  \"name\": \"Example name\",\n  \"region\": \"eu\"\n}")
	p.wait(`document.getElementById('input-errors').classList.contains('hidden')`, 5*time.Second, "valid input refused")
	p.navigate(api.URL + "/ui/")
	p.wait(`document.querySelectorAll('#feature-dag g.node').length > 0 && document.querySelectorAll('#jobs tbody tr').length === 5`,
		20*time.Second, "the index did not load")
	p.setValue("#feature", "publish")
	p.wait(`document.querySelectorAll('#feature-dag g.node').length === 4`, 10*time.Second, "no DAG preview")
	p.screenshot("index-dag-preview.png")
	console.requireClean(t)
}

func TestUIBrowserAuthPromptOn401(t *testing.T) {
	t.Parallel()
	env := newUIEnv(t, 0)
	const key = "the-right-key"
	api := env.startAPI(t, nodeOptions{APIKeys: []string{key}})
	ctx, console := newBrowser(t)
	p := page{t, ctx}
	visibleBanners := `[...document.querySelectorAll('.banner')].filter(b => b.offsetParent !== null)`

	// No key stored: the list, the features and the periodic refresh are all refused, one message.
	p.navigate(api.URL + "/ui/")
	p.wait(`!document.getElementById('key-prompt').classList.contains('hidden')`, 10*time.Second, "no key prompt")
	// Both first requests have answered (each would show its own banner if it did).
	p.wait(`document.body.dataset.jobs === 'error' && document.body.dataset.features === 'error'`, 10*time.Second,
		"the page did not ask the API")
	require.Equal(t, "1", p.eval(`String(`+visibleBanners+`.length)`))
	require.Contains(t, p.text("#key-prompt"), "This server requires an API key.")
	require.True(t, p.evalBool(`document.getElementById('start-error').classList.contains('hidden') &&
		document.getElementById('jobs-error').classList.contains('hidden')`))

	// A wrong stored key: one message that says so.
	p.navigate(api.URL + "/ui/?api_key=wrong")
	p.wait(`!document.getElementById('key-prompt').classList.contains('hidden') &&
		document.body.dataset.jobs === 'error' && document.body.dataset.features === 'error'`, 10*time.Second, "no key prompt")
	require.Equal(t, "1", p.eval(`String(`+visibleBanners+`.length)`))
	require.Contains(t, p.text("#key-prompt"), "The stored API key was refused.")

	// The job page too: one message, not "API key required" twice.
	id := api.startJob(t, key, "publish", map[string]any{"name": "x"})
	p.navigate(api.URL + "/ui/jobs/" + id)
	p.wait(`!document.getElementById('key-prompt').classList.contains('hidden') && document.body.dataset.conn === 'closed'`,
		10*time.Second, "no key prompt on the job page")
	require.Equal(t, "1", p.eval(`String(`+visibleBanners+`.length)`))
	require.Equal(t, "API key required", p.text("#conn-text"))

	// Entering the right key: the page reloads and works.
	p.setValue("#key-input", key)
	p.click(`#key-form button[type="submit"]`)
	// The reload may be caught before the new page has its prompt: a missing element is "not yet".
	require.NoError(t, pollAcrossNavigation(ctx, `document.getElementById('key-prompt')?.classList.contains('hidden') === true &&
		document.body.dataset.jobStatus === 'PENDING' && document.body.dataset.conn === 'connected'`, 20*time.Second), "the key did not take")
	require.Equal(t, "0", p.eval(`String(`+visibleBanners+`.length)`))
	console.requireClean(t)
}

func TestUIBrowserQueuesLinkCarriesKey(t *testing.T) {
	t.Parallel()
	env := newUIEnv(t, 0)
	const key = "queues-key"
	node := env.startAPI(t, nodeOptions{APIKeys: []string{key}})
	// This API also serves asynqmon under /monitoring/, as `serve` does.
	opt, err := asynq.ParseRedisURI(env.RedisURL)
	require.NoError(t, err)
	mon := asynqmon.New(asynqmon.Options{RootPath: "/monitoring", RedisConnOpt: opt})
	srv := New(nodeDeps(node.Node), Options{Monitoring: mon})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Stop(sctx)
		hs.Close()
		_ = mon.Close()
	})
	ctx, console := newBrowser(t)
	p := page{t, ctx}

	// Without a stored key the link is the plain page (which then asks for a key).
	p.navigate(hs.URL + "/ui/")
	p.wait(`document.readyState === 'complete'`, 10*time.Second, "the page did not load")
	require.Equal(t, "/monitoring/", p.eval(`document.getElementById('queues-link').getAttribute('href')`))

	// With a key stored, on both pages, the link carries it once.
	p.navigate(hs.URL + "/ui/?api_key=" + key)
	p.wait(`document.querySelectorAll('#feature option').length > 0`, 10*time.Second, "the page did not load")
	require.Equal(t, "/monitoring/?api_key="+key, p.eval(`document.getElementById('queues-link').getAttribute('href')`))
	id := node.startJob(t, key, "publish", map[string]any{"name": "x"})
	p.navigate(hs.URL + "/ui/jobs/" + id)
	p.wait(`document.body.dataset.jobStatus !== undefined`, 10*time.Second, "the job page did not load")
	require.Equal(t, "/monitoring/?api_key="+key, p.eval(`document.getElementById('queues-link').getAttribute('href')`))
	console.requireClean(t) // the UI's own pages; asynqmon's console is its own business

	// Following it: the server trades the key for a session cookie and redirects to /monitoring/
	// without the key; asynqmon loads and its API calls pass with the cookie.
	p.click("#queues-link")
	require.NoError(t, pollAcrossNavigation(ctx, `location.pathname === '/monitoring/' && location.search === '' &&
		document.title.includes('Asynq')`, 20*time.Second), "the Queues link did not open asynqmon")
	status, err := chromedp.Run(ctx, chromedp.Evaluate[string](`fetch('/monitoring/api/queues', {credentials: 'same-origin'}).then(r => String(r.status))`,
		chromedp.EvalAwaitPromise))
	require.NoError(t, err)
	require.Equal(t, "200", status)
	require.NotContains(t, p.eval(`document.cookie`), "cao_monitoring_session", "the session cookie is HttpOnly")
}

// The job page says why a step waits: its service's one slot is taken by another job's long call.
func TestUIBrowserShowsWhyAStepWaits(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	reg, err := registry.Parse("ui-registry.yaml", []byte(`
services:
  gate: {kind: mock, latency: 120s, max_concurrency: 1}
features:
  pass:
    steps:
      - {name: through, service: gate}
`), nil)
	require.NoError(t, err)
	env.Registry = reg
	const key = "ops-key"
	api := env.startAPI(t, nodeOptions{APIKeys: []string{key}, Runner: true})
	ctx, console := newBrowser(t)
	p := page{t, ctx}

	first := api.startJob(t, key, "pass", map[string]any{})
	api.waitStepStatus(t, first, key, "through", "RUNNING")
	second := api.startJob(t, key, "pass", map[string]any{})
	third := api.startJob(t, key, "pass", map[string]any{})
	for _, id := range []string{second, third} {
		p.navigate(api.URL + "/ui/jobs/" + id + "?api_key=" + key)
		p.wait(`(document.querySelector('#steps tr[data-step="through"] td.waiting')?.textContent || '').startsWith('waiting for a slot on gate: 1/1 in use')`,
			30*time.Second, "the page never said why the step waits")
		require.Equal(t, "slot", p.eval(`document.querySelector('#steps tr[data-step="through"] td.waiting').dataset.waiting`))
		require.Equal(t, "QUEUED", p.text(`#steps tr[data-step="through"] td:nth-child(5)`))
	}
	p.screenshot("job-waiting.png")
	console.requireClean(t)
}

// waitStepStatus waits until the API shows the job's step in status.
func (a *testAPI) waitStepStatus(t *testing.T, id, key, step, status string) {
	t.Helper()
	testinfra.Eventually(t, 30*time.Second, func() bool {
		for _, s := range a.job(t, id, key).Steps {
			if s.Name == step {
				return s.Status == status
			}
		}
		return false
	}, "step %s of job %s never became %s", step, id, status)
}
