package orchestrator_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/store"
)

// TestPeekReadsTheDataTheClaimReturns: before a step is claimed, Peek gives the input and upstream
// outputs its attempt will see; a task that no longer matches its step is stale.
func TestPeekReadsTheDataTheClaimReturns(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, b *bundle) {
		ctx := context.Background()
		v := b.create(t)
		tasks := b.drain(t)
		require.Len(t, tasks, 1)
		tg, err := b.orch.Prepare(ctx, tasks[0])
		require.NoError(t, err)
		d, err := b.orch.Peek(ctx, tg)
		require.NoError(t, err)
		require.JSONEq(t, `{"name":"x"}`, string(d.Input))
		require.Empty(t, d.Outputs)

		a, err := b.orch.StartAttempt(ctx, tg, "w1")
		require.NoError(t, err)
		_, err = b.orch.Peek(ctx, tg)
		require.ErrorIs(t, err, orchestrator.ErrStale, "the step is claimed: the task is stale")
		require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{"n": 1}`)}))

		for _, p := range b.drain(t) {
			tg, err := b.orch.Prepare(ctx, p)
			require.NoError(t, err)
			d, err := b.orch.Peek(ctx, tg)
			require.NoError(t, err)
			a, err := b.orch.StartAttempt(ctx, tg, "w1")
			require.NoError(t, err)
			require.Equal(t, a.Input, d.Input)
			require.Equal(t, a.Outputs, d.Outputs, "step %s", p.Step)
			require.JSONEq(t, `{"n": 1}`, string(d.Outputs["a"]))
		}

		_, err = b.orch.Cancel(ctx, store.AllTenants, v.Job.ID)
		require.NoError(t, err)
		_, err = b.orch.Peek(ctx, tg)
		require.ErrorIs(t, err, orchestrator.ErrStale, "the job is over")
	})
}
