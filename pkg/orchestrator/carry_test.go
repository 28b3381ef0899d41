package orchestrator_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/testinfra"
)

// taskRecorder is a Dispatcher that remembers the tasks handed to the queue before passing them on.
type taskRecorder struct {
	next orchestrator.Dispatcher
	mu   sync.Mutex
	byID map[string]store.OutboxTask
}

func (r *taskRecorder) Dispatch(ctx context.Context, tasks []store.OutboxTask) {
	r.mu.Lock()
	for _, t := range tasks {
		if len(t.Carried) > 0 {
			t.Payload = task.WithSnap(t.Payload, t.Carried) // as the queue gets it
		}
		r.byID[t.TaskID] = t
	}
	r.mu.Unlock()
	r.next.Dispatch(ctx, tasks)
}

// recordingSetup is roundTripSetup with the tasks handed to the queue recorded.
func recordingSetup(t *testing.T) (context.Context, *orchestrator.Orchestrator, *testinfra.RoundTrips, func(), *taskRecorder) {
	t.Helper()
	rec := &taskRecorder{byID: map[string]store.OutboxTask{}}
	ctx, orch, rt, outboxEmpty := roundTripSetupVia(t, func(d orchestrator.Dispatcher) orchestrator.Dispatcher {
		rec.next = d
		return rec
	})
	return ctx, orch, rt, outboxEmpty, rec
}

// payload returns the payload of the task handed over for the first attempt of step of job.
func (r *taskRecorder) payload(t *testing.T, job, step string) task.StepPayload {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	want := task.StepPayload{JobID: job, Step: step, Run: 1, Attempt: 1}
	got, ok := r.byID[want.TaskID()]
	require.True(t, ok, "no task was handed over for %s", want.TaskID())
	p, err := task.ParseStepPayload(got.Payload)
	require.NoError(t, err)
	return p
}

// TestClaimFromCarriedSnapshot: the task of a job's first step, as the create hands it to the queue,
// carries the job as the create wrote it, field for field, and the claim starts from it in one
// statement. A job that moved on since refuses the claim; a job whose input is large, or that the
// create leaves with more than one step waiting, carries nothing.
func TestClaimFromCarriedSnapshot(t *testing.T) {
	t.Parallel()
	ctx, orch, rt, outboxEmpty, rec := recordingSetup(t)
	create := func(feature, input string) string {
		v, _, err := orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: feature, Input: json.RawMessage(input)})
		require.NoError(t, err)
		return v.Job.ID
	}

	// The carried job is the job in the database.
	id := create("chain5", `{"n": 1, "text": "é ü"}`)
	p := rec.payload(t, id, "s1")
	require.Equal(t, "chain5", p.Feature)
	job, steps, ok := orchestrator.CarriedJob(p)
	require.True(t, ok, "the first step's task carries its job")
	got, err := orch.GetJob(ctx, store.AllTenants, id)
	require.NoError(t, err)
	require.JSONEq(t, string(got.Job.Input), string(job.Input))
	job.Input = got.Job.Input // jsonb keeps its own spelling of the same document
	require.Equal(t, got.Job, *job)
	require.Equal(t, got.Steps, steps)

	// The claim from it is one statement (the connection warmed and the relay's clean-up done).
	for i := range 2 {
		input := `{"n": 1, "text": "é ü"}`
		if i > 0 {
			input = `{"n": 2}`
			id = create("chain5", input)
		}
		p := rec.payload(t, id, "s1")
		outboxEmpty()
		_, err := orch.GetJob(ctx, store.AllTenants, id) // keeps the pooled connection fresh
		require.NoError(t, err)
		before := rt.Count()
		tg, err := orch.Resolve(ctx, p)
		require.NoError(t, err)
		a, err := orch.StartAttemptFrom(ctx, tg, "w1", orchestrator.Claim{})
		require.NoError(t, err)
		if i == 1 {
			require.EqualValues(t, 1, rt.Count()-before, "round trips of a claim from a carried snapshot")
		}
		require.JSONEq(t, input, string(a.Input))
		require.NoError(t, orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{"ok": true}`)}))
		v, err := orch.GetJob(ctx, store.AllTenants, id)
		require.NoError(t, err)
		require.Equal(t, store.StepSucceeded, v.Steps[0].Status)
		require.Equal(t, store.StepQueued, v.Steps[1].Status, "the next step was queued from the claim's state")
	}

	// Cancelled after the task was queued: the claim from the carried job is refused.
	id = create("chain5", `{}`)
	p = rec.payload(t, id, "s1")
	_, err = orch.Cancel(ctx, store.AllTenants, id)
	require.NoError(t, err)
	tg, err := orch.Resolve(ctx, p)
	require.NoError(t, err)
	_, err = orch.StartAttemptFrom(ctx, tg, "w1", orchestrator.Claim{})
	require.ErrorIs(t, err, orchestrator.ErrStale)
	got, err = orch.GetJob(ctx, store.AllTenants, id)
	require.NoError(t, err)
	require.Equal(t, store.JobCancelled, got.Job.Status)
	for _, s := range got.Steps {
		require.NotEqual(t, store.StepRunning, s.Status, "step %s", s.Name)
	}

	// Nothing carried: a large input, or two steps waiting at once (the claim of one moves the
	// other's job on).
	id = create("chain5", `{"text": "`+strings.Repeat("x", 5000)+`"}`)
	_, _, ok = orchestrator.CarriedJob(rec.payload(t, id, "s1"))
	require.False(t, ok, "a job with a large input is not carried")
	id = create("fan2", `{}`)
	for _, step := range []string{"a", "b"} {
		_, _, ok = orchestrator.CarriedJob(rec.payload(t, id, step))
		require.False(t, ok, "step %s of a job with two steps waiting", step)
	}
}
