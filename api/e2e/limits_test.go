package e2e

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

// fakeAPI is an HTTP service in the test process that records every call: arrival time,
// Idempotency-Key, and how many calls were in flight at once.
type fakeAPI struct {
	srv *httptest.Server
	// hold runs inside the handler of the nth call (1-based) and returns when the call should answer.
	hold func(n int, r *http.Request)

	mu       sync.Mutex
	inflight int
	peak     int
	calls    []fakeCall
}

type fakeCall struct {
	at  time.Time
	key string
}

func newFakeAPI(t *testing.T, hold func(n int, r *http.Request)) *fakeAPI {
	t.Helper()
	f := &fakeAPI{hold: hold}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	f.mu.Lock()
	f.inflight++
	f.peak = max(f.peak, f.inflight)
	f.calls = append(f.calls, fakeCall{at: time.Now(), key: r.Header.Get("Idempotency-Key")})
	n := len(f.calls)
	f.mu.Unlock()
	// Counted out before the handler returns, so before the worker can read the answer and free its slot.
	defer func() {
		f.mu.Lock()
		f.inflight--
		f.mu.Unlock()
	}()
	if f.hold != nil {
		f.hold(n, r)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, `{"call": %d}`, n)
}

// state returns the calls so far, the calls in flight and the peak.
func (f *fakeAPI) state() (calls []fakeCall, inflight, peak int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls), f.inflight, f.peak
}

// holdFor answers after d, or earlier if the caller went away.
func holdFor(d time.Duration, r *http.Request) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-r.Context().Done():
	}
}

// holdUntil answers when gate closes, or earlier if the caller went away.
func holdUntil(gate <-chan struct{}, r *http.Request) {
	select {
	case <-gate:
	case <-r.Context().Done():
	}
}

// gate is a channel closed once, by the test or at cleanup; cleanup runs before the cluster stops so
// workers are not left waiting for their grace period on held calls.
type gate struct {
	c    chan struct{}
	once sync.Once
}

func newGate() *gate  { return &gate{c: make(chan struct{})} }
func (g *gate) open() { g.once.Do(func() { close(g.c) }) }

// limitsRegistry is a registry with one http service at baseURL and a feature of `steps` independent
// steps on it.
func limitsRegistry(baseURL, serviceYAML string, steps int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "services:\n  api:\n    kind: http\n    base_url: %s\n    timeout: 30s\n", baseURL)
	for _, l := range strings.Split(strings.TrimSpace(serviceYAML), "\n") {
		fmt.Fprintf(&b, "    %s\n", strings.TrimSpace(l))
	}
	b.WriteString("features:\n  work:\n    steps:\n")
	for i := range steps {
		fmt.Fprintf(&b, "      - {name: s%d, service: api, request: {method: POST, path: /work}}\n", i)
	}
	return b.String()
}

// serviceHealth returns the /api/v1/health/services entry of service name.
func serviceHealth(t *testing.T, cl *client, name string) map[string]any {
	t.Helper()
	code, body := cl.do("GET", "/api/v1/health/services", nil)
	require.Contains(t, []int{http.StatusOK, http.StatusServiceUnavailable}, code, "%v", body)
	svc, ok := body["services"].(map[string]any)[name].(map[string]any)
	require.True(t, ok, "service %s in %v", name, body)
	return svc
}

// metricsText returns the API's /metrics page, asked with an API key if one is given.
func metricsText(t *testing.T, cl *client, key ...string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, cl.base+"/metrics", nil)
	require.NoError(t, err)
	for _, k := range key {
		req.Header.Set("Authorization", "Bearer "+k)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	return string(b)
}

// requireOneCleanAttempt checks that every step of the completed job succeeded on its first attempt:
// waiting for a slot or for rate budget did not use an attempt.
func requireOneCleanAttempt(t *testing.T, id string, j map[string]any) {
	t.Helper()
	require.Equal(t, "COMPLETED", j["status"], "job %s", id)
	for name, s := range steps(j) {
		require.Equal(t, "SUCCEEDED", s["status"], "%s/%s", id, name)
		require.EqualValues(t, 1, s["attempts"], "%s/%s burned attempts: %v", id, name, s)
		require.Len(t, s["attempt_history"], 1, "%s/%s: %v", id, name, s["attempt_history"])
	}
}

// createJobs creates n jobs of feature work.
func createJobs(cl *client, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = cl.createJob("work", map[string]any{"i": i})
	}
	return ids
}

func TestLimitsConcurrencyCapAcrossWorkers(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(_ int, r *http.Request) {
		holdFor(100*time.Millisecond+rand.N(100*time.Millisecond), r)
	})
	c := newCluster(t, limitsRegistry(f.srv.URL, "max_concurrency: 3\nlease_ttl: 5s", 3), "CAO_SHUTDOWN_GRACE=2s")
	api := c.startAPI()
	c.startWorker("CAO_WORKER_CONCURRENCY=10")
	c.startWorker("CAO_WORKER_CONCURRENCY=10")
	cl := c.client(api)

	start := time.Now()
	ids := createJobs(cl, 20)
	want := map[string]bool{}
	workers := map[string]bool{}
	for _, id := range ids {
		j := cl.waitJob(id, 50*time.Second, "COMPLETED", "FAILED", "CANCELLED")
		requireOneCleanAttempt(t, id, j)
		for name, s := range steps(j) {
			want[fmt.Sprintf("%s/%s/%v", id, name, s["run"])] = true
			workers[s["attempt_history"].([]any)[0].(map[string]any)["worker_id"].(string)] = true
		}
	}
	elapsed := time.Since(start)

	calls, inflight, peak := f.state()
	require.Equal(t, 3, peak, "peak of calls in flight at the service")
	require.Zero(t, inflight)
	require.Len(t, calls, 60, "one call per step")
	seen := map[string]int{}
	for _, call := range calls {
		seen[call.key]++
	}
	for key := range want {
		require.Equal(t, 1, seen[key], "Idempotency-Key %q (job_id/step/run)", key)
	}
	require.Len(t, seen, len(want), "unexpected Idempotency-Keys: %v", seen)
	require.Len(t, workers, 2, "both workers ran steps: %v", workers)
	t.Logf("60 calls, peak in flight %d, %s", peak, elapsed.Round(time.Millisecond))

	// Every lease was given back. A worker releases its slot just after it recorded the outcome,
	// so the last job may be COMPLETED a moment before its slot is free.
	testinfra.Eventually(t, 10*time.Second, func() bool {
		return serviceHealth(t, cl, "api")["leases_in_use"] == float64(0)
	}, "%s", "every lease given back")
}

func TestLimitsCrashedHolderLeaseFrees(t *testing.T) {
	t.Parallel()
	first := newGate()
	f := newFakeAPI(t, func(n int, r *http.Request) {
		if n == 1 {
			holdUntil(first.c, r) // worker A holds its lease on this call until it dies
		}
	})
	c := newCluster(t, limitsRegistry(f.srv.URL, "max_concurrency: 1\nlease_ttl: 2s", 1),
		"CAO_STEP_LEASE_TTL=3s", "CAO_SHUTDOWN_GRACE=2s")
	t.Cleanup(first.open)
	api := c.startAPI()
	a := c.startWorker()
	cl := c.client(api)

	id := cl.createJob("work", map[string]any{})
	testinfra.Eventually(t, 20*time.Second, func() bool {
		calls, _, _ := f.state()
		return len(calls) == 1
	}, "the first call reaches the service")
	require.EqualValues(t, 1, serviceHealth(t, cl, "api")["leases_in_use"], "worker A holds the slot")

	a.signal(t, syscall.SIGKILL)
	killed := time.Now()
	b := c.start("worker", bin.worker) // not waiting for it to start: the clock runs from the kill

	// The slot frees within lease_ttl of the last renewal (which was before the kill).
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		calls, _, _ := f.state()
		if len(calls) > 1 || serviceHealth(t, cl, "api")["leases_in_use"] == float64(0) {
			break
		}
		require.Less(t, time.Since(killed), 3*time.Second, "slot of the killed worker not free within lease_ttl (2s) + 1s")
		<-tick.C
	}
	freed := time.Since(killed)

	c.waitLog(b, "worker started", 30*time.Second)
	j := cl.waitJob(id, 30*time.Second, "COMPLETED", "FAILED")
	require.Equal(t, "COMPLETED", j["status"])
	s := steps(j)["s0"]
	require.EqualValues(t, 1, s["run"])
	hist := s["attempt_history"].([]any)
	require.Len(t, hist, 2, "%v", hist)
	require.Equal(t, "lost", hist[0].(map[string]any)["status"])
	require.Equal(t, "succeeded", hist[1].(map[string]any)["status"])
	require.NotEqual(t, hist[0].(map[string]any)["worker_id"], hist[1].(map[string]any)["worker_id"])

	calls, _, peak := f.state()
	require.Len(t, calls, 2)
	require.Equal(t, 1, peak, "the re-run never overlapped the killed worker's call")
	require.Equal(t, id+"/s0/1", calls[0].key)
	require.Equal(t, calls[0].key, calls[1].key, "the re-run of the same run carries the same Idempotency-Key")
	t.Logf("slot free %s after SIGKILL; re-run call %s after SIGKILL", freed.Round(time.Millisecond),
		calls[1].at.Sub(killed).Round(time.Millisecond))
}

func TestLimitsRateLimitWindows(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(_ int, r *http.Request) { holdFor(20*time.Millisecond, r) })
	c := newCluster(t, limitsRegistry(f.srv.URL, "rate_limit: {requests: 5, per: 1s}", 4), "CAO_SHUTDOWN_GRACE=2s")
	api := c.startAPI()
	c.startWorker("CAO_WORKER_CONCURRENCY=10")
	c.startWorker("CAO_WORKER_CONCURRENCY=10")
	cl := c.client(api)

	ids := createJobs(cl, 5) // 20 steps
	for _, id := range ids {
		requireOneCleanAttempt(t, id, cl.waitJob(id, 40*time.Second, "COMPLETED", "FAILED", "CANCELLED"))
	}

	calls, _, _ := f.state()
	require.Len(t, calls, 20)
	at := make([]time.Time, len(calls))
	for i, c := range calls {
		at[i] = c.at
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	// The limiter admits by the Redis clock; a call reaches the server after the attempt is recorded,
	// so arrivals may be a little closer than admissions.
	const tolerance = 10 * time.Millisecond
	minSpan := time.Hour
	for i := 0; i+5 < len(at); i++ {
		span := at[i+5].Sub(at[i])
		minSpan = min(minSpan, span)
		require.GreaterOrEqual(t, span, time.Second-tolerance, "calls %d..%d (6 calls) within one 1s window", i, i+5)
	}
	t.Logf("20 calls over %s; narrowest span of 6 consecutive calls %s (must be >= 1s)",
		at[len(at)-1].Sub(at[0]).Round(time.Millisecond), minSpan.Round(time.Millisecond))
}

func TestLimitsLeasesInHealthAndMetrics(t *testing.T) {
	t.Parallel()
	g := newGate()
	f := newFakeAPI(t, func(_ int, r *http.Request) { holdUntil(g.c, r) })
	c := newCluster(t, limitsRegistry(f.srv.URL, "max_concurrency: 3\nlease_ttl: 5s", 5), "CAO_SHUTDOWN_GRACE=2s")
	t.Cleanup(g.open)
	api := c.startAPI()
	c.startWorker("CAO_WORKER_CONCURRENCY=10")
	cl := c.client(api)

	id := cl.createJob("work", map[string]any{})
	testinfra.Eventually(t, 20*time.Second, func() bool {
		_, inflight, _ := f.state()
		return inflight == 3
	}, "3 calls in flight")

	h := serviceHealth(t, cl, "api")
	require.EqualValues(t, 3, h["leases_in_use"], "%v", h)
	require.EqualValues(t, 3, h["max_concurrency"], "%v", h)
	m := metricsText(t, cl)
	require.Contains(t, m, `cao_service_leases_in_use{service="api"} 3`+"\n")
	require.Contains(t, m, `cao_service_leases_max{service="api"} 3`+"\n")

	g.open()
	requireOneCleanAttempt(t, id, cl.waitJob(id, 30*time.Second, "COMPLETED", "FAILED", "CANCELLED"))
	_, _, peak := f.state()
	require.Equal(t, 3, peak)
	// A worker frees its slot just after recording the outcome, so the job can be COMPLETED a
	// moment earlier: wait for the last slot to be given back.
	testinfra.Eventually(t, 10*time.Second, func() bool {
		return serviceHealth(t, cl, "api")["leases_in_use"] == float64(0)
	}, "%s", "every lease given back")
	require.Contains(t, metricsText(t, cl), `cao_service_leases_in_use{service="api"} 0`+"\n")
}

func TestLimitsNoStarvationUnderContention(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(_ int, r *http.Request) { holdFor(50*time.Millisecond, r) })
	c := newCluster(t, limitsRegistry(f.srv.URL, "max_concurrency: 1\nlease_ttl: 5s", 1), "CAO_SHUTDOWN_GRACE=2s")
	api := c.startAPI()
	c.startWorker("CAO_WORKER_CONCURRENCY=10")
	c.startWorker("CAO_WORKER_CONCURRENCY=10")
	cl := c.client(api)

	ids := createJobs(cl, 10)
	for _, id := range ids {
		requireOneCleanAttempt(t, id, cl.waitJob(id, 40*time.Second, "COMPLETED", "FAILED", "CANCELLED"))
	}
	calls, _, peak := f.state()
	require.Len(t, calls, 10)
	require.Equal(t, 1, peak)
}
