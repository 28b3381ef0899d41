package metrics_test

import (
	"errors"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/orchestrator"
)

func TestAttemptOutcome(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	for want, out := range map[string]orchestrator.Outcome{
		"succeeded":       {},
		"interrupted":     {Err: boom, Interrupted: true, Retryable: true},
		"retryable_error": {Err: boom, Retryable: true},
		"error":           {Err: boom},
	} {
		require.Equal(t, want, metrics.AttemptOutcome(out))
	}
	m := metrics.New(func() float64 { return 0 })
	m.ObserveAttempt("llm", orchestrator.Outcome{Err: boom, Retryable: true}, 30*time.Millisecond)
	var pb dto.Metric
	require.NoError(t, m.Attempts.WithLabelValues("llm", "retryable_error").Write(&pb))
	require.InDelta(t, 1, pb.GetCounter().GetValue(), 0)
}
