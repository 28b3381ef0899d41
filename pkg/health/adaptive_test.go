package health_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/health"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/testinfra"
)

// TestReportShowsEffectiveLimitAndHold: the report gives an adaptive service's effective limit and
// a held service's hold; probes wait out the hold (the round skips the service) and are admitted
// under the effective limit.
func TestReportShowsEffectiveLimitAndHold(t *testing.T) {
	t.Parallel()
	e := setup(t, ", max_concurrency: 4, adaptive: {min: 1}", health.Config{ProbeInterval: 10 * time.Millisecond})
	adapt := limiter.AdaptiveFor(e.sem)
	aimd := limiter.AIMD{Max: 4, Min: 1}

	// (Limits, unlike Run, does not start the probe loop.)
	require.Equal(t, map[string]health.Limits{"api": {Effective: 4}, "sim": {Effective: 2}}, e.c.Limits(e.ctx),
		"an adaptive limit starts at max_concurrency; without adaptive it is max_concurrency")

	// Overloads halve it twice: the metrics' reading and the report follow.
	_, _, err := adapt.Overloaded(e.ctx, "api", aimd, 0)
	require.NoError(t, err)
	_, _, err = adapt.Overloaded(e.ctx, "api", aimd, 1)
	require.NoError(t, err)
	require.Equal(t, health.Limits{Effective: 1}, e.c.Limits(e.ctx)["api"])

	// Under the effective limit of 1, a slot held by a worker leaves no room for a probe.
	held, err := e.sem.Acquire(e.ctx, "api", 1, time.Minute, "")
	require.NoError(t, err)
	rep := e.c.Run(e.ctx)
	require.Equal(t, 1, rep.Services["api"].EffectiveLimit)
	require.Equal(t, 4, rep.Services["api"].MaxConcurrency)
	require.Equal(t, 2, rep.Services["sim"].EffectiveLimit)
	testinfra.Eventually(t, 5*time.Second, func() bool {
		return e.c.Run(e.ctx).Services["api"].ProbeSkipped == health.SkipMaxConcurrency
	}, "a round skipped under the effective limit")
	require.Equal(t, int32(0), e.hits.Load())
	require.NoError(t, e.sem.Release(e.ctx, held))
	testinfra.Eventually(t, 5*time.Second, func() bool { return e.hits.Load() > 0 }, "a probe once the slot is free")

	// On hold: the report says for how long and why, and the rounds skip the probe.
	_, _, err = adapt.Hold(e.ctx, "api", time.Minute, "tokens")
	require.NoError(t, err)
	testinfra.Eventually(t, 5*time.Second, func() bool {
		return e.c.Run(e.ctx).Services["api"].ProbeSkipped == health.SkipBudgetHold
	}, "a round skipped for the hold")
	hits := e.hits.Load()
	e.waitRounds(t, e.c.Rounds()+3)
	require.Equal(t, hits, e.hits.Load(), "no probe during the hold")
	sc := e.c.Run(e.ctx).Services["api"]
	require.InDelta(t, 60, sc.HoldSeconds, 2)
	require.Equal(t, "tokens", sc.HoldBudget)
	require.Equal(t, health.StatusOK, sc.Status, "a hold is not a failure")
	require.InDelta(t, time.Minute, e.c.Limits(e.ctx)["api"].Hold, float64(2*time.Second))
	b, err := json.Marshal(sc)
	require.NoError(t, err)
	require.Contains(t, string(b), `"effective_limit":1`)
	require.Contains(t, string(b), `"hold_budget":"tokens"`)
}
