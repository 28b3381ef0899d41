package orchestrator

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
)

func TestMoveTables(t *testing.T) {
	t.Parallel()
	steps := []store.StepStatus{store.StepPending, store.StepQueued, store.StepRunning, store.StepRetrying,
		store.StepSucceeded, store.StepFailed, store.StepSkipped, store.StepCancelled}
	for _, s := range steps {
		_, ok := stepMoves[s]
		require.True(t, ok, "step status %s has no row", s)
		if s.Terminal() {
			require.Equal(t, []store.StepStatus{store.StepPending}, stepMoves[s], "an ended step (%s) moves only by a resume", s)
		}
	}
	require.True(t, legal(stepMoves, store.StepQueued, store.StepRunning))
	require.False(t, legal(stepMoves, store.StepSucceeded, store.StepRunning), "a SUCCEEDED step is never executed again")
	require.False(t, legal(stepMoves, store.StepPending, store.StepRunning), "a step starts from its queue")
	require.False(t, legal(jobMoves, store.JobCompleted, store.JobPending), "a completed job is not resumed")
	for _, j := range []store.JobStatus{store.JobPending, store.JobRunning, store.JobCompleted, store.JobFailed, store.JobCancelled} {
		_, ok := jobMoves[j]
		require.True(t, ok, "job status %s has no row", j)
	}
}

// A change that makes an illegal move is refused before anything is written.
func TestIllegalMoveIsNotApplied(t *testing.T) {
	t.Parallel()
	o := New(nil, &registry.Registry{}, nil, nil, Config{})
	now := time.Now()
	job := &store.Job{ID: "j", Status: store.JobRunning, Version: 3}
	steps := []store.Step{{JobID: "j", Name: "a", Status: store.StepSucceeded, Run: 1, Attempts: 1, CreatedAt: now}}
	u := o.newUnit(context.Background(), job, steps)
	u.setStep(u.byName["a"], store.StepRunning, "", "")
	require.ErrorIs(t, u.illegal, ErrIllegalMove)
	require.ErrorContains(t, u.illegal, "step a of job j from SUCCEEDED to RUNNING")
}
