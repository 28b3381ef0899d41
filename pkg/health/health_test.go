package health_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/health"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/cao-run/cao/pkg/testinfra/teststore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).reaper"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

// env is a checker over SQLite and a Redis database of its own, with a real HTTP service whose
// probe path counts its hits.
type env struct {
	ctx    context.Context
	c      *health.Checker
	st     store.Store
	sem    *limiter.Semaphore
	rate   *limiter.RateLimiter
	status atomic.Int32 // the probe's answer
	hits   atomic.Int32 // probes received
	// inUse is the service's leases in use seen by the probe handler during the last probe.
	inUse atomic.Int32
	logs  *testinfra.LogBuffer
}

// setup registers the mock service sim and the http service api (with extra, e.g. its limits, in
// its definition) whose health probe is GET /ping on a test server.
func setup(t *testing.T, apiExtra string, cfg health.Config) *env {
	t.Helper()
	e := &env{ctx: testinfra.Context(t, 30*time.Second), logs: &testinfra.LogBuffer{}}
	e.status.Store(http.StatusOK)
	rdb := testinfra.Redis(t)
	e.sem = limiter.NewSemaphore(rdb.Client, limiter.Config{})
	e.rate = limiter.NewRateLimiter(rdb.Client, limiter.Config{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ping" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		// inUse is stored before the hit is counted: a test that sees the hit reads this probe's value.
		n, _ := e.sem.InUse(r.Context(), "api")
		e.inUse.Store(int32(n))
		e.hits.Add(1)
		w.WriteHeader(int(e.status.Load()))
		_, _ = w.Write([]byte(`{"detail": "db password=hunter2 at 10.1.2.3"}`))
	}))
	t.Cleanup(srv.Close)
	reg, err := registry.Parse("r.yaml", []byte(strings.NewReplacer("BASE", srv.URL, "EXTRA", apiExtra).Replace(`
services:
  sim: {kind: mock, max_concurrency: 2}
  api: {kind: http, base_url: BASE, health: {method: GET, path: /ping}EXTRA}
features:
  f: {steps: [{name: a, service: sim, queue: medium}]}
`)), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	e.st = teststore.SQLite(t)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(e.logs, nil))
	}
	e.c = health.NewChecker(e.st, rdb.Client, reg, e.sem, e.rate, caller.New(caller.Config{}), reg.Queues(), cfg)
	t.Cleanup(func() { require.NoError(t, e.c.Stop(context.Background())) })
	return e
}

// waitRounds waits until the background loop completed at least n rounds.
func (e *env) waitRounds(t *testing.T, n int) {
	t.Helper()
	testinfra.Eventually(t, 10*time.Second, func() bool { return e.c.Rounds() >= n }, "%d probe rounds", n)
}

func TestReportKeepsBackgroundProbeResults(t *testing.T) {
	t.Parallel()
	e := setup(t, "", health.Config{ProbeInterval: 10 * time.Millisecond})
	_, err := e.sem.Acquire(e.ctx, "sim", 2, time.Minute, "")
	require.NoError(t, err)

	testinfra.Eventually(t, 5*time.Second, func() bool {
		return e.c.Run(e.ctx).Services["api"].Probe == health.ProbeOK
	}, "the background probe's result")
	rep := e.c.Run(e.ctx)
	require.Equal(t, health.StatusOK, rep.Status)
	require.Equal(t, health.StatusOK, rep.Postgres.Status)
	require.Equal(t, "sqlite", rep.Postgres.Backend)
	require.Equal(t, health.StatusOK, rep.Redis.Status)
	require.Contains(t, rep.Queues, "medium")
	require.Equal(t, health.ServiceCheck{Status: health.StatusOK, Kind: "mock", LeasesInUse: 1, MaxConcurrency: 2, EffectiveLimit: 2}, rep.Services["sim"])
	api := rep.Services["api"]
	require.NotNil(t, api.ProbedAt)
	require.False(t, api.ProbedAt.After(rep.Checked))
	require.Empty(t, api.Error)
	require.Equal(t, health.StatusOK, e.c.Status(e.ctx))
	require.False(t, e.c.Unavailable(e.ctx))

	// A failing probe degrades the report; it is not down. The answer's body stays out of it.
	e.status.Store(http.StatusInternalServerError)
	testinfra.Eventually(t, 5*time.Second, func() bool {
		return e.c.Run(e.ctx).Services["api"].Probe == health.ProbeFailed
	}, "the failed probe in the report")
	rep = e.c.Run(e.ctx)
	require.Equal(t, health.StatusDegraded, rep.Status)
	require.Equal(t, health.StatusDegraded, rep.Services["api"].Status)
	require.Equal(t, "probe answered HTTP 500", rep.Services["api"].Error)
	b, err := json.Marshal(rep)
	require.NoError(t, err)
	require.NotContains(t, string(b), "hunter2")
	require.Contains(t, string(b), `"probed_at"`)
	require.Equal(t, health.StatusDegraded, e.c.Status(e.ctx))
}

func TestReportsDoNotProbe(t *testing.T) {
	t.Parallel()
	// One round at the start, then none for an hour.
	e := setup(t, "", health.Config{ProbeInterval: time.Hour})
	require.Equal(t, int32(0), e.hits.Load(), "a checker nobody asks does not probe")

	const callers = 50
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			if i%2 == 0 {
				e.c.Run(e.ctx)
			} else {
				e.c.Status(e.ctx)
			}
		})
	}
	wg.Wait()
	e.waitRounds(t, 1)
	require.Equal(t, int32(1), e.hits.Load(), "the first report started the loop, whose first round probed once")

	for range callers {
		wg.Go(func() { e.c.Run(e.ctx) })
	}
	wg.Wait()
	rep := e.c.Run(e.ctx)
	require.Equal(t, health.ProbeOK, rep.Services["api"].Probe)
	require.Equal(t, int32(1), e.hits.Load(), "reports read the kept result")
	require.Equal(t, 1, e.c.Rounds())
}

func TestProbeTakesAServiceSlot(t *testing.T) {
	t.Parallel()
	e := setup(t, ", max_concurrency: 1, lease_ttl: 30s", health.Config{ProbeInterval: 10 * time.Millisecond})
	// A worker holds the only slot: no round may probe.
	held, err := e.sem.Acquire(e.ctx, "api", 1, time.Minute, "")
	require.NoError(t, err)
	require.NoError(t, e.c.Start(e.ctx))
	e.waitRounds(t, 3)
	sc := e.c.Run(e.ctx).Services["api"]
	require.Equal(t, health.SkipMaxConcurrency, sc.ProbeSkipped)
	require.Equal(t, health.ProbePending, sc.Probe)
	require.Equal(t, health.StatusOK, sc.Status, "a probe that could not run does not degrade")
	require.Equal(t, 1, sc.LeasesInUse)
	require.Equal(t, int32(0), e.hits.Load())

	// Once the slot is free the probe runs, holding the slot while it does, and gives it back.
	require.NoError(t, e.sem.Release(e.ctx, held))
	testinfra.Eventually(t, 5*time.Second, func() bool { return e.hits.Load() > 0 }, "a probe")
	require.Equal(t, int32(1), e.inUse.Load(), "the probe held the service's slot")
	testinfra.Eventually(t, 5*time.Second, func() bool {
		sc := e.c.Run(e.ctx).Services["api"]
		return sc.Probe == health.ProbeOK && sc.ProbeSkipped == ""
	}, "the probe's result")

	// Taken again: the rounds skip it and the report keeps the last result, with its age.
	testinfra.Eventually(t, 5*time.Second, func() bool { // a probe may hold the slot for a moment
		_, err := e.sem.Acquire(e.ctx, "api", 1, time.Minute, "")
		return err == nil
	}, "the slot taken again")
	testinfra.Eventually(t, 5*time.Second, func() bool {
		return e.c.Run(e.ctx).Services["api"].ProbeSkipped == health.SkipMaxConcurrency
	}, "a skipped round")
	hits := e.hits.Load()
	e.waitRounds(t, e.c.Rounds()+3)
	require.Equal(t, hits, e.hits.Load())
	sc = e.c.Run(e.ctx).Services["api"]
	require.Equal(t, health.ProbeOK, sc.Probe)
	require.NotNil(t, sc.ProbedAt)
	require.Positive(t, sc.ProbeAgeSeconds)
}

func TestProbeSpendsTheRateBudget(t *testing.T) {
	t.Parallel()
	e := setup(t, ", rate_limit: {requests: 2, per: 1h}", health.Config{ProbeInterval: 10 * time.Millisecond})
	// A worker's call took one of the two requests of the window.
	_, ok, _, err := e.rate.Reserve(e.ctx, "api", 2, time.Hour)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, e.c.Start(e.ctx))
	e.waitRounds(t, 5)
	require.Equal(t, int32(1), e.hits.Load(), "one request was left in the budget")
	sc := e.c.Run(e.ctx).Services["api"]
	require.Equal(t, health.SkipRateLimit, sc.ProbeSkipped)
	require.Equal(t, health.ProbeOK, sc.Probe, "the last result stays")
	require.NotNil(t, sc.ProbedAt)
	// The probe's request counts for the workers too.
	_, ok, _, err = e.rate.Reserve(e.ctx, "api", 2, time.Hour)
	require.NoError(t, err)
	require.False(t, ok)
}

func TestBackendErrorsAreNotReturned(t *testing.T) {
	t.Parallel()
	e := setup(t, "", health.Config{ProbeInterval: time.Hour})
	// A Redis that refuses connections.
	addr := testinfra.RefusedAddr(t)
	down := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { _ = down.Close() })
	reg, err := registry.Parse("r.yaml", []byte(`
services:
  sim: {kind: mock}
features:
  f: {steps: [{name: a, service: sim}]}
`), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	logs := &testinfra.LogBuffer{}
	c := health.NewChecker(e.st, down, reg, limiter.NewSemaphore(down, limiter.Config{}), limiter.NewRateLimiter(down, limiter.Config{}),
		caller.New(caller.Config{}), reg.Queues(), health.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	t.Cleanup(func() { require.NoError(t, c.Stop(context.Background())) })

	rep := c.Run(e.ctx)
	require.Equal(t, health.StatusDown, rep.Status)
	require.Equal(t, health.Check{Status: health.StatusDown, LatencyMS: rep.Redis.LatencyMS, Error: health.Unreachable}, rep.Redis)
	require.Equal(t, health.StatusOK, rep.Postgres.Status)
	b, err := json.Marshal(rep)
	require.NoError(t, err)
	_, port, _ := net.SplitHostPort(addr)
	require.NotContains(t, string(b), port)
	require.NotContains(t, string(b), "refused")
	require.Contains(t, logs.String(), "refused", "the detail is logged")
	require.Equal(t, health.StatusDown, c.Status(e.ctx))
	require.True(t, c.Unavailable(e.ctx))

	// The database gone: the same fixed message.
	require.NoError(t, e.st.Close())
	rep = e.c.Run(e.ctx)
	require.Equal(t, health.StatusDown, rep.Status)
	require.Equal(t, health.Unreachable, rep.Postgres.Error)
	require.Equal(t, health.StatusOK, rep.Redis.Status)
	b, err = json.Marshal(rep)
	require.NoError(t, err)
	require.NotContains(t, string(b), "closed")
	require.Contains(t, e.logs.String(), "database is closed")
}
