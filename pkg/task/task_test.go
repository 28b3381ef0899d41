package task_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

func TestPayloadRoundTrip(t *testing.T) {
	t.Parallel()
	p := task.StepPayload{JobID: "6f1c0c3e-0000-4000-8000-000000000001", Feature: "plan", Step: "draft", Run: 2, Attempt: 3}
	got, err := task.ParseStepPayload(p.Marshal())
	require.NoError(t, err)
	require.Equal(t, p, got)
	require.Equal(t, "step:6f1c0c3e-0000-4000-8000-000000000001:2:3:draft", p.TaskID(), "the id does not depend on the feature")
	require.Equal(t, "6f1c0c3e-0000-4000-8000-000000000001/draft/2", task.IdempotencyKey(p.JobID, p.Step, p.Run))

	// Tasks enqueued before the feature was added still parse.
	old, err := task.ParseStepPayload([]byte(`{"job_id":"j","step":"s","run":1,"attempt":1}`))
	require.NoError(t, err)
	require.Empty(t, old.Feature)
	require.NotContains(t, string(p.Marshal()), "failed", "only the task of a step the bell ran that failed carries it")

	// The task of a step the bell ran and that failed for good goes back marked with its error, the
	// same id: it names the same step, run and attempt.
	p.Failed = "step draft failed (http_status, not retryable): HTTP 400"
	marked, err := task.ParseStepPayload(p.Marshal())
	require.NoError(t, err)
	require.Equal(t, p, marked)
	require.Equal(t, "step:6f1c0c3e-0000-4000-8000-000000000001:2:3:draft", marked.TaskID())

	for _, bad := range []string{`{`, `{}`, `{"job_id":"j","step":"s","run":0,"attempt":1}`, `{"job_id":"j","step":"","run":1,"attempt":1}`} {
		_, err := task.ParseStepPayload([]byte(bad))
		require.Error(t, err, bad)
	}
}

func TestForStep(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	s := &store.Step{JobID: "j", Name: "b", Queue: "heavy", Status: store.StepQueued, Run: 2, Attempts: 1}
	ot := task.ForStep(s, "plan", "acme", now)
	require.Equal(t, "step:j:2:2:b", ot.TaskID)
	require.Equal(t, "heavy", ot.Queue)
	require.Equal(t, task.TypeStep, ot.TypeName)
	require.Nil(t, ot.ProcessAt)
	require.Equal(t, now, ot.CreatedAt)
	p, err := task.ParseStepPayload(ot.Payload)
	require.NoError(t, err)
	require.Equal(t, task.StepPayload{JobID: "j", Feature: "plan", Tenant: "acme", Step: "b", Run: 2, Attempt: 2}, p)

	due := now.Add(90 * time.Second)
	s.Status, s.NextAttemptAt = store.StepRetrying, &due
	require.Equal(t, &due, task.ForStep(s, "plan", "acme", now).ProcessAt, "a retry is scheduled for when it is due")
	past := now.Add(-time.Second)
	s.NextAttemptAt = &past
	require.Nil(t, task.ForStep(s, "plan", "acme", now).ProcessAt, "an overdue retry runs now")
}

// TestWithSnap: a payload given a snapshot decodes to the same payload carrying it, and its task id
// still names its step.
func TestWithSnap(t *testing.T) {
	t.Parallel()
	p := task.StepPayload{JobID: "0b6a2e0e-3c1f-4a57-9d1e-5a8f2f9c1d11", Feature: "f", Step: "fetch:page", Run: 2, Attempt: 3, Tenant: "acme"}
	snap := json.RawMessage(`{"v":1,"job":{"id":"x"}}`)
	got, err := task.ParseStepPayload(task.WithSnap(p.Marshal(), snap))
	require.NoError(t, err)
	want := p
	want.Snap = snap
	require.Equal(t, want, got)

	require.Equal(t, "fetch:page", task.StepOfTaskID(p.TaskID()), "a step name may hold colons")
	for _, id := range []string{"", "step:", "step:j:1:1", "webhook:j:1:1:a"} {
		require.Empty(t, task.StepOfTaskID(id), id)
	}
}
