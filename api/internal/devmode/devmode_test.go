package devmode

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cao-run/cao/pkg/testinfra"
)

// Paths set by TestMain: the repository root and the cao-api binary built from it.
var (
	repoRoot string
	apiBin   string
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

// testMain builds cao-api once for the process tests, the way a user runs it.
func testMain(m *testing.M) int {
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "cao-devmode-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	repoRoot, apiBin = root, filepath.Join(dir, "cao-api")
	if runtime.GOOS == "windows" {
		apiBin += ".exe"
	}
	build := exec.Command("go", "build", "-o", apiBin, "./api")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ./api in %s: %v\n%s", root, err, out)
		return 1
	}
	code := m.Run()
	http.DefaultClient.CloseIdleConnections()
	if err := goleak.Find(); code == 0 && err != nil {
		fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
		return 1
	}
	return code
}

// devProcess is one running `cao-api dev`.
type devProcess struct {
	cmd  *exec.Cmd
	out  *testinfra.LogBuffer
	base string // http://127.0.0.1:PORT
	done chan struct{}
	err  error // cmd.Wait's result, once done is closed
}

// startDev starts `cao-api dev` on a free port with the data dir and extra arguments and environment,
// and waits until /health answers. It fails the test with the process output if it does not.
func startDev(t *testing.T, dataDir string, args []string, env ...string) *devProcess {
	t.Helper()
	p := &devProcess{out: &testinfra.LogBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(apiBin, append([]string{"dev", "--addr", "127.0.0.1:0", "--data-dir", dataDir}, args...)...)
	p.cmd.Dir = repoRoot
	p.cmd.Env = append(cleanEnv(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	require.NoError(t, p.cmd.Start())
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("cao-api dev output:\n%s", p.out.String())
		}
	})

	banner := regexp.MustCompile(`API\s+(http://127\.0\.0\.1:\d+)/api/v1`)
	testinfra.Eventually(t, 20*time.Second, func() bool {
		select {
		case <-p.done:
			t.Fatalf("cao-api dev exited before serving: %v\n%s", p.err, p.out.String())
		default:
		}
		m := banner.FindStringSubmatch(p.out.String())
		if m != nil {
			p.base = m[1]
		}
		return m != nil
	}, "%s", "the dev mode banner")
	testinfra.Eventually(t, 10*time.Second, func() bool {
		resp, err := http.Get(p.base + "/health")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "%s", "GET /health")
	return p
}

// kill ends the process with SIGKILL (a crash) if it still runs, and waits for it.
func (p *devProcess) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// wait waits for the process to exit by itself and returns its exit error.
func (p *devProcess) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("cao-api dev did not exit within %s", d)
		return nil
	}
}

// cleanEnv is the test's environment without CAO_* variables, so that a developer's settings do not
// change what is tested.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CAO_") && !strings.HasPrefix(kv, "OPENAI_") {
			env = append(env, kv)
		}
	}
	return append(env, "CAO_LOG_LEVEL=info")
}

// call sends a JSON request and decodes the JSON answer.
func call(t *testing.T, method, url string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err, "%s %s", method, url)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(t, json.Unmarshal(raw, &out), "%s %s: %s", method, url, raw)
	}
	return resp.StatusCode, out
}

// jobView is the part of GET /api/v1/jobs/{id} the tests read.
type jobView struct {
	ID     string          `json:"id"`
	Status string          `json:"status"`
	Output json.RawMessage `json:"output"`
	Error  any             `json:"error"`
	Steps  []struct {
		Name       string          `json:"name"`
		Status     string          `json:"status"`
		Attempts   int             `json:"attempts"`
		StartedAt  *time.Time      `json:"started_at"`
		FinishedAt *time.Time      `json:"finished_at"`
		Output     json.RawMessage `json:"output"`
	} `json:"steps"`
}

func getJob(t *testing.T, base, id string) jobView {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/jobs/" + id)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var body struct {
		Success bool    `json:"success"`
		Job     jobView `json:"job"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	require.True(t, body.Success)
	return body.Job
}

// startJob runs step 1 of the walkthrough and checks the 202 answer.
func startJob(t *testing.T, base, feature string, input any) string {
	t.Helper()
	status, body := call(t, http.MethodPost, base+"/api/v1/jobs", map[string]any{"feature_name": feature, "input_data": input})
	require.Equal(t, http.StatusAccepted, status, "POST /api/v1/jobs %s: %v", feature, body)
	require.Equal(t, true, body["success"])
	require.Equal(t, "PENDING", body["status"])
	id, _ := body["job_id"].(string)
	require.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`, id)
	require.Equal(t, "ws://"+strings.TrimPrefix(base, "http://")+"/ws/"+id, body["monitor_url"])
	return id
}

// waitJob polls the job until it is terminal and returns it.
func waitJob(t *testing.T, base, id string, d time.Duration) jobView {
	t.Helper()
	var j jobView
	testinfra.Eventually(t, d, func() bool {
		j = getJob(t, base, id)
		return j.Status == "COMPLETED" || j.Status == "FAILED" || j.Status == "CANCELLED"
	}, "%s", "job "+id+" to finish")
	return j
}

// waitStep polls the job until its step has the status.
func waitStep(t *testing.T, base, id, step, status string, d time.Duration) {
	t.Helper()
	testinfra.Eventually(t, d, func() bool {
		for _, s := range getJob(t, base, id).Steps {
			if s.Name == step {
				return s.Status == status
			}
		}
		return false
	}, "%s", fmt.Sprintf("step %s of job %s to be %s", step, id, status))
}

func requireCompleted(t *testing.T, j jobView) {
	t.Helper()
	require.Equal(t, "COMPLETED", j.Status, "job %s: error %v", j.ID, j.Error)
	for _, s := range j.Steps {
		require.Equal(t, "SUCCEEDED", s.Status, "step %s", s.Name)
	}
}

// wsReport is what following a job's monitor_url observed.
type wsReport struct {
	available bool     // false: the server answered the upgrade with 404 or 501 (not served yet)
	types     []string // message types in order
	last      string   // status of the last job message
	closeCode websocket.StatusCode
	err       error // a contract violation or transport error
}

// followWS reads the job's WebSocket until the server closes it: a snapshot first, then job and step
// events with seq increasing by one, then a close with 1000 after the terminal job event.
func followWS(ctx context.Context, url string) wsReport {
	var r wsReport
	c, resp, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		if resp != nil && (resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusNotImplemented) {
			return r
		}
		r.err = fmt.Errorf("dial %s: %w", url, err)
		return r
	}
	defer c.CloseNow()
	r.available = true
	c.SetReadLimit(1 << 20)
	seq := -1
	terminal := false
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			r.closeCode = websocket.CloseStatus(err)
			if !terminal {
				r.err = fmt.Errorf("connection ended before a terminal job event (last %q): %w", r.last, err)
			}
			return r
		}
		var m struct {
			Type   string `json:"type"`
			Seq    *int   `json:"seq"`
			Status string `json:"status"`
			Job    struct {
				Status string `json:"status"`
			} `json:"job"`
		}
		if err := json.Unmarshal(data, &m); err != nil {
			r.err = fmt.Errorf("message is not JSON: %s", data)
			return r
		}
		r.types = append(r.types, m.Type)
		switch {
		case m.Seq == nil:
			r.err = fmt.Errorf("message without seq: %s", data)
			return r
		case len(r.types) == 1 && m.Type != "snapshot":
			r.err = fmt.Errorf("first message is %q, want snapshot", m.Type)
			return r
		case len(r.types) > 1 && *m.Seq != seq+1:
			r.err = fmt.Errorf("seq %d after %d: %s", *m.Seq, seq, data)
			return r
		}
		seq = *m.Seq
		switch m.Type {
		case "snapshot":
			r.last = m.Job.Status
		case "job":
			r.last = m.Status
		case "step":
		default:
			r.err = fmt.Errorf("unknown message type %q", m.Type)
			return r
		}
		terminal = r.last == "COMPLETED" || r.last == "FAILED" || r.last == "CANCELLED"
	}
}

// TestWalkthrough runs the seed walkthrough against `cao-api dev` with the default registry
// (deploy/registry.yaml), plus the other demo features.
func TestWalkthrough(t *testing.T) {
	t.Parallel()
	p := startDev(t, t.TempDir(), nil)
	out := p.out.String()
	for _, want := range []string{p.base + "/ui/", p.base + "/monitoring/", `"feature_name":"business_plan"`} {
		require.Contains(t, out, want, "the banner shows %s", want)
	}

	id := startJob(t, p.base, "business_plan", map[string]any{"business_name": "AI Toys"})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	wsc := make(chan wsReport, 1)
	go func() { wsc <- followWS(ctx, "ws://"+strings.TrimPrefix(p.base, "http://")+"/ws/"+id) }()

	echo := startJob(t, p.base, "echo", map[string]any{"hello": "world"})
	flaky := startJob(t, p.base, "flaky", map[string]any{})
	fan := startJob(t, p.base, "fan_out", map[string]any{})

	// Cancel a job while its first step runs, then resume it.
	cancelled := startJob(t, p.base, "business_plan", map[string]any{"business_name": "Cancel Me"})
	waitStep(t, p.base, cancelled, "market_research", "RUNNING", 20*time.Second)
	status, body := call(t, http.MethodPost, p.base+"/api/v1/jobs/"+cancelled+"/cancel", nil)
	require.Equal(t, http.StatusAccepted, status, "cancel: %v", body)
	require.Equal(t, "CANCELLED", waitJob(t, p.base, cancelled, 20*time.Second).Status)
	status, body = call(t, http.MethodPost, p.base+"/api/v1/jobs/"+cancelled+"/resume", map[string]any{})
	require.Equal(t, http.StatusAccepted, status, "resume: %v", body)

	j := waitJob(t, p.base, id, 40*time.Second)
	requireCompleted(t, j)
	require.Len(t, j.Steps, 5)
	var plan struct {
		Summary struct {
			Title string `json:"title"`
		} `json:"summary"`
	}
	require.NoError(t, json.Unmarshal(j.Output, &plan))
	require.Equal(t, "Business plan: AI Toys", plan.Summary.Title)

	r := <-wsc
	if !r.available {
		t.Log("the WebSocket endpoint is not served yet (404/501); the job was followed by polling only")
	} else {
		require.NoError(t, r.err, "WebSocket messages: %v", r.types)
		require.Equal(t, "COMPLETED", r.last)
		require.Equal(t, websocket.StatusNormalClosure, r.closeCode)
		t.Logf("followed over the WebSocket too: %d messages, closed with 1000", len(r.types))
	}
	requireCompleted(t, waitJob(t, p.base, cancelled, 30*time.Second))

	e := waitJob(t, p.base, echo, 20*time.Second)
	requireCompleted(t, e)
	require.JSONEq(t, `{"hello":"world"}`, string(mustField(t, e.Steps[0].Output, "input")))

	f := waitJob(t, p.base, flaky, 20*time.Second)
	requireCompleted(t, f)
	require.Equal(t, 3, f.Steps[0].Attempts, "two retryable failures, then success")

	// The limiter: never more than max_concurrency (2) parts running at once.
	fo := waitJob(t, p.base, fan, 30*time.Second)
	requireCompleted(t, fo)
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, s := range fo.Steps {
		if strings.HasPrefix(s.Name, "part_") {
			require.NotNil(t, s.StartedAt)
			require.NotNil(t, s.FinishedAt)
			edges = append(edges, edge{*s.StartedAt, 1}, edge{*s.FinishedAt, -1})
		}
	}
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.delta - b.delta // a finish before a start at the same instant
	})
	running, peak := 0, 0
	for _, e := range edges {
		running += e.delta
		peak = max(peak, running)
	}
	require.LessOrEqual(t, peak, 2, "parts running at once")

	for _, path := range []string{"/health", "/api/v1/health", "/health/services", "/api/v1/health/services"} {
		status, body := call(t, http.MethodGet, p.base+path, nil)
		require.Equal(t, http.StatusOK, status, path)
		require.Equal(t, "ok", body["status"], "%s: %v", path, body)
	}
	_, body = call(t, http.MethodGet, p.base+"/api/v1/health/services", nil)
	require.Equal(t, "sqlite", body["postgres"].(map[string]any)["backend"])

	for _, path := range []string{"/metrics", "/monitoring/", "/api/v1/features"} {
		resp, err := http.Get(p.base + path)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
	}
}

func mustField(t *testing.T, raw json.RawMessage, key string) json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &m), "%s", raw)
	return m[key]
}

// TestResumeAfterRestart interrupts a job while a step is RUNNING, by a crash (SIGKILL) or a clean
// stop (SIGINT, with a grace period shorter than the step), and checks that the job finishes after
// the process is started again on the same data directory.
func TestResumeAfterRestart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		stop func(t *testing.T, p *devProcess)
	}{
		{"crash", func(t *testing.T, p *devProcess) {
			require.NoError(t, p.cmd.Process.Kill()) // SIGKILL
			require.Error(t, p.wait(t, 10*time.Second))
		}},
		{"interrupt", func(t *testing.T, p *devProcess) {
			require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
			require.NoError(t, p.wait(t, 20*time.Second), "a clean stop exits with status 0")
			require.Contains(t, p.out.String(), "worker stopped")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args := []string{"--registry", filepath.Join("api", "internal", "devmode", "testdata", "registry.yaml")}
			env := []string{"CAO_STEP_LEASE_TTL=1s", "CAO_SHUTDOWN_GRACE=200ms"}

			p := startDev(t, dir, args, env...)
			id := startJob(t, p.base, "slow_chain", map[string]any{"name": tc.name})
			waitStep(t, p.base, id, "long", "RUNNING", 15*time.Second)
			tc.stop(t, p)

			p2 := startDev(t, dir, args, env...)
			j := waitJob(t, p2.base, id, 30*time.Second)
			requireCompleted(t, j)
			require.JSONEq(t, fmt.Sprintf(`{"name":%q}`, tc.name), string(mustField(t, j.Output, "last")), "the last step's output")

			// The interrupted step ran again after the restart.
			status, body := call(t, http.MethodGet, p2.base+"/api/v1/jobs/"+id+"/events", nil)
			require.Equal(t, http.StatusOK, status)
			runs := 0
			for _, e := range body["events"].([]any) {
				if e := e.(map[string]any); e["step"] == "long" && e["status"] == "RUNNING" {
					runs++
				}
			}
			require.GreaterOrEqual(t, runs, 2, "RUNNING events of the interrupted step: %v", body["events"])
		})
	}
}

// TestOpenAIRegistryEndToEnd runs business_plan from deploy/registry.openai.yaml against a fake
// OpenAI-compatible server configured through OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL.
func TestOpenAIRegistryEndToEnd(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var problems []string
	calls := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if got := r.Header.Get("Authorization"); got != "Bearer sk-fake-key-1234" {
			problems = append(problems, "Authorization: "+got)
		}
		switch r.URL.Path {
		case "/v1/models":
			_, _ = io.WriteString(w, `{"object":"list","data":[]}`)
			return
		case "/v1/chat/completions":
		default:
			problems = append(problems, "path "+r.URL.Path)
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Idempotency-Key") == "" {
			problems = append(problems, "no Idempotency-Key")
		}
		var req struct {
			Model    string `json:"model"`
			Messages []struct {
				Content string `json:"content"`
			} `json:"messages"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Model != "fake-model" || len(req.Messages) == 0 {
			problems = append(problems, fmt.Sprintf("request: model %q, err %v", req.Model, err))
		}
		prompt := ""
		if len(req.Messages) > 0 {
			prompt = req.Messages[len(req.Messages)-1].Content
		}
		calls[prompt]++
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"id": "chatcmpl-1", "object": "chat.completion",
			"choices": []any{map[string]any{"index": 0, "message": map[string]any{"role": "assistant", "content": fmt.Sprintf("answer %d", len(calls))}}},
		})
	}))
	t.Cleanup(srv.Close)

	p := startDev(t, t.TempDir(), []string{"--registry", filepath.Join("deploy", "registry.openai.yaml")},
		"OPENAI_BASE_URL="+srv.URL+"/v1", "OPENAI_API_KEY=sk-fake-key-1234", "OPENAI_MODEL=fake-model")
	id := startJob(t, p.base, "business_plan", map[string]any{"business_name": "AI Toys"})
	j := waitJob(t, p.base, id, 40*time.Second)
	requireCompleted(t, j)

	status, body := call(t, http.MethodGet, p.base+"/api/v1/health/services", nil)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "ok", body["status"], "the /models probe answers: %v", body)

	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, problems)
	require.Len(t, calls, 5, "one call per step")
	var prompts []string
	for prompt := range calls {
		prompts = append(prompts, prompt)
	}
	for _, want := range []string{"Write the business plan of AI Toys", "Market: answer 1"} {
		require.True(t, slices.ContainsFunc(prompts, func(p string) bool { return strings.Contains(p, want) }),
			"a prompt contains %q: %q", want, prompts)
	}
	require.NotContains(t, p.out.String(), "sk-fake-key-1234", "the key is never logged")
}

// TestBadStart checks that dev mode refuses bad flags and a missing registry with a useful message.
func TestBadStart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--addr", "8000"}, "--addr"},
		{[]string{"--registry", "does/not/exist.yaml"}, "--registry"},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		cmd := exec.Command(apiBin, append([]string{"dev", "--data-dir", t.TempDir()}, tc.args...)...)
		cmd.Dir = repoRoot
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		require.True(t, errors.As(err, &exit), "%v: %v\n%s", tc.args, err, out)
		require.Contains(t, string(out), tc.want, "%v", tc.args)
	}
}
