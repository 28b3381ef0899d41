package metrics_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/config"
	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/node"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/cao-run/cao/pkg/testinfra/teststore"
)

// nodeRegistry exercises every metric a worker updates: a retry, a service capped at one call (the
// second step waits for the slot), a rate budget of one call per 400ms (the second step waits for it
// in the worker) and a call long enough to be cancelled.
const nodeRegistry = `
services:
  flaky:
    kind: mock
    latency: 1ms
    fail_times: 1
    retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 20ms}
  capped:
    kind: mock
    latency: 150ms
    max_concurrency: 1
  budget:
    kind: mock
    latency: 1ms
    rate_limit: {requests: 1, per: 400ms}
  slow:
    kind: mock
    latency: 5m
    timeout: 10m
features:
  retry:
    steps:
      - {name: a, service: flaky}
  capped:
    steps:
      - {name: x, service: capped}
      - {name: y, service: capped}
  budget:
    steps:
      - {name: p, service: budget}
      - {name: q, service: budget}
  slow:
    steps:
      - {name: s, service: slow}
`

// startNode builds and starts a node over the test's Postgres schema and Redis database, as one
// process of a deployment would; it stops at cleanup.
func startNode(t *testing.T, reg *registry.Registry, st store.Store, redisURL string, log *slog.Logger) *node.Node {
	t.Helper()
	ctx := testinfra.Context(t, 30*time.Second)
	cfg, err := config.Parse(func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	opt, err := redis.ParseURL(redisURL)
	require.NoError(t, err)
	rdb := redis.NewClient(opt)
	n := node.Build(cfg, log, "test-"+testinfra.RandomSuffix(), reg, st, rdb)
	n.OnClose(rdb.Close)
	require.NoError(t, n.Start(ctx))
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, n.Stop(sctx))
	})
	return n
}

func TestMetricsOfRunningJobs(t *testing.T) {
	t.Parallel()
	reg, err := registry.Parse("node.yaml", []byte(nodeRegistry), nil)
	require.NoError(t, err)
	st, _ := teststore.Postgres(t)
	redisURL := testinfra.Redis(t).URL
	// Both processes log (INFO and up, JSON) to one place, as a log collector would gather them.
	logs := &testinfra.LogBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	worker := startNode(t, reg, st, redisURL, log)
	api := startNode(t, reg, st, redisURL, log) // a replica that runs no steps: it sees every event too
	r := worker.NewRunner(runner.Config{
		Queues: map[string]int{registry.DefaultQueue: 1}, Concurrency: 8,
		PollInterval: 20 * time.Millisecond, BusyDelay: 20 * time.Millisecond, ShutdownGrace: time.Second,
	})
	ctx := testinfra.Context(t, 2*time.Minute)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, r.Stop(sctx))
	})

	create := func(feature string) string {
		v, _, err := api.Orchestrator.CreateJob(ctx, orchestrator.CreateRequest{Feature: feature, Input: json.RawMessage(`{}`)})
		require.NoError(t, err)
		return v.Job.ID
	}
	job := func(id string) *orchestrator.JobView {
		v, err := api.Orchestrator.GetJob(ctx, store.AllTenants, id)
		require.NoError(t, err)
		return v
	}
	ids := map[string]string{}
	for _, f := range []string{"retry", "capped", "budget", "slow"} {
		ids[f] = create(f)
	}
	for _, f := range []string{"retry", "capped", "budget"} {
		testinfra.Eventually(t, time.Minute, func() bool { return job(ids[f]).Job.Status == store.JobCompleted },
			"job %s did not complete", f)
	}
	// The slow job's call is cancelled with its job, by the API replica.
	testinfra.Eventually(t, time.Minute, func() bool { return job(ids["slow"]).Steps[0].Status == store.StepRunning },
		"the slow step did not start")
	_, err = api.Orchestrator.Cancel(ctx, store.AllTenants, ids["slow"])
	require.NoError(t, err)
	wm := worker.Metrics
	testinfra.Eventually(t, 30*time.Second, func() bool {
		return testutil.ToFloat64(wm.Attempts.WithLabelValues("slow", "cancelled")) == 1
	}, "the cancelled call was not counted as cancelled")
	require.InDelta(t, 0, testutil.ToFloat64(wm.Attempts.WithLabelValues("slow", "error")), 0)

	// Attempts: the retry, then the success.
	require.InDelta(t, 1, testutil.ToFloat64(wm.Attempts.WithLabelValues("flaky", "retryable_error")), 0)
	require.InDelta(t, 1, testutil.ToFloat64(wm.Attempts.WithLabelValues("flaky", "succeeded")), 0)

	// Jobs finished: counted once, by the process that committed the ending (the worker for the
	// completions, the API replica for the cancel), never by a process that only saw the events.
	for _, f := range []string{"retry", "capped", "budget"} {
		require.InDelta(t, 1, testutil.ToFloat64(wm.JobsFinished.WithLabelValues(f, "completed")), 0, f)
		require.InDelta(t, 0, testutil.ToFloat64(api.Metrics.JobsFinished.WithLabelValues(f, "completed")), 0, f)
		n, sum := histogram(t, wm.JobDuration, f, "completed")
		require.Equal(t, uint64(1), n, f)
		v := job(ids[f]).Job
		require.InDelta(t, v.FinishedAt.Sub(v.CreatedAt).Seconds(), sum, 1e-6, "created_at to finished_at")
	}
	require.InDelta(t, 1, testutil.ToFloat64(api.Metrics.JobsFinished.WithLabelValues("slow", "cancelled")), 0)
	require.InDelta(t, 0, testutil.ToFloat64(wm.JobsFinished.WithLabelValues("slow", "cancelled")), 0)

	// Step waits: both capped steps were admitted, one after waiting for the other's slot (150ms
	// call); both budget steps were admitted, one after waiting for the next window (400ms).
	n, sum := histogram(t, wm.StepWait, "capped", runner.WaitSlot)
	require.Equal(t, uint64(2), n)
	require.Greater(t, sum, 0.05)
	n, sum = histogram(t, wm.StepWait, "budget", runner.WaitRateBudget)
	require.Equal(t, uint64(2), n)
	require.Greater(t, sum, 0.2)
	require.Equal(t, 2, testutil.CollectAndCount(wm.StepWait),
		"a wait is reported for the limits a service has, and only for them")

	// Queue depth: sampled by every process for every queue of the registry.
	for _, m := range []*metrics.Metrics{wm, api.Metrics} {
		require.Equal(t, len(reg.Queues())*len(metrics.QueueStates), testutil.CollectAndCount(m.QueueDepth))
	}

	// The retried job's lifecycle, as the processes that committed each change logged it.
	type line struct {
		Msg, Step, Service, ErrorClass string
		Attempt                        float64
	}
	var lifecycle []line
	records := logs.Records(t)
	for _, r := range records {
		require.NotContains(t, []string{"WARN", "ERROR"}, r["level"], "a normal run logs no warning or error: %v", r)
		if r["job_id"] != ids["retry"] {
			continue
		}
		require.Equal(t, "default", r["tenant"], r)
		require.Equal(t, "retry", r["feature"], r)
		l := line{Msg: r["msg"].(string)}
		if step, ok := r["step"].(string); ok {
			l.Step, l.Service, l.Attempt = step, r["service"].(string), r["attempt"].(float64)
			l.ErrorClass, _ = r["error_class"].(string)
		}
		lifecycle = append(lifecycle, l)
	}
	require.Equal(t, []line{
		{Msg: "job created"},
		{Msg: "step started", Step: "a", Service: "flaky", Attempt: 1},
		{Msg: "job started"},
		{Msg: "step retrying", Step: "a", Service: "flaky", Attempt: 1, ErrorClass: "mock"},
		{Msg: "step started", Step: "a", Service: "flaky", Attempt: 2},
		{Msg: "step succeeded", Step: "a", Service: "flaky", Attempt: 2},
		{Msg: "job finished"},
	}, lifecycle)

	// What a scrape of either process reads passes promtool's checks.
	lint(t, wm.Registry)
	lint(t, api.Metrics.Registry)
}
