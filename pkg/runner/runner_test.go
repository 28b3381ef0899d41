package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/task"
)

func TestLeaseClock(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := &leaseClock{stepOK: t0, stepTTL: 10 * time.Second, semOK: t0, semTTL: 30 * time.Second, sem: true}
	require.True(t, c.valid(t0.Add(9999*time.Millisecond)))
	require.False(t, c.valid(t0.Add(10*time.Second)), "the step lease may have expired: a stopped process must not send")

	c.renewed(t0.Add(8*time.Second), false)
	require.True(t, c.valid(t0.Add(17*time.Second)))
	require.False(t, c.valid(t0.Add(18*time.Second)))

	// The service slot's lease counts too.
	c = &leaseClock{stepOK: t0, stepTTL: 10 * time.Second, semOK: t0, semTTL: 3 * time.Second, sem: true}
	require.False(t, c.valid(t0.Add(3*time.Second)))
	c.renewed(t0.Add(2*time.Second), true)
	require.True(t, c.valid(t0.Add(4*time.Second)))
	// ...unless the service has no max_concurrency (no slot).
	c = &leaseClock{stepOK: t0, stepTTL: 10 * time.Second}
	require.True(t, c.valid(t0.Add(5*time.Second)))
}

func TestRetryDelayAndFailures(t *testing.T) {
	t.Parallel()
	busy := &busyError{service: "llm", delay: 1234 * time.Millisecond, why: "is at max_concurrency"}
	require.Equal(t, busy.delay, retryDelay(7, busy, nil), "a busy step comes back when asked")
	require.Equal(t, busy.delay, retryDelay(0, fmt.Errorf("wrapped: %w", busy), nil))
	require.False(t, isFailure(busy), "waiting is not a failure")
	require.False(t, isFailure(fmt.Errorf("wrapped: %w", busy)))
	require.True(t, isFailure(errors.New("database unreachable")))

	// Infrastructure errors: 1s doubling to at most 30s, ±50%.
	for n, base := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second} {
		for range 50 {
			d := retryDelay(n, errors.New("boom"), nil)
			require.GreaterOrEqual(t, d, base/2, "retry %d", n)
			require.LessOrEqual(t, d, base*3/2, "retry %d", n)
		}
	}
}

func TestTemplateData(t *testing.T) {
	t.Parallel()
	a := &orchestrator.Attempt{
		Target: orchestrator.Target{Payload: task.StepPayload{JobID: "j1", Step: "b", Run: 2, Attempt: 3}},
		Input:  json.RawMessage(`{"n": 12345678901234567890, "s": "x"}`),
		Outputs: map[string]json.RawMessage{
			"a": json.RawMessage(`{"items": [1, 2]}`),
			"z": nil,
		},
	}
	m, err := templateData(a).Map()
	require.NoError(t, err)
	require.Equal(t, map[string]any{"id": "j1"}, m["job"])
	require.Equal(t, map[string]any{"name": "b", "attempt": 3, "run": 2}, m["step"])
	in := m["input"].(map[string]any)
	require.Equal(t, json.Number("12345678901234567890"), in["n"], "numbers keep every digit")
	steps := m["steps"].(map[string]any)
	require.Equal(t, map[string]any{"output": map[string]any{"items": []any{json.Number("1"), json.Number("2")}}}, steps["a"])
	require.Equal(t, map[string]any{"output": nil}, steps["z"])

	a.Outputs["bad"] = json.RawMessage(`{`)
	_, err = templateData(a).Map()
	require.ErrorContains(t, err, "output of step bad")
}

func TestAdmissionSizes(t *testing.T) {
	t.Parallel()
	r := &Runner{cfg: Config{Concurrency: 20}.WithDefaults()}
	for _, tc := range []struct{ cap, want int }{{1, 1}, {8, 8}, {50, 10}} {
		require.Equal(t, tc.want, r.maxWaiters(&registry.Service{MaxConcurrency: tc.cap}), "max_concurrency %d", tc.cap)
	}
	r = &Runner{cfg: Config{Concurrency: 1}.WithDefaults()}
	require.Equal(t, 1, r.maxWaiters(&registry.Service{MaxConcurrency: 4}), "at least one waiter")
}

func TestContinues(t *testing.T) {
	t.Parallel()
	admitCtx, stop := context.WithCancelCause(context.Background())
	r := &Runner{cfg: Config{Queues: map[string]int{"default": 1, "heavy": 6}}.WithDefaults(), admitCtx: admitCtx}
	step := &registry.Step{Name: "b", Queue: "heavy"}
	free := &registry.Service{Name: "mock"}
	require.True(t, r.continues(step, free))
	require.False(t, r.continues(step, &registry.Service{Name: "llm", MaxConcurrency: 4}), "a capped service needs a slot first")
	require.False(t, r.continues(step, &registry.Service{Name: "api", RateLimits: []registry.Budget{{Kind: registry.BudgetRequests, Limit: 5, Per: time.Second}}}))
	keyed := &registry.Step{Name: "k", Queue: "heavy", KeyLimit: &registry.KeyLimit{Max: 1}}
	require.False(t, r.continues(keyed, free), "a step with a concurrency_key needs its key's slot first")
	require.False(t, r.continues(&registry.Step{Name: "c", Queue: "parked"}, free), "a queue this worker does not serve")
	stop(errShutdown)
	require.False(t, r.continues(step, free), "a stopping worker starts nothing new")
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := Config{}.WithDefaults()
	require.Equal(t, map[string]int{"heavy": 6, "medium": 3, "default": 1}, c.Queues)
	require.Equal(t, 20, c.Concurrency)
	require.Equal(t, DefaultIdlePoll, c.IdlePoll)
	require.Equal(t, DefaultMaxRateWait, c.MaxRateWait)
	require.Equal(t, time.Second, c.BusyDelay)
	require.Equal(t, 30*time.Second, c.ShutdownGrace)
	require.NotEmpty(t, c.WorkerID)
	require.NotNil(t, c.Now)
	require.NotNil(t, c.Logger)
}
