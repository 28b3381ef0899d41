package metrics_test

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store"
)

func TestAttemptOutcome(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	for want, out := range map[string]orchestrator.Outcome{
		"succeeded":       {},
		"interrupted":     {Err: boom, Interrupted: true, Retryable: true},
		"retryable_error": {Err: boom, Retryable: true, ErrorClass: "timeout"},
		"error":           {Err: boom, ErrorClass: "http_status", HTTPStatus: 400},
		"cancelled":       {Err: boom, ErrorClass: "cancelled"},
	} {
		require.Equal(t, want, metrics.AttemptOutcome(out))
	}
	// A call cut by the worker's own shutdown is also classified "cancelled" by the caller, but the
	// worker gives it back: interrupted.
	require.Equal(t, "interrupted", metrics.AttemptOutcome(orchestrator.Outcome{Err: boom, ErrorClass: "cancelled", Interrupted: true}))

	m := metrics.New(func() float64 { return 0 })
	m.ObserveAttempt("llm", orchestrator.Outcome{Err: boom, Retryable: true}, 30*time.Millisecond)
	m.ObserveAttempt("llm", orchestrator.Outcome{Err: boom, ErrorClass: "cancelled"}, time.Second)
	require.InDelta(t, 1, testutil.ToFloat64(m.Attempts.WithLabelValues("llm", "retryable_error")), 0)
	require.InDelta(t, 1, testutil.ToFloat64(m.Attempts.WithLabelValues("llm", "cancelled")), 0)
	require.InDelta(t, 0, testutil.ToFloat64(m.Attempts.WithLabelValues("llm", "error")), 0, "a cancelled attempt is no error")
}

// histogram returns the sample count and sum of one series of a histogram vector.
func histogram(t *testing.T, h *prometheus.HistogramVec, labels ...string) (uint64, float64) {
	t.Helper()
	var pb dto.Metric
	require.NoError(t, h.WithLabelValues(labels...).(prometheus.Metric).Write(&pb))
	return pb.GetHistogram().GetSampleCount(), pb.GetHistogram().GetSampleSum()
}

func TestObserveJobFinished(t *testing.T) {
	t.Parallel()
	m := metrics.New(nil)
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	done := created.Add(90 * time.Second)
	m.ObserveJobFinished(store.Job{FeatureName: "plan", Status: store.JobCompleted, CreatedAt: created, FinishedAt: &done})
	m.ObserveJobFinished(store.Job{FeatureName: "plan", Status: store.JobFailed, CreatedAt: created, FinishedAt: &done})
	m.ObserveJobFinished(store.Job{FeatureName: "plan", Status: store.JobCompleted, CreatedAt: created, FinishedAt: &created})

	require.InDelta(t, 2, testutil.ToFloat64(m.JobsFinished.WithLabelValues("plan", "completed")), 0)
	require.InDelta(t, 1, testutil.ToFloat64(m.JobsFinished.WithLabelValues("plan", "failed")), 0)
	n, sum := histogram(t, m.JobDuration, "plan", "completed")
	require.Equal(t, uint64(2), n)
	require.InDelta(t, 90, sum, 1e-9)
	require.Equal(t, "cancelled", metrics.JobStatus(store.JobCancelled))
}

func TestObserveWait(t *testing.T) {
	t.Parallel()
	m := metrics.New(nil)
	m.ObserveWait("llm", runner.WaitSlot, 250*time.Millisecond)
	m.ObserveWait("llm", runner.WaitSlot, 0)
	m.ObserveWait("llm", runner.WaitRateBudget, 1500*time.Millisecond)
	n, sum := histogram(t, m.StepWait, "llm", "slot")
	require.Equal(t, uint64(2), n)
	require.InDelta(t, 0.25, sum, 1e-9)
	n, sum = histogram(t, m.StepWait, "llm", "rate_budget")
	require.Equal(t, uint64(1), n)
	require.InDelta(t, 1.5, sum, 1e-9)
}

// lint runs promtool's checks (`promtool check metrics` is promlint) over everything the registry
// gathers, as a scrape would read it.
func lint(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

func TestMetricsLintClean(t *testing.T) {
	t.Parallel()
	m := metrics.New(func() float64 { return 3 })
	m.Registry.MustRegister(metrics.NewLeaseCollector(func() map[string][2]int { return map[string][2]int{"llm": {1, 4}} }))
	// Every vector with a series, so that every family is in the exposition.
	done := time.Now()
	m.JobsCreated.WithLabelValues("plan").Inc()
	m.ObserveJobFinished(store.Job{FeatureName: "plan", Status: store.JobCompleted, CreatedAt: done.Add(-time.Second), FinishedAt: &done})
	m.ObserveAttempt("llm", orchestrator.Outcome{}, time.Second)
	m.ObserveWait("llm", runner.WaitSlot, time.Second)
	m.Busy.WithLabelValues("llm").Inc()
	m.QueueDepth.WithLabelValues("default", "pending").Set(2)
	m.RateLimited.WithLabelValues("api").Inc()
	lint(t, m.Registry)
}
